"""Per-stage cost records (valley/experiment/cost_ledger.py) and report.md's cost table (report/cost_table.py)."""

from __future__ import annotations

from dataclasses import dataclass

from valley.experiment import cost_ledger
from valley.report.cost_table import cost_table


@dataclass
class _Result:
    skipped: bool = False


@dataclass
class _Cfg:
    name: str
    task_resources: dict | None = None

    def run_resources(self) -> dict:
        return {}  # a task-spreading stage, like data


def test_ledger_keeps_the_timing_of_the_run_that_did_the_work(storage):
    ledger = cost_ledger.CostLedger(storage, "exp")
    ledger.record("train", "exp-r100", 120.0, cpus=16, gpus=8, skipped=False)
    ledger.record("train", "exp-r100", 0.5, cpus=16, gpus=8, skipped=True)  # resumed: already finished
    ledger.record("grade", "exp-r100", 30.0, cpus=64, gpus=0, skipped=True)  # finished before any ledger
    again = cost_ledger.CostLedger(storage, "exp")  # persisted after every record
    rows = {r["stage"]: r for r in again.rows()}
    assert rows["train"]["wall_s"] == 120.0 and rows["train"]["gpu_s"] == 960.0 and rows["train"]["core_s"] == 1920.0
    assert rows["grade"]["timed_when_skipped"] is True


def test_timed_records_only_inside_valley_run(storage):
    calls = []

    def stage(cfg, st):
        calls.append(cfg.name)
        return _Result()

    assert cost_ledger.timed("data", _Cfg("d"), storage, run=stage).skipped is False  # no active ledger: nothing kept
    ledger = cost_ledger.CostLedger(storage, "exp")
    cost_ledger.activate(ledger)
    try:
        cost_ledger.timed("data", _Cfg("d"), storage, run=stage)
    finally:
        cost_ledger.activate(None)
    assert calls == ["d", "d"] and [r["run"] for r in ledger.rows()] == ["d"]


def test_reserved_resources_per_stage():
    from valley.generate.config import GenerateConfig
    from valley.train.config import TrainConfig

    train = TrainConfig(data="-", model="-", num_workers=8, use_gpu=True, cpus_per_worker=8)
    assert cost_ledger.reserved("train", train) == (64.0, 8.0)
    gen = GenerateConfig(model="-", problems=["-"], backend="vllm",
                         pool={"replicas": 4, "tensor_parallel_size": 2, "num_cpus": 4})
    assert cost_ledger.reserved("generate", gen) == (16.0, 8.0)


def test_cost_table_rows_and_totals():
    rows = [{"stage": "train", "run": "a", "wall_s": 3600.0, "core_s": 7200.0, "gpu_s": 28800.0},
            {"stage": "data", "run": "d", "wall_s": 60.0, "core_s": 120.0, "gpu_s": 0.0},
            {"stage": "train", "run": "b", "wall_s": 1800.0, "core_s": 3600.0, "gpu_s": 14400.0,
             "timed_when_skipped": True}]
    md = cost_table(rows)
    lines = md.splitlines()
    assert lines[2].startswith("| data | d | 0:01:00 |")  # stages in pipeline order
    assert "| **train** | all runs | 1:30:00 | 3.00 | 12.00 |" in md
    assert lines[-1] == "| **total** | | 1:31:00 | 3.03 | 12.00 |"
    assert "(timed when already finished)" in md
    assert "No stage timings" in cost_table([])


def test_report_md_gains_the_cost_table(tmp_path):
    from fixtures import report_config, write_report_inputs
    from valley.report.stage import run_report
    from valley.storage import Storage

    storage = Storage(str(tmp_path / "store"))
    rows = [{"stage": "generate", "run": "g", "wall_s": 7200.0, "core_s": 28800.0, "gpu_s": 57600.0}]
    result = run_report(report_config(write_report_inputs(storage), costs=rows, parallel=False), storage)
    md = storage.read_text(result.report_md)
    assert "## Cost per stage and run" in md and "| generate | g | 2:00:00 | 8.00 | 16.00 |" in md
