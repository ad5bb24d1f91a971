"""Best-fit decreasing bin packing of lengths: the one packing order the data stage's packed rows and the
trainer's per-step rows (`batch_unit: examples`) both follow, so a document lands beside the same
neighbours whichever stage packs it."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

__all__ = ["best_fit_decreasing"]


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Positions (into `lengths`, each at most `capacity`) of the items of each bin, in the order they were
    added: longest first (ties by position), each into the bin with the least room that still holds it."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), kept sorted
    for i in order:
        n = lengths[i]
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            room, b = free.pop(at)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        if room - n > 0:
            bisect.insort(free, (room - n, b))
    return bins
