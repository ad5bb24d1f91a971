"""`run_grade`: every sample of a samples table graded against its problem, verdicts to Parquet."""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import pyarrow as pa

from valley import schemas
from valley.errors import InputError
from valley.grade.config import GradeConfig
from valley.grade.dispatch import Batch, DispatchSettings, Item, plan_batches, run_batches
from valley.grade.inputs import read_problems, read_samples
from valley.grade.sandbox import check_bwrap, find_bwrap
from valley.grade.sandbox_env import ensure_env
from valley.problems import TestSpec, spec_from_problem
from valley.stage import StageResult, run_stage
from valley.storage import Storage

log = logging.getLogger(__name__)
FOLLOW_POLL_S = 5.0  # how often grading that follows a running generation looks for new sample parts

RLIMIT_ONLY_WARNING = ("sandbox=rlimit_only: model code runs WITHOUT namespaces (it can read the host's files "
                       "and reach the network); use only for trusted code or benchmarking")


class GradeResult(StageResult):
    verdicts_dir: str
    tests_dir: str | None = None
    samples: int
    unmatched: int  # samples without a problem or tests (written to unmatched.parquet with a reason)
    counts: dict[str, int]
    batches: int
    skipped_batches: int
    seconds: float = 0.0
    grader_errors: int = 0  # samples the grader could not run even when retried: not model failures
    reruns_alone: int = 0  # samples re-run alone (wall-clock kill under the CPU limit, or grader error)

    path_fields: ClassVar[tuple[str, ...]] = ("verdicts_dir", "tests_dir")


def check_sandbox(sandbox: str, bwrap_path: str | None, packages: Sequence[str] = ()) -> None:
    """Fail early, on the driver, when bwrap cannot start or the sandbox environment cannot be built;
    warn on every run of the weaker mode."""
    if sandbox == "rlimit_only":
        log.warning(RLIMIT_ONLY_WARNING)
    else:
        check_bwrap(bwrap_path or find_bwrap())
    ensure_env(packages)


def run_grade(cfg: GradeConfig, storage: Storage, follow: Callable[[], bool] | None = None) -> GradeResult:
    """Grade all samples; resumable per batch, `_SUCCESS` (with counts) written last.

    `follow`: start while a generate run is still writing the samples. It is called between rounds, returns
    True once the writer has finished and raises if the writer failed; each round grades the sample parts on
    disk, and the final pass (the same batches, so nothing is graded twice) completes the stage.
    """
    return run_stage(storage, "grade", cfg.name, cfg.config_hash(), GradeResult,
                     lambda sdir: _grade(cfg, storage, sdir, follow))


def _specs(cfg: GradeConfig, storage: Storage) -> dict[str, TestSpec]:
    specs = {}
    for i, row in enumerate(read_problems(storage, cfg.problems).to_pylist()):
        try:
            specs[row["question_id"]] = spec_from_problem(row)
        except InputError as exc:
            raise InputError(str(exc), file=str(cfg.problems), row=i, field="tests") from exc
    return specs


def _sample_key(row: dict[str, Any]) -> tuple[str, str, int]:
    return row["run_id"], row["question_id"], int(row["sample_idx"])


def plan_part_batches(rows: list[dict[str, Any]], indices: Sequence[int], batch_size: int) -> list[Batch]:
    """Batches within each samples part, in key order: a part never changes once written, so the batches
    of a part are the same whether it is graded while generation runs or afterwards."""
    by_part: dict[str, list[int]] = defaultdict(list)
    for i in indices:
        by_part[rows[i]["part"]].append(i)
    batches = []
    for part in sorted(by_part):
        ordered = sorted(by_part[part], key=lambda i: _sample_key(rows[i]))
        batches += plan_batches([Item(key=tuple(zip(("run_id", "question_id", "sample_idx"), _sample_key(rows[i]),
                                                    strict=True)),
                                      spec_id=rows[i]["question_id"], response=rows[i]["response"])
                                 for i in ordered], batch_size)
    return batches


