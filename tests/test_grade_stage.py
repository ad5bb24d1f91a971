"""The grade and label stages end to end on an embedded Ray: verdict parts, resume, set-aside
samples, per-test rows, a worker killed mid-batch, and labelled traces."""

from __future__ import annotations

import json
import threading
import time

import psutil
import pyarrow as pa
import pytest

from valley import schemas
from valley.errors import InputError
from valley.grade.config import GradeConfig, LabelConfig
from valley.grade.label import run_label
from valley.grade.sandbox import bwrap_unavailable_reason
from valley.grade.sandbox_procs import sandbox_processes
from valley.grade.stage import run_grade

NO_BWRAP = bwrap_unavailable_reason()
pytestmark = pytest.mark.skipif(NO_BWRAP is not None, reason=f"sandbox unavailable: {NO_BWRAP}")

STDIN_TESTS = json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"},
                          {"input": "5 6\n", "output": "11\n", "testtype": "stdin"}])
FN_TESTS = json.dumps([{"input": "[1, 2]\n3", "output": "[4, 5]", "testtype": "functional"}])
GOOD = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
RESPONSES = {
    "pass": GOOD,
    "wrong_answer": "```python\nprint(0)\n```",
    "runtime_error": "```python\nraise SystemError('x')\n```",
    "syntax_error": "```python\ndef f(:\n```",
    "no_code": "I cannot solve this.",
    "time_limit": "```python\nwhile True:\n    pass\n```",
}


def _write_inputs(storage, *, extra_samples=()):
    problems = pa.Table.from_pylist([
        {"question_id": "add", "question_content": "add two ints", "testtype": "stdin", "tests": STDIN_TESTS},
        {"question_id": "fn", "question_content": "add k", "testtype": "functional", "func_name": "addAll",
         "starter_code": "class Solution:\n    def addAll(self, xs, k):\n", "tests": FN_TESTS},
        {"question_id": "empty", "question_content": "no tests", "testtype": "stdin", "tests": "[]"},
    ], schema=schemas.PROBLEMS)
    storage.write_parquet(problems, "inputs", "problems.parquet")
    rows = [{"run_id": "r1", "question_id": "add", "sample_idx": i, "response": resp}
            for i, resp in enumerate(RESPONSES.values())]
    rows.append({"run_id": "r1", "question_id": "fn", "sample_idx": 0,
                 "response": "```python\nclass Solution:\n    def addAll(self, xs, k):\n"
                             "        return [x + k for x in xs]\n```"})
    rows += [{"run_id": "r1", "question_id": "missing", "sample_idx": 0, "response": GOOD},
             {"run_id": "r1", "question_id": "empty", "sample_idx": 0, "response": GOOD}, *extra_samples]
    storage.write_parquet(pa.Table.from_pylist(rows, schema=schemas.SAMPLES), "inputs", "samples", "part-0.parquet")


def _cfg(**kw):
    base = dict(samples="inputs/samples", problems="inputs/problems.parquet", timeout_s=1.0, batch_size=3)
    return GradeConfig(**{**base, **kw})


def test_grade_stage_writes_verdicts_and_resumes(ray_local, storage):
    _write_inputs(storage)
    cfg = _cfg(per_test_rows=True)
    res = run_grade(cfg, storage)
    v = storage.read_parquet(res.verdicts_dir).to_pylist()
    by = {(r["question_id"], r["sample_idx"]): r for r in v}
    assert len(v) == 7 and res.samples == 9 and res.unmatched == 2
    for i, verdict in enumerate(RESPONSES):
        assert by[("add", i)]["verdict"] == verdict
    assert by[("add", 0)]["passed_tests"] == 2 and by[("add", 0)]["total_tests"] == 2
    assert by[("add", 1)]["passed_tests"] == 0 and json.loads(by[("add", 1)]["first_failure"])["test"] == 0
    assert by[("fn", 0)]["verdict"] == "pass"
    assert res.counts["pass"] == 2 and res.counts["memory_limit"] == 0 and sum(res.counts.values()) == 7
    aside = storage.read_parquet(res.stage_dir, "unmatched.parquet").to_pylist()
    assert sorted(r["reason"] for r in aside) == ["no_problem", "no_tests"]
    tests = storage.read_parquet(res.tests_dir).to_pylist()
    assert len([t for t in tests if (t["question_id"], t["sample_idx"]) == ("add", 0)]) == 2
    assert storage.read_json(res.stage_dir, "_SUCCESS")["summary"]["counts"] == res.counts
    # same config: skipped entirely; batch size is not part of the hash
    again = run_grade(_cfg(per_test_rows=True, batch_size=5), storage)
    assert again.skipped and again.counts == res.counts


