"""Every stage run that `jobs/configs/paper.yaml` derives keeps the config hash it had when the file
`golden/paper_stage_hashes.json` was written (by the code before the stage registry): a changed hash would
make a finished study redo its stages. A deliberate change of what a stage writes updates the file.

Deliberate changes so far: paper.yaml's train section set `batch_unit: examples` and `last_step: partial`
(the paper's global batch of 128 counted in traces, not packed rows), which changed every train hash and,
through the trained models' directories, the hashes of their generate and grade runs and of the report;
the data, label and base-model runs kept theirs. The report's runs then gained `train_run` (the training
run whose cost row gives a point its trained tokens and GPU-hours) and `data`/`data_subset` (whose label
audit the report shows), which changed the report's hash alone (a report is re-scored, never retrained). Without the two fields the train configs hash as before
they existed (`legacy.TRAIN_HASHED_ONLY_WHEN_SET`), which the second test pins with the old hashes."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from valley.experiment import cost_ledger, load_spec, nodes, plan_study
from valley.storage import Storage

ROOT = Path(__file__).resolve().parents[1]


def _finished(stage: str, cfg, hashes: dict[str, str]) -> SimpleNamespace:
    """What a finished stage would return: paths under its content-addressed directory."""
    h = cfg.config_hash()
    hashes[f"{stage}:{cfg.name}"] = h
    d = f"{stage}/{cfg.name}-{h[:12]}"
    return SimpleNamespace(stage_dir=d, accepted=1, rejected=0, correct=1, incorrect=1, no_tests=0,
                           traces_dir=f"{d}/traces", steps=1, final_loss=0.0, model_dir=f"{d}/model",
                           epoch_model_dirs={k: f"{d}/model-epoch{k}" for k in range(1, cfg_epochs(cfg) + 1)},
                           n_samples=1, finish_reasons={}, samples=f"{d}/samples", problems=f"{d}/problems.parquet",
                           counts={}, verdicts_dir=f"{d}/verdicts", report_md=f"{d}/report.md",
                           results=f"{d}/results.parquet", plots=[])


def cfg_epochs(cfg) -> int:
    return getattr(cfg, "epochs", 1)


def _derived_hashes(monkeypatch, overrides: list[str] | None = None) -> dict[str, str]:
    """`stage:name` -> config hash of every stage run paper.yaml derives (nothing runs)."""
    import valley.report.stage as report_stage

    hashes: dict[str, str] = {}
    monkeypatch.setattr(cost_ledger, "timed", lambda stage, cfg, storage, run=None: _finished(stage, cfg, hashes))
    monkeypatch.setattr(report_stage, "run_report", lambda cfg, storage: _finished("report", cfg, hashes))
    spec = load_spec(ROOT / "jobs" / "configs" / "paper.yaml", overrides or [])
    graph = plan_study(spec)
    context = SimpleNamespace(announce=lambda where: None, state_of=lambda node_id: "done",
                              announced=lambda node_id: None)
    # a trained model enters the next run's config as a full location: the root is fixed, as when recorded
    storage = Storage("/tmp/valley-stage-hashes")
    outputs: dict[str, dict] = {}
    for node in graph.nodes:
        outputs[node.id] = nodes.run_node(spec, graph, node, storage, outputs, context)
    return hashes


def test_paper_study_derives_the_same_stage_configs(monkeypatch):
    expected = json.loads((ROOT / "tests" / "golden" / "paper_stage_hashes.json").read_text())
    assert _derived_hashes(monkeypatch) == expected


def test_train_configs_without_a_batch_unit_keep_their_old_hashes(monkeypatch):
    """paper.yaml's train configs with `batch_unit` and `last_step` unset hash as they did before the two
    fields existed (the golden file's train hashes before the paper set them)."""
    hashes = _derived_hashes(monkeypatch, ["train.batch_unit=null", "train.last_step=null"])
    before = {
        "train:valley-paper-qwen2.5-7b-instruct-r1000": "d246291a940f1eb0ec5da376b9d6be97f8cf58c82f982ac443023f2f78bba65f",
        "train:valley-paper-llama3.1-8b-instruct-r100000":
            "cf28b5f0f3a0d1deda72cefb8a3f094a7e20f3cf38371d51b269f7750798b00f",
        "train:valley-paper-qwen2.5-7b-instruct-easy-from-r30000":
            "5423539d812389a1aef86e068e2cbb394e49840627f97b5f977ce72160699c78",
    }
    assert {k: hashes[k] for k in before} == before
