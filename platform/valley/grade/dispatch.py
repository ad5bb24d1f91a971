"""Batch dispatch shared by grade and label: deterministic batches, one Ray task per batch.

A batch's part file is named from the hash of its keys, so a batch retried after its worker died
(Ray re-runs it) or re-run after a crash of the driver overwrites the same file instead of adding
a second copy; parts already on disk are skipped on resume. Only the driver writes parts, and only
from a task's successful return, so nothing is counted twice.

Two phases: every batch at full concurrency, then the samples whose verdict may be the host's fault
(a wall-clock kill with CPU time under the limit, or a grader_error) re-run one at a time with
nothing else of the stage running, their parts rewritten with `rerun_alone` set. A watchdog fails
the stage, naming the phase and the batches in flight, when no batch completes for `stall_timeout_s`.
How batches run (limits, sandbox, Ray task options, stall timeout) travels as one `DispatchSettings`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import ray

from valley.grade.config import SandboxSettings
from valley.grade.extract import extract_code
from valley.grade.grader import Grader
from valley.grade.sandbox import Limits, SandboxError
from valley.problems import TestSpec
from valley.storage import Storage

log = logging.getLogger(__name__)

# Columns every verdict part gets besides the caller's schema.
EXTRA_FIELDS = (pa.field("cpu_s", pa.float64()), pa.field("needs_rerun", pa.bool_()),
                pa.field("rerun_alone", pa.bool_()))
WARM_IDLE_S = 2.0  # a worker's warm sandbox is closed after this long without a batch
RERUN_WALL_FACTOR = 10.0  # wall-clock backstop of a re-run alone, in multiples of the CPU limit


class StageStalledError(RuntimeError):
    """No batch completed within the stall timeout (the message names the phase and the batches)."""


@dataclass(frozen=True, kw_only=True)
class DispatchSettings:
    """How a stage's batches run: the sandbox (limits, kind, bwrap binary) and the Ray task options."""

    limits: Limits
    sandbox: str  # bwrap | rlimit_only
    bwrap: str | None
    num_cpus: float
    resources: Mapping[str, float] = field(default_factory=dict)
    max_in_flight: int
    max_retries: int
    stall_timeout_s: float = 900.0

    @classmethod
    def from_config(cls, cfg: SandboxSettings) -> DispatchSettings:
        """The settings of a grade or label config (both derive from SandboxSettings)."""
        return cls(limits=cfg.limits(), sandbox=cfg.sandbox, bwrap=cfg.bwrap_path, num_cpus=cfg.num_cpus_per_task,
                   resources=dict(cfg.task_resources), max_in_flight=cfg.max_in_flight,
                   max_retries=cfg.max_retries, stall_timeout_s=cfg.stall_timeout_s)


@dataclass(frozen=True)
class Item:
    """One response to grade: `key` columns are copied to its verdict row."""

    key: tuple[tuple[str, object], ...]
    spec_id: str
    response: str | None


@dataclass
class Batch:
    name: str
    items: list[Item]


def plan_batches(items: Sequence[Item], batch_size: int) -> list[Batch]:
    """Fixed-size batches in the given order, each named by a hash of its keys."""
    batches = []
    for start in range(0, len(items), batch_size):
        chunk = list(items[start:start + batch_size])
        h = hashlib.sha256(json.dumps([it.key for it in chunk], default=str).encode("utf-8")).hexdigest()[:20]
        batches.append(Batch(f"part-{h}.parquet", chunk))
    return batches


# ---- in the Ray worker: one warm sandbox per worker process, reused by its successive batches ----
_warm_lock = threading.Lock()
_warm: dict[str, object] = {"key": None, "grader": None, "used": 0.0}


def _close_if_idle() -> None:
    with _warm_lock:
        grader = _warm["grader"]
        if grader is not None and time.monotonic() - float(_warm["used"]) >= WARM_IDLE_S:  # type: ignore[arg-type]
            grader.close()  # type: ignore[attr-defined]
            _warm.update(key=None, grader=None)


