"""`run_data`: ingest → validate → select subsets → template/tokenize once → pack each subset, with a manifest.

Output layout under `data/<name>-<hash>/`:
  traces/*.parquet            validated traces (schemas.TRACES)
  pending/, _join/            with `joins`: traces waiting for, and the partitions of, the join (joins.py)
  rejects/*.parquet           refused rows with file, row, field and reason (schemas.REJECTS)
  subsets/<subset>.parquet    ids of each subset in seeded order
  documents/*.parquet         every trace some subset takes, templated and tokenized once (schemas.DOCUMENTS)
  tokenized/<subset>/*.parquet packed training rows (schemas.TOKENIZED), packed from documents/
  dropped/<subset>.parquet    traces removed by the over-length policy (ids, token counts)
  audit/<subset>.json         the label audit (valley.manifest.SubsetAudit); a subset whose documents do not
                              all train on their end-of-turn token is refused: the run fails, no _SUCCESS
  tokenizer/                  the student tokenizer used (so training and export need nothing else)
  manifest.json, _SUCCESS
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from valley import schemas
from valley.data.audit import subset_audit
from valley.data.chat import encoder_in_background
from valley.data.conditions import (
    LENGTH_COLUMNS,
    TOKEN_COLUMNS,
    derived_needed,
    length_columns,
)
from valley.data.config import ColumnMapping, DataConfig, SubsetSpec
from valley.data.dictionary_columns import plain, repeated
from valley.data.document_plan import MEMBER_COLUMNS, plan_documents
from valley.data.eot import end_of_turn
from valley.data.ingest import run_ingest
from valley.data.joins import check_inputs, run_joins
from valley.data.readers import expand_inputs, file_fingerprint, plan_chunks
from valley.data.subsets import (
    dedup_questions,
    seeded_order,
    select_with_pools,
    split_duplicate_ids,
    with_answer_counts,
)
from valley.data.tokenize import DOCUMENTS_DIR, run_documents, warm_workers
from valley.errors import ConfigError, InputError
from valley.manifest import AUDIT_DIR, Manifest, SubsetAudit, pad_of
from valley.stage import StageResult, run_stage
from valley.storage import Storage

__all__ = ["ColumnMapping", "DataConfig", "DataResult", "SubsetSpec", "run_data"]

log = logging.getLogger(__name__)

META_COLUMNS = ["id", "question_id", "source", "difficulty", "difficulty_bucket", "teacher", "correct", "think",
                "source_file", "source_row"]
SELECTED_COLUMNS = [*MEMBER_COLUMNS, "question_id"]  # what subsets/ and the document plan read
TEXT_ONCE = pa.dictionary(pa.int32(), pa.string())  # part and source_file in the selection's tables


class DataResult(StageResult):
    config_hash: str
    accepted: int
    rejected: int
    rejected_by_reason: dict[str, int]
    questions_deduplicated: int = 0  # traces kept out of every subset by `dedup_questions`
    subsets: dict[str, dict[str, Any]]  # each with `path`: its tokenized rows, under the storage root
    documents: dict[str, Any] = {}  # traces tokenized (each once) and the subset memberships they served
    warnings: list[str] = []  # the label audits' (truncation above max_truncated_share)

    # the documents are what every subset was packed from; no later stage reads them
    size_only: ClassVar[tuple[str, ...]] = (DOCUMENTS_DIR,)


def _fingerprint(paths: list[str]) -> str:
    """Size and change marker of every input file and tokenizer file: a changed input is a new run."""
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{file_fingerprint(p)}\n".encode())
    return h.hexdigest()


def join_files(cfg: DataConfig) -> list[str]:
    return [f for spec in cfg.joins for patterns in spec.splits.values() for f in expand_inputs(patterns)]


def run_hash(cfg: DataConfig, files: list[str]) -> str:
    tok_files = sorted(str(p) for p in Path(cfg.tokenizer).glob("*") if p.is_file()) if Path(cfg.tokenizer).is_dir() else []
    inputs = files + join_files(cfg)
    return hashlib.sha256((cfg.config_hash() + _fingerprint(inputs) + _fingerprint(tok_files)).encode()).hexdigest()


def _load_meta(storage: Storage, out: str, derived: set[str] = frozenset(), tok: Any = None) -> pa.Table:
    """Every trace's columns that subsets select on (not its text), with the part it is in (`part` and
    `source_file` dictionary-encoded: one value per chunk, see dictionary_columns.py), and the
    `derived` length columns a subset names: characters of the response and its think block, and their
    tokens under `tok`, the student's tokenizer (read part by part; the text itself is dropped)."""
    needs_text = bool(derived & (LENGTH_COLUMNS | TOKEN_COLUMNS))
    tables = []
    for part in storage.list(out, "traces", suffix=".parquet"):
        t = storage.read_parquet(out, "traces", part, columns=META_COLUMNS + (["response"] if needs_text else []))
        if needs_text:
            lengths = length_columns(t.column("response"), derived, tok)
            t = t.drop_columns(["response"])
            for name, values in lengths.items():
                t = t.append_column(name, values)
        at = t.schema.get_field_index("source_file")
        t = t.set_column(at, "source_file", pc.dictionary_encode(t.column("source_file")).cast(TEXT_ONCE))
        tables.append(t.append_column("part", repeated(part, t.num_rows)))
    if tables:
        return pa.concat_tables(tables)
    fields = [schemas.TRACES.field(c) if c != "source_file" else pa.field(c, TEXT_ONCE) for c in META_COLUMNS]
    fields += [pa.field(name, pa.int64()) for name in sorted(derived & (LENGTH_COLUMNS | TOKEN_COLUMNS))]
    return pa.schema([*fields, pa.field("part", TEXT_ONCE)]).empty_table()


