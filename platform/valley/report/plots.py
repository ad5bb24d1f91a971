"""PNG plots of the valley: score, completion rate and think-tag rate vs data size (log x), with CIs.

Matplotlib with the Agg backend (no display needed); every function returns PNG bytes so the
stage writes them through Storage atomically.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from valley.metrics.valley_fit import piecewise_curve  # noqa: E402
from valley.report.config import CORE_METRICS  # noqa: E402
from valley.report.tables import size_label  # noqa: E402

TITLES = {"pass@1": "LCB pass@1", "completion_rate": "Completion rate", "think_rate": "Think-tag rate"}


def metric_slug(metric: str) -> str:
    """File-name-safe metric name: "pass@1" -> "pass_at_1"."""
    return metric.replace("@", "_at_").replace("/", "__").replace("=", "-")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _series(results: pl.DataFrame, metric: str) -> pl.DataFrame:
    return results.filter((pl.col("metric") == metric) & pl.col("epoch").is_null())


def _draw_metric(ax, results: pl.DataFrame, metric: str, scaling_subset: str, fits: list[dict]) -> None:
    data = _series(results, metric)
    # Only (student, starting checkpoint) pairs that have a curve or a base line get a colour.
    shown = data.filter((pl.col("data_size") == 0) | (pl.col("subset") == scaling_subset))
    groups = shown.select("model", "checkpoint").unique().sort("model", "checkpoint")
    for i, (model, ckpt) in enumerate(groups.iter_rows()):
        color = f"C{i % 10}"
        g = data.filter((pl.col("model") == model) & (pl.col("checkpoint") == ckpt))
        label = f"{model or 'model'}" + ("" if ckpt == "base" else f" (from {ckpt})")
        base = g.filter(pl.col("data_size") == 0)
        if base.height:
            b = base.row(0, named=True)
            ax.axhline(100 * b["value"], color=color, linestyle="--", linewidth=1, alpha=0.7)
            if b["ci_low"] is not None and b["ci_high"] is not None:
                ax.axhspan(100 * b["ci_low"], 100 * b["ci_high"], color=color, alpha=0.08)
        pts = g.filter((pl.col("data_size") > 0) & (pl.col("subset") == scaling_subset)).sort("data_size")
        if pts.height:
            x = pts["data_size"].to_numpy().astype(float)
            y = 100 * pts["value"].to_numpy()
            lo = 100 * pts["ci_low"].fill_null(np.nan).to_numpy()
            hi = 100 * pts["ci_high"].fill_null(np.nan).to_numpy()
            yerr = np.vstack([np.nan_to_num(y - lo), np.nan_to_num(hi - y)])
            ax.errorbar(x, y, yerr=yerr, marker="o", capsize=3, color=color, label=label)
        for f in fits:
            if f["metric"] == metric and f.get("model") == model and f.get("checkpoint") == ckpt and pts.height >= 3:
                xs = np.logspace(np.log10(x.min()), np.log10(x.max()), 100)
                curve = piecewise_curve(f["fit"], xs)
                if curve is not None:
                    ax.plot(xs, 100 * curve, linestyle=":", color=color, alpha=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("distillation examples (log scale)")
    ax.set_ylabel("%")
    ax.set_title(TITLES.get(metric, metric))
    ax.grid(True, which="both", alpha=0.3)


def valley_figure(
    results: pl.DataFrame, fits: list[dict], scaling_subset: str = "random", metrics: tuple[str, ...] = CORE_METRICS
) -> bytes:
    """All core metrics side by side (dashed line: the instruct model before distillation)."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        _draw_metric(ax, results, metric, scaling_subset, fits)
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles.append(Line2D([], [], color="grey", linestyle="--"))
    labels.append("instruct model (no distillation)")
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), bbox_to_anchor=(0.5, -0.1))
    fig.suptitle("The valley: scores vs distillation data size (bars: 95% bootstrap CI)", y=1.03)
    return _png(fig)


def metric_figure(results: pl.DataFrame, fits: list[dict], metric: str, scaling_subset: str = "random") -> bytes:
    fig, ax = plt.subplots(figsize=(6, 4))
    _draw_metric(ax, results, metric, scaling_subset, fits)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _png(fig)


def _draw_epochs(ax, data: pl.DataFrame, metric: str) -> None:
    data = data.filter(pl.col("metric") == metric)
    keys = data.select("model", "subset", "data_size", "checkpoint").unique().sort(
        "model", "checkpoint", "subset", "data_size")
    for i, (model, subset, size, ckpt) in enumerate(keys.iter_rows()):
        g = data.filter(
            (pl.col("model") == model) & (pl.col("subset") == subset)
            & (pl.col("data_size") == size) & (pl.col("checkpoint") == ckpt)
        ).sort("epoch")
        y = 100 * g["value"].to_numpy()
        lo = 100 * g["ci_low"].fill_null(np.nan).to_numpy()
        hi = 100 * g["ci_high"].fill_null(np.nan).to_numpy()
        ax.errorbar(g["epoch"].to_numpy(), y, yerr=np.vstack([np.nan_to_num(y - lo), np.nan_to_num(hi - y)]),
                    marker="o", capsize=3, color=f"C{i % 10}",
                    label=f"{model or 'model'} {subset} {size_label(size)}" + ("" if ckpt == "base" else f" from {ckpt}"))
    ax.set_xlabel("epoch (0: the starting model)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("%")
    ax.set_title(f"{TITLES.get(metric, metric)} across training")
    ax.grid(True, alpha=0.3)


def epoch_figure(results: pl.DataFrame, metrics: tuple[str, ...] = CORE_METRICS) -> bytes | None:
    """The valley across training: each core metric vs epoch, one line per training run evaluated per epoch."""
    data = results.filter(pl.col("epoch").is_not_null())
    if data.height == 0:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        _draw_epochs(ax, data, metric)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), bbox_to_anchor=(0.5, -0.12))
    fig.suptitle("Across training: scores after each epoch (bars: 95% bootstrap CI)", y=1.03)
    return _png(fig)
