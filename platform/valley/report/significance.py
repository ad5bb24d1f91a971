"""Is a difference real? Paired tests of the study's comparisons, pooled over replicates (pure: tables in,
rows and Markdown out).

A *cell* is what one training recipe produced: the runs alike in student, subset, start and size, one per
training seed (`RunSpec.replicate`). Every comparison the study makes is a pair of cells evaluated on the
same problems: each size of a series against the student's base model (the valley; its lowest point is
the dip), the paper's contrasts (correct vs incorrect, easy vs hard) and the spec's declared contrasts.
Each gets a paired bootstrap over problems (and seeds, where a cell has several) of the difference in
pass@1, completion rate and think-tag rate (metrics/paired.py), and Holm-adjusted p-values within each
metric across all of the study's comparisons.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from valley.metrics.compute import core_ratio_specs
from valley.metrics.paired import (
    ArmSummary,
    PairedDifference,
    arm_summary,
    describe,
    holm,
    paired_differences,
)
from valley.report.config import ComparisonRuns, ReportConfig, RunSpec
from valley.report.scoring import PER_PROBLEM_COLUMNS
from valley.report.tables import _md

METRICS = ("pass@1", "completion_rate", "think_rate")
# the preset contrasts of the paper (RQ2, RQ3), found by subset name
PRESET_CONTRASTS = (("correct", "incorrect", "RQ2: trace correctness"), ("easy", "hard", "RQ3: question difficulty"))
ALPHA = 0.05
# resamples of the paired tests: at least this many whatever the report's `n_boot`, because a bootstrap
# p-value cannot fall below 1 / (resamples + 1), and Holm multiplies the smallest by the number of tests
MIN_TEST_RESAMPLES = 2000


@dataclass(frozen=True)
class Cell:
    """One recipe's evaluations: runs alike in everything but their training seed."""

    model: str
    subset: str
    checkpoint: str
    data_size: int


@dataclass(frozen=True)
class Comparison:
    name: str  # the study's question it answers
    first: Cell
    second: Cell
    against_base: bool = False  # a size of a series against the base model: a point of the valley


def cells_of(runs: Iterable[RunSpec]) -> dict[Cell, list[str]]:
    """Final evaluations (no per-epoch points) grouped by recipe, each cell's run ids in replicate order.
    `runs`: the report's RunSpecs, or anything with their fields (the plan passes planned runs)."""
    out: dict[Cell, list[tuple[int, str]]] = {}
    for run in runs:
        if run.epoch is None:
            cell = Cell(run.model, run.subset if run.data_size else "base", run.checkpoint, run.data_size)
            out.setdefault(cell, []).append((run.replicate or 0, run.run_id))
    return {cell: [rid for _, rid in sorted(ids)] for cell, ids in out.items()}


def label(cell: Cell, run_ids: list[str]) -> str:
    """How a sentence names a cell: its first run's name within its student (`r1000`), or `the base`."""
    if cell.data_size == 0:
        return "the base"
    first = run_ids[0]
    return first[len(cell.model) + 1:] if cell.model and first.startswith(f"{cell.model}-") else first


def planned_comparisons(cells: dict[Cell, list[str]], scaling_subset: str,
                        declared_comparisons: Iterable[ComparisonRuns]) -> list[Comparison]:
    """Every pair the study compares, each once: the valley (each size of a series vs the base, for runs
    trained from the base), the paper's contrasts and the declared ones at each shared size and start.
    `valley plan` calls it on the planned runs, the report on the evaluated ones: the same pairs."""
    run_cell = {rid: cell for cell, ids in cells.items() for rid in ids}
    bases = {c.model: c for c in cells if c.data_size == 0}
    series_subsets = {scaling_subset}
    contrasts: list[tuple[str, set[Cell], set[Cell]]] = []
    for declared in declared_comparisons:
        arm_cells = {arm: {run_cell[r] for r in declared.runs.get(arm, []) if r in run_cell} for arm in declared.arms}
        if declared.kind == "series":
            series_subsets |= {c.subset for c in arm_cells[declared.arms[0]]}
        else:
            contrasts.append((declared.name, arm_cells[declared.arms[0]], arm_cells[declared.arms[1]]))
    for first, second, name in PRESET_CONTRASTS:
        contrasts.append((name, {c for c in cells if c.subset == first}, {c for c in cells if c.subset == second}))
    out: list[Comparison] = []
    for cell in sorted(cells, key=_order):
        if cell.subset in series_subsets and cell.checkpoint == "base" and cell.data_size and cell.model in bases:
            out.append(Comparison(f"valley: {cell.subset} vs base", cell, bases[cell.model], against_base=True))
    for name, firsts, seconds in contrasts:
        for a in sorted(firsts, key=_order):
            for b in sorted(seconds, key=_order):
                if (a.model, a.checkpoint, a.data_size) == (b.model, b.checkpoint, b.data_size):
                    out.append(Comparison(name, a, b))
    seen: set[tuple[Cell, Cell]] = set()
    return [c for c in out if (c.first, c.second) not in seen and not seen.add((c.first, c.second))]


