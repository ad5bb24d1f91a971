"""Verdicts do not move with machine load: the same 200 real samples graded alone and at 4x the cores
with CPU hogs beside them get identical verdicts; tests the wall-clock backstop stopped are re-run
alone and the verdict rows say so."""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys

import pyarrow as pa
import pytest

from valley import schemas
from valley.grade.config import GradeConfig
from valley.grade.sandbox import bwrap_unavailable_reason
from valley.grade.stage import run_grade
from valley.problems import load_lcb_problems

NO_BWRAP = bwrap_unavailable_reason()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(NO_BWRAP is not None, reason=f"sandbox unavailable: {NO_BWRAP}")]

N_SAMPLES = 200
CORES = 2  # the ray_local fixture's CPUs


def _write_real_samples(storage, shared_data) -> None:
    problems = load_lcb_problems(sorted((shared_data / "lcb").glob("*.jsonl")))
    recs = []
    for f in sorted((shared_data / "lcb_verdicts").glob("*.json.gz")):
        with gzip.open(f, "rt") as fh:
            for r in json.load(fh):
                for i, out in enumerate(r["output_list"]):
                    recs.append({"run_id": f.name.split("__Scenario")[0], "question_id": r["question_id"],
                                 "sample_idx": i, "response": out})
    random.Random(3).shuffle(recs)
    storage.write_parquet(problems, "problems.parquet")
    storage.write_parquet(pa.Table.from_pylist(recs[:N_SAMPLES], schema=schemas.SAMPLES), "samples",
                          "part-0.parquet", schema=schemas.SAMPLES)


def _verdicts(storage, res) -> dict:
    return {(r["run_id"], r["question_id"], r["sample_idx"]): r for r in storage.read_parquet(res.verdicts_dir).to_pylist()}


def test_verdicts_identical_alone_and_under_load(ray_local, storage, shared_data):
    _write_real_samples(storage, shared_data)
    base = dict(samples="samples", problems="problems.parquet", timeout_s=6.0, batch_size=4)
    # concurrency 1: each task asks for every CPU of the embedded cluster
    alone = run_grade(GradeConfig(name="alone", num_cpus_per_task=CORES, **base), storage)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(CORES)]
    try:  # 4x the cores at once, with as many CPU hogs as cores beside them
        loaded = run_grade(GradeConfig(name="loaded", num_cpus_per_task=1 / 4, **base), storage)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    a, b = _verdicts(storage, alone), _verdicts(storage, loaded)
    assert len(a) == len(b) == N_SAMPLES and alone.grader_errors == loaded.grader_errors == 0
    diff = {k: (a[k]["verdict"], b[k]["verdict"]) for k in a if a[k]["verdict"] != b[k]["verdict"]}
    assert diff == {}
    assert alone.counts["time_limit"] > 0  # the sample holds programs that run out of time
    for rows, res in ((a, alone), (b, loaded)):
        reran = [r for r in rows.values() if r["rerun_alone"]]
        assert len(reran) == res.reruns_alone and not any(r["needs_rerun"] for r in rows.values())
        for r in rows.values():  # a wall-clock kill is final only after a re-run alone
            if r["verdict"] == "time_limit" and json.loads(r["first_failure"]).get("limit") == "wall":
                assert r["rerun_alone"]
    print(f"\nload test: {len(a)} samples, verdicts identical; re-run alone: {alone.reruns_alone} at concurrency 1, "
          f"{loaded.reruns_alone} at {4 * CORES} with {CORES} hogs (load avg {os.getloadavg()[0]:.1f})")
