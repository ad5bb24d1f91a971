"""`run_import`: generations from other harnesses -> the generate stage's samples table (+ problems).

Outputs under `import/<name>-<hash12>/`: `samples/part-*.parquet` (schemas.SAMPLES, `official_pass` /
`official_detail` set where the file carries the harness's verdict), `problems.parquet` (the LCB
problems of the imported question ids, platform and dates filled from the imported records) when
`problems` is given, `runs.json` and `_SUCCESS` last. Each input file is one run whose `run_id` is its
model label, so grade and report consume the import exactly like a generate stage's output.
Importing is cheap and deterministic, so an interrupted import is simply redone (stale parts removed).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from typing import Any, ClassVar

import pyarrow as pa

from valley import schemas
from valley.errors import ConfigError, InputError
from valley.imports.config import ImportConfig
from valley.imports.formats import ParsedFile, parse_file
from valley.problems import load_lcb_problems
from valley.stage import StageResult, run_stage
from valley.storage import Storage

STAGE = "import"
SAMPLES_DIR = "samples"


class ImportResult(StageResult):
    samples: str  # path under the storage root (GradeConfig.samples / RunSpec.samples)
    problems: str | None  # path under the storage root, when `problems` was given
    runs: list[dict[str, Any]]
    n_samples: int

    path_fields: ClassVar[tuple[str, ...]] = ("samples", "problems")


def _fingerprint(paths: list[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        if not os.path.exists(p):
            raise InputError("input not found", file=p)
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def run_hash(cfg: ImportConfig) -> str:
    """Config plus size/mtime of every input: an edited file is a new import."""
    files = [i.path for i in cfg.inputs] + list(cfg.problems)
    return hashlib.sha256((cfg.config_hash() + _fingerprint(files)).encode()).hexdigest()


def sample_order_key(seed: int, question_id: str) -> bytes:
    return hashlib.sha256(f"{seed}:{question_id}".encode()).digest()


def select_problems(parsed: ParsedFile, cfg: ImportConfig) -> ParsedFile:
    """Keep `question_ids`, then the first `problem_sample` problems in seeded order (per file)."""
    qids = list(dict.fromkeys(s.question_id for s in parsed.samples))
    if cfg.question_ids is not None:
        wanted = set(cfg.question_ids)
        qids = [q for q in qids if q in wanted]
    if cfg.problem_sample is not None:
        qids = sorted(qids, key=lambda q: sample_order_key(cfg.seed, q))[: cfg.problem_sample]
    keep = set(qids)
    parsed.samples = [s for s in parsed.samples if s.question_id in keep]
    parsed.problems = {q: v for q, v in parsed.problems.items() if q in keep}
    return parsed


def samples_table(parsed: ParsedFile, run_id: str) -> pa.Table:
    rows = parsed.samples
    return pa.table({
        "run_id": [run_id] * len(rows),
        "question_id": [s.question_id for s in rows],
        "sample_idx": [s.sample_idx for s in rows],
        "prompt": [None] * len(rows),
        "response": [s.response for s in rows],
        "n_tokens": [s.n_tokens for s in rows],
        "finish_reason": [s.finish_reason for s in rows],
        "model": [run_id] * len(rows),
        "backend": [f"import:{parsed.format}"] * len(rows),
        "official_pass": [s.official_pass for s in rows],
        "official_detail": [s.official_detail for s in rows],
    })


def run_summary(parsed: ParsedFile, run_id: str, known: set[str] | None) -> dict[str, Any]:
    """Per-run counts, including the official pass@1 over the imported problems (mean of per-problem
    pass fractions, lcb_runner's definition) when the file carries verdicts."""
    per_problem: dict[str, list[bool]] = defaultdict(list)
    for s in parsed.samples:
        if s.official_pass is not None:
            per_problem[s.question_id].append(s.official_pass)
    qids = {s.question_id for s in parsed.samples}
    official = (sum(sum(v) / len(v) for v in per_problem.values()) / len(per_problem)) if per_problem else None
    return {
        "run_id": run_id, "model": run_id, "source": parsed.path, "format": parsed.format,
        "n_problems": len(qids), "n_samples": len(parsed.samples),
        "n_official": sum(len(v) for v in per_problem.values()),
        "official_pass@1": official,
        "n_without_finish_reason": sum(s.finish_reason is None for s in parsed.samples),
        "extraction_differs": parsed.extraction_differs,
        "fenced_code": parsed.fenced_code,
        "problems_without_tests": None if known is None else len(qids - known),
    }


def imported_problems_table(paths: list[str], attrs: dict[str, dict[str, Any]]) -> pa.Table:
    """The LCB problems that were imported, with platform/contest fields the LCB file lacks taken from
    the imported records (the LCB row's own values win)."""
    table = load_lcb_problems(paths)
    rows = []
    for row in table.to_pylist():
        extra = attrs.get(row["question_id"])
        if extra is None:
            continue
        for key in ("platform", "contest_id", "contest_date", "difficulty", "question_title"):
            if extra.get(key) is not None and row.get(key) in (None, "", "unknown"):
                row[key] = extra[key]
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=schemas.PROBLEMS)


def run_import(cfg: ImportConfig, storage: Storage) -> ImportResult:
    return run_stage(storage, STAGE, cfg.name, run_hash(cfg), ImportResult, lambda out: _import(cfg, storage, out))


def _import(cfg: ImportConfig, storage: Storage, out: str) -> ImportResult:
    """The stage body (valley.stage.run_stage does the skip, clean-up and marker around it)."""
    storage.remove(out, SAMPLES_DIR)  # parts of an interrupted import are redone, never mixed
    known: set[str] | None = None
    if cfg.problems:
        for p in cfg.problems:
            if not os.path.exists(p):
                raise InputError("problems file not found", file=p)
    attrs: dict[str, dict[str, Any]] = {}
    parsed_runs: list[tuple[str, ParsedFile]] = []
    for inp in cfg.inputs:
        parsed = select_problems(parse_file(inp.path, inp.format, response_from=cfg.response_from,
                                            temperature=inp.temperature), cfg)
        if not parsed.samples:
            raise ConfigError(f"{inp.path}: no samples left to import (question_ids/problem_sample filters)")
        parsed_runs.append((inp.label(), parsed))
        for q in {s.question_id for s in parsed.samples}:
            entry = attrs.setdefault(q, {})
            for k, v in parsed.problems.get(q, {}).items():
                entry.setdefault(k, v)
    problems_path = None
    if cfg.problems:
        table = imported_problems_table(cfg.problems, attrs)
        storage.write_parquet(table, out, "problems.parquet", schema=schemas.PROBLEMS)
        problems_path = f"{out}/problems.parquet"
        known = set(table.column("question_id").to_pylist())
    runs, seq, total = [], 0, 0
    for run_id, parsed in parsed_runs:
        table = samples_table(parsed, run_id)
        for start in range(0, table.num_rows, cfg.part_size):
            storage.write_parquet(table.slice(start, cfg.part_size), out, SAMPLES_DIR, f"part-{seq:05d}.parquet",
                                  schema=schemas.SAMPLES)
            seq += 1
        total += table.num_rows
        runs.append(run_summary(parsed, run_id, known))
    storage.write_text(json.dumps(runs, indent=2) + "\n", out, "runs.json")
    return ImportResult(stage_dir=out, samples=f"{out}/{SAMPLES_DIR}", problems=problems_path, runs=runs,
                        n_samples=total)
