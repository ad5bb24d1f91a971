"""The demo's corpus, its idempotent files, the terminal summary and the filter of Ray's false alarm."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from valley.demo import FAMILIES, INSTRUCT_FAMILIES, make_instruct, make_problems, make_traces, write_demo
from valley.generate.prompts import ANSWER_LINE
from valley.report.summary import summary_rows, summary_table
from valley.stderr_filter import filtered

REPO = Path(__file__).resolve().parents[1]


def test_traces_think_with_substance_and_pose_lcb_questions():
    rows = make_traces(300, seed=1)
    closed = [r for r in rows if "</think>" in r["response"]]
    assert len(closed) > 0.9 * len(rows)
    for r in closed:
        fam = next(f for f in FAMILIES if r["question_id"].startswith(f"demo-{f.key}-"))
        thinking = r["response"].split("</think>")[0]
        assert thinking.startswith(f"<think>\n{fam.restate}") and thinking.rstrip().endswith(fam.plan)
        assert r["question"].startswith("### Question:\n") and r["question"].rstrip().endswith(ANSWER_LINE)
    right = sum(fam.stdin_right in r["response"] or fam.method_right in r["response"]
                for r in rows for fam in FAMILIES if r["question_id"].startswith(f"demo-{fam.key}-"))
    assert 0.78 < right / len(rows) < 0.92  # p_correct 0.85
    functional = [r for r in rows if r["tests"] and "fn_name" in r["tests"]]
    assert functional and all(json.loads(r["tests"])["outputs"][0] for r in functional)


def test_instruct_answers_are_direct_right_and_only_of_the_instruct_families():
    rows = make_instruct(120)
    assert {r["question_id"].split("-")[2] for r in rows} == set(INSTRUCT_FAMILIES)
    assert all(r["response"].startswith("```python\n") and "<think>" not in r["response"] for r in rows)
    assert any("class Solution" in r["response"] for r in rows) and any("input()" in r["response"] for r in rows)
    with pytest.raises(ValueError, match="no demo family"):
        make_instruct(3, families=("nope",))


def test_problems_cover_every_family_evenly():
    titles = [p["question_title"] for p in make_problems(48)]
    assert {titles.count(f.title) for f in FAMILIES} == {8}


def test_write_demo_leaves_unchanged_files_alone(tmp_path):
    paths = write_demo(tmp_path / "d", n_traces=40, n_problems=6)
    before = {k: (tmp_path / "d" / p).stat().st_mtime_ns for k, p in
              (("traces", "traces.jsonl"), ("problems", "problems.jsonl"), ("model", "model/config.json"))}
    again = write_demo(tmp_path / "d", n_traces=40, n_problems=6)
    after = {k: (tmp_path / "d" / p).stat().st_mtime_ns for k, p in
             (("traces", "traces.jsonl"), ("problems", "problems.jsonl"), ("model", "model/config.json"))}
    assert again == paths and after == before
    write_demo(tmp_path / "d", n_traces=50, n_problems=6)
    assert (tmp_path / "d" / "traces.jsonl").stat().st_mtime_ns != before["traces"]


def _results() -> pl.DataFrame:
    rows = []
    for run, size, epoch, p, c, t in (("s-r400", 400, None, 0.1, 0.8, 1.0), ("s-base", 0, None, 0.4, 1.0, 0.0),
                                      ("s-r400-e1", 400, 1, 0.0, 0.5, 0.9)):
        for metric, v in (("pass@1", p), ("completion_rate", c), ("think_rate", t), ("mean_tokens", 99.0)):
            rows.append({"experiment": "x", "run_id": run, "data_size": size, "subset": "random", "checkpoint": "base",
                         "metric": metric, "value": v, "ci_low": v / 2 if metric == "pass@1" else None,
                         "ci_high": v * 1.5 if metric == "pass@1" else None, "model": "s", "epoch": epoch})
    return pl.DataFrame(rows)


def test_summary_has_one_line_per_run_in_valley_order():
    rows = summary_rows(_results())
    assert [r["run_id"] for r in rows] == ["s-base", "s-r400-e1", "s-r400"]
    assert rows[0]["pass@1"] == (0.4, 0.2, pytest.approx(0.6)) and "mean_tokens" not in rows[0]
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(summary_table(rows))
    text = console.export_text()
    assert "40.0% [20.0, 60.0]" in text and "s-r400-e1" in text and "90.0%" in text


NOTICE = (b"[2026-11-25 08:59:49,592 E 337 337] core_worker.cc:2465: Actor with class name: 'MapWorker(MapBatches"
          b"(TokenizePacker))' and ID: 'a71a' has constructor arguments in the object store and max_restarts > 0. "
          b"If the arguments in the object store go out of scope or are lost, the actor restart will fail. See "
          b"https://github.com/ray-project/ray/issues/53727 for more details.\n")


def test_filter_drops_only_rays_false_alarm():
    assert filtered(b"before\n" + NOTICE + b"after\n") == b"before\nafter\n"
    assert filtered(b"progress 10%\r") == b"progress 10%\r"
    real = b"[2026 E 1 1] core_worker.cc:99: The worker died unexpectedly\n"
    assert filtered(real) == real


def test_filter_on_the_file_descriptor(tmp_path):
    """What C++ writes to fd 2 passes through the filter; the notice does not, everything else does."""
    script = (
        "import os\nfrom valley import stderr_filter\nassert stderr_filter.install()\n"
        f"os.write(2, b'kept one\\n')\nos.write(2, {NOTICE!r})\nos.write(2, b'kept two\\n')\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "VALLEY_RAW_STDERR"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr == b"kept one\nkept two\n"


@pytest.mark.slow
def test_demo_student_codes_and_distillation_teaches_it_to_think(ray_local, tmp_path, monkeypatch):
    """The real instruct, data, train, generate and grade stages: the base student (the instruct stage's
    export) passes some held-out problems, and a distilled run starts its answers with <think> more often."""
    from valley.demo import InstructSettings
    from valley.experiment import load_spec, run_experiment
    from valley.storage import Storage

    monkeypatch.chdir(tmp_path)
    write_demo("demo-data", n_traces=1200, n_problems=24, instruct=InstructSettings())
    spec = load_spec(REPO / "jobs" / "configs" / "demo.yaml",
                     ["arms.r.sizes=[400]", "generate.n=1", "report.n_boot=20"])
    result = run_experiment(spec, Storage(str(tmp_path / "runs")), live=False)
    rows = {r["run_id"]: r for r in summary_rows(pl.read_parquet(result.results))}
    base, distilled = rows["tiny-qwen2-base"], rows["tiny-qwen2-r400"]
    assert base["pass@1"][0] > 0, base
    assert distilled["think_rate"][0] > base["think_rate"][0], (base, distilled)
