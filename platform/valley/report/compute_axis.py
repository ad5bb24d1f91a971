"""The valley against compute instead of traces (pure: results and cost rows in, rows and PNG bytes out).

Two recipes at one data size can cost very different amounts (epochs, trace length, batch unit), and a
user about to buy GPU-hours asks what a point of pass@1 costs. Each trained run's trained tokens and
GPU-hours come from the cost table `valley run` records (`experiment/cost_ledger.py`: the train stage's
wall time × the GPUs it held, and the tokens its optimizer steps went through). On a CPU-only cluster the
GPU-hours are zero and the plot uses core-hours, saying so. Runs outside `valley run` have no cost row
and no point here.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from valley.report.config import ReportConfig
from valley.report.tables import _md


def compute_points(cfg: ReportConfig, results: pl.DataFrame, metric: str = "pass@1") -> list[dict[str, Any]]:
    """One point per final evaluation of a trained run with a cost row: its series, size, compute, score."""
    costs = {r["run"]: r for r in cfg.costs if r.get("stage") == "train"}
    scores = {r["run_id"]: r["value"] for r in results.filter(pl.col("metric") == metric).iter_rows(named=True)}
    points = []
    for run in cfg.runs:
        cost = costs.get(run.train_run or "")
        if run.epoch is not None or cost is None or run.run_id not in scores:
            continue
        points.append({"run_id": run.run_id, "model": run.model, "subset": run.subset, "checkpoint": run.checkpoint,
                       "data_size": run.data_size, "trained_tokens": cost.get("trained_tokens"),
                       "steps": cost.get("steps"), "batch_unit": cost.get("batch_unit"),
                       "examples_per_step": cost.get("examples_per_step"), "tokens_per_step": cost.get("tokens_per_step"),
                       "gpu_hours": cost["gpu_s"] / 3600, "core_hours": cost["core_s"] / 3600,
                       "value": scores[run.run_id]})
    return points


def hours_axis(points: list[dict[str, Any]]) -> tuple[str, str]:
    """(field, label) of the hours axis: GPU-hours, or core-hours where no run held a GPU."""
    if any(p["gpu_hours"] > 0 for p in points):
        return "gpu_hours", "GPU-hours (train)"
    return "core_hours", "core-hours (train; no GPUs)"


def compute_table(points: list[dict[str, Any]]) -> str:
    if not points:
        return "_No trained run has a cost row (runs made outside `valley run`): no compute axis._"
    field, title = hours_axis(points)
    rows = [[p["model"], p["run_id"], f"{p['data_size']:,}", _count(p["steps"]), p["batch_unit"] or "–",
             _count(p["examples_per_step"]), _count(p["tokens_per_step"]), _count(p["trained_tokens"]),
             f"{p[field]:,.3f}", f"{p['value'] * 100:.1f}"] for p in points]
    return _md(["Student", "Run", "Traces", "Steps", "Batch unit", "Examples/step", "Tokens/step", "Trained tokens",
                title, "pass@1"], rows)


def _count(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f}"


def compute_figure(points: list[dict[str, Any]], base_values: dict[str, float]) -> bytes | None:
    """pass@1 against trained tokens and against hours, one line per series (student, subset, start),
    replicates as separate points; each student's base model dotted."""
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from valley.report.plots import _png

    field, hours_title = hours_axis(points)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    series: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for p in points:
        series.setdefault((p["model"], p["subset"], p["checkpoint"]), []).append(p)
    for ax, x_field, title in ((axes[0], "trained_tokens", "trained tokens"), (axes[1], field, hours_title)):
        for (model, subset, checkpoint), pts in sorted(series.items()):
            pts = sorted((p for p in pts if p[x_field]), key=lambda p: p[x_field])
            if pts:
                ax.plot([p[x_field] for p in pts], [p["value"] * 100 for p in pts], marker="o",
                        label=f"{subset} ({model}, from {checkpoint})")
        for model, value in base_values.items():
            ax.axhline(value * 100, linestyle=":", color="grey", label=f"{model} base")
        ax.set_xscale("log")
        ax.set_xlabel(title)
    axes[0].set_ylabel("pass@1 (%)")
    axes[-1].legend(fontsize=7)
    fig.suptitle("The valley against compute")
    fig.tight_layout()
    return _png(fig)