def _order(cell: Cell) -> tuple:
    return cell.model, cell.checkpoint != "base", cell.checkpoint, cell.subset, cell.data_size


def _by_run(per_problem: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """The per-problem sums split by run once, rather than filtered again for every comparison."""
    return {key[0]: frame for key, frame in per_problem.partition_by("run_id", as_dict=True).items()}


def _arrays(by_run: dict[str, pl.DataFrame], run_ids: list[str],
            problems: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(seeds, problems, metrics) numerators and denominators of the METRICS for a cell's runs, problems in
    `problems` order (metrics/compute.py's definitions of the run metrics)."""
    nums, dens = [], []
    for rid in run_ids:
        frame = pl.DataFrame({"question_id": problems}).join(by_run[rid].select(*PER_PROBLEM_COLUMNS[1:]),
                                                             on="question_id", how="left")
        specs = core_ratio_specs(frame)
        nums.append(np.column_stack([num for _, num, _ in specs]))
        dens.append(np.column_stack([den for _, _, den in specs]))
    return np.stack(nums), np.stack(dens)


def shared_problems(by_run: dict[str, pl.DataFrame], run_ids: Iterable[str]) -> list[str]:
    """Problems every one of `run_ids` was evaluated on: a paired test compares like with like."""
    sets = [set(by_run[rid]["question_id"].to_list()) if rid in by_run else set() for rid in run_ids]
    return sorted(set.intersection(*sets)) if sets else []


@dataclass(frozen=True)
class Tested:
    comparison: Comparison
    metric: str
    first_label: str
    second_label: str
    result: PairedDifference
    adjusted_p: float | None = None


def test_comparisons(cfg: ReportConfig, per_problem: pl.DataFrame) -> list[Tested]:
    """Every planned comparison tested on each core metric, Holm-adjusted within a metric."""
    cells = cells_of(cfg.runs)
    tested: list[Tested] = []
    if cfg.n_boot == 0:
        return tested
    n_boot, by_run = test_resamples(cfg), _by_run(per_problem)
    for comparison in planned_comparisons(cells, cfg.scaling_subset, cfg.comparisons or []):
        a_ids, b_ids = cells[comparison.first], cells[comparison.second]
        problems = shared_problems(by_run, [*a_ids, *b_ids])
        if not problems:
            continue
        # the three metrics of a comparison share one set of resamples
        results = paired_differences(*_arrays(by_run, a_ids, problems), *_arrays(by_run, b_ids, problems),
                                     n_boot=n_boot, seed=cfg.seed, alpha=ALPHA)
        tested += [Tested(comparison, metric, label(comparison.first, a_ids), label(comparison.second, b_ids), result)
                   for metric, result in zip(METRICS, results, strict=True)]
    adjusted: list[Tested] = []
    for metric in METRICS:
        group = [t for t in tested if t.metric == metric]
        for t, p in zip(group, holm([t.result.p_value for t in group]), strict=True):
            adjusted.append(Tested(t.comparison, t.metric, t.first_label, t.second_label, t.result, p))
    return adjusted


def test_resamples(cfg: ReportConfig) -> int:
    return max(cfg.n_boot, MIN_TEST_RESAMPLES)


def comparison_rows(tested: list[Tested]) -> list[dict]:
    """One row per comparison and metric, for `comparisons.parquet`."""
    return [{"comparison": t.comparison.name, "metric": t.metric, "first": t.first_label, "second": t.second_label,
             "model": t.comparison.first.model, "checkpoint": t.comparison.first.checkpoint,
             "data_size": t.comparison.first.data_size, "difference": t.result.difference,
             "ci_low": t.result.ci_low, "ci_high": t.result.ci_high, "p_value": t.result.p_value,
             "p_holm": t.adjusted_p, "n_problems": t.result.n_problems, "seeds_first": t.result.n_seeds_a,
             "seeds_second": t.result.n_seeds_b,
             "significant": bool(t.adjusted_p is not None and t.adjusted_p < ALPHA), "words": words(t)}
            for t in tested]


COMPARISON_SCHEMA = pa.schema([
    ("comparison", pa.string()), ("metric", pa.string()), ("first", pa.string()), ("second", pa.string()),
    ("model", pa.string()), ("checkpoint", pa.string()), ("data_size", pa.int64()), ("difference", pa.float64()),
    ("ci_low", pa.float64()), ("ci_high", pa.float64()), ("p_value", pa.float64()), ("p_holm", pa.float64()),
    ("n_problems", pa.int64()), ("seeds_first", pa.int64()), ("seeds_second", pa.int64()), ("significant", pa.bool_()),
    ("words", pa.string()),
])


def comparisons_table(tested: list[Tested]) -> pa.Table:
    return pa.Table.from_pylist(comparison_rows(tested), schema=COMPARISON_SCHEMA)


def dips(tested: list[Tested]) -> list[Tested]:
    """Per valley (student, series): the size whose pass@1 falls furthest below the base, if any does."""
    lowest: dict[tuple[str, str], Tested] = {}
    for t in tested:
        if t.metric != "pass@1" or not t.comparison.against_base:
            continue
        key = (t.comparison.first.model, t.comparison.first.subset)
        if t.result.difference < 0 and (key not in lowest or t.result.difference < lowest[key].result.difference):
            lowest[key] = t
    return list(lowest.values())


def words(t: Tested) -> str:
    """The comparison in words, with what its interval leaves out: the training-seed spread of a trained
    recipe evaluated with one seed (the base model is not trained, so it has none)."""
    text = describe(t.first_label, t.second_label, t.result, metric=t.metric, adjusted_p=t.adjusted_p, alpha=ALPHA,
                    seed_note=False)
    single = [lab for lab, cell, seeds in ((t.first_label, t.comparison.first, t.result.n_seeds_a),
                                           (t.second_label, t.comparison.second, t.result.n_seeds_b))
              if cell.data_size and seeds == 1]
    return f"{text} (one training seed of {' and '.join(single)}: seed-to-seed spread not covered)" if single else text


def dip_sentence(t: Tested) -> str:
    verdict = "significant" if t.adjusted_p is not None and t.adjusted_p < ALPHA else \
        "not significant: these data cannot tell it from no dip"
    where = f"{t.comparison.first.model}, {t.comparison.first.subset}" if t.comparison.first.model else \
        t.comparison.first.subset
    return f"**The valley's dip ({where})** is at {t.first_label}: {words(t)}. The dip is {verdict}."


def replicate_summaries(cfg: ReportConfig, per_problem: pl.DataFrame) -> list[tuple[Cell, str, ArmSummary]]:
    """Cells with several seeds: mean over seeds, its standard error, each seed's value, and the interval
    from a bootstrap over problems and seeds."""
    out, by_run = [], _by_run(per_problem)
    for cell, ids in sorted(cells_of(cfg.runs).items(), key=lambda kv: _order(kv[0])):
        if len(ids) < 2:
            continue
        num, den = _arrays(by_run, ids, shared_problems(by_run, ids))
        for j, metric in enumerate(METRICS):
            out.append((cell, metric, arm_summary(num[:, :, j], den[:, :, j], n_boot=test_resamples(cfg),
                                                  seed=cfg.seed, alpha=ALPHA)))
    return out


def _signed(x: float | None) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x * 100:+.1f}"


def _p(p: float | None) -> str:
    if p is None or not np.isfinite(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3g}"


def _pct(x: float | None) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x * 100:.1f}"


def section(cfg: ReportConfig, per_problem: pl.DataFrame, tested: list[Tested]) -> str:
    """The report's "Is the difference real?" section: the dips, every comparison in words, replicates."""
    if cfg.n_boot == 0:
        return "## Is the difference real?\n\n_No tests: the report's n_boot is 0 (no resampling)._"
    pairs = len({(t.comparison.first, t.comparison.second) for t in tested})
    parts = ["## Is the difference real?",
             "_Paired bootstrap over problems (and over seeds where a recipe has several) of each difference, "
             f"{test_resamples(cfg)} resamples; p-values Holm-adjusted within each metric across the study's "
             f"{pairs} comparisons; α = {ALPHA}. A recipe with one training seed has no measured seed-to-seed "
             "spread (1–2 points of LCB pass@1 between runs is common): its interval covers problems and "
             "samples only. Every row is in `comparisons.parquet`; `per_problem.parquet` holds what they "
             "resample._"]
    found = dips(tested)
    parts += [dip_sentence(t) for t in found] or ["No series falls below its base model in pass@1: no dip to test."]
    if tested:
        parts.append("\n".join(f"- {t.comparison.name}: {words(t)}" for t in tested if t.metric == "pass@1"))
        rows = [[t.comparison.first.model or "–", t.comparison.name, t.metric, t.first_label, t.second_label,
                 f"{_signed(t.result.difference)} [{_signed(t.result.ci_low)}, {_signed(t.result.ci_high)}]",
                 _p(t.result.p_value), _p(t.adjusted_p), "yes" if t.adjusted_p is not None and t.adjusted_p < ALPHA
                 else "no", str(t.result.n_problems), f"{t.result.n_seeds_a}/{t.result.n_seeds_b}"] for t in tested]
        parts.append(_md(["Student", "Comparison", "Metric", "First", "Second", "Difference (points) [95%]", "p", "Holm p",
                          "Significant", "Problems", "Seeds"], rows))
    summaries = replicate_summaries(cfg, per_problem)
    if summaries:
        rows = ["| Student | Run | From | Metric | Mean | SE | Seeds | 95% interval (problems × seeds) |",
                "|---|---|---|---|---|---|---|---|"]
        for cell, metric, s in summaries:
            seeds = ", ".join(_pct(v) for v in s.per_seed)
            rows.append(f"| {cell.model} | {cell.subset} {cell.data_size} | {cell.checkpoint} | {metric} | "
                        f"{_pct(s.mean)} | {_pct(s.standard_error)} | {seeds} | [{_pct(s.ci_low)}, {_pct(s.ci_high)}] |")
        parts += ["### Replicates", "\n".join(rows)]
    return "\n\n".join(parts)
