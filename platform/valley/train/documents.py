"""The documents inside the data stage's packed rows, for `batch_unit: examples` (pyarrow I/O).

A packed row holds its documents back to back, position ids restarting at 0 at each, `trace_ids` naming
them in order. A document's index is its place in that order over the subset's shards (file by file, row by
row): the driver indexes every document's length once (`index_documents`), every rank derives the
epoch's steps from those lengths (`example_steps.py`) and then reads the shards keeping only the documents
its own rows of the epoch need (`load_documents`).

Cost at 100K traces of ~6K tokens (600M tokens; the shards' three token columns decode to ~5.4 GB):
- driver, once per run: streams `position_ids`, `n_tokens` and `trace_ids` (~2.4 GB decoded, one record
  batch at a time) and keeps one length per document (the plan carries 100K integers to every worker);
- each rank, at the start of each epoch (and on a restart, from the step it resumes at): streams
  `input_ids`, `loss_mask` and `trace_ids` of the shards holding any of its documents — in practice the
  whole subset, ~3 GB decoded per rank per epoch, 8 ranks × 5 epochs = 40 reads of the subset over a
  run — and keeps its share of the epoch, ~1/world of it: ~75M tokens, ~0.4 GB (int32 ids, int8 mask)
  per rank with 8 ranks, freed step by step as it trains.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from valley.errors import InputError
from valley.storage import Storage
from valley.train.batches import Document

BATCH_ROWS = 64  # rows per record batch while streaming a shard


@dataclass(frozen=True)
class DocumentIndex:
    """Every document of a subset in shard order: its length and how many each shard holds."""

    lengths: tuple[int, ...]
    per_file: tuple[int, ...]


def _open(uri: str) -> pq.ParquetFile:
    st = Storage(uri, create=False)
    return pq.ParquetFile(st.base, filesystem=st.fs)


def _flat(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Values and per-row lengths of a list column."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    values = pc.list_flatten(arr).to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    return values, lengths


def _batches(uri: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    yield from _open(uri).iter_batches(batch_size=BATCH_ROWS, columns=columns)


def row_document_lengths(positions: np.ndarray, row_lens: np.ndarray, n_tokens: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(document lengths in order, documents per row) of rows given as flat position ids: a document
    starts at every position 0 among the row's first `n_tokens` tokens (the rest is padding).
    A row whose real tokens do not start at position 0 gives -1 documents (the caller names it)."""
    n_rows = len(row_lens)
    starts_of_rows = np.concatenate([[0], np.cumsum(row_lens)[:-1]]).astype(np.int64)
    real = np.minimum(n_tokens, row_lens)
    row_of = np.repeat(np.arange(n_rows), row_lens)
    rel = np.arange(len(positions)) - np.repeat(starts_of_rows, row_lens)
    starts = np.flatnonzero((positions == 0) & (rel < np.repeat(real, row_lens)))
    start_row = row_of[starts]
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:]
    last = np.ones(len(starts), dtype=bool)
    last[:-1] = start_row[1:] != start_row[:-1]
    ends[last] = starts_of_rows[start_row[last]] + real[start_row[last]]
    per_row = np.bincount(start_row, minlength=n_rows)
    has = np.flatnonzero(real > 0)
    per_row[has[positions[starts_of_rows[has]] != 0]] = -1
    return ends - starts, per_row


