"""Deterministic subset selection from one seed (pure: arrow tables in, id lists out).

Every row gets a key from sha256(seed, id); subsets take rows in key order. That one ordering makes
random subsets nest (1K ⊂ 10K ⊂ 30K ⊂ 100K) and makes the result independent of input file order, so a
re-run, or a run on another cluster, selects byte-for-byte the same rows.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.compute as pc

from valley.data.config import TACO_EASY, TACO_HARD, SubsetSpec
from valley.errors import ConfigError


def order_keys(ids: list[str], seed: int) -> list[int]:
    prefix = f"{seed}:".encode()
    return [int.from_bytes(hashlib.sha256(prefix + i.encode("utf-8")).digest()[:8], "big") for i in ids]


def seeded_order(meta: pa.Table, seed: int) -> pa.Table:
    """`meta` sorted by the seeded key (ties, impossible in practice, broken by id)."""
    keys = pa.array(order_keys(meta.column("id").to_pylist(), seed), pa.uint64())
    return meta.append_column("_key", keys).sort_by([("_key", "ascending"), ("id", "ascending")])


def split_duplicate_ids(meta: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Keep the first occurrence of each id in (file, row) order; return (kept, duplicates)."""
    meta = meta.sort_by([("source_file", "ascending"), ("source_row", "ascending"), ("id", "ascending")])
    seen: set[str] = set()
    keep = []
    for i in meta.column("id").to_pylist():
        keep.append(i not in seen)
        seen.add(i)
    mask = pa.array(keep, pa.bool_())
    return meta.filter(mask), meta.filter(pc.invert(mask))


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


def select_subsets(ordered: pa.Table, specs: list[SubsetSpec]) -> dict[str, pa.Table]:
    """Rows of each subset, in seeded order. Raises ConfigError when a size cannot be met.

    Paired kinds (correct/incorrect, easy/hard) with no size take the size of the smaller side, so the
    two sides have equal size as the paper's RQ2/RQ3 comparisons need.
    """
    pool_size = {kind: _eligible(ordered, SubsetSpec(name="_", kind=kind)).num_rows for kind in PAIRS}
    out: dict[str, pa.Table] = {}
    for spec in specs:
        if spec.kind == "all" and spec.size is not None:
            raise ConfigError(f"subset {spec.name!r}: kind 'all' takes no size (use kind 'random')")
        pool = _eligible(ordered, spec)
        size = spec.size
        if size is None and spec.kind in PAIRS and spec.sources is None:
            size = min(pool_size[spec.kind], pool_size[PAIRS[spec.kind]])
        if size is None:
            size = pool.num_rows
        if size == 0:
            hint = " (no trace has `correct` set: run `valley label` first)" if spec.kind in ("correct", "incorrect") else ""
            raise ConfigError(f"subset {spec.name!r} ({spec.kind}) would be empty{hint}")
        if size > pool.num_rows:
            raise ConfigError(
                f"subset {spec.name!r} ({spec.kind}) asks for {size} rows but only {pool.num_rows} are eligible"
            )
        out[spec.name] = pool.slice(0, size)
    verify_subsets(out, specs)
    return out


def verify_subsets(selected: dict[str, pa.Table], specs: list[SubsetSpec]) -> None:
    """Random subsets over the same pool must nest; paired kinds must not overlap."""
    def ids(name: str) -> set[str]:
        return set(selected[name].column("id").to_pylist())

    randoms = sorted(
        (s for s in specs if s.kind == "random"), key=lambda s: selected[s.name].num_rows
    )
    for small, big in zip(randoms, randoms[1:]):
        if small.sources == big.sources and not ids(small.name) <= ids(big.name):
            raise AssertionError(f"random subsets {small.name!r} and {big.name!r} do not nest")
    by_kind: dict[str, list[str]] = {}
    for s in specs:
        by_kind.setdefault(s.kind, []).append(s.name)
    for kind, other in (("correct", "incorrect"), ("easy", "hard")):
        for a in by_kind.get(kind, []):
            for b in by_kind.get(other, []):
                if ids(a) & ids(b):
                    raise AssertionError(f"subsets {a!r} and {b!r} overlap")
