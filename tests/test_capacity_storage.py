"""The capacity estimate reads earlier runs through `Storage` (here an object store, `memory://`), with the
data stage's manifest model and each student's own generate settings."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa

from valley.capacity.cluster import GpuNode
from valley.capacity.estimate import estimate_study
from valley.experiment import load_spec
from valley.storage import Storage

DEMO = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "demo-full.yaml"
H100 = GpuNode("test", 8, "H100", 79.6)


def test_estimate_reads_manifests_and_samples_on_an_object_store_with_student_overrides(tmp_path, monkeypatch):
    from valley.demo import write_demo

    monkeypatch.chdir(tmp_path)
    write_demo("demo-data", n_traces=200, n_problems=6)
    shutil.copytree("demo-data/model", "demo-data/student")
    spec = load_spec(DEMO)
    spec.students[0].generate = {"n": 3}  # this student samples 3 per problem; the section says otherwise
    root = "memory://capacity-test/runs"
    storage = Storage(root)
    data_dir = "data/valley-demo-full-tiny-qwen2-0123456789ab"
    storage.write_json({"subsets": {"r100": {"rows": 100, "docs": 100, "tokens": 40000, "loss_tokens": 30000,
                                             "pack_efficiency": 0.98}}}, data_dir, "manifest.json")
    storage.write_json({"config_hash": "0123456789ab"}, data_dir, "_SUCCESS")
    unfinished = "data/valley-demo-full-tiny-qwen2-labelled-ba9876543210"  # no marker: not read
    storage.write_json({"subsets": {"correct": {"rows": 1, "tokens": 7}}}, unfinished, "manifest.json")
    gen_dir = "generate/valley-demo-full-tiny-qwen2-base-0123456789ab"
    storage.write_parquet(pa.table({"n_tokens": [100, 300]}), gen_dir, "samples", "part-00000.parquet")
    storage.write_json({"config_hash": "0123456789ab"}, gen_dir, "_SUCCESS")

    plan = estimate_study(spec, H100, storage_root=root)

    by_subset = {t.subset: t for t in plan.train}
    assert (by_subset["r100"].tokens_per_epoch, by_subset["r100"].tokens_source) == (40000, "manifest")
    assert by_subset["correct"].tokens_source == "corpus-sample"
    assert all(e.samples == e.problems * 3 for e in plan.evaluate)
    assert {(e.expected_tokens, e.length_source) for e in plan.evaluate} == {(200.0, "previous-run")}
    assert {t.run for t in plan.train} >= {"tiny-qwen2-r100", "tiny-qwen2-correct-from-r1200"}


def test_an_arms_train_overrides_are_priced(tmp_path, monkeypatch):
    """An arm that trains 1 epoch instead of the section's 2 is estimated at half the steps and FLOPs."""
    import yaml

    from valley.demo import write_demo

    monkeypatch.chdir(tmp_path)
    write_demo("demo-data", n_traces=200, n_problems=6)
    data = yaml.safe_load(DEMO.read_text())
    data["students"] = [{"name": "tiny", "model": "demo-data/model"}]
    data["arms"] = {"short": {"subset": {"kind": "random"}, "sizes": [100], "train": {"epochs": 1}},
                    "long": {"subset": {"kind": "random", "sources": ["demo-ocr"]}, "sizes": [100]}}
    data["comparisons"] = [{"name": "epochs", "contrast": ["short", "long"]}]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    plan = estimate_study(load_spec(path), H100)
    by_run = {t.run.split("-", 1)[1]: t for t in plan.train}
    assert (by_run["short-100"].epochs, by_run["long-100"].epochs) == (1, 2)
    assert by_run["short-100"].steps * 2 == by_run["long-100"].steps


def test_an_arms_generate_overrides_are_priced(tmp_path, monkeypatch):
    """An arm sampling 4 per problem is estimated at 4 samples per problem; the base model at the section's."""
    import yaml

    from valley.demo import write_demo

    monkeypatch.chdir(tmp_path)
    write_demo("demo-data", n_traces=200, n_problems=6)
    data = yaml.safe_load(DEMO.read_text())
    data["students"] = [{"name": "tiny", "model": "demo-data/model"}]
    data["arms"] = {"wide": {"subset": {"kind": "random"}, "sizes": [100], "generate": {"n": 4}}}
    data["comparisons"] = [{"name": "wide", "series": "wide"}]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    plan = estimate_study(load_spec(path), H100)
    by_run = {e.run: e for e in plan.evaluate}
    assert by_run["tiny-wide-100"].samples == 4 * by_run["tiny-wide-100"].problems
    assert by_run["tiny-base"].samples == data["generate"]["n"] * by_run["tiny-base"].problems