def index_documents(files: Sequence[str], max_len: int) -> DocumentIndex:
    """Length of every document of the shards, in order; a row whose documents disagree with its
    `trace_ids`, or a document longer than `max_len` (the row length it is packed to), is an InputError
    naming the file and field."""
    lengths: list[np.ndarray] = []
    per_file = []
    for uri in files:
        count, row0 = 0, 0
        for batch in _batches(uri, ["position_ids", "n_tokens", "trace_ids"]):
            positions, row_lens = _flat(batch.column("position_ids"))
            n_tokens = batch.column("n_tokens").fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
            n_tokens = np.where(n_tokens < 0, row_lens, n_tokens)
            docs, per_row = row_document_lengths(positions, row_lens, n_tokens)
            named = pc.list_value_length(batch.column("trace_ids")).fill_null(0).to_numpy(zero_copy_only=False)
            wrong = np.flatnonzero(per_row != named)
            if len(wrong):
                i = int(wrong[0])
                names = batch.column("trace_ids")[i].as_py()[:3]
                raise InputError(f"a row holds {per_row[i]} documents by its position ids (-1: they do not "
                                 f"start at 0) but names {named[i]} in trace_ids {names}", file=uri,
                                 row=row0 + i, field="position_ids")
            if len(docs) and int(docs.max()) > max_len:
                at = int(np.argmax(docs))
                row = row0 + int(np.searchsorted(np.cumsum(per_row), at, side="right"))
                raise InputError(f"a document of {int(docs[at])} tokens is longer than a row ({max_len})",
                                 file=uri, row=row, field="input_ids")
            lengths.append(docs)
            count += len(docs)
            row0 += batch.num_rows
        per_file.append(count)
    flat = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    return DocumentIndex(tuple(int(n) for n in flat), tuple(per_file))


def load_documents(files: Sequence[str], index: DocumentIndex, wanted: Sequence[int]) -> dict[int, Document]:
    """The documents `wanted` (indices into the index's order) with their tokens; shards holding none of
    them are not read. Their lengths must match the index (the shards did not change since planning)."""
    want = np.unique(np.asarray(wanted, dtype=np.int64))
    lengths = np.asarray(index.lengths, dtype=np.int64)
    out: dict[int, Document] = {}
    first = 0
    for uri, count in zip(files, index.per_file, strict=True):
        lo, hi = np.searchsorted(want, [first, first + count])
        if hi > lo:
            out.update(_read_wanted(uri, first, lengths, want[lo:hi]))
        first += count
    missing = len(want) - len(out)
    if missing:
        raise InputError(f"{missing} planned documents were not found in the shards (changed since planning?)",
                         file=files[0] if files else None, field="trace_ids")
    return out


def _read_wanted(uri: str, first: int, lengths: np.ndarray, want: np.ndarray) -> dict[int, Document]:
    out: dict[int, Document] = {}
    doc0 = first
    for batch in _batches(uri, ["input_ids", "loss_mask", "trace_ids"]):
        ids, row_lens = _flat(batch.column("input_ids"))
        mask, _ = _flat(batch.column("loss_mask"))
        names, per_row = _flat(batch.column("trace_ids"))
        n_docs = int(per_row.sum())
        doc_len = lengths[doc0:doc0 + n_docs]
        if len(doc_len) != n_docs:
            raise InputError("the shards hold more documents than planned (changed since planning?)", file=uri,
                             field="trace_ids")
        doc_row = np.repeat(np.arange(len(row_lens)), per_row)
        before = np.cumsum(doc_len) - doc_len  # tokens of the batch's earlier documents
        row_first = np.concatenate([[0], np.cumsum(per_row)[:-1]]).astype(np.int64)
        row_start = np.concatenate([[0], np.cumsum(row_lens)[:-1]]).astype(np.int64)
        within = before - before[row_first[doc_row]]  # offset of each document inside its row
        if n_docs and np.any(within + doc_len > row_lens[doc_row]):
            raise InputError("documents are longer than their row (the shards changed since planning?)",
                             file=uri, field="input_ids")
        start = row_start[doc_row] + within
        lo, hi = np.searchsorted(want, [doc0, doc0 + n_docs])
        for d in want[lo:hi]:
            k = int(d - doc0)
            a, n = int(start[k]), int(doc_len[k])
            out[int(d)] = Document(str(names[k]), ids[a:a + n].copy(), mask[a:a + n].copy())
        doc0 += n_docs
    return out
