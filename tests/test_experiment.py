"""Experiment spec validation and a small experiment in process (`ray job submit`: tests/test_jobs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from valley.errors import ConfigError
from valley.experiment import load_spec

REPO = Path(__file__).resolve().parents[1]


def _small_spec(demo: dict, tmp: Path) -> Path:
    spec = {
        "experiment": "jobtest",
        "students": [{"name": "tiny", "model": demo["model"]}],
        "study": {"scaling_sizes": [40], "correctness_size": None, "difficulty_size": None,
                  "stage2_from_size": None, "evaluate_base": True},
        "data": {"inputs": [demo["traces"]], "max_seq_len": 512},
        "label": None,
        "train": {"num_workers": 1, "global_batch_size": 4, "micro_batch_size": 1, "epochs": 1,
                  "learning_rate": 1e-3, "max_seq_len": 512},
        "generate": {"problems": [demo["problems"]], "n": 1, "max_tokens": 16,
                     "filters": {"limit": 4}, "pool": {"mode": "data", "replicas": 1, "batch_size": 4}},
        "grade": {"timeout_s": 2.0, "batch_size": 4},
        "report": {"n_boot": 20},
    }
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_spec_rejects_fields_the_runner_owns(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"experiment": "x", "students": [{"name": "s", "model": "m"}],
                                    "data": {"inputs": ["a"], "tokenizer": "t"},
                                    "generate": {"problems": ["p"]}}))
    with pytest.raises(ConfigError, match="must not set"):
        load_spec(path)
    path.write_text(yaml.safe_dump({"experiment": "x", "students": [{"name": "s", "model": "m"}],
                                    "data": {"inputs": ["a"], "max_seq_len": "long"},
                                    "generate": {"problems": ["p"]}}))
    with pytest.raises(ConfigError, match="max_seq_len"):
        load_spec(path)


def test_demo_specs_are_valid():
    """demo.yaml is RQ1 alone (the 15-minute demo); demo-full.yaml the whole study on the same settings."""
    spec = load_spec(REPO / "jobs" / "configs" / "demo.yaml")
    full = load_spec(REPO / "jobs" / "configs" / "demo-full.yaml")
    arms, comparisons, evaluate_base = spec.design()
    full_arms, full_comparisons, _ = full.design()
    assert list(arms) == ["r"] and not arms["r"].per_epoch_eval and evaluate_base
    assert [c.series or c.contrast for c in comparisons] == ["r"]
    assert full_arms["r"].per_epoch_eval and full_arms["correct"].from_ == ["base", "r@1200"]
    assert [c.series or c.contrast for c in full_comparisons] == ["r", ["correct", "incorrect"], ["easy", "hard"]]
    assert set(arms["r"].sizes) < set(full_arms["r"].sizes)
    assert spec.train == full.train and spec.generate == full.generate and spec.data == full.data


def test_paper_spec_is_the_papers_study():
    """The full-scale spec validates against every stage's config and carries the paper's recipe."""
    from valley.experiment.spec import train_fields
    from valley.train.config import TrainConfig

    spec = load_spec(REPO / "jobs" / "configs" / "paper.yaml")
    assert [s.name for s in spec.students] == ["qwen2.5-7b-instruct", "llama3.1-8b-instruct"]
    arms, _, _ = spec.design()
    assert arms["r"].sizes[:3] == [1000, 10000, 30000] and max(arms["r"].sizes) >= 100000
    assert (arms["correct"].sizes, arms["easy"].sizes, arms["hard"].from_) == ([6000], [4000], ["base", "r@30000"])
    train = TrainConfig(data="-", model="-", **train_fields(spec))  # max_seq_len: the data section's
    assert (train.global_batch_size, train.learning_rate, train.warmup_ratio, train.epochs, train.max_seq_len) == (
        128, 8e-5, 0.1, 5, 32768)
    # the batch counts examples (every example trained every epoch); accumulation is sized per step
    assert (train.batch_unit, train.last_step) == ("examples", "partial")
    assert train.zero_stage == 3 and train.use_gpu
    assert spec.grade.task_resources == {"grader": 1} and spec.generate.max_tokens == 32768


def test_spec_validates_per_epoch_subsets(tmp_path):
    base = {"experiment": "x", "students": [{"name": "s", "model": "m"}], "data": {"inputs": ["a"]},
            "generate": {"problems": ["p"]}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**base, "study": {"per_epoch_eval": ["random", "hardest"]}}))
    with pytest.raises(ConfigError, match="hardest"):
        load_spec(path)
    path.write_text(yaml.safe_dump({**base, "train": {"export_every_epoch": True}}))
    with pytest.raises(ConfigError, match="export_every_epoch"):
        load_spec(path)


def test_epoch_runs_reuse_the_start_and_final_evaluations():
    from valley.experiment import EvalRun, epoch_runs

    final = EvalRun("s-correct-from-r30", "s", 6000, "correct", "30000", train="train:s-correct-from-r30")
    points = epoch_runs(final, 3, start_run_id="s-r30")
    assert [(p.run_id, p.epoch, p.alias_of) for p in points] == [
        ("s-correct-from-r30-e0", 0, "s-r30"),
        ("s-correct-from-r30-e1", 1, None),
        ("s-correct-from-r30-e2", 2, None),
        ("s-correct-from-r30-e3", 3, "s-correct-from-r30"),
    ]
    assert all((p.data_size, p.subset, p.checkpoint, p.train) == (6000, "correct", "30000", final.train)
               for p in points)
    # the start model was not evaluated (evaluate_base: false): no epoch-0 point
    assert [p.epoch for p in epoch_runs(final, 3, start_run_id=None)] == [1, 2, 3]


def test_experiment_with_per_epoch_evaluation(ray_local, tmp_path):
    """A whole small experiment in process: the RQ1 run is also evaluated after its first epoch, and the
    report's across-training section has epochs 0 (the base model), 1 and 2 (the final model)."""
    import polars as pl

    from valley.demo import write_demo
    from valley.experiment import run_experiment
    from valley.storage import Storage

    demo = write_demo(tmp_path / "demo", n_traces=120, n_problems=6)
    path = _small_spec(demo, tmp_path)
    data = yaml.safe_load(path.read_text())
    data["study"]["per_epoch_eval"] = ["random"]
    data["train"].update(epochs=2, num_workers=1, cpus_per_worker=0.5)
    path.write_text(yaml.safe_dump(data))
    result = run_experiment(load_spec(path), Storage(str(tmp_path / "store")))

    df = pl.read_parquet(result.results)
    runs = df.select("run_id", "epoch").unique().sort("run_id")
    assert runs.rows() == [("tiny-base", None), ("tiny-r40", None), ("tiny-r40-e0", 0), ("tiny-r40-e1", 1),
                           ("tiny-r40-e2", 2)]
    per_run = {r: df.filter(pl.col("run_id") == r).sort("metric")
               for r in df["run_id"].unique()}
    cols = ["metric", "value", "ci_low", "ci_high"]
    assert per_run["tiny-r40-e0"].select(cols).equals(per_run["tiny-base"].select(cols))
    assert per_run["tiny-r40-e2"].select(cols).equals(per_run["tiny-r40"].select(cols))
    e1 = df.filter((pl.col("run_id") == "tiny-r40-e1") & (pl.col("metric") == "think_rate"))
    assert e1.height >= 1 and e1["data_size"].to_list()[0] == 40
    report = Path(result.report_md).read_text()
    assert "## Across training" in report and "epochs.png" in report
    assert any(p.endswith("epochs.png") for p in result.plots)
    # the epoch export of the training run is what tiny-r40-e1 generated with
    assert list((tmp_path / "store" / "train").glob("*/model-epoch1/model.safetensors"))