def test_grade_stage_resumes_finished_batches_and_drops_stale_parts(ray_local, storage):
    _write_inputs(storage)
    cfg = _cfg()
    first = run_grade(cfg, storage)
    parts = storage.list(first.verdicts_dir, suffix=".parquet")
    storage.remove(first.stage_dir, "_SUCCESS")
    storage.remove(first.verdicts_dir, parts[0])  # as if the driver died before that batch finished
    storage.write_parquet(pa.Table.from_pylist([{"run_id": "x", "question_id": "y", "sample_idx": 0,
                                                 "verdict": "pass"}], schema=schemas.VERDICTS),
                          first.verdicts_dir, "part-stale.parquet")  # left by a run with another batch size
    second = run_grade(cfg, storage)
    assert second.skipped_batches == len(parts) - 1 and not second.skipped
    assert sorted(storage.list(second.verdicts_dir, suffix=".parquet")) == sorted(parts)
    assert second.counts == first.counts


def test_bad_samples_are_located(ray_local, storage):
    _write_inputs(storage, extra_samples=[{"run_id": "r1", "question_id": "add", "sample_idx": 0, "response": "x"}])
    with pytest.raises(InputError, match="duplicate sample key.*row 9.*sample_idx"):
        run_grade(_cfg(), storage)
    storage.write_parquet(pa.table({"run_id": ["r"], "question_id": ["q"]}), "inputs", "bad.parquet")
    with pytest.raises(InputError, match="field 'sample_idx'"):
        run_grade(_cfg(samples="inputs/bad.parquet"), storage)


def _find_batch_worker(timeout_s: float) -> psutil.Process | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in psutil.process_iter(["cmdline"]):
            if any("grade_batch" in part for part in (p.info["cmdline"] or [])):
                return p
        time.sleep(0.05)
    return None


def test_worker_killed_mid_batch_is_retried_without_double_counting(ray_local, storage):
    slow = "```python\nimport time\ntime.sleep(0.7)\na, b = map(int, input().split())\nprint(a + b)\n```"
    extra = [{"run_id": "r2", "question_id": "add", "sample_idx": i, "response": slow} for i in range(6)]
    _write_inputs(storage, extra_samples=extra)
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("res", run_grade(_cfg(timeout_s=3.0), storage)))
    t.start()
    victim = _find_batch_worker(60)
    assert victim is not None
    time.sleep(0.5)
    assert any("grade_batch" in part for part in victim.cmdline())  # still busy with its batch
    victim.kill()
    t.join(240)
    res = out["res"]
    assert res.batches == 5 and res.skipped_batches == 0
    v = storage.read_parquet(res.verdicts_dir).to_pylist()
    keys = [(r["run_id"], r["question_id"], r["sample_idx"]) for r in v]
    assert len(keys) == len(set(keys)) == 13
    assert all(r["verdict"] == "pass" for r in v if r["run_id"] == "r2")
    deadline = time.monotonic() + 5
    while sandbox_processes(started_here=True) and time.monotonic() < deadline:  # the dead worker's sandboxes died with it
        time.sleep(0.1)
    assert sandbox_processes(started_here=True) == []