def release_unused_memory() -> None:
    """Hand the memory Arrow freed back to the OS. Its allocator keeps freed pages for reuse, so after the
    selection's transient tables (a million traces' worth) the driver would hold them through the whole
    tokenizing, beside the workers."""
    pa.default_memory_pool().release_unused()


def _save_tokenizer(cfg: DataConfig, storage: Storage, out: str) -> None:
    for p in sorted(Path(cfg.tokenizer).iterdir()):
        if p.is_file() and not p.name.startswith("."):
            storage.write_bytes(p.read_bytes(), out, "tokenizer", p.name)


def _subset_summary(stats: list[dict[str, Any]], dropped: list[dict[str, Any]], rows: int) -> dict[str, Any]:
    tokens = sum(s["tokens"] for s in stats)
    slots = sum(s["slots"] for s in stats)
    return {
        "rows": rows,
        "docs": sum(s["docs"] for s in stats),
        "sequences": sum(s["sequences"] for s in stats),
        "tokens": tokens,
        "loss_tokens": sum(s["loss_tokens"] for s in stats),
        "pack_efficiency": round(tokens / slots, 6) if slots else 0.0,
        "truncated": sum(s["truncated"] for s in stats),
        "dropped": dict(Counter(d["reason"] for d in dropped)),
        "shards": len(stats),
    }


def build_traces(cfg: DataConfig, storage: Storage, out: str,
                 files: list[str]) -> tuple[Counter, Counter, dict[str, Any] | None]:
    """Ingest and validate every input, then (with `joins`) fill traces in from their sources.

    Returns rejects by reason, think-tag structures, and the per-join counts (None without joins).
    """
    check_inputs(cfg)
    chunks = plan_chunks(files, cfg.chunk_rows)
    chunk_stats = run_ingest(chunks, cfg, storage, out)
    reasons: Counter[str] = Counter()
    think: Counter[str] = Counter()
    for s in chunk_stats:
        reasons.update(s["rejected_by_reason"])
        think.update(s["think"])
    if not cfg.joins:
        return reasons, think, None
    joined = run_joins(cfg, storage, out, [c.key for c in chunks])
    reasons.update(joined["rejected_by_reason"])
    return reasons, Counter(joined["think"]), joined["joins"]


def run_data(cfg: DataConfig, storage: Storage) -> DataResult:
    """Run the data stage; idempotent (a finished run with the same config and inputs is skipped)."""
    files = expand_inputs(cfg.inputs)
    h = run_hash(cfg, files)
    return run_stage(storage, "data", cfg.name, h, DataResult, lambda out: _run(cfg, storage, files, h, out))


