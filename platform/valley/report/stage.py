"""The report stage: score every run of an experiment, then write tables, plots and the valley fit.

Each run is read and scored independently (a Ray task per run when Ray is up, since bootstraps
over several runs are the slow part); the tables/plots are built from the combined results on
the driver. Outputs go to the stage's content-addressed directory through Storage; `_SUCCESS`
is written last, and a re-run with the same config returns at once.
"""

from __future__ import annotations

import datetime as dt

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import ray
from pydantic import BaseModel

from valley import schemas
from valley.errors import InputError
from valley.metrics.compute import metrics_from_joined
from valley.metrics.join import UNGRADED, join_run
from valley.metrics.valley import fit_valley
from valley.report import agreement, costs, plots, tables
from valley.report.config import CORE_METRICS, ReportConfig, RunSpec
from valley.storage import Storage, conform, stage_dir

STAGE = "report"
RUN_FIELDS = ("data_size", "subset", "checkpoint", "model", "epoch")
UNMATCHED = pa.schema(
    [
        pa.field("run_id", pa.string()),
        pa.field("question_id", pa.string()),
        pa.field("sample_idx", pa.int64()),
        pa.field("kind", pa.string()),  # sample_without_verdict | verdict_without_sample | sample_without_problem
    ]
)


class ReportResult(BaseModel):
    """Where the report's files are (paths under the storage root) and what went into it."""

    stage_dir: str
    results: str
    report_md: str
    valley_fit: str
    plots: list[str]
    unmatched: str | None = None
    agreement: str | None = None  # disagreements with imported official verdicts (report/agreement.py)
    n_runs: int
    n_rows: int
    skipped: bool = False


OPTIONAL_COLUMNS = ("run_id", "n_tokens", "difficulty", "platform", "contest_date")


def _read(storage: Storage, path: str, columns: list[str], table_name: str) -> pa.Table:
    """Only the columns metrics need (samples also hold prompts, which can be most of the bytes)."""
    if not storage.exists(path):
        raise InputError(f"{table_name} table not found", file=storage.uri(path))
    try:
        table = storage.read_parquet(path, columns=[*columns, *OPTIONAL_COLUMNS])
    except (pa.ArrowInvalid, KeyError):  # an optional column is absent: read all, then pick
        table = storage.read_parquet(path)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputError(f"{table_name} table lacks column {missing[0]!r}", file=storage.uri(path), field=missing[0])
    return table.select([c for c in table.column_names if c in columns or c in OPTIONAL_COLUMNS])


def _select_run(table: pa.Table, run_id: str, file: str) -> pa.Table:
    if run_id == "*" or "run_id" not in table.column_names:
        return table
    out = table.filter(pc.equal(table["run_id"], run_id))
    if out.num_rows == 0:
        found = sorted({str(x) for x in pc.unique(table["run_id"]).to_pylist()})[:5]
        raise InputError(f"no rows with run_id {run_id!r} (found: {', '.join(found) or 'none'})", file=file, field="run_id")
    return out


