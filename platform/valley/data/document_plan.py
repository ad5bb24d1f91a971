"""Which traces are tokenized into which `documents/` part, and which parts each subset group packs from
(pure: Arrow tables in, plain groups out).

The union of every subset's traces, in storage order, is cut into groups of `group_docs` documents; each
subset is cut in the same order into the same-sized groups as before documents existed, so its packed
shards are unchanged. Both orders are one order, so a subset group's traces lie in a contiguous run of
document groups; a subset group that is exactly one document group (every group of a subset that takes
all the traces) is packed where its documents are made, without reading them back.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from valley.data.dictionary_columns import sorted_by

STORAGE_ORDER = [("part", "ascending"), ("source_file", "ascending"), ("source_row", "ascending"),
                 ("id", "ascending")]
MEMBER_COLUMNS = ["id", "part", "source_file", "source_row"]


@dataclass(frozen=True)
class DocGroup:
    """Traces tokenized together into `documents/part-<group>.parquet`."""

    group: int
    parts: list[str]  # the traces/ parts holding them
    ids: pa.StringArray  # in storage order (Arrow, not Python strings: at a million traces the driver holds them all)


@dataclass(frozen=True)
class PackGroup:
    """One shard of a subset, `tokenized/<subset>/part-<group>.parquet`, and where its documents are."""

    subset: str
    group: int
    docs: list[int]  # documents groups holding its traces (a contiguous run)
    ids: pa.StringArray | None  # in storage order; None: exactly the documents of group docs[0]

    @property
    def with_documents(self) -> bool:
        """Packed by the task that makes its documents, from the table in memory."""
        return self.ids is None


@dataclass(frozen=True)
class DocumentPlan:
    documents: list[DocGroup]
    packs: list[PackGroup]
    memberships: int  # traces summed over subsets: what tokenizing each subset on its own would encode

    def packed_with(self, group: int) -> list[PackGroup]:
        """The subset groups packed by documents group `group`'s task."""
        return [p for p in self.packs if p.with_documents and p.docs[0] == group]


def compact(ids: pa.ChunkedArray) -> pa.StringArray:
    """A copy of just these ids: a slice pickles its whole parent buffer into the Ray task that takes it."""
    return pa.concat_arrays(ids.chunks) if ids.num_chunks else pa.array([], pa.string())


def storage_order(members: pa.Table) -> pa.Table:
    return sorted_by(members.select(MEMBER_COLUMNS), STORAGE_ORDER)


def distinct_members(selected: dict[str, pa.Table]) -> pa.Table:
    """Every trace some subset takes, once, in storage order."""
    if not selected:
        return pa.schema([]).empty_table()
    union = storage_order(pa.concat_tables([t.select(MEMBER_COLUMNS) for t in selected.values()]))
    ids = union.column("id").combine_chunks()
    if len(ids) < 2:
        return union
    first = pa.concat_arrays([pa.array([True]), pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1))])
    return union.filter(first)


def plan_documents(selected: dict[str, pa.Table], group_docs: int) -> DocumentPlan:
    """Documents groups of the subsets' distinct traces and each subset's groups (columns id, part,
    source_file, source_row of `selected`)."""
    union = distinct_members(selected)
    documents = []
    for g, start in enumerate(range(0, union.num_rows, group_docs)):
        piece = union.slice(start, group_docs)
        documents.append(DocGroup(g, sorted(set(piece.column("part").to_pylist())), compact(piece.column("id"))))
    packs: list[PackGroup] = []
    for name, table in selected.items():
        packs.extend(_subset_groups(name, storage_order(table), union, documents, group_docs))
    return DocumentPlan(documents, packs, sum(t.num_rows for t in selected.values()))


def _subset_groups(name: str, ordered: pa.Table, union: pa.Table, documents: list[DocGroup],
                   group_docs: int) -> list[PackGroup]:
    at = pc.index_in(ordered.column("id"), value_set=union.column("id").combine_chunks())
    at = at.to_numpy(zero_copy_only=False)
    groups = []
    for g, start in enumerate(range(0, ordered.num_rows, group_docs)):
        n = min(group_docs, ordered.num_rows - start)
        first, last = int(at[start]), int(at[start + n - 1])
        docs = list(range(first // group_docs, last // group_docs + 1))
        whole = first % group_docs == 0 and last - first + 1 == n == len(documents[docs[0]].ids)
        ids = None if whole else compact(ordered.column("id").slice(start, n))
        groups.append(PackGroup(name, g, docs, ids))
    return groups
