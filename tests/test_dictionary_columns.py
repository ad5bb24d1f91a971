"""Dictionary-encoded text columns sort as their strings do (the driver's selection tables, dictionary_columns.py)."""

from __future__ import annotations

import pyarrow as pa

from valley.data.conditions import Condition, mask
from valley.data.dictionary_columns import plain, repeated, sort_indices, sorted_by

KEYS = [("part", "ascending"), ("source_file", "ascending"), ("row", "ascending")]


def _tables() -> tuple[pa.Table, pa.Table]:
    """The same rows with text columns as dictionaries (one per chunk, differing) and as plain strings."""
    chunks = [("p-b", ["z.jsonl", "a.jsonl", "z.jsonl"], [2, 9, 1]), ("p-a", ["m.jsonl", "a.jsonl"], [5, 5]),
              ("p-c", [], [])]
    encoded = pa.concat_tables([pa.table({"part": repeated(part, len(rows)),
                                          "source_file": pa.array(files, pa.string()).dictionary_encode(),
                                          "row": pa.array(rows, pa.int64())}) for part, files, rows in chunks])
    return encoded, plain(encoded)


def test_dictionary_columns_sort_as_their_strings():
    encoded, strings = _tables()
    assert sort_indices(encoded, KEYS).to_pylist() == [4, 3, 1, 2, 0]
    assert sorted_by(encoded, KEYS).to_pydict() == strings.sort_by(KEYS).to_pydict()
    assert sorted_by(encoded, KEYS).column("part").to_pylist() == ["p-a", "p-a", "p-b", "p-b", "p-b"]


def test_plain_decodes_and_conditions_read_either():
    encoded, strings = _tables()
    assert plain(encoded).schema == pa.schema([("part", pa.string()), ("source_file", pa.string()), ("row", pa.int64())])
    for where in ({"source_file": Condition(**{"in": ["a.jsonl"]})}, {"source_file": Condition(ne="z.jsonl")}):
        assert mask(encoded, where).to_pylist() == mask(strings, where).to_pylist()
    assert mask(encoded, {"source_file": Condition(eq="a.jsonl")}).to_pylist() == [False, True, False, False, True]
