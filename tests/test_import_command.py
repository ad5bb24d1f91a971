"""`valley import`: lcb_runner / SkyThought / JSONL generations -> samples table -> grade -> report with
the official verdicts beside ours."""

from __future__ import annotations

import gzip
import json

import pyarrow.parquet as pq
import pytest

from valley import schemas
from valley.errors import InputError
from valley.imports.config import ImportConfig, ImportInput
from valley.imports.formats import fenced, model_from_path, parse_file
from valley.imports.stage import run_import
from valley.report.agreement import failing_test_is_public

VERDICT_FILES = "lcb_verdicts/*_eval_all.json.gz"


def _write(path, data, *, lines=False):
    text = "\n".join(json.dumps(r) for r in data) + "\n" if lines else json.dumps(data)
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_lcb_record_shapes(tmp_path):
    rec = {"question_id": "abc1_a", "platform": "atcoder", "contest_date": "2024-01-01T00:00:00",
           "output_list": ["```python\nprint(1)\n```", "sure:\n```\nprint(2)\n```"],
           "code_list": ["print(1)", "print(3)"], "graded_list": [True, False],
           "metadata": ['{"execution time": 0.1}', '{"error_code": -2, "inputs": "1", "expected": "2"}']}
    parsed = parse_file(_write(tmp_path / "m__Scenario.codegeneration_2_0.2_eval_all.json", [rec]))
    assert parsed.format == "lcb" and len(parsed.samples) == 2
    s0, s1 = parsed.samples
    assert (s0.official_pass, s1.official_pass, s1.sample_idx) == (True, False, 1)
    assert json.loads(s1.official_detail)["error_code"] == -2
    assert parsed.extraction_differs == 1  # print(2) extracted, lcb_runner's code_list says print(3)
    assert parsed.problems["abc1_a"]["platform"] == "atcoder"
    # generations file without verdicts; response_from=code fences lcb_runner's own extraction
    gen = {k: v for k, v in rec.items() if k not in ("graded_list", "metadata")}
    parsed = parse_file(_write(tmp_path / "gen.json", [gen]), response_from="code")
    assert parsed.samples[1].response == fenced("print(3)") and parsed.samples[1].official_pass is None
    # custom-evaluator form: code only
    parsed = parse_file(_write(tmp_path / "custom.json", [{"question_id": 7, "code_list": ["x=1"]}]))
    assert parsed.samples[0].question_id == "7" and parsed.fenced_code == 1
    bad = dict(rec, graded_list=[True])
    with pytest.raises(InputError, match=r"row 0.*graded_list"):
        parse_file(_write(tmp_path / "bad.json", [bad]))


def test_skythought_shapes(tmp_path):
    new = {"0": {"question_id": "3000", "platform": "leetcode",
                 "responses": [{"content": "a", "correctness": True, "reason": ""},
                               {"content": "b", "correctness": False, "reason": "wrong"}],
                 "token_usages": [{"completion_tokens": 5, "prompt_tokens": 9},
                                  {"completion_tokens": 7, "prompt_tokens": 9}]}}
    parsed = parse_file(_write(tmp_path / "results.json", new))
    assert parsed.format == "skythought"
    assert [(s.question_id, s.sample_idx, s.n_tokens, s.official_pass) for s in parsed.samples] == [
        ("3000", 0, 5, True), ("3000", 1, 7, False)]
    old = {"abc2_b": {"responses": {"0.7": [{"content": "x", "correctness": None}]},
                      "token_usages": {"0.7": [{"completion_tokens": 3}]}}}
    parsed = parse_file(_write(tmp_path / "old.json", old), "skythought")
    assert parsed.samples[0].question_id == "abc2_b" and parsed.samples[0].official_pass is None
    two = {"q": {"responses": {"0.0": [{"content": "x"}], "0.7": [{"content": "y"}]}}}
    with pytest.raises(InputError, match="temperature"):
        parse_file(_write(tmp_path / "two.json", two), "skythought")
    assert parse_file(_write(tmp_path / "two.json", two), "skythought", temperature="0.7").samples[0].response == "y"


