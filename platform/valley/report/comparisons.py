"""The report's section for each comparison a study declares (pure: results in, Markdown and PNG bytes out).

A `series` is one arm over its sizes (the valley curve of that arm, per start); a `contrast` is two arms
at each size and start they share, with the difference of their scores. The paper's own comparisons (the
preset arms' RQ1 series and RQ2/RQ3 contrasts) are Table 1 and Table 2 and are not repeated here.
"""

from __future__ import annotations

import polars as pl

from valley.report.config import ComparisonRuns
from valley.report.tables import SCORE_COLUMNS, _md, _metric_lookup, fmt_pct, size_label

CORE_COLUMNS = [("pass@1", "pass@1"), ("Completion", "completion_rate"), ("Think tag", "think_rate")]


def _runs(results: pl.DataFrame, run_ids: list[str]) -> list[dict]:
    """The final evaluations (no per-epoch points) among `run_ids`, with their size, start and student."""
    wanted = set(run_ids)
    frame = results.select("run_id", "data_size", "checkpoint", "model", "epoch").unique(subset="run_id")
    rows = [r for r in frame.iter_rows(named=True) if r["run_id"] in wanted and r["epoch"] is None]
    return sorted(rows, key=lambda r: (r["model"] or "", r["checkpoint"] != "base", r["checkpoint"], r["data_size"]))


def _start(checkpoint: str | None) -> str:
    return "the base model" if (checkpoint or "base") == "base" else f"the {checkpoint} checkpoint"


def series_section(c: ComparisonRuns, results: pl.DataFrame, base_runs: dict[str, str]) -> str:
    """One table per student and start: the base model, then the arm at each size."""
    lookup, blocks = _metric_lookup(results), []
    rows_by: dict[tuple[str, str], list[dict]] = {}
    for r in _runs(results, c.runs[c.arms[0]]):
        rows_by.setdefault((r["model"] or "", r["checkpoint"] or "base"), []).append(r)
    for (model, start), runs in rows_by.items():
        rows = []
        if start == "base" and model in base_runs:
            rows.append([f"{model} (base)", *_scores(base_runs[model], lookup)])
        rows += [[size_label(r["data_size"]), *_scores(r["run_id"], lookup)] for r in runs]
        blocks.append(f"**{model}, arm `{c.arms[0]}` trained from {_start(start)}**\n\n"
                      + _md(["Data", *[h for h, _ in SCORE_COLUMNS]], rows))
    return "\n\n".join(blocks) or "_No finished runs of this arm._"


def contrast_section(c: ComparisonRuns, results: pl.DataFrame) -> str:
    """Both arms at every (student, start, size) they share; the difference is the first minus the second,
    in percentage points (intervals and tests across seeds come with replicates)."""
    lookup = _metric_lookup(results)
    first, second = c.arms
    by_key = {arm: {(r["model"] or "", r["checkpoint"] or "base", r["data_size"]): r["run_id"]
                    for r in _runs(results, c.runs[arm])} for arm in c.arms}
    shared = sorted(set(by_key[first]) & set(by_key[second]), key=lambda k: (k[0], k[1] != "base", k[1], k[2]))
    if not shared:
        return "_No size and start with finished runs of both arms._"
    rows = []
    for model, start, size in shared:
        a, b = by_key[first][(model, start, size)], by_key[second][(model, start, size)]
        for header, metric in CORE_COLUMNS:
            va, vb = lookup.get((a, metric)), lookup.get((b, metric))
            diff = f"{(va[0] - vb[0]) * 100:+.1f}" if va and vb and va[0] is not None and vb[0] is not None else "–"
            rows.append([model, _start(start), size_label(size), header, fmt_pct(*va) if va else "–",
                         fmt_pct(*vb) if vb else "–", diff])
    return _md(["Student", "From", "Data", "Metric", f"`{first}`", f"`{second}`", "Difference (points)"], rows)


def _scores(run_id: str, lookup: dict) -> list[str]:
    return [fmt_pct(*lookup[(run_id, metric)]) if (run_id, metric) in lookup else "–" for _, metric in SCORE_COLUMNS]


def comparison_sections(comparisons: list[ComparisonRuns], results: pl.DataFrame, base_runs: dict[str, str],
                        plot_files: list[str]) -> list[str]:
    """Markdown parts: a heading, the table and the plot of every declared comparison."""
    parts = []
    for i, c in enumerate(comparisons):
        table = series_section(c, results, base_runs) if c.kind == "series" else contrast_section(c, results)
        what = f"arm `{c.arms[0]}` over its sizes" if c.kind == "series" else \
            f"arm `{c.arms[0]}` vs arm `{c.arms[1]}` at equal size"
        plot = comparison_plot_name(i)
        parts += [f"## {c.name}", f"_{what}._", table, *([f"![{plot}]({plot})"] if plot in plot_files else [])]
    return parts


def comparison_plot_name(index: int) -> str:
    return f"comparison-{index + 1}.png"


def comparison_figure(c: ComparisonRuns, results: pl.DataFrame, base_runs: dict[str, str]) -> bytes | None:
    """pass@1, completion and think-tag rate against data size, one line per arm and start (base model
    dotted), or None when the comparison has no finished run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from valley.report.plots import _png

    lookup = _metric_lookup(results)
    lines = {}
    for arm in c.arms:
        for r in _runs(results, c.runs[arm]):
            key = f"{arm} ({r['model']}, from {r['checkpoint'] or 'base'})"
            lines.setdefault(key, []).append((r["data_size"], r["run_id"]))
    if not lines:
        return None
    fig, axes = plt.subplots(1, len(CORE_COLUMNS), figsize=(4.2 * len(CORE_COLUMNS), 3.4))
    for ax, (header, metric) in zip(axes, CORE_COLUMNS):
        for label, points in lines.items():
            xs = [x for x, rid in sorted(points) if (rid, metric) in lookup]
            ys = [lookup[(rid, metric)][0] * 100 for _, rid in sorted(points) if (rid, metric) in lookup]
            ax.plot(xs, ys, marker="o", label=label)
        for model, rid in base_runs.items():
            if (rid, metric) in lookup:
                ax.axhline(lookup[(rid, metric)][0] * 100, linestyle=":", color="grey", label=f"{model} base")
        ax.set_xscale("log")
        ax.set_xlabel("training traces")
        ax.set_title(header)
    axes[0].set_ylabel("%")
    axes[-1].legend(fontsize=7)
    fig.suptitle(c.name)
    fig.tight_layout()
    return _png(fig)


def base_runs(results: pl.DataFrame) -> dict[str, str]:
    """Student -> the run id of its base model's evaluation (data size 0)."""
    frame = results.filter((pl.col("data_size") == 0) & pl.col("epoch").is_null())
    return {r["model"] or "": r["run_id"] for r in frame.select("model", "run_id").unique().iter_rows(named=True)}
