"""Which documents each optimizer step of a `batch_unit: examples` run trains, and on which rank (pure).

Every rank computes the same schedule from the same inputs (document lengths, seed, epoch), so no rank
has to tell another what to train, and a restarted run finds the same steps again:
- an epoch's order is a permutation of the documents seeded with `seed + epoch` (as the rows unit's shuffle);
- consecutive groups of `global_batch_size` documents in that order are the steps (a smaller last group is
  one more step, or left out, per `last_step`);
- a step's documents are packed best-fit-decreasing into rows of the data stage's length — by length
  alone, because a rank holds only its own documents' tokens — and row j goes to rank j mod world;
- every rank runs the step's largest per-rank count of micro-batches: ZeRO-3 gathers parameters with
  collectives, so a rank with fewer rows runs padding micro-batches whose targets are all ignored.

Both this and the data stage's packer (`data/packing.py`) place lengths with `valley.binpack` (longest
first, into the open row with the least room that still fits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from valley.binpack import best_fit_decreasing
from valley.train.step_arithmetic import LastStep


def epoch_order(n_docs: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Document indices in the order epoch `epoch` (0-based) takes them."""
    if not shuffle:
        return np.arange(n_docs)
    return np.random.default_rng(seed + epoch).permutation(n_docs)


def epoch_groups(n_docs: int, per_step: int, last_step: LastStep, *, seed: int, epoch: int,
                 shuffle: bool) -> list[np.ndarray]:
    """The documents of each step of one epoch, in order."""
    order = epoch_order(n_docs, seed, epoch, shuffle)
    groups = [order[i:i + per_step] for i in range(0, n_docs, per_step)]
    if groups and len(groups[-1]) < per_step and last_step == "drop":
        groups.pop()
    return groups


def pack_lengths(lengths: Sequence[int], row_len: int) -> list[list[int]]:
    """Best-fit decreasing: positions (into `lengths`) of the items of each row, no row over `row_len`."""
    too_long = [i for i, n in enumerate(lengths) if n > row_len]
    if too_long:
        raise ValueError(f"items longer than a row of {row_len}: positions {too_long[:5]}")
    return best_fit_decreasing(lengths, row_len)


@dataclass(frozen=True)
class StepLayout:
    """One step's rows and their ranks: `rows[j]` lists document indices; rank k trains rows k, k+world, …"""

    rows: tuple[tuple[int, ...], ...]
    world: int
    micro: int
    width: int  # tokens per row in this step's micro-batches

    @property
    def micro_batches(self) -> int:
        """Forward passes every rank runs in this step: the busiest rank's."""
        return math.ceil(math.ceil(len(self.rows) / self.world) / self.micro)

    def rows_of(self, rank: int) -> list[tuple[int, ...]]:
        return list(self.rows[rank::self.world])

    @property
    def docs(self) -> list[int]:
        return [d for row in self.rows for d in row]


def layout_step(docs: Sequence[int], lengths: Sequence[int], *, row_len: int, packed: bool, world: int,
                micro: int) -> StepLayout:
    """Rows of one step's documents: packed to `row_len` (each row padded to it), or one document a row
    (`packing: none` data; every micro-batch padded to the step's longest document)."""
    sizes = [int(lengths[d]) for d in docs]
    if packed:
        rows = tuple(tuple(int(docs[i]) for i in row) for row in pack_lengths(sizes, row_len))
        width = row_len
    else:
        rows = tuple((int(d),) for d in docs)
        width = max(sizes, default=1)
    return StepLayout(rows, world, micro, width)


def epoch_layouts(lengths: Sequence[int], per_step: int, last_step: LastStep, *, seed: int, epoch: int,
                  shuffle: bool, row_len: int, packed: bool, world: int, micro: int) -> list[StepLayout]:
    """Every step of one epoch, laid out over the ranks."""
    groups = epoch_groups(len(lengths), per_step, last_step, seed=seed, epoch=epoch, shuffle=shuffle)
    return [layout_step(g, lengths, row_len=row_len, packed=packed, world=world, micro=micro) for g in groups]
