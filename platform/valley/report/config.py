"""Configuration of the report stage: which runs make up an experiment and how to score them."""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from valley import legacy
from valley.config import StageConfig

CORE_METRICS = ("pass@1", "completion_rate", "think_rate")


class RunSpec(BaseModel):
    """One evaluated model: where its tables live (paths under the storage root) and what it is."""

    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(min_length=1)
    data_size: int = Field(ge=0, description="distillation examples; 0 = the instruct model itself")
    subset: str = "random"  # random | correct | incorrect | easy | hard | ...
    checkpoint: str = "base"  # what fine-tuning started from: base (the instruct model) | 30k | ...
    model: str = ""  # student, e.g. Qwen2.5-7B-Instruct
    epoch: int | None = None  # set for per-epoch evaluations of the same training run
    samples: str  # schemas.SAMPLES file or directory of files
    verdicts: str  # schemas.VERDICTS
    problems: str  # schemas.PROBLEMS
    source_run_id: str | None = None  # run_id value inside the tables (default run_id; "*" = all rows)
    # which training seed of its run (None: the only one, or replicate 0); runs alike in everything but
    # this are pooled by the report's paired tests
    replicate: int | None = Field(default=None, ge=0)
    # the training run's name (its stage config name): the cost table's row that holds its trained tokens
    # and GPU-hours, for the valley against compute
    train_run: str | None = None
    # the data run (stage dir) and subset the run trained on: the report shows that subset's label audit
    data: str | None = None
    data_subset: str | None = None

    @model_serializer(mode="wrap")
    def _without_unset_new_fields(self, handler: Any) -> Any:
        """Fields added after reports were hashed are left out while unset, so an old report hashes as before."""
        data = handler(self)
        for name in legacy.RUN_SPEC_FIELDS_WHEN_SET:
            if isinstance(data, dict) and data.get(name) is None:
                data.pop(name, None)
        return data

    @property
    def table_run_id(self) -> str:
        return self.source_run_id or self.run_id


class ComparisonRuns(BaseModel):
    """A comparison the study declares, with the runs of each arm: `series` (one arm over its sizes) or
    `contrast` (two arms at equal size and start)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["series", "contrast"]
    arms: list[str] = Field(min_length=1, max_length=2)
    runs: dict[str, list[str]]  # arm -> run ids of its final evaluations


class ReportConfig(StageConfig):
    """An experiment's runs plus scoring knobs; the hash names the report directory."""

    experiment: str = Field(min_length=1)
    runs: list[RunSpec] = Field(min_length=1)
    # completion budget: longer responses count as incomplete. None: the generate runs' own max_tokens,
    # read from their _SUCCESS markers before hashing (report/scoring.py)
    max_tokens: int | None = Field(None, gt=0)
    n_boot: int = Field(1000, ge=0)
    seed: int = 0
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10])
    date_windows: list[tuple[str, str]] | None = None  # [start, end) ISO dates; default calendar quarters
    scaling_subset: str = "random"  # runs of this subset form Table 1 and the valley curve
    fit_metric: str = "pass@1"
    parallel: bool = True  # one Ray task per run when Ray is initialised
    # stage timings recorded by `valley run` (valley/experiment/cost_ledger.py) for report.md's cost table
    costs: list[dict[str, Any]] = Field(default_factory=list)
    # the study's comparisons beyond the paper's tables (RQ1 series, RQ2/RQ3 contrasts of preset arms)
    comparisons: list[ComparisonRuns] | None = None

    hash_exclude: ClassVar[frozenset[str]] = frozenset({"name", "parallel"})
    hash_exclude_if_none: ClassVar[frozenset[str]] = legacy.REPORT_HASHED_ONLY_WHEN_SET

    @field_validator("ks")
    @classmethod
    def _positive_ks(cls, ks: list[int]) -> list[int]:
        if any(k < 1 for k in ks):
            raise ValueError("every k must be >= 1")
        return sorted(set(ks))

    @field_validator("date_windows")
    @classmethod
    def _iso_windows(cls, windows: list[tuple[str, str]] | None) -> list[tuple[str, str]] | None:
        for start, end in windows or []:
            try:
                lo, hi = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
            except ValueError as exc:
                raise ValueError(f"date window ({start!r}, {end!r}) must hold ISO dates YYYY-MM-DD") from exc
            if hi <= lo:
                raise ValueError(f"date window ({start}, {end}) ends before it starts")
        return windows

    @model_validator(mode="after")
    def _unique_runs(self) -> ReportConfig:
        seen: set[str] = set()
        for run in self.runs:
            if run.run_id in seen:
                raise ValueError(f"run_id {run.run_id!r} appears twice in runs")
            seen.add(run.run_id)
        return self