def _warm_grader(limits: Limits, sandbox: str, bwrap: str | None) -> Grader:
    """The worker's grader for these settings (its sandbox survives between batches). Call with the lock."""
    key = repr((limits, sandbox, bwrap))
    if _warm["key"] != key:
        if _warm["grader"] is not None:
            _warm["grader"].close()  # type: ignore[attr-defined]
        _warm.update(key=key, grader=Grader(limits, sandbox=sandbox, bwrap=bwrap))
    return _warm["grader"]  # type: ignore[return-value]


def grade_batch(items: list[Item], specs: dict[str, TestSpec], limits: Limits, sandbox: str,
                bwrap: str | None, per_test: bool, alone: bool = False) -> tuple[list[dict], list[dict]]:
    """Grade a batch sequentially in this process (one sandbox at a time = one CPU)."""
    rows, test_rows = [], []
    if alone:  # the re-run decides: a program that keeps making progress gets time to reach its CPU limit
        limits = dataclasses.replace(limits, wall_timeout_s=max(limits.wall_s, RERUN_WALL_FACTOR * limits.timeout_s))
    with _warm_lock:
        grader = _warm_grader(limits, sandbox, bwrap)
        try:
            grades = [grader.grade(extract_code(it.response), specs[it.spec_id]) for it in items]
        finally:
            _warm["used"] = time.monotonic()
    timer = threading.Timer(WARM_IDLE_S + 0.05, _close_if_idle)
    timer.daemon = True
    timer.start()
    for it, g in zip(items, grades):
        key = dict(it.key)
        rows.append({**key, "verdict": g.verdict, "passed_tests": g.passed, "total_tests": g.total,
                     "first_failure": g.failure_json(), "runtime_s": g.runtime_s, "cpu_s": g.cpu_s,
                     "needs_rerun": g.needs_rerun and not alone, "rerun_alone": alone})
        if per_test:
            test_rows += [{**key, "test_idx": t.index, "verdict": t.status, "wall_s": t.wall_s, "cpu_s": t.cpu_s}
                          for t in g.tests]
    return rows, test_rows


_grade_batch_task = ray.remote(grade_batch)


@dataclass
class RunStats:
    batches: int = 0
    skipped_batches: int = 0
    graded: int = 0
    seconds: float = 0.0
    reruns_alone: int = 0  # samples re-run alone after a wall-clock kill or a grader error
    parts: list[str] = field(default_factory=list)


def with_extra_fields(schema: pa.Schema) -> pa.Schema:
    for f in EXTRA_FIELDS:
        if f.name not in schema.names:
            schema = schema.append(f)
    return schema


def _result(ref: ray.ObjectRef, b: Batch) -> tuple[list[dict], list[dict]]:
    """A batch's rows; a batch whose worker kept dying (retries exhausted) gets grader_error rows,
    flagged for the re-run phase, instead of failing the stage or blaming the programs."""
    try:
        return ray.get(ref)
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
            ray.exceptions.ObjectLostError) as exc:
        log.warning("batch %s failed on the grader's side (%s); its samples get grader_error", b.name,
                    type(exc).__name__)
        error = json.dumps({"test": None, "error": f"grading task failed: {str(exc)[-500:]}"})
        return [{**dict(it.key), "verdict": "grader_error", "passed_tests": 0, "total_tests": None,
                 "first_failure": error, "runtime_s": 0.0, "cpu_s": 0.0, "needs_rerun": True,
                 "rerun_alone": False} for it in b.items], []


def _stalled(phase: str, stall_s: float, pending: dict) -> StageStalledError:
    batches = sorted(b.name for b in pending.values())
    where = _task_places(pending)
    for ref in pending:  # their workers (and sandboxes, which die with them) must not linger
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)
    return StageStalledError(
        f"no batch completed for {stall_s:.0f} s in phase {phase!r}; {len(batches)} in flight: "
        f"{', '.join(batches[:8])}{' ...' if len(batches) > 8 else ''}{'; ' + where if where else ''} "
        "(raise stall_timeout_s if batches are legitimately this slow)")


