"""Studies as arms and comparisons (experiment/arms.py): continued arms plan the right dependencies, bad
designs are refused at load, the paper's `study` preset is the same graph as its arms, per-arm overrides reach
the stage configs, the example studies plan, and the report renders each declared comparison."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import yaml

from valley.errors import ConfigError
from valley.experiment import load_spec, plan_study

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"
BASE = {"experiment": "x", "students": [{"name": "s", "model": "m"}], "data": {"inputs": ["a"]},
        "generate": {"problems": ["p"]}}


def _spec(tmp_path: Path, **fields):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**BASE, **fields}))
    return load_spec(path)


def test_an_arm_continued_from_another_arms_run_waits_for_it(tmp_path):
    spec = _spec(tmp_path, arms={
        "easy": {"subset": {"kind": "easy"}, "sizes": [400, 4000]},
        "hard-after-easy": {"subset": {"kind": "hard"}, "sizes": [1000], "from": ["easy@4000", "base"],
                            "train": {"epochs": 1, "learning_rate": 1e-5}},
    }, comparisons=[{"name": "curriculum", "series": "hard-after-easy"}], label=None)
    graph = plan_study(spec)
    nodes = graph.by_id()
    continued = nodes["train:s-hard-after-easy-1000-from-easy-4000"]
    assert continued.deps == ("data:s", "train:s-easy-4000") and continued.params.start == "train:s-easy-4000"
    assert nodes["train:s-hard-after-easy-1000-from-base"].deps == ("data:s",)
    run = next(r for r in graph.runs if r.run_id == "s-hard-after-easy-1000-from-easy-4000")
    assert (run.arm, run.start, run.checkpoint, run.subset) == ("hard-after-easy", "easy-4000", "4000", "hard")
    assert spec.arm_train_config("hard-after-easy").epochs == 1 and spec.arm_train_config("easy").epochs != 1


def test_arm_overrides_reach_the_stage_configs(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from valley.experiment import nodes

    spec = _spec(tmp_path, arms={"a": {"sizes": [10], "train": {"epochs": 1}, "generate": {"n": 3}},
                                 "b": {"sizes": [10]}}, train={"epochs": 4})
    graph = plan_study(spec)
    train = {n.params.arm: n for n in graph.nodes if n.kind == "train"}
    gens = {n.params.arm: n for n in graph.nodes if n.kind == "generate"}
    inputs = {"data:s": {"stage_dir": "data/x"}}
    assert nodes.train_config_of(spec, train["a"], None, inputs).epochs == 1
    assert nodes.train_config_of(spec, train["b"], None, inputs).epochs == 4
    fake = SimpleNamespace(uri=lambda p: p)
    trained = {"model": "train/a/model", "epochs": {}}
    assert nodes.generate_config(spec, gens["a"], fake, {gens["a"].params.train: trained}).n == 3
    assert nodes.generate_config(spec, gens["b"], fake, {gens["b"].params.train: trained}).n == 1


@pytest.mark.parametrize(("fields", "message"), [
    ({"arms": {"a": {"sizes": [10], "from": ["b@5"]}}}, "starts from 'b@5', which no arm trains"),
    ({"arms": {"a": {"sizes": [10], "from": ["b@10"]}, "b": {"sizes": [10], "from": ["a@10"]}}}, "loop"),
    ({"arms": {"a": {"sizes": [10, 20], "names": "same"}}}, "must contain {size}"),
    ({"arms": {"a": {"sizes": [10], "names": "x"}, "b": {"sizes": [10], "names": "x"}}}, "both name a run 'x'"),
    ({"arms": {"a": {"sizes": [10]}}, "comparisons": [{"name": "c", "series": "z"}]}, "arms \\['z'\\]"),
    ({"arms": {"a": {"sizes": [10]}, "b": {"sizes": [20]}},
      "comparisons": [{"name": "c", "contrast": ["a", "b"]}]}, "share no size"),
    ({"arms": {"a": {"sizes": [10], "subset": {"where": {"techer": "x"}}}}}, "column 'techer'"),
    ({"arms": {"a": {"sizes": [10], "train": {"subset": "r1"}}}}, "must not override \\['subset'\\]"),
    ({"arms": {"a": {"sizes": [10], "generate": {"max_tokens": 9}}}}, "must not override \\['max_tokens'\\]"),
    ({"arms": {"a": {"sizes": [10]}}, "study": {"scaling_sizes": [5], "stage2_from_size": None}}, "either arms"),
    ({"comparisons": [{"name": "c", "series": "r"}]}, "go with arms"),
])
def test_a_design_that_cannot_run_is_refused_at_load(tmp_path, fields, message):
    with pytest.raises(ConfigError, match=message):
        _spec(tmp_path, **fields)


def test_the_papers_study_preset_is_the_same_graph_as_its_arms(tmp_path):
    arms = load_spec(CONFIGS / "paper.yaml")
    data = yaml.safe_load((CONFIGS / "paper.yaml").read_text())
    for key in ("arms", "comparisons", "evaluate_base"):
        data.pop(key)
    data["study"] = {"scaling_sizes": [1000, 10000, 30000, 100000], "correctness_size": 6000,
                     "difficulty_size": 4000, "subset_sources": ["taco"], "stage2_from_size": 30000}
    path = tmp_path / "legacy.yaml"
    path.write_text(yaml.safe_dump(data))
    legacy = load_spec(path)
    assert plan_study(legacy).nodes == plan_study(arms).nodes
    assert plan_study(legacy).runs == plan_study(arms).runs


@pytest.mark.parametrize(("name", "trains", "arms"), [
    ("teachers", 4, {"strong", "weak"}),
    ("answers_per_question", 3, {"one-answer", "four-answers", "sixteen-answers"}),
])
def test_the_example_studies_plan(name, trains, arms):
    spec = load_spec(CONFIGS / f"{name}.yaml")
    graph = plan_study(spec)
    assert graph.count("train") == trains and {r.arm for r in graph.runs if r.arm} == arms
    assert graph.count("label") == 0 and graph.count("report") == 1
    data = next(n for n in graph.nodes if n.kind == "data")
    assert {r.name for r in data.params.subsets} == {r.subset for r in (n.params for n in graph.nodes
                                                                          if n.kind == "train")}


def test_the_report_renders_each_declared_comparison():
    from valley.report.comparisons import comparison_figure, comparison_sections
    from valley.report.config import ComparisonRuns

    rows = []
    for run_id, size, value in [("s-base", 0, 0.20), ("s-strong-200", 200, 0.10), ("s-strong-800", 800, 0.40),
                                ("s-weak-200", 200, 0.05), ("s-weak-800", 800, 0.15)]:
        for metric, v in (("pass@1", value), ("completion_rate", 0.9), ("think_rate", 0.5)):
            rows.append({"run_id": run_id, "metric": metric, "value": v, "ci_low": v - 0.02, "ci_high": v + 0.02,
                         "data_size": size, "checkpoint": "base", "model": "s", "epoch": None})
    results = pl.DataFrame(rows)
    contrast = ComparisonRuns(name="Teacher", kind="contrast", arms=["strong", "weak"],
                              runs={"strong": ["s-strong-200", "s-strong-800"], "weak": ["s-weak-200", "s-weak-800"]})
    series = ComparisonRuns(name="Strong: quantity", kind="series", arms=["strong"],
                            runs={"strong": ["s-strong-200", "s-strong-800"]})
    text = "\n".join(comparison_sections([contrast, series], results, {"s": "s-base"}, ["comparison-1.png"]))
    assert "## Teacher" in text and "## Strong: quantity" in text and "![comparison-1.png]" in text
    assert "| s | the base model | 800 | pass@1 | 40.0 [38.0, 42.0] | 15.0 [13.0, 17.0] | +25.0 |" in text
    assert "| s (base) | 20.0" in text
    assert comparison_figure(contrast, results, {"s": "s-base"})[:4] == b"\x89PNG"


@pytest.mark.slow
def test_the_teacher_study_runs_on_the_demo_corpus_and_reports_its_contrast(ray_local, tmp_path, monkeypatch):
    """teachers.yaml end to end (reduced: 40 traces per arm, the random demo model as the student): the
    data stage selects each teacher's traces, and report.md has the declared contrast with both arms."""
    from valley.demo import write_demo
    from valley.experiment import run_experiment
    from valley.storage import Storage

    monkeypatch.chdir(tmp_path)
    write_demo("demo-data", n_traces=600, n_problems=8)
    spec = load_spec(CONFIGS / "teachers.yaml", [
        "students=[{name: tiny, model: demo-data/model}]", "arms.strong.sizes=[40]", "arms.weak.sizes=[40]",
        "train.epochs=1", "generate.n=1", "generate.max_tokens=32", "report.n_boot=20"])
    storage = Storage(str(tmp_path / "runs"))
    result = run_experiment(spec, storage, live=False)
    report = Path(storage.uri(result.report_md)).read_text()
    assert "## Teacher: strong vs weak at equal size" in report
    assert any(p.endswith("comparison-1.png") for p in result.plots)
    assert "| tiny | the base model | 40 | pass@1 |" in report
    data_dir = next(p for p in (tmp_path / "runs" / "data").iterdir() if p.is_dir())
    manifest = __import__("json").loads((data_dir / "manifest.json").read_text())
    assert {n: s["rows"] for n, s in manifest["subsets"].items()} == {"strong-40": 40, "weak-40": 40}
    assert manifest["subsets"]["strong-40"]["eligible"] == 320


def test_an_arm_may_continue_from_another_students_run(tmp_path):
    """`<student>/<arm>@<size>`: every student's run of the arm starts from that student's run (e.g. a
    checkpoint of the same architecture trained on another corpus)."""
    spec = _spec(tmp_path, students=[{"name": "late", "model": "m2"}, {"name": "early", "model": "m"}],
                 arms={"r": {"sizes": [10]}, "more": {"sizes": [20], "from": ["early/r@10"]}}, label=None)
    graph = plan_study(spec)
    nodes = graph.by_id()
    assert [n.student for n in graph.nodes if n.kind == "data"] == ["early", "late"]  # the named student first
    assert nodes["train:late-more-20-from-early-r-10"].deps == ("data:late", "train:early-r-10")
    assert nodes["train:early-more-20-from-r-10"].deps == ("data:early", "train:early-r-10")
    with pytest.raises(ConfigError, match="students \\['nobody'\\]"):
        _spec(tmp_path, arms={"r": {"sizes": [10]}, "more": {"sizes": [20], "from": ["nobody/r@10"]}})
