"""Deterministic subset selection from one seed (pure: arrow tables in, id lists out).

Every row gets a key from sha256(seed, id); subsets take rows in key order. That one ordering makes
random subsets nest (1K ⊂ 10K ⊂ 30K ⊂ 100K) and makes the result independent of input file order, so a
re-run, or a run on another cluster, selects byte-for-byte the same rows.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from valley.data.conditions import describe, mask
from valley.data.config import TACO_EASY, TACO_HARD, SubsetSpec, exclusion_order
from valley.data.dictionary_columns import sort_indices, sorted_by
from valley.errors import ConfigError


def order_keys(ids: list[str], seed: int) -> list[int]:
    prefix = f"{seed}:".encode()
    return [int.from_bytes(hashlib.sha256(prefix + i.encode("utf-8")).digest()[:8], "big") for i in ids]


KEY_BATCH = 65_536  # ids made Python strings at a time when keying (a million at once held ~100 MB)


def seeded_order(meta: pa.Table, seed: int) -> pa.Table:
    """`meta` sorted by the seeded key (ties, impossible in practice, broken by id)."""
    ids = meta.column("id")
    keys = np.empty(len(ids), np.uint64)
    for at in range(0, len(ids), KEY_BATCH):
        keys[at:at + KEY_BATCH] = order_keys(ids.slice(at, KEY_BATCH).to_pylist(), seed)
    return meta.append_column("_key", pa.array(keys)).sort_by([("_key", "ascending"), ("id", "ascending")])


def split_duplicate_ids(meta: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Keep the first occurrence of each id in (file, row) order; return (kept, in `meta`'s order, and the
    duplicates, in (file, row) order). Each row's rank in that order is sorted, not the table, and Arrow's
    hash grouping finds each id's first rank: a Python set of a million ids and two sorted copies of the
    table held over a gigabyte on the driver."""
    keys = [("source_file", "ascending"), ("source_row", "ascending"), ("id", "ascending")]
    order = sort_indices(meta, keys).to_numpy()
    rank = np.empty(meta.num_rows, np.int64)
    rank[order] = np.arange(meta.num_rows, dtype=np.int64)
    ranks = pa.array(rank)
    firsts = pa.table({"id": meta.column("id"), "rank": ranks}).group_by("id", use_threads=False).aggregate(
        [("rank", "min")])
    if firsts.num_rows == meta.num_rows:  # no duplicates (the usual case): no copy of the table
        return meta, meta.slice(0, 0)
    keep = pc.is_in(ranks, value_set=firsts.column("rank_min"))
    return meta.filter(keep), sorted_by(meta.filter(pc.invert(keep)), keys)


def dedup_questions(ordered: pa.Table) -> pa.Table:
    """One trace per question: the first in seeded order."""
    seen: set[str] = set()
    keep = []
    for q in ordered.column("question_id").to_pylist():
        keep.append(q not in seen)
        seen.add(q)
    return ordered.filter(pa.array(keep, pa.bool_()))


def _eligible(ordered: pa.Table, spec: SubsetSpec) -> pa.Table:
    pool = ordered
    if spec.sources is not None:
        pool = pool.filter(pc.is_in(pool.column("source"), value_set=pa.array(spec.sources, pa.string())))
    if spec.kind in ("correct", "incorrect"):
        pool = pool.filter(pc.equal(pool.column("correct"), spec.kind == "correct"))
    elif spec.kind in ("easy", "hard"):
        labels = TACO_EASY if spec.kind == "easy" else TACO_HARD
        # the normalised bucket (raw labels differ in case and scale); tables without one use `difficulty`
        column = "difficulty_bucket" if "difficulty_bucket" in pool.column_names else "difficulty"
        pool = pool.filter(pc.is_in(pool.column(column), value_set=pa.array(labels, pa.string())))
    return pool


PAIRS = {"correct": "incorrect", "incorrect": "correct", "easy": "hard", "hard": "easy"}