def test_label_stage_sets_correct(ray_local, storage):
    io_add = json.dumps({"inputs": ["1 2\n", "2 2\n"], "outputs": ["3\n", "4\n"]})
    io_fn = json.dumps({"fn_name": "double", "inputs": [[2], [5]], "outputs": [[4], [10]]})
    code = "<think>hmm</think>\n```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    rows = [
        {"id": "t1", "question_id": "q1", "question": "add", "response": code, "tests": io_add},
        {"id": "t2", "question_id": "q1", "question": "add", "response": code.replace("a + b", "a * b"),
         "tests": io_add},
        {"id": "t3", "question_id": "q2", "question": "dbl", "response": "```python\ndef double(x):\n"
                                                                          "    return 2 * x\n```", "tests": io_fn},
        {"id": "t4", "question_id": "q3", "question": "?", "response": code, "tests": None},
        {"id": "t5", "question_id": "q1", "question": "add", "response": "no code", "tests": io_add},
    ]
    storage.write_parquet(pa.Table.from_pylist(rows), "corpus", "traces.parquet", schema=schemas.TRACES)
    res = run_label(LabelConfig(traces="corpus/traces.parquet", timeout_s=2.0, batch_size=2), storage)
    out = {r["id"]: r for r in storage.read_parquet(res.traces_dir).to_pylist()}
    assert {k: out[k]["correct"] for k in out} == {"t1": True, "t2": False, "t3": True, "t4": None, "t5": False}
    assert out["t1"]["question"] == "add" and out["t1"]["tests"] == io_add  # the rest of the row is kept
    assert (res.traces, res.correct, res.incorrect, res.no_tests) == (5, 2, 2, 1)
    assert res.counts == {"pass": 2, "wrong_answer": 1, "no_code": 1}
    assert run_label(LabelConfig(traces="corpus/traces.parquet", timeout_s=2.0), storage).skipped


def test_label_bad_tests_are_located(ray_local, storage):
    rows = [{"id": "a", "question_id": "q", "question": "x", "response": "r", "tests": '{"inputs": [1]}'}]
    storage.write_parquet(pa.Table.from_pylist(rows), "corpus", "bad.parquet", schema=schemas.TRACES)
    with pytest.raises(InputError, match="row 0, field 'tests'"):
        run_label(LabelConfig(traces="corpus/bad.parquet"), storage)