def test_jsonl_numbering_and_errors(tmp_path):
    rows = [{"question_id": "q1", "response": "a"}, {"question_id": "q1", "response": "b", "n_tokens": 4,
                                                    "finish_reason": "length"},
            {"question_id": "q2", "response": "c", "sample_idx": 3, "official_pass": True}]
    parsed = parse_file(_write(tmp_path / "gens.jsonl", rows, lines=True))
    assert [(s.question_id, s.sample_idx) for s in parsed.samples] == [("q1", 0), ("q1", 1), ("q2", 3)]
    assert parsed.samples[1].finish_reason == "length" and parsed.samples[2].official_pass is True
    with pytest.raises(InputError, match=r"row 1.*'response'"):
        parse_file(_write(tmp_path / "b1.jsonl", [rows[0], {"question_id": "q"}], lines=True))
    with pytest.raises(InputError, match=r"row 1.*sample_idx"):
        parse_file(_write(tmp_path / "b2.jsonl", [rows[2], rows[2]], lines=True))
    with pytest.raises(InputError, match=r"row 1.*n_tokens"):
        parse_file(_write(tmp_path / "b3.jsonl", [rows[0], dict(rows[1], n_tokens="4")], lines=True))


def test_run_labels_from_file_names():
    assert model_from_path("x/gu-ni__output_test6__LLama3.1-8b-Ins__Scenario.codegeneration_10_0.2_eval_all.json.gz") \
        == "LLama3.1-8b-Ins"
    assert model_from_path("output/Qwen2.5-7B/Scenario.codegeneration_1_0.2_eval_all.json") == "Qwen2.5-7B"
    assert model_from_path("res/Qwen_QwQ_livecodebench_abc/results.json") == "Qwen_QwQ_livecodebench_abc"
    assert model_from_path("my-model.jsonl.gz") == "my-model"


def test_failing_test_public_detection():
    tests = json.dumps([{"input": "3\n1 2 3\n", "output": "6\n", "testtype": "stdin"}])
    assert failing_test_is_public(json.dumps({"inputs": "3\n1 2 3", "expected": "6"}), tests, False) is True
    assert failing_test_is_public(json.dumps({"inputs": "4\n1 2 3 4", "expected": "10"}), tests, False) is False
    fn = json.dumps([{"input": "[1, 2]\n3", "output": "4", "testtype": "functional"}])
    assert failing_test_is_public(json.dumps({"inputs": "[[1, 2], 3]", "expected": "4"}), fn, True) is True
    assert failing_test_is_public(json.dumps({"execution time": 1.0}), fn, True) is None


def test_import_writes_samples_and_problems(shared_data, storage):
    files = sorted(shared_data.glob(VERDICT_FILES))
    cfg = ImportConfig(inputs=[ImportInput(path=str(f)) for f in files[:2]], problem_sample=3,
                       problems=[str(p) for p in sorted((shared_data / "lcb").glob("*.jsonl"))])
    res = run_import(cfg, storage)
    again = run_import(cfg, storage)
    assert again.skipped and again.n_samples == res.n_samples
    table = pq.read_table(storage.path(res.samples))
    assert table.schema.names[: len(schemas.SAMPLES)] == schemas.SAMPLES.names
    assert table.num_rows == res.n_samples == sum(r["n_samples"] for r in res.runs)
    assert set(table.column("run_id").to_pylist()) == {r["run_id"] for r in res.runs}
    assert table.column("official_pass").null_count == 0
    problems = pq.read_table(storage.path(res.problems)).to_pylist()
    assert all(p["platform"] in ("atcoder", "codeforces", "leetcode") and p["contest_date"] for p in problems)
    for r in res.runs:
        assert r["n_problems"] == 3 and r["problems_without_tests"] == 0 and r["official_pass@1"] is not None


