"""Markdown tables of an experiment in the shape of the paper's Tables 1 and 2, plus extras.

Pure functions from the results frame (schemas.RESULTS rows) to text. Table 1: data scaling per
student (the instruct model, then each data size of the scaling subset). Table 2: the other
subsets (correct/incorrect, easy/hard ...), grouped by the checkpoint training started from.
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl

from valley.metrics.compute import day_of
from valley.schemas import VERDICT_VALUES

SCORE_COLUMNS = [
    ("LCB pass@1", "pass@1"),
    ("Easy", "pass@1/difficulty=easy"),
    ("Medium", "pass@1/difficulty=medium"),
    ("Hard", "pass@1/difficulty=hard"),
    ("Completion", "completion_rate"),
    ("Think tag", "think_rate"),
]


def size_label(size: int | None) -> str:
    """1000 -> "1K", 30000 -> "30K", 1500 -> "1.5K", 0 -> "0"."""
    if size is None:
        return "?"
    if size >= 1_000_000 and size % 100_000 == 0:
        return f"{size / 1_000_000:g}M"
    if size >= 1000 and size % 100 == 0:
        return f"{size / 1000:g}K"
    return str(size)


def approx_size_label(size: float | None) -> str:
    """A fitted (non-round) size to two significant figures: 17171 -> "17K"."""
    if size is None or not math.isfinite(size):
        return "–"
    if size >= 1_000_000:
        return f"{float(f'{size / 1e6:.2g}'):g}M"
    if size >= 1000:
        return f"{float(f'{size / 1e3:.2g}'):g}K"
    return f"{float(f'{size:.2g}'):g}"


def fmt_pct(value: float | None, lo: float | None = None, hi: float | None = None) -> str:
    """A share as a percentage with its CI: "13.6 [8.4, 19.4]"; "–" when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{100 * value:.1f}"
    if lo is not None and hi is not None and not (math.isnan(lo) or math.isnan(hi)) and hi > lo:
        text += f" [{100 * lo:.1f}, {100 * hi:.1f}]"
    return text


def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _metric_lookup(results: pl.DataFrame) -> dict[tuple[str, str], tuple[float, float | None, float | None]]:
    return {
        (r["run_id"], r["metric"]): (r["value"], r["ci_low"], r["ci_high"])
        for r in results.select("run_id", "metric", "value", "ci_low", "ci_high").iter_rows(named=True)
    }


def runs_frame(results: pl.DataFrame) -> pl.DataFrame:
    """One row per run with its descriptive fields, in reading order (base checkpoint first)."""
    runs = results.select("run_id", "data_size", "subset", "checkpoint", "model", "epoch").unique(
        subset="run_id", keep="first"
    )
    return runs.sort(
        pl.col("model"), pl.col("checkpoint") != "base", pl.col("checkpoint"), pl.col("subset") != "random",
        pl.col("subset"), pl.col("data_size"), pl.col("epoch"), nulls_last=True,
    )


def _score_row(label: str, run_id: str, lookup: dict) -> list[str]:
    cells = [label]
    for _, metric in SCORE_COLUMNS:
        cells.append(fmt_pct(*lookup[(run_id, metric)]) if (run_id, metric) in lookup else "–")
    return cells


def table1(results: pl.DataFrame, scaling_subset: str = "random") -> str:
    """Data scaling per student: the instruct model (size 0), then each size of the scaling subset."""
    runs = runs_frame(results).filter(pl.col("epoch").is_null() & (pl.col("checkpoint") == "base"))
    lookup = _metric_lookup(results)
    blocks = []
    for model in sorted(runs["model"].fill_null("").unique().to_list()):
        sub = runs.filter(pl.col("model").fill_null("") == model)
        sub = sub.filter((pl.col("data_size") == 0) | (pl.col("subset") == scaling_subset)).sort("data_size")
        if sub.height == 0:
            continue
        rows = []
        for r in sub.iter_rows(named=True):
            label = f"{model or 'model'} (instruct)" if r["data_size"] == 0 else size_label(r["data_size"])
            rows.append(_score_row(label, r["run_id"], lookup))
        blocks.append(f"**{model or 'model'}**\n\n" + _md(["Data", *[h for h, _ in SCORE_COLUMNS]], rows))
    if not blocks:
        return "_No runs of the scaling subset._"
    return "\n\n".join(blocks)