def test_cli_and_job_entrypoint_config(ray_local, storage, tmp_path, capsys):
    from valley.cli import main

    _write_inputs(storage)
    cfg = tmp_path / "grade.yaml"
    cfg.write_text("name: cli\nsamples: inputs/samples\nproblems: inputs/problems.parquet\nbatch_size: 4\n")
    assert main(["grade", str(cfg), "--storage", storage.root, "--set", "timeout_s=1.0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["counts"]["pass"] == 2 and out["unmatched"] == 2
    assert main(["grade", str(cfg), "--storage", storage.root, "--set", "sandbox=nope"]) == 2
    assert "sandbox" in capsys.readouterr().err


def test_label_real_r1_final_answers(ray_local, storage, shared_data):
    """R1's final code from real traces, with its stdin examples as TACO input_output, labelled on Ray."""
    import gzip

    with gzip.open(shared_data / "traces" / "think-with-feedback__fuzzable-final-answers.jsonl.gz", "rt") as f:
        recs = [json.loads(line) for _, line in zip(range(8), f)]
    rows = []
    for r in recs:
        io = {"inputs": [e["input"] for e in r["examples"]], "outputs": [e["output"] for e in r["examples"]]}
        rows.append({"id": f"cf-{r['idx']}", "question_id": str(r["idx"]), "question": "?", "tests": json.dumps(io),
                     "response": f"<think>\nreasoning\n</think>\n```python\n{r['final_answer']}\n```"})
    rows[0]["response"] = rows[0]["response"].replace("```python\n", "```python\nprint('sabotage')\n", 1)
    storage.write_parquet(pa.Table.from_pylist(rows), "corpus", "r1.parquet", schema=schemas.TRACES)
    res = run_label(LabelConfig(traces="corpus/r1.parquet", timeout_s=3.0, batch_size=4), storage)
    out = {r["id"]: r["correct"] for r in storage.read_parquet(res.traces_dir).to_pylist()}
    assert out[rows[0]["id"]] is False
    assert res.correct >= 6 and res.no_tests == 0 and res.correct + res.incorrect == 8


def test_wall_clock_kill_is_rerun_alone_and_recorded(ray_local, storage):
    """A program stopped by the wall-clock backstop while its CPU time is under the limit may be the
    host's fault: it is re-run alone before it is called time_limit, and the verdict row says so."""
    _write_inputs(storage, extra_samples=[{"run_id": "r3", "question_id": "add", "sample_idx": 0,
                                           "response": "```python\nimport time\ntime.sleep(30)\n```"}])
    res = run_grade(_cfg(timeout_s=0.5, wall_timeout_s=1.0, per_test_rows=True), storage)  # re-run: 5 s backstop
    v = {(r["run_id"], r["sample_idx"]): r for r in storage.read_parquet(res.verdicts_dir).to_pylist()}
    sleeper = v[("r3", 0)]
    assert sleeper["verdict"] == "time_limit" and sleeper["rerun_alone"] and not sleeper["needs_rerun"]
    assert json.loads(sleeper["first_failure"])["limit"] == "wall"
    assert res.reruns_alone == sum(r["rerun_alone"] for r in v.values()) >= 1 and res.grader_errors == 0
    busy = v[("r1", list(RESPONSES).index("time_limit"))]  # a CPU-bound loop: the CPU limit (unless the host
    assert busy["verdict"] == "time_limit"  # is so loaded that it, too, met the wall clock first and was re-run)
    assert json.loads(busy["first_failure"])["limit"] == "cpu" or busy["rerun_alone"]
    tests = [t for t in storage.read_parquet(res.tests_dir).to_pylist() if t["run_id"] == "r3"]
    assert len(tests) == 1  # the re-run replaced the first attempt's per-test row


def test_stalled_stage_fails_naming_phase_and_batch(ray_local, storage):
    from valley.grade.dispatch import StageStalledError

    _write_inputs(storage, extra_samples=[{"run_id": "r4", "question_id": "add", "sample_idx": 0,
                                           "response": "```python\nimport time\ntime.sleep(60)\n```"}])
    with pytest.raises(StageStalledError, match=r"no batch completed for 2 s in phase 'grading batches'.*part-"):
        run_grade(_cfg(timeout_s=5.0, wall_timeout_s=20.0, stall_timeout_s=2.0, batch_size=20), storage)


def test_sandbox_that_cannot_start_is_a_grader_error_not_a_failure():
    from valley.grade.grader import Grader
    from valley.grade.sandbox import Limits
    from valley.problems import TestSpec

    with Grader(Limits(timeout_s=1.0), bwrap="/bin/false") as grader:
        g = grader.grade("print(3)\n", TestSpec("stdin", ("",), ("3\n",)))
    assert g.verdict == "grader_error" and g.needs_rerun and "could not start" in g.first_failure["error"]


def test_grader_error_is_excluded_from_pass_at_1():
    """metrics: a grader_error sample is no evidence either way: left out of pass@1, reported as a count."""
    from valley.metrics.join import join_run

    samples = pa.table({"question_id": ["q"] * 3, "sample_idx": [0, 1, 2], "response": ["x"] * 3,
                        "finish_reason": ["stop"] * 3})
    verdicts = pa.table({"question_id": ["q"] * 3, "sample_idx": [0, 1, 2],
                         "verdict": ["pass", "grader_error", "wrong_answer"]})
    joined = join_run(samples, verdicts, pa.table({"question_id": ["q"]}), max_tokens=100)
    assert joined.n_grader_error == 1 and joined.samples.height == 2
    assert joined.samples["passed"].to_list() == [True, False]


def test_grading_follows_samples_as_they_are_written(ray_local, storage):
    """With `follow`, grading starts before the writer has finished: each round grades the parts on disk, and
    the final pass plans the same per-part batches, so it grades only the part written last."""
    _write_inputs(storage)  # part-0: 9 samples (7 gradable)
    rounds: list[int] = []

    def follow() -> bool:
        rounds.append(len(storage.list("inputs", "samples", suffix=".parquet")))
        if len(rounds) == 1:
            return False
        if len(rounds) == 2:  # the writer adds its second part, then finishes
            late = [{"run_id": "r1", "question_id": "add", "sample_idx": 10 + i, "response": GOOD} for i in range(4)]
            storage.write_parquet(pa.Table.from_pylist(late, schema=schemas.SAMPLES), "inputs", "samples",
                                  "part-1.parquet")
        return True

    import valley.grade.stage as grade_stage

    grade_stage.FOLLOW_POLL_S, poll = 0.0, grade_stage.FOLLOW_POLL_S
    try:
        res = run_grade(_cfg(), storage, follow=follow)
    finally:
        grade_stage.FOLLOW_POLL_S = poll
    assert rounds == [1, 1]
    assert res.samples == 13 and res.counts["pass"] == 6 and sum(res.counts.values()) == 11
    # part-0's 7 samples in batches of 3, part-1's 4: 3 + 2 batches, all graded while following
    assert res.batches == 5 and res.skipped_batches == 5
    plain = run_grade(_cfg(), storage)  # the same config without following: already complete
    assert plain.skipped and plain.counts == res.counts
