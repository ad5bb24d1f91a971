"""Joins at corpus scale: fill trace fields from source datasets with a hash-partitioned join in Ray tasks.

Nothing holds a whole table, on the driver or in a task. Three passes, each one Ray task per small work
item (like ingest, task_map.py), each item finished by a sidecar so a killed run redoes only what was in
flight:

1. scatter: every source chunk is read, keyed and written as `_join/src/p=<k>/…` by hash of its key
   (ingest wrote the traces' keys the same way, `_join/keys/p=<k>/…`, beside the pending traces);
2. match: partition k's source rows and trace keys meet; every trace key gets one status (matched,
   no_match, duplicate, unmatched when the join is optional) and, when matched, the taken values, written
   per trace part as `_join/take/<part>/p=<k>.parquet`;
3. finalize: each pending part gets its taken values, is validated again (the "-" placeholder is now a
   reject) and becomes `traces/<part>.parquet`; unmatched and ambiguous keys become rejects naming the key.
   The pending copy is then deleted, so the corpus is on disk twice only while its part is in flight.

Memory per task: one source partition, or one trace chunk with its taken values. Ray Data's own
`Dataset.join` would shuffle whole trace rows (responses are most of the bytes) through the object
store and has no notion of "exactly one match, else a reject with the key"; keying locators instead of
rows and writing per-part results keeps the bytes moved to the keys and the taken values.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections import Counter, defaultdict
from typing import Any

import pyarrow as pa

from valley import schemas
from valley.data.config import DataConfig, JoinSpec
from valley.data.join_sources import SOURCE_PRESETS, TAKE_FIELDS, as_value, key_text, question_hash
from valley.data.readers import Chunk, count_rows, expand_inputs, iter_chunk, plan_chunks
from valley.data.task_map import map_items
from valley.data.validate import Reject, derived_question_id, reject_row, validate_trace
from valley.errors import ConfigError, InputError
from valley.storage import Storage

JOIN_DIR = "_join"
PENDING_DIR = "pending"
KEY_SEP = "\x1f"
ROUTE_PART = "dataset"  # the key part that routes a trace to a join instead of being compared
STATUSES = ("matched", "no_match", "duplicate", "unmatched")

PENDING = pa.schema([*schemas.TRACES, pa.field("dataset", pa.string())])
KEYS = pa.schema([pa.field("join", pa.string()), pa.field("key", pa.string()), pa.field("pos", pa.int64())])
SOURCE = pa.schema([pa.field("join", pa.string()), pa.field("key", pa.string()), pa.field("ref", pa.string()),
                    *(pa.field(f, pa.string()) for f in TAKE_FIELDS)])
TAKEN = pa.schema([pa.field("pos", pa.int64()), pa.field("join", pa.string()), pa.field("key", pa.string()),
                   pa.field("status", pa.string()), pa.field("detail", pa.string()),
                   *(pa.field(f, pa.string()) for f in TAKE_FIELDS)])


# ---- declarations ------------------------------------------------------------------------------


def resolve_take(spec: JoinSpec) -> dict[str, str]:
    """{trace field: source column}: the join's own `take` when given, else the preset's."""
    take = dict(spec.take or SOURCE_PRESETS[spec.preset][1])
    unknown = sorted(set(take) - set(TAKE_FIELDS))
    if unknown:
        raise ConfigError(f"join {spec.name!r}: cannot take {unknown}; takeable fields: {list(TAKE_FIELDS)}")
    if not take:
        raise ConfigError(f"join {spec.name!r}: nothing to take (set `take` or a `preset`)")
    return take


def compared_parts(spec: JoinSpec) -> list[str]:
    return [p for p in spec.on if p != ROUTE_PART]


def partition_of(join: str, key: str, partitions: int) -> int:
    """Stable across processes (Python's hash() is salted per process)."""
    return zlib.crc32(f"{join}{KEY_SEP}{key}".encode()) % partitions


def trace_key(spec: JoinSpec, trace: dict[str, Any], raw: dict[str, Any]) -> str | Reject | None:
    """This trace's key for `spec`; None when the join does not serve it; a Reject when a part is missing."""
    if ROUTE_PART in spec.on and key_text(raw.get(ROUTE_PART)) not in spec.datasets:
        return None
    parts = []
    for part in compared_parts(spec):
        if part == "question_hash":
            value = question_hash(trace["question"])
        else:
            value = key_text(trace.get(part)) if trace.get(part) is not None else key_text(raw.get(part))
        if value is None:
            return Reject("join", "join_key_missing", f"join {spec.name!r}: no {part!r}")
        parts.append(value)
    return KEY_SEP.join(parts)


def route(joins: list[JoinSpec], trace: dict[str, Any], raw: dict[str, Any]) -> tuple[str, str] | Reject | None:
    """(join name, key) of the first join that serves this trace, or None when none does."""
    for spec in joins:
        key = trace_key(spec, trace, raw)
        if key is not None:
            return key if isinstance(key, Reject) else (spec.name, key)
    return None


def show_key(key: str) -> str:
    return "(" + ", ".join(key.split(KEY_SEP)) + ")"


# ---- pass 1: scatter the sources --------------------------------------------------------------


def plan_sources(cfg: DataConfig) -> list[dict[str, Any]]:
    """One work item per source chunk, carrying the row offset of its file within its split."""
    items = []
    for spec in cfg.joins:
        resolve_take(spec)
        for split, patterns in spec.splits.items():
            offset = 0
            for path in expand_inputs(patterns):
                for chunk in plan_chunks([path], cfg.chunk_rows):
                    items.append({"join": spec.name, "split": split, "offset": offset,
                                  "chunk": dataclasses.asdict(chunk)})
                offset += count_rows(path)
    return items


def source_rows(spec: JoinSpec, split: str, chunk: Chunk, offset: int) -> tuple[list[dict[str, Any]], Counter]:
    """Keyed source rows of one chunk (with the taken values), and counts of rows that could not be keyed."""
    derive, _ = SOURCE_PRESETS[spec.preset]
    take = resolve_take(spec)
    stats: Counter = Counter()
    rows = []
    name = os.path.basename(chunk.path)
    for row_no, raw in iter_chunk(chunk):
        if not isinstance(raw, dict):
            stats["source_unreadable"] += 1
            continue
        stats["source_rows"] += 1
        row = {**raw, **derive(raw)}
        parts = []
        for part in compared_parts(spec):
            if part == "split":
                value = split
            elif part == "index":
                value = str(offset + row_no)
            elif part == "question_hash":
                text = row.get(take.get("question") or SOURCE_PRESETS[spec.preset][1].get("question", "question"))
                value = question_hash(text) if isinstance(text, str) else None
            else:
                value = key_text(row.get(spec.source_keys.get(part, part)))
            if value is None:
                break
            parts.append(value)
        else:
            values = {f: as_value(row.get(column)) for f, column in take.items()}
            rows.append({"join": spec.name, "key": KEY_SEP.join(parts), "ref": f"{name}:{row_no}", **values})
            continue
        stats["source_key_missing"] += 1
    return rows, stats


def write_partitioned(rows: list[dict[str, Any]], schema: pa.Schema, partitions: int, storage: Storage,
                      *where: str, name: str) -> None:
    """Rows to `<where>/p=<k>/<name>.parquet` by the hash of (join, key); empty partitions get no file."""
    by_part: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_part[partition_of(row["join"], row["key"], partitions)].append(row)
    for k, part_rows in sorted(by_part.items()):
        storage.write_parquet(pa.Table.from_pylist(part_rows, schema=schema), *where, f"p={k:05d}", f"{name}.parquet")


def scatter_item(item: dict[str, Any], cfg: DataConfig, storage: Storage, out_dir: str) -> dict[str, Any]:
    """Pass 1 for one source chunk (a `plan_sources` item), unless its sidecar says it is finished."""
    spec = next(s for s in cfg.joins if s.name == item["join"])
    chunk = Chunk(**item["chunk"])
    name = f"{item['join']}-{chunk.key}"
    sidecar = (out_dir, JOIN_DIR, "_src", f"{name}.json")
    if storage.exists(*sidecar):
        return storage.read_json(*sidecar)
    rows, counts = source_rows(spec, item["split"], chunk, item["offset"])
    write_partitioned(rows, SOURCE, cfg.join_partitions, storage, out_dir, JOIN_DIR, "src", name=name)
    one = {"join": item["join"], **counts}
    storage.write_json(one, *sidecar)
    return one


# ---- pass 2: match per partition ---------------------------------------------------------------


def _read_dir(storage: Storage, *where: str) -> pa.Table | None:
    return storage.read_parquet(*where) if storage.list(*where, suffix=".parquet") else None


def match_partition(sources: pa.Table | None, keys: list[dict[str, Any]],
                    required: dict[str, bool]) -> list[dict[str, Any]]:
    """One result row per trace key (pure): its status and, when matched, the taken values."""
    where: dict[tuple[str, str], list[int]] = defaultdict(list)
    if sources is not None:
        for i, (join, key) in enumerate(zip(sources.column("join").to_pylist(), sources.column("key").to_pylist())):
            where[(join, key)].append(i)
    refs = sources.column("ref").to_pylist() if sources is not None else []
    values = {f: sources.column(f).to_pylist() for f in TAKE_FIELDS} if sources is not None else {}
    out = []
    for k in keys:
        hits = where.get((k["join"], k["key"]), [])
        row = {"pos": k["pos"], "join": k["join"], "key": k["key"], "part": k["part"], "detail": None}
        if len(hits) == 1:
            row.update({f: values[f][hits[0]] for f in TAKE_FIELDS}, status="matched", detail=refs[hits[0]])
        elif hits:
            named = sorted(refs[i] for i in hits)
            row.update(status="duplicate", detail=f"{len(hits)} source rows: " + ", ".join(named[:5]))
        else:
            row.update(status="no_match" if required[k["join"]] else "unmatched")
        out.append(row)
    return out


def match_item(k: int, cfg: DataConfig, storage: Storage, out_dir: str) -> dict[str, Any]:
    """Pass 2 for partition k, unless its sidecar says it is finished."""
    required = {s.name: s.required for s in cfg.joins}
    pdir = f"p={int(k):05d}"
    sidecar = (out_dir, JOIN_DIR, "_match", f"{pdir}.json")
    if storage.exists(*sidecar):
        return storage.read_json(*sidecar)
    counts: dict[str, Counter] = defaultdict(Counter)
    sources = _read_dir(storage, out_dir, JOIN_DIR, "src", pdir)
    for part in storage.list(out_dir, JOIN_DIR, "keys", pdir, suffix=".parquet"):
        # one trace part at a time: the taken values of a partition never sit in memory together
        keys = storage.read_parquet(out_dir, JOIN_DIR, "keys", pdir, part).to_pylist()
        stem = part.removesuffix(".parquet")
        results = match_partition(sources, [dict(r, part=stem) for r in keys], required)
        for r in results:
            counts[r["join"]][r["status"]] += 1
        storage.write_parquet(pa.Table.from_pylist(results, schema=TAKEN), out_dir, JOIN_DIR, "take", stem,
                              f"{pdir}.parquet")
    one = {"partition": int(k), "joins": {j: dict(c) for j, c in counts.items()}}
    storage.write_json(one, *sidecar)
    return one


# ---- pass 3: finalize per trace part ----------------------------------------------------------


def finalize_rows(pending: list[dict[str, Any]], taken: dict[int, dict[str, Any]],
                  cfg: DataConfig) -> tuple[list[dict], list[dict], Counter]:
    """Apply the taken values to one part's pending traces and validate them again (pure)."""
    traces, rejects, reasons = [], [], Counter()
    for pos, row in enumerate(pending):
        t = taken.get(pos)
        where = {"source_file": row["source_file"], "source_row": row["source_row"]}
        if t is not None and t["status"] in ("no_match", "duplicate"):
            detail = f"join {t['join']!r} key {show_key(t['key'])}" + (f": {t['detail']}" if t["detail"] else "")
            raw = {"id": row["id"], "question_id": row["question_id"], "join": t["join"], "key": show_key(t["key"])}
            rejects.append(reject_row(Reject("join", f"join_{t['status']}", detail), raw, **where))
            reasons[f"join_{t['status']}"] += 1
            continue
        mapped = {k: v for k, v in row.items() if k not in ("think", "difficulty_bucket")}
        mapped["_dataset"] = row.get("dataset")
        if t is not None and t["status"] == "matched":
            if row["question_id"] == derived_question_id(row["question"]):
                mapped["question_id"] = None  # derived from the placeholder: derive again from the real text
            mapped.update({f: t[f] for f in TAKE_FIELDS if t.get(f) is not None})
        result = validate_trace(mapped, max_chars=cfg.max_chars, think_policy=cfg.think_policy, **where)
        if isinstance(result, Reject):
            rejects.append(reject_row(result, {"id": row["id"], "question": mapped["question"][:200]}, **where))
            reasons[result.reason] += 1
        else:
            traces.append(result)
    return traces, rejects, reasons


def finalize_item(stem: str, cfg: DataConfig, storage: Storage, out_dir: str) -> dict[str, Any]:
    """Pass 3 for trace part `stem`, unless its sidecar says it is finished."""
    sidecar = (out_dir, JOIN_DIR, "_final", f"{stem}.json")
    if storage.exists(*sidecar):
        return storage.read_json(*sidecar)
    pending = storage.read_parquet(out_dir, PENDING_DIR, f"{stem}.parquet").to_pylist()
    table = _read_dir(storage, out_dir, JOIN_DIR, "take", stem)
    taken = {r["pos"]: r for r in table.to_pylist()} if table is not None else {}
    traces, rejects, reasons = finalize_rows(pending, taken, cfg)
    storage.write_parquet(pa.Table.from_pylist(traces, schema=schemas.TRACES), out_dir, "traces", f"{stem}.parquet")
    storage.write_parquet(pa.Table.from_pylist(rejects, schema=schemas.REJECTS), out_dir, "rejects",
                          f"{stem}-join.parquet")
    one = {"part": stem, "accepted": len(traces), "rejected_by_reason": dict(reasons),
           "think": dict(Counter(t["think"] for t in traces))}
    storage.write_json(one, *sidecar)
    # finished: the part's pending copy and taken values are not read again, even on a re-run
    storage.remove(out_dir, PENDING_DIR, f"{stem}.parquet")
    storage.remove(out_dir, JOIN_DIR, "take", stem)
    return one


# ---- orchestration -----------------------------------------------------------------------------


def run_joins(cfg: DataConfig, storage: Storage, out_dir: str, parts: list[str]) -> dict[str, Any]:
    """Scatter sources, match partitions, finalize the pending parts; returns counts for the manifest."""
    items = plan_sources(cfg)
    scattered = map_items(scatter_item, items, cfg, storage, out_dir)
    matched = map_items(match_item, list(range(cfg.join_partitions)), cfg, storage, out_dir)
    finals = map_items(finalize_item, parts, cfg, storage, out_dir)
    per_join: dict[str, Counter] = {s.name: Counter({status: 0 for status in STATUSES}) for s in cfg.joins}
    for s in scattered:
        per_join[s["join"]].update({k: v for k, v in s.items() if k != "join"})
    for m in matched:
        for join, counts in m["joins"].items():
            per_join[join].update(counts)
    reasons: Counter = Counter()
    think: Counter = Counter()
    for f in finals:
        reasons.update(f["rejected_by_reason"])
        think.update(f["think"])
    return {"joins": {j: dict(c) for j, c in per_join.items()}, "rejected_by_reason": dict(reasons),
            "think": dict(think), "accepted": sum(f["accepted"] for f in finals)}


def check_inputs(cfg: DataConfig) -> None:
    """Fail before any work when a join's files are missing or its declaration cannot work."""
    for spec in cfg.joins:
        resolve_take(spec)
        for split, patterns in spec.splits.items():
            try:
                expand_inputs(patterns)
            except InputError as exc:
                raise ConfigError(f"join {spec.name!r} split {split!r}: {exc}") from exc
