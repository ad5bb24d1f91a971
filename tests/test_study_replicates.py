"""Replicates (`seeds` per arm or study-wide): each seed is its own training run with the train seed + k,
replicate 0 keeps the single run's names and hashes, `resample` gives each replicate its own subset draw,
continued runs pair replicate k with replicate k, and the report sees every replicate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from valley.errors import ConfigError
from valley.experiment import load_spec, plan_study
from valley.experiment import nodes as node_runners

BASE = {"experiment": "x", "students": [{"name": "s", "model": "m"}], "data": {"inputs": ["a"], "seed": 5},
        "generate": {"problems": ["p"]}, "label": None}


def _spec(tmp_path: Path, **fields):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**BASE, **fields}))
    return load_spec(path)


def _train_nodes(graph):
    return {n.params.tag: n for n in graph.nodes if n.kind == "train"}


def test_seeds_at_one_size_train_one_run_per_seed_with_its_own_train_seed(tmp_path):
    spec = _spec(tmp_path, arms={"r": {"sizes": [100, 400], "names": "r{size}", "seeds": {100: 3}}},
                 train={"seed": 7})
    graph = plan_study(spec)
    train = _train_nodes(graph)
    assert sorted(train) == ["r100", "r100-s1", "r100-s2", "r400"]
    inputs = {"data:s": {"stage_dir": "data/x"}}
    seeds = {tag: node_runners.train_config_of(spec, n, None, inputs).seed for tag, n in train.items()}
    assert seeds == {"r100": 7, "r100-s1": 8, "r100-s2": 9, "r400": 7}
    assert {n.params.subset for n in train.values()} == {"r100", "r400"}  # same draw, own data order
    runs = {r.run_id: r for r in graph.runs}
    assert [runs[f"s-r100{suffix}"].replicate for suffix in ("", "-s1", "-s2")] == [0, 1, 2]


def test_replicate_zero_is_the_run_a_study_without_seeds_has(tmp_path):
    single = _spec(tmp_path, arms={"r": {"sizes": [100], "names": "r{size}"}})
    tripled = _spec(tmp_path, arms={"r": {"sizes": [100], "names": "r{size}"}}, seeds=3)
    inputs = {"data:s": {"stage_dir": "data/x"}}
    one = node_runners.train_config_of(single, _train_nodes(plan_study(single))["r100"], None, inputs)
    first = node_runners.train_config_of(tripled, _train_nodes(plan_study(tripled))["r100"], None, inputs)
    assert one.config_hash() == first.config_hash() and one.name == first.name
    assert plan_study(single).node("data:s").params == plan_study(tripled).node("data:s").params


def test_resample_draws_a_subset_per_replicate_from_the_seed_plus_k(tmp_path):
    spec = _spec(tmp_path, arms={
        "easy": {"subset": {"kind": "random", "where": {"difficulty": "easy"}}, "sizes": [50], "names": "easy",
                 "seeds": 2, "resample": True},
        "rest": {"subset": {"kind": "random", "exclusive_of": ["easy"]}, "sizes": [50], "names": "rest",
                 "seeds": 2, "resample": True},
    })
    graph = plan_study(spec)
    subsets = {r.name: r.spec_fields() for r in graph.node("data:s").params.subsets}
    assert sorted(subsets) == ["easy", "easy-s1", "rest", "rest-s1"]
    assert "seed" not in subsets["easy"] and subsets["easy-s1"]["seed"] == 6  # the data run's seed 5, plus 1
    assert subsets["rest-s1"]["exclusive_of"] == ["easy-s1"] and subsets["rest"]["exclusive_of"] == ["easy"]
    train = _train_nodes(graph)
    assert train["easy-s1"].params.subset == "easy-s1" and train["easy"].params.subset == "easy"


def test_a_continued_replicate_starts_from_the_same_replicate_of_its_start(tmp_path):
    spec = _spec(tmp_path, arms={
        "r": {"sizes": [100], "names": "r{size}", "seeds": 2},
        "c": {"sizes": [20], "names": "c", "from": ["r@100"], "seeds": 3},
    })
    train = _train_nodes(plan_study(spec))
    assert train["c-from-r100"].params.start == "train:s-r100"
    assert train["c-from-r100-s1"].params.start == "train:s-r100-s1"
    assert train["c-from-r100-s2"].params.start == "train:s-r100"  # r has no third seed: its first


def test_the_report_receives_each_replicate(tmp_path):
    spec = _spec(tmp_path, arms={"r": {"sizes": [100], "names": "r{size}", "seeds": 2}})
    graph = plan_study(spec)
    graded = {r.run_id: {"samples": "s", "verdicts": "v", "problems": "p"} for r in graph.runs}
    specs = {s["run_id"]: s for s in node_runners.run_specs(graph.runs, graded)}
    assert "replicate" not in specs["s-r100"] and specs["s-r100-s1"]["replicate"] == 1


@pytest.mark.parametrize("seeds", [0, {999: 2}, {100: 0}])
def test_bad_seeds_are_refused_at_load(tmp_path, seeds):
    with pytest.raises(ConfigError, match="seeds"):
        _spec(tmp_path, arms={"r": {"sizes": [100], "names": "r{size}", "seeds": seeds}})
