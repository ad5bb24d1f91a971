"""Ingest: read trace chunks in Ray tasks, map and validate rows, write traces and rejects parts.

One chunk becomes one `traces/<key>.parquet` and one `rejects/<key>.parquet`, then a stats sidecar
`_ingest/<key>.json` that marks the chunk finished. A re-run skips chunks whose sidecar exists, so a
kill loses at most the chunks in flight, and never leaves a half-written part visible.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow as pa

from valley import schemas
from valley.data.columns import MissingField, map_row, resolve
from valley.data.config import DataConfig
from valley.data.joins import JOIN_DIR, KEYS, PENDING, PENDING_DIR, route, write_partitioned
from valley.data.readers import Chunk, iter_chunk
from valley.data.task_map import map_items
from valley.data.validate import Reject, reject_row, validate_trace
from valley.errors import InputError
from valley.storage import Storage

INGEST_STATS_DIR = "_ingest"


def process_chunk(chunk: Chunk, cfg: DataConfig, keys: list[dict] | None = None) -> tuple[list[dict], list[dict]]:
    """Pure part of ingest: rows of one chunk -> (trace rows, reject rows).

    With joins declared, a trace may keep a "-" placeholder question (the join fills it in), carries its
    raw `dataset`, and the (join, key, position) of each routed trace is appended to `keys`.
    """
    resolved = resolve(cfg.columns)
    constants = cfg.columns.constants
    joining = bool(cfg.joins)
    traces, rejects = [], []
    for row_no, raw in iter_chunk(chunk):
        if isinstance(raw, InputError):
            rejects.append(reject_row(Reject("<row>", "invalid_json", str(raw)), None,
                                      source_file=chunk.path, source_row=row_no))
            continue
        if not isinstance(raw, dict):
            rejects.append(reject_row(Reject("<row>", "not_an_object"), raw, source_file=chunk.path, source_row=row_no))
            continue
        try:
            mapped_rows = map_row(raw, resolved, constants)
        except MissingField as exc:
            rejects.append(reject_row(Reject(exc.field, exc.reason, f"source column {exc.column!r}"), raw,
                                      source_file=chunk.path, source_row=row_no))
            continue
        for mapped in mapped_rows:
            result = validate_trace(mapped, source_file=chunk.path, source_row=row_no, max_chars=cfg.max_chars,
                                    think_policy=cfg.think_policy, allow_placeholder=joining)
            if joining and not isinstance(result, Reject):
                routed = route(cfg.joins, result, raw)
                if isinstance(routed, Reject):
                    result = routed
                elif routed is not None and keys is not None:
                    keys.append({"join": routed[0], "key": routed[1], "pos": len(traces)})
                if not isinstance(result, Reject):
                    result["dataset"] = raw.get("dataset") if isinstance(raw.get("dataset"), str) else None
            if isinstance(result, Reject):
                rejects.append(reject_row(result, raw, source_file=chunk.path, source_row=row_no))
            else:
                traces.append(result)
    return traces, rejects


def chunk_stats(chunk: Chunk, traces: list[dict], rejects: list[dict]) -> dict[str, Any]:
    reasons = Counter(r["reason"].split(":", 1)[0] for r in rejects)
    think = Counter(t["think"] for t in traces)
    return {"chunk": chunk.key, "accepted": len(traces), "rejected": len(rejects),
            "rejected_by_reason": dict(reasons), "think": dict(think)}


def ingest_one(chunk: Chunk, cfg: DataConfig, storage: Storage, out_dir: str) -> dict[str, Any]:
    """Ingest one chunk unless its sidecar says it is finished."""
    sidecar = (out_dir, INGEST_STATS_DIR, f"{chunk.key}.json")
    if storage.exists(*sidecar):
        return storage.read_json(*sidecar)
    keys: list[dict] = []
    traces, rejects = process_chunk(chunk, cfg, keys)
    part = f"{chunk.key}.parquet"
    if cfg.joins:  # traces wait in pending/ until the join has filled them in
        write_partitioned(keys, KEYS, cfg.join_partitions, storage, out_dir, JOIN_DIR, "keys", name=chunk.key)
        storage.write_parquet(pa.Table.from_pylist(traces, schema=PENDING), out_dir, PENDING_DIR, part)
    else:
        storage.write_parquet(pa.Table.from_pylist(traces, schema=schemas.TRACES), out_dir, "traces", part)
    storage.write_parquet(pa.Table.from_pylist(rejects, schema=schemas.REJECTS), out_dir, "rejects", part)
    stats = chunk_stats(chunk, traces, rejects)
    storage.write_json(stats, *sidecar)
    return stats


def run_ingest(chunks: list[Chunk], cfg: DataConfig, storage: Storage, out_dir: str) -> list[dict[str, Any]]:
    """Ingest all chunks in parallel, one Ray task per chunk (task_map.py)."""
    return map_items(ingest_one, chunks, cfg, storage, out_dir)
