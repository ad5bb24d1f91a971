"""Micro-batches (pure): the data stage's rows as Arrow columns, or documents packed per step, -> padded
int64 tensors, checked.

Packed rows all have the data stage's seq_len; unpacked rows (`packing: none`) vary, so a micro-batch
is right-padded to its longest row, the padding being one more document with no trained tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from valley.errors import InputError

TRAIN_COLUMNS = ["input_ids", "loss_mask", "position_ids", "n_tokens", "trace_ids"]


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # (B, L) int64
    loss_mask: torch.Tensor  # (B, L) int64
    position_ids: torch.Tensor  # (B, L) int64
    row_tokens: list[int]  # real (non-padding) tokens of each row
    trace_ids: list[str]

    @property
    def n_tokens(self) -> int:
        return sum(self.row_tokens)


def _lists(col: pa.ChunkedArray | pa.Array) -> list[np.ndarray]:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = arr.offsets.to_numpy()
    values = arr.values.to_numpy(zero_copy_only=False)
    return [values[offsets[i]:offsets[i + 1]] for i in range(len(arr))]


def to_micro_batch(batch: pa.Table, *, max_seq_len: int, pad_id: int = 0) -> MicroBatch:
    """Arrow rows -> tensors; a malformed row is an InputError naming the field and its trace ids."""
    ids, mask, pos = (_lists(batch.column(c)) for c in ("input_ids", "loss_mask", "position_ids"))
    trace_ids = batch.column("trace_ids").to_pylist() if "trace_ids" in batch.column_names else [[]] * len(ids)
    width = max(len(r) for r in ids)
    for i, (a, m, p) in enumerate(zip(ids, mask, pos, strict=True)):
        where = f"row with trace_ids {trace_ids[i][:3]}"
        if len(a) > max_seq_len:
            raise InputError(f"row of {len(a)} tokens exceeds max_seq_len={max_seq_len}; {where}", field="input_ids")
        if len(m) != len(a) or len(p) != len(a):
            raise InputError(f"loss_mask/position_ids length differs from input_ids; {where}", field="loss_mask")
        if len(p) and p[0] != 0:
            raise InputError(f"position_ids must start at 0; {where}", field="position_ids")
    out = np.full((3, len(ids), width), 0, dtype=np.int64)
    out[0].fill(pad_id)
    for i, (a, m, p) in enumerate(zip(ids, mask, pos, strict=True)):
        n = len(a)
        out[0, i, :n], out[1, i, :n], out[2, i, :n] = a, m, p
        out[2, i, n:] = np.arange(width - n)  # padding: its own document
    if "n_tokens" in batch.column_names:
        row_tokens = [int(n) if n is not None else len(a) for n, a in zip(batch.column("n_tokens").to_pylist(), ids,
                                                                           strict=True)]
    else:
        row_tokens = [len(a) for a in ids]
    t = torch.from_numpy(out)
    return MicroBatch(t[0], t[1], t[2], row_tokens, [x for ts in trace_ids for x in (ts or [])])


def steps(micro_batches: Iterable[MicroBatch], accum: int, partial: bool = False
          ) -> Iterator[list[MicroBatch]]:
    """Group micro-batches into optimizer steps; an incomplete last group is one more (smaller) step when
    `partial`, else not a step (the plan counts those rows as left over for the epoch)."""
    group: list[MicroBatch] = []
    for mb in micro_batches:
        group.append(mb)
        if len(group) == accum:
            yield group
            group = []
    if group and partial:
        yield group


@dataclass(frozen=True)
class Document:
    """One tokenized trace, cut out of a packed row (`train/documents.py`)."""

    trace_id: str
    input_ids: np.ndarray  # (n,) integers
    loss_mask: np.ndarray  # (n,) 0/1

    def __len__(self) -> int:
        return len(self.input_ids)


def from_documents(rows: Sequence[Sequence[Document]], *, width: int, pad_id: int) -> MicroBatch:
    """One micro-batch of rows, each the concatenation of its documents (position ids restarting at 0 for
    each) right-padded to `width`; an empty row is all padding, one document with no trained tokens, so a
    rank without work runs the same shapes as the others."""
    out = np.zeros((3, len(rows), width), dtype=np.int64)
    out[0].fill(pad_id)
    row_tokens, trace_ids = [], []
    for i, docs in enumerate(rows):
        at = 0
        for doc in docs:
            n = len(doc)
            if at + n > width:
                raise InputError(f"documents {[d.trace_id for d in docs][:3]} hold more than {width} tokens",
                                 field="input_ids")
            out[0, i, at:at + n], out[1, i, at:at + n] = doc.input_ids, doc.loss_mask
            out[2, i, at:at + n] = np.arange(n)
            at += n
            trace_ids.append(doc.trace_id)
        out[2, i, at:] = np.arange(width - at)
        row_tokens.append(at)
    t = torch.from_numpy(out)
    return MicroBatch(t[0], t[1], t[2], row_tokens, trace_ids)