def evaluate_run(root: str, spec: dict, opts: dict) -> tuple[list[dict], pa.Table]:
    """Score one run: its metric rows (run fields filled in) and its unmatched rows to write aside.

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
    joined = join_run(samples, verdicts, problems, max_tokens=opts["max_tokens"], sources=sources)
    rows = metrics_from_joined(
        joined, n_boot=opts["n_boot"], seed=opts["seed"], ks=opts["ks"], date_windows=opts["date_windows"]
    )
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
    unmatched = pl.concat([ungraded, orphans, no_problem]).to_arrow().cast(UNMATCHED)
    return rows, unmatched


def _evaluate_all(cfg: ReportConfig, storage: Storage) -> list[tuple[list[dict], pa.Table]]:
    opts = {"max_tokens": cfg.max_tokens, "n_boot": cfg.n_boot, "seed": cfg.seed, "ks": cfg.ks,
            "date_windows": cfg.date_windows}
    specs = [r.model_dump(mode="json") for r in cfg.runs]
    if cfg.parallel and len(specs) > 1 and ray.is_initialized():
        task = ray.remote(num_cpus=1)(evaluate_run)
        return ray.get([task.remote(storage.uri(), s, opts) for s in specs])
    return [evaluate_run(storage.uri(), s, opts) for s in specs]


def results_table(cfg: ReportConfig, rows: list[dict]) -> pa.Table:
    table = pa.Table.from_pylist([{"experiment": cfg.experiment, **r} for r in rows])
    return conform(table, schemas.RESULTS).select(schemas.RESULTS.names)


def valley_fits(results: pl.DataFrame, cfg: ReportConfig) -> list[dict]:
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


def render_markdown(cfg: ReportConfig, results: pl.DataFrame, fits: list[dict], plot_files: list[str]) -> str:
    integrity = results.filter(pl.col("metric").is_in(["n_problems", "n_samples", "n_ungraded", "n_orphan_verdicts",
                                                       "n_samples_without_problem"]))
    counts: dict[str, dict[str, int]] = {}
    for r in integrity.iter_rows(named=True):
        counts.setdefault(r["run_id"], {})[r["metric"]] = int(r["value"])
    count_rows = [
        [rid, *[str(c.get(m, 0)) for m in ("n_problems", "n_samples", "n_ungraded", "n_orphan_verdicts",
                                           "n_samples_without_problem")]]
        for rid, c in counts.items()
    ]
    parts = [
        f"# {cfg.experiment}: valley report",
        f"_Generated {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; "
        f"{len(cfg.runs)} runs; token budget {cfg.max_tokens}; {cfg.n_boot} bootstrap resamples over problems "
        f"(95% percentile CIs in brackets), seed {cfg.seed}._",
        "Scores are percentages. pass@1 is the mean over problems of each problem's pass fraction; completion "
        "is the share of responses that stop (finish_reason `stop`) within the token budget; think tag is the "
        "share of responses that begin with `<think>` after leading whitespace.",
        "## Table 1 — data scaling",
        tables.table1(results, cfg.scaling_subset),
        "## Table 2 — trace correctness and question difficulty",
        tables.table2(results, cfg.scaling_subset),
        "## The valley",
        *[f"![{f}]({f})" for f in plot_files if f.startswith("valley")],
        tables.fit_table(fits) if fits else "_Not enough sizes to fit._",
        "Minimum at: the fitted hinge when a piecewise-linear fit in log10(size) has a valley shape, else the "
        "observed minimum; slope after: percentage points per tenfold more data beyond it (see valley_fit.json).",
        "## Verdict mix (share of responses)",
        tables.verdict_table(results),
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
        tables._md(["Run", "problems", "samples", "ungraded", "orphan verdicts", "without problem"], count_rows),
        "Ungraded samples count as failures; their keys, those of orphan verdicts and of samples whose problem "
        "is unknown are in `unmatched.parquet`.",
    ]
    return "\n\n".join(parts) + "\n"


def run_report(cfg: ReportConfig, storage: Storage) -> ReportResult:
    """Score all runs, write results.parquet, report.md, PNG plots and valley_fit.json; `_SUCCESS` last."""
    h = cfg.config_hash()
    out = stage_dir(STAGE, cfg.name, h)
    if storage.is_complete(out, h):
        return ReportResult(**storage.success_summary(out), skipped=True)

    evaluated = _evaluate_all(cfg, storage)
    rows = [r for run_rows, _ in evaluated for r in run_rows]
    agree = agreement.evaluate(cfg, storage)  # None unless a run's samples carry official verdicts
    rows += agree.rows if agree else []
    table = results_table(cfg, rows)
    results = pl.from_arrow(table)
    assert isinstance(results, pl.DataFrame)
    fits = valley_fits(results, cfg)

    storage.write_parquet(table, out, "results.parquet", schema=schemas.RESULTS)
    unmatched = pa.concat_tables([u for _, u in evaluated])
    unmatched_path = None
    if unmatched.num_rows:
        unmatched_path = f"{out}/unmatched.parquet"
        storage.write_parquet(unmatched, out, "unmatched.parquet")

    plot_files = ["valley.png"]
    storage.write_bytes(plots.valley_figure(results, fits, cfg.scaling_subset), out, "valley.png")
    for metric in CORE_METRICS:
        name = f"valley_{plots.metric_slug(metric)}.png"
        storage.write_bytes(plots.metric_figure(results, fits, metric, cfg.scaling_subset), out, name)
        plot_files.append(name)
    epoch_png = plots.epoch_figure(results)
    if epoch_png is not None:
        storage.write_bytes(epoch_png, out, "epochs.png")
        plot_files.append("epochs.png")

    storage.write_json({"experiment": cfg.experiment, "fits": fits}, out, "valley_fit.json")
    markdown = render_markdown(cfg, results, fits, plot_files)
    agreement_path = None
    if agree:
        markdown += "\n" + agree.markdown + "\n"
        agreement_path = f"{out}/agreement.parquet"
        storage.write_parquet(agree.disagreements, out, "agreement.parquet")
    if cfg.costs:
        markdown += "\n## Cost per stage and run\n\n" + costs.cost_table(cfg.costs) + "\n\nCore- and GPU-hours are " \
            "wall time × the CPUs and GPUs the stage held (reserved capacity, see valley/costs.py).\n"
    storage.write_text(markdown, out, "report.md")
    result = ReportResult(
        stage_dir=out,
        results=f"{out}/results.parquet",
        report_md=f"{out}/report.md",
        valley_fit=f"{out}/valley_fit.json",
        plots=[f"{out}/{p}" for p in plot_files],
        unmatched=unmatched_path,
        agreement=agreement_path,
        n_runs=len(cfg.runs),
        n_rows=table.num_rows,
    )
    storage.mark_success(out, h, result.model_dump(exclude={"skipped"}))
    return result
