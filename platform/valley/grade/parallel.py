"""Ray orchestration shared by grade and label: deterministic batches, one Ray task per batch.

A batch's part file is named from the hash of its keys, so a batch retried after its worker died
(Ray re-runs it) or re-run after a crash of the driver overwrites the same file instead of adding
a second copy; parts already on disk are skipped on resume. Only the driver writes parts, and only
from a task's successful return, so nothing is counted twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import ray

from valley.grade.extract import extract_code
from valley.grade.formats import TestSpec
from valley.grade.runner import Grader
from valley.grade.sandbox import Limits, SandboxError
from valley.storage import Storage

log = logging.getLogger(__name__)


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


def grade_batch(items: list[Item], specs: dict[str, TestSpec], limits: Limits, sandbox: str,
                bwrap: str | None, per_test: bool) -> tuple[list[dict], list[dict]]:
    """Grade a batch sequentially in this process (one sandbox at a time = one CPU)."""
    rows, test_rows = [], []
    with Grader(limits, sandbox=sandbox, bwrap=bwrap) as grader:
        grades = [grader.grade(extract_code(it.response), specs[it.spec_id]) for it in items]
    for it, g in zip(items, grades):
        key = dict(it.key)
        rows.append({**key, "verdict": g.verdict, "passed_tests": g.passed, "total_tests": g.total,
                     "first_failure": g.failure_json(), "runtime_s": g.runtime_s, "cpu_s": g.cpu_s})
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
    parts: list[str] = field(default_factory=list)


def run_batches(
    storage: Storage,
    out_dir: str,
    batches: list[Batch],
    specs: dict[str, TestSpec],
    limits: Limits,
    *,
    sandbox: str,
    bwrap: str | None,
    schema: pa.Schema,
    num_cpus: float,
    resources: dict[str, float] | None = None,
    max_in_flight: int,
    max_retries: int,
    tests_dir: str | None = None,
    tests_schema: pa.Schema | None = None,
    on_part: Callable[[str, int], None] | None = None,
) -> RunStats:
    """Grade every batch whose part is not on disk yet, writing each part as its task finishes."""
    t0 = time.monotonic()
    stats = RunStats(batches=len(batches), parts=[b.name for b in batches])
    todo = []
    for b in batches:
        if storage.exists(out_dir, b.name):
            stats.skipped_batches += 1
        else:
            todo.append(b)
    # A worker that dies is retried by Ray; so is a batch whose sandbox could not start (host overload).
    task = _grade_batch_task.options(num_cpus=num_cpus, resources=resources or {}, max_retries=max_retries,
                                     retry_exceptions=[SandboxError])
    pending: dict[ray.ObjectRef, Batch] = {}
    queue = list(reversed(todo))
    while queue or pending:
        while queue and len(pending) < max_in_flight:
            b = queue.pop()
            needed = {it.spec_id: specs[it.spec_id] for it in b.items}
            ref = task.remote(b.items, needed, limits, sandbox, bwrap, tests_dir is not None)
            pending[ref] = b
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            b = pending.pop(ref)
            rows, test_rows = ray.get(ref)
            if tests_dir is not None and tests_schema is not None:
                storage.write_parquet(pa.Table.from_pylist(test_rows, schema=tests_schema), tests_dir, b.name)
            # The verdict part is written last: its presence is what marks the batch finished.
            storage.write_parquet(pa.Table.from_pylist(rows, schema=_with_cpu(schema)), out_dir, b.name)
            stats.graded += len(rows)
            if on_part:
                on_part(b.name, len(rows))
    expected = set(stats.parts)
    for d in (out_dir, tests_dir):
        if d is None:
            continue
        for name in storage.list(d, suffix=".parquet"):
            if name not in expected:  # left by an interrupted run with another batch size
                storage.remove(d, name)
    stats.seconds = time.monotonic() - t0
    return stats


def _with_cpu(schema: pa.Schema) -> pa.Schema:
    if "cpu_s" in schema.names:
        return schema
    return schema.append(pa.field("cpu_s", pa.float64()))