def _grade_while_written(cfg: GradeConfig, storage: Storage, vdir: str, tdir: str | None,
                         follow: Callable[[], bool]) -> None:
    """Rounds of grading the parts on disk until the writer has finished (re-runs alone wait for the end)."""
    settings, specs = DispatchSettings.from_config(cfg), None
    while True:
        finished = follow()
        try:
            specs = specs or _specs(cfg, storage)
            rows = read_samples(storage, cfg.samples).to_pylist()
        except InputError:
            rows = []  # the writer has not written its problems or first part yet
        ready = [i for i, r in enumerate(rows) if len(specs.get(r["question_id"], ())) > 0] if specs else []
        if ready:
            run_batches(storage, vdir, plan_part_batches(rows, ready, cfg.batch_size), specs, settings,
                        schema=schemas.VERDICTS, tests_dir=tdir, tests_schema=schemas.VERDICT_TESTS,
                        rerun_flagged=False)
        if finished:
            return
        time.sleep(FOLLOW_POLL_S)


def _grade(cfg: GradeConfig, storage: Storage, sdir: str, follow: Callable[[], bool] | None = None) -> GradeResult:
    """The stage body (valley.stage.run_stage does the skip, clean-up and marker around it)."""
    vdir, tdir = f"{sdir}/verdicts", (f"{sdir}/tests" if cfg.per_test_rows else None)
    check_sandbox(cfg.sandbox, cfg.bwrap_path, cfg.sandbox_packages)
    if follow is not None:
        _grade_while_written(cfg, storage, vdir, tdir, follow)

    specs = _specs(cfg, storage)
    samples = read_samples(storage, cfg.samples)
    rows = samples.to_pylist()
    seen: dict[tuple, int] = {}
    for i, r in enumerate(rows):
        k = _sample_key(r)
        if k in seen:
            raise InputError(f"duplicate sample key {k} (first at row {seen[k]})", file=cfg.samples, row=i,
                             field="sample_idx")
        seen[k] = i
    # A sample we cannot grade (unknown problem, or a problem without tests) is set aside, not dropped.
    reasons = {i: ("no_problem" if r["question_id"] not in specs else "no_tests")
               for i, r in enumerate(rows) if len(specs.get(r["question_id"], ())) == 0}
    matched = [i for i in range(len(rows)) if i not in reasons]
    unmatched = sorted(reasons)
    if unmatched:
        log.warning("%d samples cannot be graded; written to %s/unmatched.parquet", len(unmatched), sdir)
        aside = samples.drop_columns(["part"]).take(pa.array(unmatched, pa.int64()))
        aside = aside.append_column("reason", pa.array([reasons[i] for i in unmatched], pa.string()))
        storage.write_parquet(aside, sdir, "unmatched.parquet")
    stats = run_batches(
        storage, vdir, plan_part_batches(rows, matched, cfg.batch_size), specs, DispatchSettings.from_config(cfg),
        schema=schemas.VERDICTS, tests_dir=tdir, tests_schema=schemas.VERDICT_TESTS,
    )
    counts: Counter[str] = Counter({v: 0 for v in schemas.VERDICT_VALUES})
    n = 0
    if matched:
        verdicts = storage.read_parquet(vdir, columns=["verdict"]).column("verdict").to_pylist()
        counts.update(verdicts)
        n = len(verdicts)
    if n != len(matched):
        raise RuntimeError(f"verdict parts hold {n} rows for {len(matched)} samples in {vdir}")
    if counts.get("grader_error"):
        log.warning("%d sample(s) got verdict grader_error (the sandbox could not run them, even when retried): "
                    "they are excluded from pass@k, not counted as failures; see first_failure in %s",
                    counts["grader_error"], vdir)
    return GradeResult(
        stage_dir=sdir, verdicts_dir=vdir, tests_dir=tdir, samples=len(rows), unmatched=len(unmatched),
        counts=dict(counts), batches=stats.batches, skipped_batches=stats.skipped_batches, seconds=stats.seconds,
        grader_errors=counts.get("grader_error", 0), reruns_alone=stats.reruns_alone,
    )
