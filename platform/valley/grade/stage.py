"""`run_grade`: every sample of a samples table graded against its problem, verdicts to Parquet."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import ClassVar

import pyarrow as pa

from valley import schemas
from valley.errors import InputError
from valley.grade.config import GradeConfig
from valley.grade.dispatch import DispatchSettings, Item, plan_batches, run_batches
from valley.grade.inputs import read_problems, read_samples
from valley.grade.sandbox import check_bwrap, find_bwrap
from valley.grade.sandbox_env import ensure_env
from valley.problems import spec_from_problem
from valley.stage import StageResult, run_stage
from valley.storage import Storage

log = logging.getLogger(__name__)

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


def run_grade(cfg: GradeConfig, storage: Storage) -> GradeResult:
    """Grade all samples; resumable per batch, `_SUCCESS` (with counts) written last."""
    return run_stage(storage, "grade", cfg.name, cfg.config_hash(), GradeResult,
                     lambda sdir: _grade(cfg, storage, sdir))


def _grade(cfg: GradeConfig, storage: Storage, sdir: str) -> GradeResult:
    """The stage body (valley.stage.run_stage does the skip, clean-up and marker around it)."""
    vdir, tdir = f"{sdir}/verdicts", (f"{sdir}/tests" if cfg.per_test_rows else None)
    check_sandbox(cfg.sandbox, cfg.bwrap_path, cfg.sandbox_packages)

    problems = read_problems(storage, cfg.problems)
    specs = {}
    for i, row in enumerate(problems.to_pylist()):
        try:
            specs[row["question_id"]] = spec_from_problem(row)
        except InputError as exc:
            raise InputError(str(exc), file=str(cfg.problems), row=i, field="tests") from exc
    samples = read_samples(storage, cfg.samples)
    rows = samples.to_pylist()
    keys = [(r["run_id"], r["question_id"], int(r["sample_idx"])) for r in rows]
    seen: dict[tuple, int] = {}
    for i, k in enumerate(keys):
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
        aside = samples.take(pa.array(unmatched, pa.int64()))
        aside = aside.append_column("reason", pa.array([reasons[i] for i in unmatched], pa.string()))
        storage.write_parquet(aside, sdir, "unmatched.parquet")
    matched.sort(key=lambda i: keys[i])
    items = [Item(key=(("run_id", keys[i][0]), ("question_id", keys[i][1]), ("sample_idx", keys[i][2])),
                  spec_id=keys[i][1], response=rows[i]["response"]) for i in matched]
    stats = run_batches(
        storage, vdir, plan_batches(items, cfg.batch_size), specs, DispatchSettings.from_config(cfg),
        schema=schemas.VERDICTS, tests_dir=tdir, tests_schema=schemas.VERDICT_TESTS,
    )
    counts: Counter[str] = Counter({v: 0 for v in schemas.VERDICT_VALUES})
    n = 0
    if items:
        verdicts = storage.read_parquet(vdir, columns=["verdict"]).column("verdict").to_pylist()
        counts.update(verdicts)
        n = len(verdicts)
    if n != len(items):
        raise RuntimeError(f"verdict parts hold {n} rows for {len(items)} samples in {vdir}")
    if counts.get("grader_error"):
        log.warning("%d sample(s) got verdict grader_error (the sandbox could not run them, even when retried): "
                    "they are excluded from pass@k, not counted as failures; see first_failure in %s",
                    counts["grader_error"], vdir)
    return GradeResult(
        stage_dir=sdir, verdicts_dir=vdir, tests_dir=tdir, samples=len(rows), unmatched=len(unmatched),
        counts=dict(counts), batches=stats.batches, skipped_batches=stats.skipped_batches, seconds=stats.seconds,
        grader_errors=counts.get("grader_error", 0), reruns_alone=stats.reruns_alone,
    )