def with_answer_counts(meta: pa.Table) -> pa.Table:
    """`meta` with `answers_per_question`: how many of its traces share each trace's question_id."""
    counts = meta.group_by("question_id").aggregate([("id", "count")])
    lookup = dict(zip(counts.column("question_id").to_pylist(), counts.column("id_count").to_pylist()))
    values = [lookup[q] for q in meta.column("question_id").to_pylist()]
    return meta.append_column("answers_per_question", pa.array(values, pa.int64()))


def first_per_question(pool: pa.Table, k: int) -> pa.Table:
    """At most `k` traces per question, the first ones in the pool's (seeded) order, grouped by question
    (questions in the order their first trace comes): a size of N then takes about N/k whole questions, so
    at equal size `per_question` trades questions for answers, and sizes still nest."""
    seen: dict[str, int] = {}
    rank: dict[str, int] = {}
    keep, order = [], []
    for q in pool.column("question_id").to_pylist():
        seen[q] = seen.get(q, 0) + 1
        rank.setdefault(q, len(rank))
        keep.append(seen[q] <= k)
        order.append(rank[q])
    kept = pool.append_column("_question_rank", pa.array(order, pa.int64())).filter(pa.array(keep, pa.bool_()))
    return kept.sort_by([("_question_rank", "ascending"), ("_key", "ascending")]).drop_columns(["_question_rank"])


def mix_counts(shares: list[float], size: int) -> list[int]:
    """How many of `size` traces each part gets: seats handed out one at a time (Sainte-Laguë), so a larger
    size never gives a part fewer traces and the sizes of one mixture nest."""
    counts = [0] * len(shares)
    for _ in range(size):
        best = max(range(len(shares)), key=lambda i: (shares[i] / (2 * counts[i] + 1), -i))
        counts[best] += 1
    return counts


class _Funnel:
    """How many traces are left after each step of a subset's definition, for the error that says why a
    pool is too small."""

    def __init__(self, name: str, start: int):
        self.name, self.steps = name, [("traces", start)]

    def add(self, step: str, table: pa.Table) -> pa.Table:
        self.steps.append((step, table.num_rows))
        return table

    def refuse(self, size: int, available: int, what: str = "its pool") -> ConfigError:
        counts = " → ".join(f"{step}: {n}" for step, n in self.steps)
        return ConfigError(f"subset {self.name!r} asks for {size} traces but only {available} are eligible in {what} "
                           f"({counts})")


def _pool(ordered: pa.Table, spec: SubsetSpec, chosen: dict[str, pa.Table], funnel: _Funnel) -> pa.Table:
    """The traces a subset may take, in its order: preset kind and sources, `where`, `exclusive_of`,
    `per_question`."""
    pool = ordered if spec.seed is None else seeded_order(ordered.drop_columns(["_key"]), spec.seed)
    pool = funnel.add(f"kind {spec.kind}" + (f", sources {spec.sources}" if spec.sources else ""),
                      _eligible(pool, spec))
    if spec.where:
        pool = funnel.add(describe(spec.where), pool.filter(mask(pool, spec.where)))
    for other in spec.exclusive_of or []:
        taken = chosen[other].column("id")
        pool = funnel.add(f"not in {other}", pool.filter(pc.invert(pc.is_in(pool.column("id"), value_set=taken))))
    if spec.per_question:
        pool = funnel.add(f"at most {spec.per_question} per question", first_per_question(pool, spec.per_question))
    return pool


def _mixed(pool: pa.Table, spec: SubsetSpec, size: int, funnel: _Funnel) -> pa.Table:
    """`size` traces split over the mix's parts by share; a trace belongs to the first part it fits."""
    parts, taken, unclaimed = list((spec.mix or {}).items()), [], pool
    for (name, part), count in zip(parts, mix_counts([p.share for _, p in parts], size)):
        fits = mask(unclaimed, part.where)
        members = unclaimed.filter(fits)
        unclaimed = unclaimed.filter(pc.invert(fits))
        if count > members.num_rows:
            raise funnel.refuse(count, members.num_rows, f"its mix part {name!r} ({describe(part.where) or 'any'})")
        taken.append(members.slice(0, count))
    return pa.concat_tables(taken).sort_by([("_key", "ascending"), ("id", "ascending")])


