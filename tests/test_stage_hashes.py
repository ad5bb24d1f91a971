"""Every stage run that `jobs/configs/paper.yaml` derives keeps the config hash it had when the file
`golden/paper_stage_hashes.json` was written (by the code before the stage registry): a changed hash would
make a finished study redo its stages. A deliberate change of what a stage writes updates the file."""

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


def test_paper_study_derives_the_same_stage_configs(monkeypatch):
    import valley.report.stage as report_stage

    hashes: dict[str, str] = {}
    monkeypatch.setattr(cost_ledger, "timed", lambda stage, cfg, storage, run=None: _finished(stage, cfg, hashes))
    monkeypatch.setattr(report_stage, "run_report", lambda cfg, storage: _finished("report", cfg, hashes))
    spec = load_spec(ROOT / "jobs" / "configs" / "paper.yaml")
    graph = plan_study(spec)
    context = SimpleNamespace(announce=lambda where: None, state_of=lambda node_id: "done",
                              announced=lambda node_id: None)
    # a trained model enters the next run's config as a full location: the root is fixed, as when recorded
    storage = Storage("/tmp/valley-stage-hashes")
    outputs: dict[str, dict] = {}
    for node in graph.nodes:
        outputs[node.id] = nodes.run_node(spec, graph, node, storage, outputs, context)
    expected = json.loads((ROOT / "tests" / "golden" / "paper_stage_hashes.json").read_text())
    assert hashes == expected