def _task_places(pending: dict) -> str:
    """Worker pid and node of the stuck tasks, when Ray's state API can tell (it needs the dashboard)."""
    try:
        from ray.util.state import list_tasks

        ids = {ref.task_id().hex(): b.name for ref, b in pending.items()}
        found = [f"{ids[t.task_id]} on worker pid {t.worker_pid} node {str(t.node_id)[:8]}"
                 for t in list_tasks(filters=[("state", "=", "RUNNING")], timeout=5, raise_on_missing_output=False)
                 if t.task_id in ids]
        return "; ".join(found)
    except Exception:  # state API unavailable (no dashboard): the batch names have to do
        return ""


def _find_done(storage: Storage, out_dir: str, batches: list[Batch]) -> tuple[list[Batch], list[str]]:
    """Split the batches into those still to grade and the names of parts already on disk, so a resumed
    stage neither grades a batch twice nor forgets that a finished part may hold samples to re-run alone."""
    todo, done = [], []
    for b in batches:
        if storage.exists(out_dir, b.name):
            done.append(b.name)
        else:
            todo.append(b)
    return todo, done


@dataclass(frozen=True)
class _Dispatcher:
    """What both phases of `run_batches` share: how a batch becomes a Ray task and where its part goes."""

    storage: Storage
    out_dir: str
    specs: dict[str, TestSpec]
    settings: DispatchSettings
    schema: pa.Schema
    tests_dir: str | None
    tests_schema: pa.Schema | None
    task: Any  # _grade_batch_task with the settings' Ray options

    @property
    def per_test(self) -> bool:
        return self.tests_dir is not None and self.tests_schema is not None

    def submit(self, items: list[Item], alone: bool = False) -> ray.ObjectRef:
        """Start grading `items` on a worker, shipping only the test specs they need."""
        needed = {it.spec_id: self.specs[it.spec_id] for it in items}
        s = self.settings
        return self.task.remote(items, needed, s.limits, s.sandbox, s.bwrap, self.per_test, alone)

    def write(self, b: Batch, rows: list[dict], test_rows: list[dict]) -> None:
        """Write a batch's parts; the verdict part last, since its presence is what marks the batch finished."""
        if self.per_test:
            self.storage.write_parquet(pa.Table.from_pylist(test_rows, schema=self.tests_schema), self.tests_dir,
                                       b.name)
        self.storage.write_parquet(pa.Table.from_pylist(rows, schema=self.schema), self.out_dir, b.name)


def _grade_all(dispatcher: _Dispatcher, todo: list[Batch], on_part: Callable[[str, int], None] | None,
               stats: RunStats) -> set[str]:
    """Phase 1: every batch at up to `max_in_flight` tasks, each part written as its task returns and its
    samples counted into `stats.graded`. Returns the names of the parts with samples to re-run alone."""
    stall_timeout_s = dispatcher.settings.stall_timeout_s
    flagged: set[str] = set()
    pending: dict[ray.ObjectRef, Batch] = {}
    queue = list(reversed(todo))
    last = time.monotonic()
    while queue or pending:
        while queue and len(pending) < dispatcher.settings.max_in_flight:
            b = queue.pop()
            pending[dispatcher.submit(b.items)] = b
        done, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, last + stall_timeout_s - time.monotonic()))
        if not done:
            raise _stalled("grading batches", stall_timeout_s, pending)
        last = time.monotonic()
        for ref in done:
            b = pending.pop(ref)
            rows, test_rows = _result(ref, b)
            dispatcher.write(b, rows, test_rows)
            if any(r["needs_rerun"] for r in rows):
                flagged.add(b.name)
            stats.graded += len(rows)
            if on_part:
                on_part(b.name, len(rows))
    return flagged


def _key_of(row: dict, b: Batch) -> tuple[tuple[str, object], ...]:
    """A part row's `Item.key`, rebuilt from the batch's key columns."""
    return tuple((k, row[k]) for k, _ in b.items[0].key)