def _select(ordered: pa.Table, spec: SubsetSpec, chosen: dict[str, pa.Table],
            pool_size: dict[str, int]) -> tuple[pa.Table, int]:
    if spec.kind == "all" and spec.size is not None:
        raise ConfigError(f"subset {spec.name!r}: kind 'all' takes no size (use kind 'random')")
    funnel = _Funnel(spec.name, ordered.num_rows)
    pool = _pool(ordered, spec, chosen, funnel)
    size = spec.size
    if size is None and spec.kind in PAIRS and spec.sources is None and spec.where is None:
        size = min(pool_size[spec.kind], pool_size[PAIRS[spec.kind]])
    if size is None:
        size = pool.num_rows
    if size == 0:
        hint = " (no trace has `correct` set: run `valley label` first)" if spec.kind in ("correct", "incorrect") else ""
        raise ConfigError(f"subset {spec.name!r} ({spec.kind}) would be empty{hint}")
    if size > pool.num_rows:
        raise funnel.refuse(size, pool.num_rows)
    return (_mixed(pool, spec, size, funnel) if spec.mix else pool.slice(0, size)), pool.num_rows


def select_subsets(ordered: pa.Table, specs: list[SubsetSpec]) -> dict[str, pa.Table]:
    """Rows of each subset (see `select_with_pools`)."""
    return select_with_pools(ordered, specs)[0]


def select_with_pools(ordered: pa.Table, specs: list[SubsetSpec]) -> tuple[dict[str, pa.Table], dict[str, int]]:
    """Rows of each subset, in seeded order, and the size of each one's pool (what its definition allowed).
    Raises ConfigError, naming the subset and the count after each step of its definition, when a size
    cannot be met.

    Paired kinds (correct/incorrect, easy/hard) with no size take the size of the smaller side, so the
    two sides have equal size as the paper's RQ2/RQ3 comparisons need. Subsets are chosen after those
    they exclude.
    """
    pool_size = {kind: _eligible(ordered, SubsetSpec(name="_", kind=kind)).num_rows for kind in PAIRS}
    chosen: dict[str, pa.Table] = {}
    pools: dict[str, int] = {}
    for spec in exclusion_order(specs):
        chosen[spec.name], pools[spec.name] = _select(ordered, spec, chosen, pool_size)
    out = {spec.name: chosen[spec.name] for spec in specs}
    verify_subsets(out, specs)
    return out, pools


def _definition(spec: SubsetSpec) -> str:
    """What decides a subset's pool and order, without its name and size: equal ones must nest."""
    return repr({k: v for k, v in spec.model_dump(mode="json").items() if k not in ("name", "size")})


def verify_subsets(selected: dict[str, pa.Table], specs: list[SubsetSpec]) -> None:
    """Subsets of one definition must nest; paired kinds and exclusive subsets must not overlap."""
    def ids(name: str) -> set[str]:
        return set(selected[name].column("id").to_pylist())

    by_definition: dict[str, list[SubsetSpec]] = {}
    for s in specs:
        if s.kind != "all":
            by_definition.setdefault(_definition(s), []).append(s)
    for same in by_definition.values():
        same.sort(key=lambda s: selected[s.name].num_rows)
        for small, big in zip(same, same[1:]):
            if not ids(small.name) <= ids(big.name):
                raise AssertionError(f"subsets {small.name!r} and {big.name!r} do not nest")
    by_kind: dict[str, list[str]] = {}
    for s in specs:
        by_kind.setdefault(s.kind, []).append(s.name)
    apart = [(a, b) for kind, other in (("correct", "incorrect"), ("easy", "hard"))
             for a in by_kind.get(kind, []) for b in by_kind.get(other, [])]
    apart += [(s.name, other) for s in specs for other in s.exclusive_of or []]
    for a, b in apart:
        if ids(a) & ids(b):
            raise AssertionError(f"subsets {a!r} and {b!r} overlap")
