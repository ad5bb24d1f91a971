"""Scoring of the report stage: read and join each run's tables, compute its metrics, fit the valley.

Each run is read and scored independently (a Ray task per run when Ray is up, since bootstraps over several
runs are the slow part); nothing here writes files (report/render.py does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import ray

from valley import schemas
from valley.errors import ConfigError, InputError
from valley.metrics.compute import metrics_from_joined, per_problem, rerun_rows, window_rows
from valley.metrics.join import UNGRADED, join_run
from valley.metrics.valley_fit import fit_valley
from valley.report.config import CORE_METRICS, ReportConfig, RunSpec
from valley.storage import Storage, conform

RUN_FIELDS = ("data_size", "subset", "checkpoint", "model", "epoch")
# per-problem sums kept for the paired tests: run, problem, samples, passes, completions (and how many
# samples had a finish reason to tell), think tags
PER_PROBLEM_COLUMNS = ("run_id", "question_id", "n", "c", "completed", "n_with_finish", "think")
# columns each table may have and metrics use; per table, since asking for a column a file lacks makes
# `_read` fall back to reading every column (a samples table's prompts can be most of its bytes)
OPTIONAL_COLUMNS = {
    "samples": ("run_id", "n_tokens"),
    "verdicts": ("run_id", "rerun_alone"),
    "problems": ("difficulty", "platform", "contest_date"),
}


@dataclass(frozen=True)
class ScoreOptions:
    """The scoring knobs every run is scored with; plain and picklable, so it travels to Ray tasks."""

    max_tokens: int
    n_boot: int
    seed: int
    ks: tuple[int, ...]
    date_windows: tuple[tuple[str, str], ...] | None

    @classmethod
    def of(cls, cfg: ReportConfig) -> ScoreOptions:
        if cfg.max_tokens is None:
            raise ConfigError("the report's max_tokens is unset; resolve it first (resolve_max_tokens)")
        windows = tuple((start, end) for start, end in cfg.date_windows) if cfg.date_windows is not None else None
        return cls(max_tokens=cfg.max_tokens, n_boot=cfg.n_boot, seed=cfg.seed, ks=tuple(cfg.ks),
                   date_windows=windows)


def _generate_marker(storage: Storage, samples: str) -> tuple[str, dict[str, Any]] | None:
    """(stage dir, marker summary) of the generate run whose `_SUCCESS` sits at or above `samples`."""
    run = storage.finished_stage_above(samples)
    return None if run is None else (run, storage.success_summary(run))


def _generate_budget(storage: Storage, samples: str) -> tuple[str, int | None] | None:
    """(stage dir, its max_tokens) of the generate run whose `_SUCCESS` sits at or above `samples`."""
    found = _generate_marker(storage, samples)
    return None if found is None else (found[0], found[1].get("max_tokens"))


def _generate_window(storage: Storage, samples: str) -> dict[str, Any] | None:
    """The contest-date window the generate run recorded in its marker (None: no marker, or one written
    before windows were recorded)."""
    found = _generate_marker(storage, samples)
    return (found[1].get("selection") or {}).get("window") if found else None


def resolve_max_tokens(cfg: ReportConfig, storage: Storage) -> ReportConfig:
    """`cfg` with `max_tokens` set: its own, else the budget every run's generate stage recorded in its
    `_SUCCESS` marker, so a standalone report scores (and hashes) as the experiment runner's would."""
    if cfg.max_tokens is not None:
        return cfg
    budgets: dict[int, list[str]] = {}
    for run in cfg.runs:
        found = _generate_budget(storage, run.samples)
        if found is None or found[1] is None:
            where = f"the generate stage at {storage.uri(found[0])}" if found else f"no stage above {run.samples}"
            raise ConfigError(f"report max_tokens is not set and run {run.run_id!r}'s samples do not say their "
                              f"budget ({where} records no max_tokens); set max_tokens to the generate config's "
                              "max_tokens")
        budgets.setdefault(int(found[1]), []).append(run.run_id)
    if len(budgets) > 1:
        raise ConfigError(f"report max_tokens is not set and the runs were generated with different budgets "
                          f"{budgets}; set max_tokens")
    return cfg.model_copy(update={"max_tokens": next(iter(budgets))})


def _read(storage: Storage, path: str, columns: list[str], table_name: str) -> pa.Table:
    """Only the columns metrics need (samples also hold prompts, which can be most of the bytes)."""
    if not storage.exists(path):
        raise InputError(f"{table_name} table not found", file=storage.uri(path))
    storage.require_intact_above(path)  # a truncated part is named, not met as a Parquet error
    optional = OPTIONAL_COLUMNS[table_name]
    try:
        table = storage.read_parquet(path, columns=[*columns, *optional])
    except (pa.ArrowInvalid, KeyError):  # an optional column is absent: read all, then pick
        table = storage.read_parquet(path)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputError(f"{table_name} table lacks column {missing[0]!r}", file=storage.uri(path), field=missing[0])
    return table.select([c for c in table.column_names if c in columns or c in optional])


def _select_run(table: pa.Table, run_id: str, file: str) -> pa.Table:
    if run_id == "*" or "run_id" not in table.column_names:
        return table
    out = table.filter(pc.equal(table["run_id"], run_id))
    if out.num_rows == 0:
        found = sorted({str(x) for x in pc.unique(table["run_id"]).to_pylist()})[:5]
        raise InputError(f"no rows with run_id {run_id!r} (found: {', '.join(found) or 'none'})", file=file, field="run_id")
    return out


