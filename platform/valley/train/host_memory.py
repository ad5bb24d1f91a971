"""glibc's malloc in CPU training processes: a fixed mmap threshold, so freed activations go back to the OS.

glibc serves a request above its mmap threshold with its own mapping, unmapped on free, and anything below
from the heap, which keeps freed pages. The threshold starts at 128 KiB and rises to the size of each mapped
block freed, up to 32 MiB; after a few steps every activation under 32 MiB lives in the heap, and the
interleaved long-lived allocations (ZeRO-3's gathered parameters) keep it from shrinking. On a ZeRO-3 step
of SmolLM2-135M at 4,096 tokens that tripled the transient memory: 7.4 GB per rank at the peak, against 3.6
GB with the threshold fixed at 4 MiB (benchmarks/bench_plan.py). Setting it also stops the rise (mallopt).
GPU processes keep glibc's default: their tensors live in PyTorch's caching allocator, not in malloc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

MMAP_THRESHOLD = 4 * 1024 ** 2  # bytes; capacity/memory.py's CPU heap terms count tensors below it
M_MMAP_THRESHOLD = -3  # malloc.h


def pin_mmap_threshold(nbytes: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold for this process; False where the C library has no mallopt (not glibc)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    return bool(mallopt and mallopt(M_MMAP_THRESHOLD, int(nbytes)))
