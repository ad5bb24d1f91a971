"""The valley against compute (report/compute_axis.py): trained tokens and hours come from the cost rows of
the run's training, core-hours stand in on a CPU-only cluster, runs without a cost row have no point."""

from __future__ import annotations

import io

import polars as pl
from PIL import Image

from valley.experiment.cost_ledger import CostLedger
from valley.report import compute_axis
from valley.report.config import ReportConfig
from valley.storage import Storage


def _cfg(costs: list[dict]) -> ReportConfig:
    runs = [{"run_id": "s-base", "model": "s", "data_size": 0, "samples": "x", "verdicts": "x", "problems": "x"},
            {"run_id": "s-r100", "model": "s", "data_size": 100, "samples": "x", "verdicts": "x", "problems": "x",
             "train_run": "e-s-r100"},
            {"run_id": "s-r400", "model": "s", "data_size": 400, "samples": "x", "verdicts": "x", "problems": "x",
             "train_run": "e-s-r400"},
            {"run_id": "s-r900", "model": "s", "data_size": 900, "samples": "x", "verdicts": "x", "problems": "x"}]
    return ReportConfig(experiment="e", runs=runs, max_tokens=10, costs=costs)


RESULTS = pl.DataFrame({"run_id": ["s-base", "s-r100", "s-r400", "s-r900"], "metric": ["pass@1"] * 4,
                        "value": [0.2, 0.1, 0.3, 0.4]})


def test_points_take_tokens_and_hours_from_the_training_cost_rows(tmp_path):
    ledger = CostLedger(Storage(str(tmp_path)), "e")
    ledger.record("train", "e-s-r100", 3600.0, 2.0, 0.0, False,
                  {"trained_tokens": 50_000, "steps": 10, "batch_unit": "examples", "examples_per_step": 10.0,
                   "tokens_per_step": 5_000.0})
    ledger.record("train", "e-s-r400", 7200.0, 2.0, 0.0, False, {"trained_tokens": 200_000})
    ledger.record("generate", "e-s-r100", 60.0, 1.0, 0.0, False)
    points = compute_axis.compute_points(_cfg(ledger.rows()), RESULTS)
    assert [(p["run_id"], p["trained_tokens"], p["core_hours"]) for p in points] == [
        ("s-r100", 50_000, 2.0), ("s-r400", 200_000, 4.0)]
    assert compute_axis.hours_axis(points) == ("core_hours", "core-hours (train; no GPUs)")
    table = compute_axis.compute_table(points)
    assert "200,000" in table and "core-hours" in table and "| 10 | examples | 10 | 5,000 |" in table
    png = compute_axis.compute_figure(points, {"s": 0.2})
    assert Image.open(io.BytesIO(png)).size[0] > 400


def test_no_cost_rows_no_points():
    assert compute_axis.compute_points(_cfg([]), RESULTS) == []
    assert compute_axis.compute_figure([], {}) is None
    assert "no compute axis" in compute_axis.compute_table([])