@dataclass(frozen=True)
class ScoredRun:
    """One run scored: its metric rows, the rows to write aside, and its per-problem sums (the paired
    tests of report/significance.py resample those)."""

    rows: list[dict]
    unmatched: pa.Table
    per_problem: pl.DataFrame


def evaluate_run(root: str, spec: dict, opts: ScoreOptions) -> ScoredRun:
    """Score one run: its metric rows (run fields filled in), its unmatched rows and per-problem sums.

    Takes plain data (storage root, spec as a dict) so it can run as a Ray task anywhere.
    """
    run = RunSpec.model_validate(spec)
    storage = Storage(root)
    samples = _read(storage, run.samples, ["question_id", "sample_idx", "response", "finish_reason"], "samples")
    verdicts = _read(storage, run.verdicts, ["question_id", "sample_idx", "verdict"], "verdicts")
    problems = _read(storage, run.problems, ["question_id"], "problems")
    sources = {
        "samples": storage.uri(run.samples),
        "verdicts": storage.uri(run.verdicts),
        "problems": storage.uri(run.problems),
    }
    samples = _select_run(samples, run.table_run_id, sources["samples"])
    verdicts = _select_run(verdicts, run.table_run_id, sources["verdicts"])
    joined = join_run(samples, verdicts, problems, max_tokens=opts.max_tokens, sources=sources)
    rows = metrics_from_joined(
        joined, n_boot=opts.n_boot, seed=opts.seed, ks=list(opts.ks),
        date_windows=list(opts.date_windows) if opts.date_windows is not None else None,
    )
    rows += rerun_rows(verdicts)
    rows += window_rows(_generate_window(storage, run.samples), joined.samples["question_id"].n_unique())
    fields = {"run_id": run.run_id, **{f: getattr(run, f) for f in RUN_FIELDS}}
    rows = [{**fields, **r} for r in rows]
    ungraded = joined.samples.filter(pl.col("verdict") == UNGRADED).select(
        pl.lit(run.run_id).alias("run_id"), "question_id", pl.col("sample_idx").cast(pl.Int64),
        pl.lit("sample_without_verdict").alias("kind"),
    )
    orphans = joined.orphan_verdicts.select(
        pl.lit(run.run_id).alias("run_id"), pl.col("question_id").cast(pl.String), pl.col("sample_idx").cast(pl.Int64),
        pl.lit("verdict_without_sample").alias("kind"),
    )
    no_problem = joined.samples.join(joined.problems.select("question_id"), on="question_id", how="anti").select(
        pl.lit(run.run_id).alias("run_id"), "question_id", pl.col("sample_idx").cast(pl.Int64),
        pl.lit("sample_without_problem").alias("kind"),
    )
    unmatched = pl.concat([ungraded, orphans, no_problem]).to_arrow().cast(schemas.UNMATCHED)
    return ScoredRun(rows, unmatched, per_problem_sums(joined, run.run_id))


def per_problem_sums(joined: Any, run_id: str) -> pl.DataFrame:
    """The counts per problem that pass@1, completion and think-tag rates are ratios of (none when the run
    has no samples)."""
    if joined.samples.height == 0:
        return pl.DataFrame(schema={c: pl.Int64 for c in PER_PROBLEM_COLUMNS} | {"run_id": pl.String,
                                                                               "question_id": pl.String})
    pp = per_problem(joined)
    return pp.select(pl.lit(run_id).alias("run_id"), pl.col("question_id").cast(pl.String),
                     *[pl.col(c).cast(pl.Int64) for c in PER_PROBLEM_COLUMNS[2:]])


def evaluate_all(cfg: ReportConfig, storage: Storage) -> list[ScoredRun]:
    """Every run of `cfg` (max_tokens resolved) scored: one Ray task per run when Ray is up."""
    opts = ScoreOptions.of(cfg)
    specs = [r.model_dump(mode="json") for r in cfg.runs]
    if cfg.parallel and len(specs) > 1 and ray.is_initialized():
        task = ray.remote(num_cpus=1)(evaluate_run)
        return ray.get([task.remote(storage.uri(), s, opts) for s in specs])
    return [evaluate_run(storage.uri(), s, opts) for s in specs]


def results_table(cfg: ReportConfig, rows: list[dict]) -> pa.Table:
    table = pa.Table.from_pylist([{"experiment": cfg.experiment, **r} for r in rows])
    return conform(table, schemas.RESULTS).select(schemas.RESULTS.names)


def valley_fits(results: pl.DataFrame, cfg: ReportConfig) -> list[dict[str, Any]]:
    """One fit per (student, starting checkpoint, metric) over the scaling subset's sizes."""
    pts = results.filter(
        pl.col("epoch").is_null() & (pl.col("subset") == cfg.scaling_subset) & (pl.col("data_size") > 0)
    )
    metrics = [cfg.fit_metric, *[m for m in CORE_METRICS if m != cfg.fit_metric]]
    fits = []
    for model, ckpt in pts.select("model", "checkpoint").unique().sort("model", "checkpoint").iter_rows():
        for metric in metrics:
            g = pts.filter((pl.col("model") == model) & (pl.col("checkpoint") == ckpt) & (pl.col("metric") == metric))
            if g.height == 0:
                continue
            base = results.filter(
                (pl.col("model") == model) & (pl.col("data_size") == 0) & (pl.col("metric") == metric)
                & pl.col("epoch").is_null()
            )
            fits.append(
                {
                    "model": model,
                    "checkpoint": ckpt,
                    "subset": cfg.scaling_subset,
                    "metric": metric,
                    "base_value": float(base["value"][0]) if base.height else None,
                    "fit": fit_valley(g["data_size"].to_list(), g["value"].to_list()),
                }
            )
    return fits
