"""Sorting trace tables whose repeated text columns are dictionary-encoded (pure).

The driver holds every trace's selection columns; `part` and `source_file` repeat one value per chunk, and
as plain strings they were over 40% of those tables' bytes at a million traces. Arrow cannot sort
dictionary columns, so each is sorted by its values' ranks, which order exactly as the strings do.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SortKeys = list[tuple[str, str]]


def sort_indices(table: pa.Table, keys: SortKeys) -> pa.Array:
    """Arrow's sort_indices of `table` by `keys`, dictionary columns included."""
    columns = {name: _ranks(table.column(name)) if pa.types.is_dictionary(table.column(name).type)
               else table.column(name) for name, _ in keys}
    return pc.sort_indices(pa.table(columns), sort_keys=keys)


def sorted_by(table: pa.Table, keys: SortKeys) -> pa.Table:
    return table.take(sort_indices(table, keys))


def plain(table: pa.Table) -> pa.Table:
    """`table` with its dictionary columns decoded (what a file others read gets written with)."""
    fields = [pa.field(f.name, f.type.value_type, f.nullable) if pa.types.is_dictionary(f.type) else f
              for f in table.schema]
    return table.cast(pa.schema(fields))


def repeated(value: str, n: int) -> pa.DictionaryArray:
    """`value` n times, stored once."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value], pa.string()))


def _ranks(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Each value's rank among the column's distinct values (one dictionary for every chunk first)."""
    unified = column.unify_dictionaries()
    if unified.num_chunks == 0:
        return pa.chunked_array([], pa.uint64())
    rank = pc.rank(unified.chunk(0).dictionary, sort_keys="ascending", tiebreaker="dense")
    return pa.chunked_array([rank.take(chunk.indices) for chunk in unified.chunks], pa.uint64())
