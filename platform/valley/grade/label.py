"""`run_label`: grade each TACO trace's final code against the trace's own tests; set `correct`.

A trace without tests keeps `correct` null (counted); malformed tests are an input error naming the
row. The per-trace verdicts are kept beside the labelled traces for inspection.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from valley import schemas
from valley.errors import InputError
from valley.grade.config import LabelConfig
from valley.grade.dispatch import DispatchSettings, Item, plan_batches, run_batches
from valley.grade.inputs import read_table, require_columns
from valley.grade.stage import check_sandbox
from valley.problems import TestSpec, spec_from_taco
from valley.stage import StageResult, run_stage
from valley.storage import Storage, conform

log = logging.getLogger(__name__)

ROWS_PER_PART = 50_000


class LabelResult(StageResult):
    traces_dir: str
    verdicts_dir: str
    traces: int
    correct: int
    incorrect: int
    no_tests: int  # traces without tests: `correct` stays null
    counts: dict[str, int]

    path_fields: ClassVar[tuple[str, ...]] = ("traces_dir", "verdicts_dir")


def _has_tests(value: str | None) -> bool:
    return bool(value and value.strip() and value.strip() not in ("{}", "null"))


def run_label(cfg: LabelConfig, storage: Storage) -> LabelResult:
    """Label every trace that has tests; write the traces table with `correct` set."""
    return run_stage(storage, "label", cfg.name, cfg.config_hash(), LabelResult,
                     lambda sdir: _label(cfg, storage, sdir))


def _label(cfg: LabelConfig, storage: Storage, sdir: str) -> LabelResult:
    """The stage body (valley.stage.run_stage does the skip, clean-up and marker around it)."""
    tdir, vdir = f"{sdir}/traces", f"{sdir}/verdicts"
    check_sandbox(cfg.sandbox, cfg.bwrap_path, cfg.sandbox_packages)

    traces = read_table(storage, cfg.traces)
    require_columns(traces, ["id", "question_id", "response"], file=cfg.traces)
    if "tests" not in traces.column_names:
        traces = traces.append_column("tests", pa.nulls(traces.num_rows, pa.string()))
    ids = traces.column("id").to_pylist()
    dup = len(ids) - len(set(ids))
    if dup:
        first = next(i for i, x in enumerate(ids) if ids.index(x) != i)
        raise InputError(f"duplicate trace id {ids[first]!r}", file=cfg.traces, row=first, field="id")
    specs: dict[str, TestSpec] = {}
    items = []
    cols = traces.select(["id", "question_id", "response", "tests"]).to_pylist()
    for i, r in enumerate(cols):
        if not _has_tests(r["tests"]):
            continue
        spec = spec_from_taco(r["tests"], file=cfg.traces, row=i)
        if len(spec) == 0:
            continue
        specs[r["id"]] = spec
        items.append(Item(key=(("id", r["id"]), ("question_id", r["question_id"])), spec_id=r["id"],
                          response=r["response"]))
    items.sort(key=lambda it: it.spec_id)
    run_batches(storage, vdir, plan_batches(items, cfg.batch_size), specs, DispatchSettings.from_config(cfg),
                schema=schemas.LABEL_VERDICTS)
    verdict_of: dict[str, str] = {}
    if items:
        vt = storage.read_parquet(vdir, columns=["id", "verdict"])
        verdict_of = dict(zip(vt.column("id").to_pylist(), vt.column("verdict").to_pylist()))
    if len(verdict_of) != len(items):
        raise RuntimeError(f"label verdicts hold {len(verdict_of)} traces for {len(items)} in {vdir}")
    # a grader_error is no verdict on the trace: `correct` stays null, like a trace without tests
    correct = [None if verdict_of.get(i, "grader_error") == "grader_error" else verdict_of[i] == "pass"
               for i in ids]
    if "correct" in traces.column_names:
        traces = traces.drop_columns(["correct"])
    labelled = conform(traces.append_column("correct", pa.array(correct, pa.bool_())), schemas.TRACES)
    for old in storage.list(tdir, suffix=".parquet"):
        storage.remove(tdir, old)
    for n, start in enumerate(range(0, max(labelled.num_rows, 1), ROWS_PER_PART)):
        storage.write_parquet(labelled.slice(start, ROWS_PER_PART), tdir, f"part-{n:05d}.parquet")
    n_true = int(pc.sum(pc.cast(labelled.column("correct"), pa.int64())).as_py() or 0)
    counts = Counter(verdict_of.values())
    return LabelResult(stage_dir=sdir, traces_dir=tdir, verdicts_dir=vdir, traces=labelled.num_rows,
                         correct=n_true, incorrect=len(items) - n_true - counts.get("grader_error", 0),
                         no_tests=labelled.num_rows - len(items),
                         counts=dict(counts))