def _rerun_part_alone(dispatcher: _Dispatcher, b: Batch) -> int:
    """Re-run alone the flagged samples of one finished part and rewrite the part once they are done (so a
    crash here resumes here). Returns how many samples were re-run."""
    part = dispatcher.storage.read_parquet(dispatcher.out_dir, b.name)
    flags = part.column("needs_rerun").to_pylist() if "needs_rerun" in part.column_names else []
    if not any(flags):
        return 0
    rows = part.to_pylist()
    by_key = {it.key: it for it in b.items}
    flagged = [i for i, f in enumerate(flags) if f]
    items = [by_key[_key_of(rows[i], b)] for i in flagged]
    log.info("re-running %d sample(s) of %s alone (wall-clock kill under the CPU limit, or grader error)",
             len(items), b.name)
    stall_timeout_s = dispatcher.settings.stall_timeout_s
    ref = dispatcher.submit(items, alone=True)
    done, _ = ray.wait([ref], timeout=stall_timeout_s)
    if not done:
        raise _stalled("re-running samples alone", stall_timeout_s, {ref: b})
    new_rows, new_tests = _result(ref, Batch(b.name, items))
    for i, row in zip(flagged, new_rows):
        rows[i] = row
    test_rows = _merged_test_rows(dispatcher, b, items, new_tests) if dispatcher.per_test else []
    dispatcher.write(b, rows, test_rows)
    return len(items)


def _merged_test_rows(dispatcher: _Dispatcher, b: Batch, items: list[Item], new_tests: list[dict]) -> list[dict]:
    """The part's per-test rows with those of the re-run samples replaced by their new ones."""
    rerun_keys = {it.key for it in items}
    storage, tests_dir = dispatcher.storage, dispatcher.tests_dir
    old = storage.read_parquet(tests_dir, b.name).to_pylist() if storage.exists(tests_dir, b.name) else []
    return [t for t in old if _key_of(t, b) not in rerun_keys] + new_tests


def _rerun_flagged_alone(dispatcher: _Dispatcher, batches: list[Batch], check: set[str]) -> int:
    """Phase 2: the parts that may hold flagged samples, one batch at a time with nothing else of the stage
    running, so a verdict that may be the host's fault is decided on an unloaded machine."""
    return sum(_rerun_part_alone(dispatcher, b) for b in batches if b.name in check)


def _remove_stale_parts(storage: Storage, dirs: Sequence[str | None], expected: set[str]) -> None:
    """Drop parts left by an interrupted run with another batch size, which would otherwise be read twice."""
    for d in dirs:
        if d is None:
            continue
        for name in storage.list(d, suffix=".parquet"):
            if name not in expected:
                storage.remove(d, name)


def run_batches(
    storage: Storage,
    out_dir: str,
    batches: list[Batch],
    specs: dict[str, TestSpec],
    settings: DispatchSettings,
    *,
    schema: pa.Schema,
    tests_dir: str | None = None,
    tests_schema: pa.Schema | None = None,
    on_part: Callable[[str, int], None] | None = None,
    rerun_flagged: bool = True,
) -> RunStats:
    """Grade every batch whose part is not on disk yet, writing each part as its task finishes; then
    re-run alone the samples that need it (`rerun_flagged=False`: leave them to a later call, e.g. while
    generation still loads the machine)."""
    t0 = time.monotonic()
    stats = RunStats(batches=len(batches), parts=[b.name for b in batches])
    todo, done = _find_done(storage, out_dir, batches)
    stats.skipped_batches = len(done)
    # A worker that dies is retried by Ray (so is a task that raised SandboxError, kept for safety).
    task = _grade_batch_task.options(num_cpus=settings.num_cpus, resources=dict(settings.resources),
                                     max_retries=settings.max_retries, retry_exceptions=[SandboxError])
    dispatcher = _Dispatcher(storage, out_dir, specs, settings, with_extra_fields(schema), tests_dir, tests_schema,
                             task)
    check = set(done) | _grade_all(dispatcher, todo, on_part, stats)  # parts that may hold flagged samples
    if rerun_flagged:
        stats.reruns_alone = _rerun_flagged_alone(dispatcher, batches, check)
    _remove_stale_parts(storage, (out_dir, tests_dir), set(stats.parts))
    stats.seconds = time.monotonic() - t0
    return stats