def table2(results: pl.DataFrame, scaling_subset: str = "random") -> str:
    """Other subsets (trace correctness, difficulty) per student, grouped by starting checkpoint."""
    runs = runs_frame(results).filter(
        pl.col("epoch").is_null() & (pl.col("subset") != scaling_subset) & (pl.col("data_size") > 0)
    )
    if runs.height == 0:
        return "_No runs outside the scaling subset._"
    lookup = _metric_lookup(results)
    blocks = []
    for model in sorted(runs["model"].fill_null("").unique().to_list()):
        for ckpt in sorted(runs["checkpoint"].fill_null("base").unique().to_list(), key=lambda c: (c != "base", c)):
            sub = runs.filter((pl.col("model").fill_null("") == model) & (pl.col("checkpoint").fill_null("base") == ckpt))
            if sub.height == 0:
                continue
            rows = [
                _score_row(f"{r['subset']} {size_label(r['data_size'])}", r["run_id"], lookup)
                for r in sub.sort("subset", "data_size").iter_rows(named=True)
            ]
            start = "the instruct model" if ckpt == "base" else f"the {ckpt} checkpoint"
            blocks.append(
                f"**{model or 'model'}, trained from {start}**\n\n"
                + _md(["Subset", *[h for h, _ in SCORE_COLUMNS]], rows)
            )
    return "\n\n".join(blocks)


def verdict_table(results: pl.DataFrame) -> str:
    """Share of each verdict per run (what kind of failure dominates)."""
    lookup = _metric_lookup(results)
    runs = runs_frame(results)
    present = [v for v in (*VERDICT_VALUES, "ungraded") if any(k[1] == f"verdict_share/{v}" for k in lookup)]
    rows = []
    for r in runs.iter_rows(named=True):
        cells = [r["run_id"]]
        for v in present:
            val = lookup.get((r["run_id"], f"verdict_share/{v}"))
            cells.append(fmt_pct(val[0]) if val else "–")
        rows.append(cells)
    return _md(["Run", *present], rows)


def breakdown_table(results: pl.DataFrame, dim: str) -> str:
    """pass@1 per value of a breakdown dimension (platform, window) per run."""
    prefix = f"pass@1/{dim}="
    metrics = results.filter(pl.col("metric").str.starts_with(prefix))
    if metrics.height == 0:
        return "_none_"
    values = sorted({m[len(prefix) :] for m in metrics["metric"].to_list()})
    lookup = _metric_lookup(results)
    rows = []
    for r in runs_frame(results).iter_rows(named=True):
        rows.append([r["run_id"], *[fmt_pct(*lookup.get((r["run_id"], prefix + v), (None, None, None))) for v in values]])
    return _md(["Run", *values], rows)


def epoch_table(results: pl.DataFrame) -> str | None:
    """pass@1 / completion / think tag per epoch, for runs evaluated after each epoch."""
    runs = runs_frame(results).filter(pl.col("epoch").is_not_null())
    if runs.height == 0:
        return None
    lookup = _metric_lookup(results)
    rows = []
    for r in runs.sort("model", pl.col("checkpoint") != "base", "checkpoint", "subset", "data_size",
                       "epoch").iter_rows(named=True):
        start = "" if r["checkpoint"] in (None, "base") else f" from {r['checkpoint']}"
        rows.append(
            [
                r["model"] or "",
                f"{r['subset']} {size_label(r['data_size'])}{start}",
                str(r["epoch"]),
                *[fmt_pct(*lookup.get((r["run_id"], m), (None, None, None))) for m in ("pass@1", "completion_rate", "think_rate")],
            ]
        )
    return _md(["Model", "Data", "Epoch", "LCB pass@1", "Completion", "Think tag"], rows)