def _check_scored(scored, storage, files):
    import polars as pl

    assert {r["run_id"] for r in scored.imported.runs} == {model_from_path(str(f)) for f in files}
    results = pl.read_parquet(storage.path(scored.report.results))
    for run in scored.imported.runs:
        rows = {r["metric"]: r["value"] for r in results.filter(pl.col("run_id") == run["run_id"]).iter_rows(named=True)}
        if rows["official/ungraded"] == 0:  # else the comparison leaves their problems out (no public tests)
            assert rows["official/official_pass@1"] == pytest.approx(run["official_pass@1"])
        if rows["official/ungraded"] == 0:  # else the report counts them as failures, the comparison leaves them out
            assert rows["official/our_pass@1"] == pytest.approx(rows["pass@1"])
        assert rows["official/both_pass"] + rows["official/both_fail"] + rows["official/official_pass_ours_fail"] \
            + rows["official/official_fail_ours_pass"] + rows["official/ungraded"] == rows["n_samples"]
    md = storage.read_text(scored.report.report_md)
    assert "## Official verdicts beside ours" in md
    for run in scored.imported.runs:
        assert f"| {run['run_id']} |" in md
    return results


def test_import_all_six_lcb_runner_files_grade_and_report(shared_data, storage, ray_local):
    """All six files imported (a few problems each), graded on the public tests, reported with the
    official pass@1 beside ours and the agreement table."""
    from valley.grade.sandbox import bwrap_unavailable_reason
    from valley.imports.score import score_import

    if (why := bwrap_unavailable_reason()) is not None:
        pytest.skip(f"sandbox unavailable: {why}")
    files = sorted(shared_data.glob(VERDICT_FILES))
    assert len(files) == 6
    cfg = ImportConfig(name="six", inputs=[ImportInput(path=str(f)) for f in files], problem_sample=2,
                       problems=[str(p) for p in sorted((shared_data / "lcb").glob("*.jsonl"))])
    scored = score_import(cfg, storage, grade={"timeout_s": 6.0, "batch_size": 8}, report={"n_boot": 50})
    assert scored.imported.n_samples == 4 * 2 + 2 * 2 * 10
    results = _check_scored(scored, storage, files)
    import polars as pl

    # Fidelity: an official pass must pass the public tests here (they are a subset of the official ones).
    official_only = results.filter(pl.col("metric") == "official/official_pass_ours_fail")["value"].sum()
    assert official_only == 0


@pytest.mark.slow
def test_import_all_six_lcb_runner_files_full(shared_data, storage, ray_local):
    """Every sample of the six files (4944) graded; at most a handful of official passes may fail here."""
    from valley.imports.score import score_import

    files = sorted(shared_data.glob(VERDICT_FILES))
    cfg = ImportConfig(name="six-full", inputs=[ImportInput(path=str(f)) for f in files],
                       problems=[str(p) for p in sorted((shared_data / "lcb").glob("*.jsonl"))])
    scored = score_import(cfg, storage, report={"n_boot": 200})
    results = _check_scored(scored, storage, files)
    import polars as pl

    official_only = results.filter(pl.col("metric") == "official/official_pass_ours_fail")["value"].sum()
    assert official_only <= 0.01 * scored.imported.n_samples
    print(storage.read_text(scored.report.report_md).split("## Official verdicts")[1])


def test_unique_labels_required(tmp_path):
    p = _write(tmp_path / "a.jsonl", [{"question_id": "q", "response": "r"}], lines=True)
    with pytest.raises(ValueError, match="run label"):
        ImportConfig(inputs=[ImportInput(path=p), ImportInput(path=p)])
    with gzip.open(tmp_path / "z.jsonl.gz", "wt") as f:
        f.write(json.dumps({"question_id": "q", "response": "r"}) + "\n")
    assert parse_file(str(tmp_path / "z.jsonl.gz")).samples[0].response == "r"


def test_cli_import_jsonl(tmp_path, ray_local, capsys):
    from valley.cli import main

    p = _write(tmp_path / "mine.jsonl", [{"question_id": "q1", "response": "```python\nprint(1)\n```",
                                          "finish_reason": "stop", "n_tokens": 9}], lines=True)
    assert main(["import", p, "--model", "my-model", "--storage", str(tmp_path / "store")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["runs"][0]["run_id"] == "my-model" and out["n_samples"] == 1
    assert main(["import", p, p, "--model", "one", "--storage", str(tmp_path / "store")]) == 2
