"""Import -> grade -> report in one call: what `valley import --score` runs.

Uses only the stages' public entry points (run_grade, run_report), so an imported run is graded and
scored exactly like a generated one; every imported run becomes one report run labelled by its model.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from valley.errors import ConfigError
from valley.grade.config import GradeConfig
from valley.grade.stage import GradeResult, run_grade
from valley.imports.config import ImportConfig
from valley.imports.stage import ImportResult, run_import
from valley.report.config import ReportConfig, RunSpec
from valley.report.stage import ReportResult, run_report
from valley.storage import Storage

IMPORTED_SUBSET = "imported"
# Imported samples come from another harness whose budget no stage of ours recorded: they are scored
# against 32,768 tokens (what reports used before the budget came from the generate run) unless a
# `--report-set max_tokens=N` says otherwise.
IMPORTED_MAX_TOKENS = 32768


class ScoredImport(BaseModel):
    imported: ImportResult
    grade: GradeResult
    report: ReportResult


def report_config(imported: ImportResult, verdicts_dir: str, *, name: str, experiment: str,
                  **fields: Any) -> ReportConfig:
    """One report run per imported run; data_size 0 (the model as it is), subset "imported"."""
    if imported.problems is None:
        raise ConfigError("scoring an import needs its problems: give `problems` (LCB files) to the import")
    runs = [RunSpec(run_id=r["run_id"], data_size=0, subset=IMPORTED_SUBSET, model=r["model"],
                    samples=imported.samples, verdicts=verdicts_dir, problems=imported.problems)
            for r in imported.runs]
    return ReportConfig(name=name, experiment=experiment, runs=runs, **{"max_tokens": IMPORTED_MAX_TOKENS, **fields})


def score_import(cfg: ImportConfig, storage: Storage, *, grade: dict[str, Any] | None = None,
                 report: dict[str, Any] | None = None) -> ScoredImport:
    """Run (or reuse) the import, grade its samples against its problems, report every run.

    `grade` / `report` are extra fields of GradeConfig / ReportConfig (limits, n_boot, ...).
    """
    imported = run_import(cfg, storage)
    if imported.problems is None:
        raise ConfigError("scoring an import needs its problems: give `problems` (LCB files) to the import")
    gcfg = GradeConfig(name=cfg.name, samples=imported.samples, problems=imported.problems, **(grade or {}))
    graded = run_grade(gcfg, storage)
    rcfg = report_config(imported, graded.verdicts_dir, name=cfg.name, experiment=f"import {cfg.name}",
                         **(report or {}))
    return ScoredImport(imported=imported, grade=graded, report=run_report(rcfg, storage))
