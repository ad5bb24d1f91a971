"""Packing tokenized documents into fixed-length training rows (pure functions).

Best-fit decreasing: longest documents first, each into the open row with the least room that still
fits it. Position ids restart at 0 for every document (padding counts as one more document), which is
what lets the trainer keep attention inside each document.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from valley import schemas
from valley.binpack import best_fit_decreasing


@dataclass
class Doc:
    trace_id: str
    input_ids: list[int]
    loss_mask: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class PackedRow:
    input_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    trace_ids: list[str] = field(default_factory=list)
    n_tokens: int = 0

    def add(self, doc: Doc) -> None:
        self.input_ids.extend(doc.input_ids)
        self.loss_mask.extend(doc.loss_mask)
        self.position_ids.extend(range(len(doc)))
        self.trace_ids.append(doc.trace_id)
        self.n_tokens += len(doc)

    def pad_to(self, seq_len: int, pad_id: int) -> None:
        pad = seq_len - len(self.input_ids)
        if pad > 0:
            self.input_ids.extend([pad_id] * pad)
            self.loss_mask.extend([0] * pad)
            self.position_ids.extend(range(pad))

    def as_record(self) -> dict:
        return {
            "input_ids": self.input_ids,
            "loss_mask": self.loss_mask,
            "position_ids": self.position_ids,
            "n_docs": len(self.trace_ids),
            "n_tokens": self.n_tokens,
            "n_loss_tokens": sum(self.loss_mask),
            "trace_ids": self.trace_ids,
        }


def _check_fits(trace_ids: list[str], lengths: list[int], seq_len: int) -> None:
    too_long = [t for t, n in zip(trace_ids, lengths, strict=True) if n > seq_len]
    if too_long:
        raise ValueError(f"documents longer than seq_len={seq_len}: {too_long[:5]}")


def pack_best_fit(docs: list[Doc], seq_len: int, pad_id: int) -> list[PackedRow]:
    """Pack docs (each at most seq_len long) into rows of exactly seq_len tokens: the record-by-record
    reference that `pack_documents`, the data stage's packer, is tested against."""
    _check_fits([d.trace_id for d in docs], [len(d) for d in docs], seq_len)
    rows = []
    for members in best_fit_decreasing([len(d) for d in docs], seq_len):
        row = PackedRow()
        for i in members:
            row.add(docs[i])
        row.pad_to(seq_len, pad_id)
        rows.append(row)
    return rows


def one_per_row(docs: list[Doc]) -> list[PackedRow]:
    """No packing: one document per row, unpadded (the trainer pads each micro-batch)."""
    rows = []
    for doc in docs:
        row = PackedRow()
        row.add(doc)
        rows.append(row)
    return rows


def pack_efficiency(rows: list[PackedRow], seq_len: int) -> float:
    return sum(r.n_tokens for r in rows) / (len(rows) * seq_len) if rows else 0.0


def pack_documents(docs: pa.Table, seq_len: int, pad_id: int, packing: str) -> pa.Table:
    """The packed shard of documents held as Arrow columns (id, input_ids, loss_mask: schemas.DOCUMENTS'):
    best-fit rows of seq_len tokens (`pack`) or one unpadded row per document, as a schemas.TOKENIZED
    table; the rows `pack_best_fit` / `one_per_row` give. Each row is joined from slices of the flat
    token and mask arrays (one copy per document), not gathered token by token: a per-token index costs
    several int64 arrays as long as the shard, whose first touch alone is most of the packing."""
    sizes = pc.list_value_length(docs.column("input_ids")).to_pylist()
    trace_ids = docs.column("id").to_pylist()
    if packing == "pack":
        _check_fits(trace_ids, sizes, seq_len)
        rows, width = best_fit_decreasing(sizes, seq_len), seq_len
    else:
        rows, width = [[i] for i in range(len(sizes))], None
    ids = _flat(docs.column("input_ids"), np.int32)
    mask = _flat(docs.column("loss_mask"), np.int8)
    starts = list(itertools.accumulate(sizes, initial=0))[:-1]
    widest = max([width or 0, *sizes])
    counting = np.arange(widest, dtype=np.int32)  # every position slice is a prefix of it
    pad_ids, pad_mask = np.full(widest, pad_id, np.int32), np.zeros(widest, np.int8)
    id_parts: list[np.ndarray] = []
    mask_parts: list[np.ndarray] = []
    pos_parts: list[np.ndarray] = []
    row_ends: list[int] = []
    total = 0
    for members in rows:
        used = 0
        for i in members:
            a, n = starts[i], sizes[i]
            id_parts.append(ids[a:a + n])
            mask_parts.append(mask[a:a + n])
            pos_parts.append(counting[:n])
            used += n
        pad = width - used if width is not None else 0
        if pad > 0:  # padding counts as one more document: its positions restart at 0
            id_parts.append(pad_ids[:pad])
            mask_parts.append(pad_mask[:pad])
            pos_parts.append(counting[:pad])
        total += used + max(pad, 0)
        row_ends.append(total)
    loss_per_doc = [int(mask[a:a + n].sum()) for a, n in zip(starts, sizes)]
    columns = [
        _list_column(pa.array(concatenated(id_parts, np.int32)), row_ends),
        _list_column(pa.array(concatenated(mask_parts, np.int8)), row_ends),
        _list_column(pa.array(concatenated(pos_parts, np.int32)), row_ends),
        pa.array([len(m) for m in rows], pa.int32()),
        pa.array([sum(sizes[i] for i in m) for m in rows], pa.int32()),
        pa.array([sum(loss_per_doc[i] for i in m) for m in rows], pa.int32()),
        pa.array([[trace_ids[i] for i in m] for m in rows], pa.list_(pa.string())),
    ]
    return pa.Table.from_arrays(columns, schema=schemas.TOKENIZED)


def _list_column(values: pa.Array, row_ends: list[int]) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array([0, *row_ends], pa.int32()), values)


def concatenated(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    """The parts end to end (an empty array of `dtype` for none)."""
    return np.concatenate(parts) if parts else np.empty(0, dtype)


def _flat(column: pa.ChunkedArray, dtype: type) -> np.ndarray:
    """A list column's values in one array (no copy when Arrow holds them in one chunk of `dtype`)."""
    if not len(column):
        return np.empty(0, dtype)
    return pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(dtype, copy=False)
