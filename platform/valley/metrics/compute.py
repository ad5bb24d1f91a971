"""One run's metric rows: pass@k, completion rate, think-tag rate, verdict mix, timeout rate, the LCB
window, grade re-runs, breakdowns, CIs.

Every statistic is computed from per-problem sums (samples, passes, completions, think tags,
verdict counts), so a breakdown is the same computation over a subset of problems and every CI
resamples problems (see bootstrap.py). Rows follow schemas.RESULTS minus the run fields the
caller adds (experiment, run_id, data_size, subset, checkpoint, model, epoch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from valley.metrics.bootstrap import bootstrap_ratios
from valley.metrics.join import GRADER_ERROR, UNGRADED, UNKNOWN, JoinedRun, join_run
from valley.metrics.passk import pass_at_1, pass_at_k
from valley.schemas import VERDICT_VALUES

DateWindow = tuple[str, str]  # [start, end) as ISO dates
TIME_LIMIT = "time_limit"  # the verdict of a sample killed at the time limit (schemas.VERDICT_VALUES)


def per_problem(joined: JoinedRun, date_windows: Sequence[DateWindow] | None = None) -> pl.DataFrame:
    """Sums per problem plus its breakdown labels (difficulty, platform, window).

    Aggregates the samples first and attaches the problems' attributes to the (few) problem rows,
    rather than widening every sample row.
    """
    frame = joined.samples
    verdict_cols = [(pl.col("verdict") == v).sum().alias(f"v_{v}") for v in (*VERDICT_VALUES, UNGRADED)]
    agg = frame.group_by("question_id").agg(
        pl.len().alias("n"),
        pl.col("passed").sum().alias("c"),
        pl.col("completed").sum().alias("completed"),
        pl.col("completed").is_not_null().sum().alias("n_with_finish"),
        pl.col("think").sum().alias("think"),
        pl.col("n_tokens").sum().alias("tokens"),
        pl.col("n_tokens").is_not_null().sum().alias("n_with_tokens"),
        *verdict_cols,
    )
    agg = agg.join(joined.problems, on="question_id", how="left").with_columns(
        pl.col("difficulty").fill_null(UNKNOWN), pl.col("platform").fill_null(UNKNOWN)
    )
    return agg.with_columns(window_label(pl.col("contest_date"), date_windows).alias("window")).sort("question_id")


def window_label(date: pl.Expr, windows: Sequence[DateWindow] | None) -> pl.Expr:
    """Calendar quarter ("2024Q3") by default, else the first [start, end) window holding the date."""
    day = date.str.slice(0, 10).str.to_date(format="%Y-%m-%d", strict=False)
    if not windows:
        quarter = ((day.dt.month() - 1) // 3 + 1).cast(pl.String)
        return pl.when(day.is_null()).then(pl.lit(UNKNOWN)).otherwise(day.dt.year().cast(pl.String) + "Q" + quarter)
    expr = pl.when(day.is_null()).then(pl.lit(UNKNOWN))
    for start, end in windows:
        lo = pl.lit(start).str.to_date(format="%Y-%m-%d")
        hi = pl.lit(end).str.to_date(format="%Y-%m-%d")
        expr = expr.when((day >= lo) & (day < hi)).then(pl.lit(f"{start}..{end}"))
    return expr.otherwise(pl.lit("other"))


def day_number(day: str) -> float:
    """An ISO day as the number YYYYMMDD: a date in a (numeric) metric row that still reads as one."""
    return float(day[:10].replace("-", ""))


def day_of(number: float) -> str:
    """The ISO day a `day_number` stands for."""
    text = f"{int(number):08d}"
    return f"{text[:4]}-{text[4:6]}-{text[6:]}"


def contest_date_rows(dates: pl.Series) -> list[dict]:
    """First and last contest day of the problems evaluated (as `day_number`s); none when no date is known."""
    days = dates.drop_nulls().cast(pl.String).str.slice(0, 10)
    if days.len() == 0:
        return []
    return [_row("contest_date_first", day_number(str(days.min()))), _row("contest_date_last", day_number(str(days.max())))]


def window_rows(window: Mapping[str, Any] | None, n_problems: int) -> list[dict]:
    """The generate filter's window as rows: its label in the name (as breakdowns name their values) with the
    problems evaluated as value, and its start and end days. `window` is what the generate stage recorded
    (`selection.window` of its marker); runs from before it was recorded get no rows."""
    if not window or not window.get("label"):
        return []
    rows = [_row(f"n_problems/lcb_window={window['label']}", n_problems)]
    for key, metric in (("start_date", "lcb_window_start"), ("end_date", "lcb_window_end")):
        if window.get(key):
            rows.append(_row(metric, day_number(str(window[key]))))
    return rows


def rerun_rows(verdicts: pa.Table | pl.DataFrame) -> list[dict]:
    """How many samples the grade stage re-ran alone (after a wall-clock kill or a grader error) and how many
    of those still ended at the time limit; none when the verdicts do not say (imports, older grades)."""
    df = verdicts if isinstance(verdicts, pl.DataFrame) else pl.from_arrow(verdicts)
    assert isinstance(df, pl.DataFrame)
    if "rerun_alone" not in df.columns:
        return []
    alone = df.filter(pl.col("rerun_alone").fill_null(False))
    return [_row("n_reruns_alone", alone.height),
            _row(f"n_reruns_alone/verdict={TIME_LIMIT}", int((alone["verdict"] == TIME_LIMIT).sum()))]


def _row(metric: str, value: float, lo: float | None = None, hi: float | None = None) -> dict:
    return {
        "metric": metric,
        "value": float(value),
        "ci_low": None if lo is None else float(lo),
        "ci_high": None if hi is None else float(hi),
    }


def _ratio_rows(specs: list[tuple[str, np.ndarray, np.ndarray]], n_boot: int, seed: int) -> list[dict]:
    """Rows for several ratio metrics of one problem set, sharing one set of bootstrap resamples."""
    nums = np.column_stack([num for _, num, _ in specs])
    dens = np.column_stack([den for _, _, den in specs])
    point, lo, hi = bootstrap_ratios(nums, dens, n_boot=n_boot, seed=seed)
    return [_row(name, point[j], lo[j], hi[j]) for j, (name, _, _) in enumerate(specs)]


def core_ratio_specs(pp: pl.DataFrame, suffix: str = "") -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, numerator, denominator) per problem of pass@1, completion rate and think-tag rate, in that
    order, from per-problem sums (`per_problem`'s n, c, completed, n_with_finish, think): the one
    definition the run metrics and the report's paired tests share."""
    n = pp["n"].to_numpy().astype(np.float64)
    return [
        (f"pass@1{suffix}", pass_at_1(n, pp["c"].to_numpy()), np.ones_like(n)),
        (f"completion_rate{suffix}", pp["completed"].to_numpy().astype(np.float64),
         pp["n_with_finish"].to_numpy().astype(np.float64)),
        (f"think_rate{suffix}", pp["think"].to_numpy().astype(np.float64), n),
    ]


