"""Report stage end to end on synthetic tables: Parquet, Markdown tables, PNG plots, valley fit."""

from __future__ import annotations

import io
import json

import numpy as np
import polars as pl
import pytest
from PIL import Image

from fixtures import REPORT_RUNS, lcb_run_tables, report_config, write_report_inputs
from valley import schemas
from valley.errors import ConfigError, InputError
from valley.report.config import ReportConfig
from valley.report.stage import run_report


@pytest.fixture(scope="module")
def report(tmp_path_factory, ray_local):
    from valley.storage import Storage

    storage = Storage(str(tmp_path_factory.mktemp("report") / "store"))
    cfg = report_config(write_report_inputs(storage))
    return storage, cfg, run_report(cfg, storage)


def test_results_parquet_one_row_per_run_and_metric(report):
    storage, cfg, result = report
    table = storage.read_parquet(result.results)
    assert table.schema.names == schemas.RESULTS.names
    df = pl.from_arrow(table)
    assert df.select("run_id", "metric").is_duplicated().sum() == 0
    assert set(df["run_id"].unique()) == {r[0] for r in REPORT_RUNS}
    assert set(df["experiment"].unique()) == {"valley-synthetic"}
    assert result.n_rows == table.num_rows and result.n_runs == len(REPORT_RUNS)
    # pass@1 of one run recomputed by hand from the inputs
    samples = pl.from_arrow(storage.read_parquet("inputs/samples"))
    verdicts = pl.from_arrow(storage.read_parquet("inputs/verdicts.parquet"))
    v = verdicts.filter(pl.col("run_id") == "qwen-30k")
    expected = v.group_by("question_id").agg((pl.col("verdict") == "pass").mean())["verdict"].mean()
    got = df.filter((pl.col("run_id") == "qwen-30k") & (pl.col("metric") == "pass@1")).row(0, named=True)
    assert got["value"] == pytest.approx(expected)
    assert got["ci_low"] <= got["value"] <= got["ci_high"]
    s = samples.filter(pl.col("run_id") == "qwen-30k")
    done = ((s["finish_reason"] == "stop") & (s["n_tokens"] <= 1000)).mean()
    comp = df.filter((pl.col("run_id") == "qwen-30k") & (pl.col("metric") == "completion_rate"))["value"][0]
    assert comp == pytest.approx(done)
    epochs = df.filter(pl.col("epoch").is_not_null())["run_id"].unique().sort().to_list()
    assert epochs == ["qwen-10k-e1", "qwen-10k-e2"]
    assert df.filter(pl.col("run_id") == "llama-1k")["model"].unique().to_list() == ["Llama-3.1-8B-Instruct"]


def _section(md: str, title: str) -> str:
    start = md.index(title)
    end = md.find("\n## ", start + 1)
    return md[start : end if end > 0 else None]


