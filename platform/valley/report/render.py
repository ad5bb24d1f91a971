"""Writing of the report stage: report.md, the PNG plots and valley_fit.json from scored results.

Takes what report/scoring.py computed and only formats and writes it, so how a run is scored and how the
report looks change apart.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from valley.report import comparisons, compute_axis, cost_table, plots, tables
from valley.report.agreement import Agreement
from valley.report.config import CORE_METRICS, ReportConfig
from valley.storage import Storage

COMPUTE_PLOT = "compute.png"
INTEGRITY = ("n_problems", "n_samples", "n_ungraded", "n_orphan_verdicts", "n_samples_without_problem",
             "n_grader_error")


def render_markdown(cfg: ReportConfig, results: pl.DataFrame, fits: list[dict], plot_files: list[str],
                    sections: list[str] | None = None) -> str:
    """report.md; `sections` (the paired tests, the label audit) go after the comparisons."""
    integrity = results.filter(pl.col("metric").is_in(list(INTEGRITY)))
    counts: dict[str, dict[str, int]] = {}
    for r in integrity.iter_rows(named=True):
        counts.setdefault(r["run_id"], {})[r["metric"]] = int(r["value"])
    count_rows = [[rid, *[str(c.get(m, 0)) for m in INTEGRITY]] for rid, c in counts.items()]
    parts = [
        f"# {cfg.experiment}: valley report",
        f"_Generated {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; "
        f"{len(cfg.runs)} runs; token budget {cfg.max_tokens}; {cfg.n_boot} bootstrap resamples over problems "
        f"(95% percentile CIs in brackets), seed {cfg.seed}._",
        tables.window_line(results),
        "Scores are percentages. pass@1 is the mean over problems of each problem's pass fraction; completion "
        "is the share of responses that stop (finish_reason `stop`) within the token budget; think tag is the "
        "share of responses that begin with `<think>` after leading whitespace.",
        "## Table 1 — data scaling",
        tables.table1(results, cfg.scaling_subset),
        "## Table 2 — trace correctness and question difficulty",
        tables.table2(results, cfg.scaling_subset),
        *comparisons.comparison_sections(cfg.comparisons or [], results, comparisons.base_runs(results), plot_files),
        *(sections or []),
        "## The valley",
        *[f"![{f}]({f})" for f in plot_files if f.startswith("valley")],
        tables.fit_table(fits) if fits else "_Not enough sizes to fit._",
        "Minimum at: the fitted hinge when a piecewise-linear fit in log10(size) has a valley shape, else the "
        "observed minimum; slope after: percentage points per tenfold more data beyond it (see valley_fit.json).",
        "### Against compute",
        *[f"![{f}]({f})" for f in plot_files if f == COMPUTE_PLOT],
        compute_axis.compute_table(compute_axis.compute_points(cfg, results)),
        "Steps, batch unit, examples and tokens per step: the recipe as the train stage ran it (`batch_unit`: what "
        "`global_batch_size` counted). Trained tokens: the tokens its optimizer steps went through; hours: the "
        "train stage's wall time × what it held (the cost table below). A run continued from another's "
        "checkpoint counts its own training only.",
        "## Verdict mix (share of responses)",
        tables.verdict_table(results),
        "## LCB window and calibration",
        tables.calibration_table(results),
        "LCB window: the contest dates the generate run's filter kept (a named LiveCodeBench release when the "
        "dates are one's); contest dates: the first and last of the problems evaluated. Timeout rate: the share "
        "of graded responses whose verdict is `time_limit`. Re-run alone: samples the grade stage graded again "
        "one at a time, because a wall-clock kill or a grader error may have been the busy host's fault; of "
        "which time limit: those still over the limit alone.",
        "## pass@1 by platform",
        tables.breakdown_table(results, "platform"),
        "## pass@1 by contest-date window",
        tables.breakdown_table(results, "window"),
    ]
    epochs = tables.epoch_table(results)
    if epochs:
        parts += ["## Across training (per-epoch evaluation)", epochs,
                  *[f"![{f}]({f})" for f in plot_files if f.startswith("epochs")]]
    parts += [
        "## Data integrity",
        tables._md(["Run", "problems", "samples", "ungraded", "orphan verdicts", "without problem", "grader errors"],
                   count_rows),
        "Ungraded samples count as failures; their keys, those of orphan verdicts and of samples whose problem "
        "is unknown are in `unmatched.parquet`. Grader errors (the sandbox could not run a sample, even when "
        "retried) are left out of every rate: they are no evidence about the model.",
    ]
    return "\n\n".join(parts) + "\n"


def write_plots(storage: Storage, out: str, results: pl.DataFrame, fits: list[dict], cfg: ReportConfig) -> list[str]:
    """The valley plots (all core metrics, then one per metric), with per-epoch runs epochs.png, and one
    plot per declared comparison."""
    scaling_subset = cfg.scaling_subset
    plot_files = ["valley.png"]
    storage.write_bytes(plots.valley_figure(results, fits, scaling_subset), out, "valley.png")
    for metric in CORE_METRICS:
        name = f"valley_{plots.metric_slug(metric)}.png"
        storage.write_bytes(plots.metric_figure(results, fits, metric, scaling_subset), out, name)
        plot_files.append(name)
    epoch_png = plots.epoch_figure(results)
    if epoch_png is not None:
        storage.write_bytes(epoch_png, out, "epochs.png")
        plot_files.append("epochs.png")
    bases = comparisons.base_runs(results)
    base_pass = {m: v for m, rid in bases.items()
                 for v in results.filter((pl.col("run_id") == rid) & (pl.col("metric") == "pass@1"))["value"]}
    compute_png = compute_axis.compute_figure(compute_axis.compute_points(cfg, results), base_pass)
    if compute_png is not None:
        storage.write_bytes(compute_png, out, COMPUTE_PLOT)
        plot_files.append(COMPUTE_PLOT)
    for i, comparison in enumerate(cfg.comparisons or []):
        png = comparisons.comparison_figure(comparison, results, bases)
        if png is not None:
            storage.write_bytes(png, out, comparisons.comparison_plot_name(i))
            plot_files.append(comparisons.comparison_plot_name(i))
    return plot_files


def write_report(cfg: ReportConfig, storage: Storage, out: str, results: pl.DataFrame, fits: list[dict],
                 agree: Agreement | None = None, sections: list[str] | None = None) -> tuple[list[str], str | None]:
    """Plots, valley_fit.json, agreement.parquet (when `agree`) and report.md, in that order; returns the
    plot file names and the agreement table's path (None without one)."""
    plot_files = write_plots(storage, out, results, fits, cfg)
    storage.write_json({"experiment": cfg.experiment, "fits": fits}, out, "valley_fit.json")
    markdown = render_markdown(cfg, results, fits, plot_files, sections)
    agreement_path = None
    if agree:
        markdown += "\n" + agree.markdown + "\n"
        agreement_path = f"{out}/agreement.parquet"
        storage.write_parquet(agree.disagreements, out, "agreement.parquet")
    if cfg.costs:
        markdown += "\n## Cost per stage and run\n\n" + cost_table.cost_table(cfg.costs) + "\n\nCore- and GPU-hours are " \
            "wall time × the CPUs and GPUs the stage held (reserved capacity, see valley/experiment/cost_ledger.py).\n"
    storage.write_text(markdown, out, "report.md")
    return plot_files, agreement_path