def _metric_rows(
    joined: JoinedRun,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    ks: Sequence[int] = (1, 5, 10),
    date_windows: Sequence[DateWindow] | None = None,
) -> list[dict]:
    """Metric rows of a joined run (see join.join_run), without the unmatched-row counts."""
    if joined.samples.height == 0:
        return [_row("n_samples", 0), _row("n_problems", 0)]
    pp = per_problem(joined, date_windows)
    n = pp["n"].to_numpy()
    c = pp["c"].to_numpy()
    nf = n.astype(np.float64)
    ones = np.ones_like(nf)
    specs = core_ratio_specs(pp, "")
    # pass@k only where every problem has at least k samples: otherwise no unbiased estimate exists.
    specs += [(f"pass@{k}", pass_at_k(n, c, k), ones) for k in sorted(set(ks)) if k > 1 and n.min() >= k]
    tokens_known = pp["n_with_tokens"].to_numpy().astype(np.float64)
    if tokens_known.sum() > 0:
        specs.append(("mean_tokens", pp["tokens"].fill_null(0).to_numpy().astype(np.float64), tokens_known))
    for v in (*VERDICT_VALUES, UNGRADED):
        if v == GRADER_ERROR:  # those samples are left out (join_run) and reported as n_grader_error
            continue
        counts = pp[f"v_{v}"].to_numpy().astype(np.float64)
        if v != UNGRADED or counts.sum() > 0:
            specs.append((f"verdict_share/{v}", counts, nf))
    # the calibration row: how often the time limit, not the answer, decided (the verdict's share, by name)
    specs.append(("timeout_rate", pp[f"v_{TIME_LIMIT}"].to_numpy().astype(np.float64), nf))
    rows = _ratio_rows(specs, n_boot, seed)
    rows += [_row("n_problems", pp.height), _row("n_samples", int(n.sum())), _row("samples_per_problem_min", int(n.min()))]
    rows += contest_date_rows(pp["contest_date"])
    for dim in ("difficulty", "platform", "window"):
        for value in sorted(pp[dim].unique().to_list()):
            sub = pp.filter(pl.col(dim) == value)
            suffix = f"/{dim}={value}"
            rows += _ratio_rows(core_ratio_specs(sub, suffix), n_boot, seed)
            rows.append(_row(f"n_problems{suffix}", sub.height))
    return rows


def compute_run_metrics(
    samples: pa.Table | pl.DataFrame,
    verdicts: pa.Table | pl.DataFrame,
    problems: pa.Table | pl.DataFrame,
    *,
    max_tokens: int,
    n_boot: int = 1000,
    seed: int = 0,
    ks: Sequence[int] = (1, 5, 10),
    date_windows: Sequence[DateWindow] | None = None,
    sources: dict[str, str] | None = None,
) -> list[dict]:
    """All metric rows of one run (schemas.RESULTS minus the run fields), joined and validated here.

    `sources` maps "samples"/"verdicts"/"problems" to file names used in error messages.
    Counts of unmatched rows come back as rows too (n_ungraded, n_orphan_verdicts,
    n_samples_without_problem), so nothing disappears without a trace.
    """
    joined = join_run(samples, verdicts, problems, max_tokens=max_tokens, sources=sources)
    return metrics_from_joined(joined, n_boot=n_boot, seed=seed, ks=ks, date_windows=date_windows) + rerun_rows(verdicts)


def metrics_from_joined(
    joined: JoinedRun,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    ks: Sequence[int] = (1, 5, 10),
    date_windows: Sequence[DateWindow] | None = None,
) -> list[dict]:
    rows = _metric_rows(joined, n_boot=n_boot, seed=seed, ks=ks, date_windows=date_windows)
    rows.append(_row("n_ungraded", joined.n_ungraded))
    rows.append(_row("n_grader_error", joined.n_grader_error))
    rows.append(_row("n_orphan_verdicts", joined.orphan_verdicts.height))
    rows.append(_row("n_samples_without_problem", joined.n_without_problem))
    return rows