def _first_cells(section: str) -> list[str]:
    return [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ") and "---" not in line]


def test_markdown_tables_have_the_papers_rows(report):
    storage, _, result = report
    md = storage.read_text(result.report_md)
    t1 = _section(md, "## Table 1")
    assert _first_cells(t1) == [
        "Data", "Llama-3.1-8B-Instruct (instruct)", "1K", "10K",
        "Data", "Qwen2.5-7B-Instruct (instruct)", "1K", "10K", "30K", "100K",
    ]
    assert "| Data | LCB pass@1 | Easy | Medium | Hard | Completion | Think tag |" in t1
    t2 = _section(md, "## Table 2")
    assert "trained from the instruct model" in t2 and "trained from the 30k checkpoint" in t2
    assert "| grader errors |" in _section(md, "## Data integrity")
    assert _first_cells(t2) == ["Subset", "correct 6K", "incorrect 6K", "Subset", "easy 4K", "hard 4K"]
    epochs = _section(md, "## Across training")
    assert [c for c in _first_cells(epochs) if c != "Model"] == ["Qwen2.5-7B-Instruct", "Qwen2.5-7B-Instruct"]
    assert "![valley.png](valley.png)" in md


def test_pngs_open_with_sane_dimensions(report):
    storage, _, result = report
    names = {p.rsplit("/", 1)[1] for p in result.plots}
    assert {"valley.png", "valley_pass_at_1.png", "valley_completion_rate.png", "valley_think_rate.png",
            "epochs.png"} <= names
    for path in result.plots:
        img = Image.open(io.BytesIO(storage.read_bytes(path)))
        img.verify()
        img = Image.open(io.BytesIO(storage.read_bytes(path)))
        assert img.format == "PNG" and img.width >= 400 and img.height >= 300
    wide = Image.open(io.BytesIO(storage.read_bytes(f"{result.stage_dir}/valley.png")))
    assert wide.width > 2 * wide.height  # three panels side by side


def test_valley_fit_finds_the_dip(report):
    storage, _, result = report
    fits = storage.read_json(result.valley_fit)["fits"]
    qwen = next(f for f in fits if f["model"] == "Qwen2.5-7B-Instruct" and f["metric"] == "pass@1")
    assert qwen["checkpoint"] == "base" and qwen["fit"]["n_points"] == 4  # epoch runs stay out of the curve
    assert 1000 <= qwen["fit"]["argmin_size"] <= 30000
    assert qwen["fit"]["slope_per_decade_after"] > 0
    assert qwen["base_value"] == pytest.approx(
        pl.from_arrow(storage.read_parquet(result.results))
        .filter((pl.col("run_id") == "qwen-base") & (pl.col("metric") == "pass@1"))["value"][0]
    )
    json.dumps(fits)  # plain JSON types only


def test_rerun_skips_and_success_written_last(report):
    storage, cfg, result = report
    marker = storage.read_json(result.stage_dir, "_SUCCESS")
    assert marker["config_hash"] == cfg.config_hash()
    before = storage.read_bytes(result.results)
    again = run_report(cfg, storage)
    assert again.skipped and again.results == result.results
    assert storage.read_bytes(result.results) == before


def test_inline_path_matches_ray_tasks(report, tmp_path):
    """parallel=False (no Ray tasks) gives the same numbers; parallel is not part of the hash."""
    from valley.storage import Storage

    storage, cfg, result = report
    other = Storage(str(tmp_path / "store2"))
    inline_cfg = report_config(write_report_inputs(other), parallel=False)
    assert inline_cfg.config_hash() == cfg.config_hash()
    inline = run_report(inline_cfg, other)
    a = pl.from_arrow(storage.read_parquet(result.results)).sort("run_id", "metric")
    b = pl.from_arrow(other.read_parquet(inline.results)).sort("run_id", "metric")
    assert a.equals(b)


def test_missing_table_and_unknown_run_id_are_input_errors(tmp_path):
    from valley.storage import Storage

    storage = Storage(str(tmp_path / "s"))
    paths = write_report_inputs(storage)
    cfg = report_config(paths, parallel=False)
    bad = cfg.model_copy(update={"runs": [cfg.runs[0].model_copy(update={"verdicts": "inputs/nope.parquet"})]})
    with pytest.raises(InputError, match="verdicts table not found") as err:
        run_report(bad, storage)
    assert err.value.file.endswith("inputs/nope.parquet")
    wrong = cfg.model_copy(update={"runs": [cfg.runs[0].model_copy(update={"run_id": "ghost"})]})
    with pytest.raises(InputError, match="no rows with run_id 'ghost'") as err:
        run_report(wrong, storage)
    assert err.value.field == "run_id"


def test_unmatched_rows_written_aside(tmp_path):
    from valley.storage import Storage

    storage = Storage(str(tmp_path / "s"))
    paths = write_report_inputs(storage)
    verdicts = storage.read_parquet("inputs/verdicts.parquet")
    storage.write_parquet(verdicts.slice(3), "inputs", "verdicts_cut.parquet")  # qwen-base q00 samples 0-2
    cfg = report_config(paths, parallel=False)
    run = cfg.runs[0].model_copy(update={"verdicts": "inputs/verdicts_cut.parquet"})
    result = run_report(cfg.model_copy(update={"runs": [run]}), storage)
    aside = pl.from_arrow(storage.read_parquet(result.unmatched))
    assert aside["kind"].to_list() == ["sample_without_verdict"] * 3
    assert aside["sample_idx"].to_list() == [0, 1, 2]
    md = storage.read_text(result.report_md)
    assert "| qwen-base | 30 | 120 | 3 | 0 | 0 |" in md


def test_max_tokens_comes_from_the_generate_run(tmp_path):
    """Without max_tokens a report takes the generate stage's budget from its _SUCCESS marker, and names
    the same directory as a report given that budget; without a recorded budget it says what to set."""
    from valley.storage import Storage

    storage = Storage(str(tmp_path / "s"))
    paths = write_report_inputs(storage)
    given = report_config(paths, parallel=False).model_copy(update={"runs": report_config(paths).runs[:1]})
    unset = given.model_copy(update={"max_tokens": None})
    with pytest.raises(ConfigError, match="records no max_tokens.*set max_tokens"):
        run_report(unset, storage)
    storage.mark_success("inputs", "generate-hash", {"max_tokens": 1000})
    result = run_report(unset, storage)
    assert result.stage_dir == run_report(given, storage).stage_dir
    assert "token budget 1000" in storage.read_text(result.report_md)


def test_config_rejects_duplicate_runs_and_bad_windows():
    from valley.config import build

    run = {"run_id": "a", "data_size": 0, "samples": "s", "verdicts": "v", "problems": "p"}
    with pytest.raises(ConfigError, match="appears twice"):
        build(ReportConfig, {"experiment": "e", "runs": [run, run]})
    with pytest.raises(ConfigError, match="date_windows"):
        build(ReportConfig, {"experiment": "e", "runs": [run], "date_windows": [["2024-13-01", "2025-01-01"]]})


def test_job_entrypoint_runs_a_yamlreport_config(tmp_path, ray_local, capsys):
    """jobs/report.py: YAML config + --set override -> the stage's result as JSON on stdout."""
    import runpy
    import sys
    from pathlib import Path

    import yaml

    from valley.storage import Storage

    storage = Storage(str(tmp_path / "store"))
    cfg = report_config(write_report_inputs(storage))
    data = cfg.model_dump(mode="json")
    data["runs"] = [r for r in data["runs"] if r["model"].startswith("Llama")]
    (tmp_path / "report.yaml").write_text(yaml.safe_dump(data))
    path = Path(__file__).resolve().parents[1] / "jobs" / "report.py"

    def job(*args: str) -> int:
        sys_argv = sys.argv
        sys.argv = [str(path), *args]
        try:
            runpy.run_path(str(path), run_name="__main__")
        except SystemExit as exc:
            return int(exc.code or 0)
        finally:
            sys.argv = sys_argv
        return 0

    rc = job(str(tmp_path / "report.yaml"), "--storage", storage.root, "--set", "n_boot=50")
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_runs"] == 3 and not out["skipped"]
    assert out["stage_dir"].startswith(storage.uri() + "/report/")  # people see full locations
    assert storage.is_complete(storage.relative(out["stage_dir"]), cfg.model_copy(update={"n_boot": 50, "runs": cfg.runs[-3:]}).config_hash())
    assert "Llama-3.1-8B-Instruct (instruct)" in storage.read_text(storage.relative(out["report_md"]))
    bad = job(str(tmp_path / "report.yaml"), "--storage", storage.root, "--set", "n_boot=-1")
    assert bad == 2 and "n_boot" in capsys.readouterr().err


def test_report_on_real_livecodebench_verdicts(shared_data, tmp_path):
    """Two real instruct-model evaluations graded by lcb_runner, reported as Table 1's base rows."""
    from valley.storage import Storage

    storage = Storage(str(tmp_path / "store"))
    files = {
        "qwen-base": ("Qwen2.5-7B-Instruct", "xiangww0108__Qwen2.5-Ins-7B__Scenario.codegeneration_1_0.2_eval_all.json.gz"),
        "llama-base": ("Llama-3.1-8B-Instruct", "gu-ni__output_test6__LLama3.1-8b-Ins__Scenario.codegeneration_10_0.2_eval_all.json.gz"),
    }
    runs, expected = [], {}
    for run_id, (model, name) in files.items():
        records, samples, verdicts, problems = lcb_run_tables(shared_data / "lcb_verdicts" / name)
        expected[run_id] = float(np.mean([r["pass@1"] for r in records]))
        storage.write_parquet(samples, run_id, "samples.parquet")
        storage.write_parquet(verdicts, run_id, "verdicts.parquet")
        storage.write_parquet(problems, run_id, "problems.parquet")
        runs.append({"run_id": run_id, "model": model, "data_size": 0, "samples": f"{run_id}/samples.parquet",
                     "verdicts": f"{run_id}/verdicts.parquet", "problems": f"{run_id}/problems.parquet"})
    cfg = ReportConfig(experiment="lcb-real", runs=runs, max_tokens=32768, n_boot=200, parallel=False)
    result = run_report(cfg, storage)
    df = pl.from_arrow(storage.read_parquet(result.results))
    for run_id, value in expected.items():
        got = df.filter((pl.col("run_id") == run_id) & (pl.col("metric") == "pass@1"))["value"][0]
        assert got == pytest.approx(value)
    n = df.filter((pl.col("run_id") == "qwen-base") & (pl.col("metric") == "n_problems"))["value"][0]
    assert n == 714  # the shared (non-held-out) LCB release_v6 problems
    md = storage.read_text(result.report_md)
    assert f"| Qwen2.5-7B-Instruct (instruct) | {100 * expected['qwen-base']:.1f} [" in md
    assert "| Run | atcoder | codeforces | leetcode |" in md  # platform breakdown from the real rows


def test_paired_comparisons_are_written_and_told_in_words(report):
    storage, cfg, result = report
    md = storage.read_text(result.report_md)
    tested = pl.read_parquet(storage.path(result.comparisons))
    per_problem = pl.read_parquet(storage.path(result.per_problem))
    assert "## Is the difference real?" in md and "The valley's dip" in md
    assert per_problem.select("run_id").n_unique() == len(cfg.runs)
    pass1 = tested.filter(pl.col("metric") == "pass@1")
    assert {"RQ2: trace correctness", "RQ3: question difficulty", "valley: random vs base"} <= set(
        pass1["comparison"].to_list())
    assert (tested["p_holm"] >= tested["p_value"]).all() and tested["words"].str.contains("points").all()