def _run(cfg: DataConfig, storage: Storage, files: list[str], h: str, out: str) -> DataResult:
    """The stage body (valley.stage.run_stage does the skip, clean-up and marker around it)."""
    building = encoder_in_background(cfg.tokenizer, cfg.system_prompt)  # needed from step 4 on
    warm_workers()
    # 1. ingest + validate (+ join), parallel and resumable per chunk
    reasons, think, joins = build_traces(cfg, storage, out, files)

    # 2. one row per id; duplicates are rejects too
    derived = derived_needed([w for subset in cfg.subsets for w in subset.where_clauses()])
    tok = building.result().tok if derived & TOKEN_COLUMNS else None  # the encoder's: loaded once
    meta, dupes = split_duplicate_ids(_load_meta(storage, out, derived, tok))
    release_unused_memory()
    if dupes.num_rows:
        reasons["duplicate_id"] += dupes.num_rows
        rows = [{"source_file": r["source_file"], "source_row": r["source_row"], "field": "id",
                 "reason": "duplicate_id", "raw": json.dumps({"id": r["id"]})} for r in dupes.to_pylist()]
        storage.write_parquet(pa.Table.from_pylist(rows, schema=schemas.REJECTS), out, "rejects", "duplicate-ids.parquet")
    accepted = meta.num_rows
    if accepted == 0:
        top = ", ".join(f"{k}={v}" for k, v in reasons.most_common(3)) or "no rows in the inputs"
        raise ConfigError(f"no trace was accepted from {len(files)} file(s) ({top}); check `columns` "
                          f"and the rejects under {storage.uri(out, 'rejects')}")

    # 3. subsets (the driver keeps only the columns later steps read: at a million traces the rest weighs
    # more than the workers)
    if "answers_per_question" in derived:
        meta = with_answer_counts(meta)
    ordered = seeded_order(meta, cfg.seed)
    del meta
    if cfg.dedup_questions:
        ordered = dedup_questions(ordered)
    questions_deduplicated = accepted - ordered.num_rows
    selected, pools = select_with_pools(ordered, cfg.subsets)
    del ordered
    selected = {name: table.select(SELECTED_COLUMNS) for name, table in selected.items()}
    release_unused_memory()
    for name, table in selected.items():
        storage.write_parquet(plain(table.select(["id", "question_id", "part"])), out, "subsets", f"{name}.parquet")

    # 4. template and tokenize each trace once, pack each subset from the documents, audit the labels
    _save_tokenizer(cfg, storage, out)
    encoder = building.result()
    eot_id, eot_token = end_of_turn(encoder.tok, cfg.tokenizer)
    pad_id, pad_from = pad_of(encoder.tok)
    plan = plan_documents(selected, cfg.group_docs)
    sizes = {name: table.num_rows for name, table in selected.items()}
    del selected
    release_unused_memory()
    doc_stats, all_stats = run_documents(plan, encoder, cfg, storage, out, eot_id)
    documents = {"path": posixpath.join(out, DOCUMENTS_DIR), "parts": len(doc_stats),
                 "traces": sum(s["docs"] for s in doc_stats), "tokens": sum(s["tokens"] for s in doc_stats),
                 "memberships": plan.memberships}
    subsets: dict[str, dict[str, Any]] = {}
    audits: list[SubsetAudit] = []
    for name, size in sizes.items():
        stats = sorted((s for s in all_stats if s["subset"] == name), key=lambda s: s["group"])
        dropped = [d for s in stats for d in s["dropped"]]
        if dropped:
            storage.write_parquet(pa.Table.from_pylist(dropped), out, "dropped", f"{name}.parquet")
        subsets[name] = {**_subset_summary(stats, dropped, size), "eligible": pools[name]}
        subsets[name]["path"] = posixpath.join(out, "tokenized", name)
        audit = subset_audit(name, [s["audit"] for s in stats], eot_id=eot_id, eot_token=eot_token, pad_id=pad_id,
                             max_seq_len=cfg.max_seq_len, overlength=cfg.overlength)
        audit.write(storage, out)
        subsets[name]["audit"] = audit.headline()
        audits.append(audit)
    warnings = check_audits(audits, cfg.max_truncated_share, storage, out)

    summary = {
        "stage_dir": out,
        "config_hash": h,
        "accepted": accepted,
        "rejected": sum(reasons.values()),
        "rejected_by_reason": dict(reasons),
        "questions_deduplicated": questions_deduplicated,
        "subsets": subsets,
        "documents": documents,
    }
    manifest = dict(summary, **({"joins": joins} if joins is not None else {}), seq_len=cfg.max_seq_len, packing=cfg.packing, tokenizer=cfg.tokenizer, pad_id=pad_id, pad_id_from=pad_from,
                    think_structure=dict(think), inputs=files, config=cfg.model_dump(mode="json"))
    Manifest.from_fields(**manifest).write(storage, out)
    return DataResult(**summary, warnings=warnings)


def check_audits(audits: list[SubsetAudit], max_truncated_share: float, storage: Storage, out: str) -> list[str]:
    """Refuse the run (InputError naming every refused subset) when a subset's documents leave their
    end of turn out of the loss; otherwise log and return the warnings."""
    refused = [(a.subset, r) for a in audits if (r := a.refusal())]
    if refused:
        files = ", ".join(storage.uri(out, AUDIT_DIR, f"{name}.json") for name, _ in refused)
        raise InputError("label audit refused the data run: " + "; ".join(r for _, r in refused),
                         file=files, field="loss_mask")
    warnings = [w for a in audits for w in a.warnings(max_truncated_share)]
    for w in warnings:
        log.warning("label audit: %s", w)
    return warnings
