"""The report stage: score every run of an experiment, then write tables, plots and the valley fit.

Scoring (reading and joining each run's tables, metrics, the valley fits) is report/scoring.py; the
markdown, tables and plots are written by report/render.py. Outputs go to the stage's content-addressed
directory through Storage; `_SUCCESS` is written last, and a re-run with the same config returns at once.
"""

from __future__ import annotations

from typing import ClassVar

import polars as pl
import pyarrow as pa

from valley import schemas
from valley.manifest import SubsetAudit, read_audit
from valley.report import agreement, audit_table, render, scoring, significance
from valley.report.config import ReportConfig
from valley.stage import StageResult, run_stage
from valley.storage import Storage

STAGE = "report"


class ReportResult(StageResult):
    """Where the report's files are (paths under the storage root) and what went into it."""

    results: str
    report_md: str
    valley_fit: str
    plots: list[str]
    unmatched: str | None = None
    agreement: str | None = None  # disagreements with imported official verdicts (report/agreement.py)
    n_runs: int
    n_rows: int

    per_problem: str | None = None  # per-problem sums of every run (what the paired tests resample)
    comparisons: str | None = None  # every tested comparison: difference, interval, p and Holm p, in words

    path_fields: ClassVar[tuple[str, ...]] = ("results", "report_md", "valley_fit", "plots", "unmatched", "agreement",
                                              "per_problem", "comparisons")


def run_report(cfg: ReportConfig, storage: Storage) -> ReportResult:
    """Score all runs, write results.parquet, report.md, PNG plots and valley_fit.json; `_SUCCESS` last."""
    cfg = scoring.resolve_max_tokens(cfg, storage)  # before hashing: the same report as with it given
    return run_stage(storage, STAGE, cfg.name, cfg.config_hash(), ReportResult, lambda out: _report(cfg, storage, out))


def read_audits(cfg: ReportConfig, storage: Storage) -> dict[str, SubsetAudit | None]:
    """Run id -> the label audit of the subset its model trained on, for final runs that name their data."""
    return {run.run_id: read_audit(storage, run.data, run.data_subset) for run in cfg.runs
            if run.epoch is None and run.data and run.data_subset}


def _report(cfg: ReportConfig, storage: Storage, out: str) -> ReportResult:
    """The stage body (valley.stage.run_stage does the skip, clean-up and marker around it)."""
    evaluated = scoring.evaluate_all(cfg, storage)
    rows = [r for scored in evaluated for r in scored.rows]
    agree = agreement.evaluate(cfg, storage)  # None unless a run's samples carry official verdicts
    rows += agree.rows if agree else []
    table = scoring.results_table(cfg, rows)
    results = pl.from_arrow(table)
    assert isinstance(results, pl.DataFrame)
    fits = scoring.valley_fits(results, cfg)

    storage.write_parquet(table, out, "results.parquet", schema=schemas.RESULTS)
    unmatched = pa.concat_tables([scored.unmatched for scored in evaluated])
    unmatched_path = None
    if unmatched.num_rows:
        unmatched_path = f"{out}/unmatched.parquet"
        storage.write_parquet(unmatched, out, "unmatched.parquet")

    per_problem = pl.concat([scored.per_problem for scored in evaluated], how="vertical_relaxed")
    storage.write_parquet(per_problem.to_arrow(), out, "per_problem.parquet")
    tested = significance.test_comparisons(cfg, per_problem)
    storage.write_parquet(significance.comparisons_table(tested), out, "comparisons.parquet")
    sections = [significance.section(cfg, per_problem, tested),
                "## Labels the runs trained on (the data stage's audit)",
                audit_table.audit_section(read_audits(cfg, storage), results)]
    plot_files, agreement_path = render.write_report(cfg, storage, out, results, fits, agree, sections)
    return ReportResult(
        stage_dir=out,
        results=f"{out}/results.parquet",
        report_md=f"{out}/report.md",
        valley_fit=f"{out}/valley_fit.json",
        plots=[f"{out}/{p}" for p in plot_files],
        unmatched=unmatched_path,
        agreement=agreement_path,
        per_problem=f"{out}/per_problem.parquet",
        comparisons=f"{out}/comparisons.parquet",
        n_runs=len(cfg.runs),
        n_rows=table.num_rows,
    )