def fit_table(fits: list[dict]) -> str:
    """Where each valley bottoms out and how steeply it climbs afterwards (points per decade)."""
    rows = []
    for f in fits:
        fit = f["fit"]
        slope = fit.get("slope_per_decade_after")
        rows.append(
            [
                f.get("model") or "",
                f.get("checkpoint") or "",
                f["metric"],
                str(fit.get("n_points", 0)),
                approx_size_label(fit.get("argmin_size")),
                fit.get("model") or "–",
                f"{100 * slope:+.1f}" if slope is not None else "–",
            ]
        )
    return _md(["Model", "From", "Metric", "Points", "Minimum at", "Fit", "Slope after (pts/decade)"], rows)


WINDOW_PREFIX = "n_problems/lcb_window="  # metrics/compute.window_rows: the label is in the metric's name


def run_windows(results: pl.DataFrame) -> dict[str, dict[str, Any]]:
    """Per run: the generate filter's window label (None when not recorded), the first and last contest day
    of the problems evaluated, and how many problems."""
    out: dict[str, dict[str, Any]] = {r["run_id"]: {"label": None, "dates": None, "n": None}
                                      for r in runs_frame(results).iter_rows(named=True)}
    days: dict[tuple[str, str], float] = {}
    for r in results.select("run_id", "metric", "value").iter_rows(named=True):
        entry = out.setdefault(r["run_id"], {"label": None, "dates": None, "n": None})
        if r["metric"].startswith(WINDOW_PREFIX):
            entry["label"] = r["metric"][len(WINDOW_PREFIX):]
        elif r["metric"] == "n_problems":
            entry["n"] = int(r["value"])
        elif r["metric"] in ("contest_date_first", "contest_date_last"):
            days[(r["run_id"], r["metric"])] = r["value"]
    for run_id, entry in out.items():
        first, last = days.get((run_id, "contest_date_first")), days.get((run_id, "contest_date_last"))
        if first is not None and last is not None:
            entry["dates"] = f"{day_of(first)}..{day_of(last)}"
    return out


def window_line(results: pl.DataFrame) -> str:
    """The report's one-line answer to "which LCB problems": the window all runs share, or a pointer."""
    windows = list(run_windows(results).values())
    labels = {w["label"] for w in windows}
    spans = {(w["dates"], w["n"]) for w in windows}
    if len(labels) > 1:
        return "**LCB window:** differs between runs (see \"LCB window and calibration\")."
    label = next(iter(labels), None) or "not recorded by the generate runs"
    if len(spans) != 1:
        return f"**LCB window:** {label}; problems per run in \"LCB window and calibration\"."
    dates, n = next(iter(spans))
    evaluated = f"{n if n is not None else '?'} problems" + (f", contest dates {dates}" if dates else "")
    return f"**LCB window:** {label}; {evaluated}."


def calibration_table(results: pl.DataFrame) -> str:
    """Per run: its LCB window and problems, how often the time limit decided, and the grade stage's
    re-runs alone (samples killed on the wall clock, graded again with the machine to themselves)."""
    lookup = _metric_lookup(results)
    windows = run_windows(results)
    rows = []
    for r in runs_frame(results).iter_rows(named=True):
        rid = r["run_id"]
        w = windows.get(rid, {})
        reruns = lookup.get((rid, "n_reruns_alone"))
        timed_out = lookup.get((rid, "n_reruns_alone/verdict=time_limit"))
        rows.append([rid, w.get("label") or "–", w.get("dates") or "–", str(w["n"]) if w.get("n") is not None else "–",
                     fmt_pct(*lookup.get((rid, "timeout_rate"), (None, None, None))),
                     str(int(reruns[0])) if reruns else "–", str(int(timed_out[0])) if timed_out else "–"])
    return _md(["Run", "LCB window", "Contest dates", "Problems", "Timeout rate", "Re-run alone",
                "of which time limit"], rows)
