"""The experiment spec: the paper's study in one YAML file, validated before any work starts.

The spec names the students, the corpus and the study (RQ1 data scaling, RQ2 correct vs incorrect, RQ3 easy vs
hard, each from the instruct model and from the stage-2 checkpoint) and holds each stage's config fields minus
those the study plan sets (`plan.plan_study` derives every stage run from it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from valley import config as config_mod


class StudentSpec(BaseModel):
    """One student model: a local Hugging Face directory (weights, config, tokenizer with chat template)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    model: str
    tokenizer: str | None = None  # default: the model directory
    # GenerateConfig fields for this student's runs only, over the `generate` section: model-specific
    # settings such as rope_scaling (YaRN) for a model whose window is shorter than the budget needs.
    generate: dict[str, Any] = Field(default_factory=dict)


TRAINED_SUBSETS = ("random", "correct", "incorrect", "easy", "hard")
# generate fields a student may not override: the report scores one budget, the plan sizes one pool
STUDENT_FIXED = frozenset({"name", "model", "max_tokens", "pool"})


class StudySpec(BaseModel):
    """Which of the paper's comparisons to run, and at which sizes."""

    model_config = ConfigDict(extra="forbid")

    scaling_sizes: list[int] = Field(default_factory=lambda: [1000, 10000, 30000])  # RQ1, nested subsets
    scaling_sources: list[str] | None = None  # restrict RQ1's pool to these trace sources
    correctness_size: int | None = 6000  # RQ2 (None: skip)
    difficulty_size: int | None = 4000  # RQ3 (None: skip)
    subset_sources: list[str] | None = None  # RQ2/RQ3 pool (the TACO-sourced traces)
    stage2_from_size: int | None = 30000  # RQ2/RQ3 also continue from this RQ1 run (None: base only)
    evaluate_base: bool = True  # evaluate the instruct model itself (data size 0)
    # Runs of these subsets are also evaluated after every epoch (the valley across training): "random"
    # for RQ1, "correct"/"incorrect"/"easy"/"hard" for RQ2/RQ3. Costs one generate+grade per extra epoch.
    per_epoch_eval: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _stage2_is_trained(self) -> StudySpec:
        if self.stage2_from_size is not None and self.stage2_from_size not in self.scaling_sizes:
            raise ValueError(f"stage2_from_size={self.stage2_from_size} must be one of scaling_sizes")
        if len(set(self.scaling_sizes)) != len(self.scaling_sizes) or any(s <= 0 for s in self.scaling_sizes):
            raise ValueError("scaling_sizes must be distinct positive sizes")
        unknown = set(self.per_epoch_eval) - set(TRAINED_SUBSETS)
        if unknown:
            raise ValueError(f"per_epoch_eval names unknown subsets {sorted(unknown)}; use {list(TRAINED_SUBSETS)}")
        return self


class ConcurrencySpec(BaseModel):
    """How many stage runs of a kind may run at once. None: as many as the cluster's resources hold (each
    run's own request divided into the cluster's total, see `executor.default_limits`)."""

    model_config = ConfigDict(extra="forbid")

    train: int | None = Field(default=None, ge=1)
    generate: int | None = Field(default=None, ge=1)
    grade: int | None = Field(default=None, ge=1)


class ExperimentSpec(BaseModel):
    """The whole study. Stage sections hold that stage's config fields, minus those the runner sets."""

    model_config = ConfigDict(extra="forbid")

    experiment: str = Field(min_length=1)
    students: list[StudentSpec] = Field(min_length=1)
    study: StudySpec = Field(default_factory=StudySpec)
    data: dict[str, Any]  # DataConfig fields except name, tokenizer, subsets
    label: dict[str, Any] | None = Field(default_factory=dict)  # LabelConfig except traces; None: traces carry `correct`
    # TrainConfig except name, data, subset, model, export_every_epoch (set from study.per_epoch_eval)
    train: dict[str, Any] = Field(default_factory=dict)
    generate: dict[str, Any]  # GenerateConfig except name, model
    grade: dict[str, Any] = Field(default_factory=dict)  # GradeConfig except name, samples, problems
    report: dict[str, Any] = Field(default_factory=dict)  # ReportConfig except name, experiment, runs
    max_concurrent: ConcurrencySpec = Field(default_factory=ConcurrencySpec)

    @model_validator(mode="after")
    def _sections_are_valid(self) -> ExperimentSpec:
        """Build every stage config once with placeholders, so a typo fails before hours of work."""
        from valley.data.config import DataConfig
        from valley.generate.config import GenerateConfig
        from valley.grade.config import GradeConfig, LabelConfig
        from valley.train.config import TrainConfig

        owned = {"data": {"name", "tokenizer", "subsets"}, "label": {"name", "traces"},
                 "train": {"name", "data", "subset", "model", "export_every_epoch"}, "generate": {"name", "model"},
                 "grade": {"name", "samples", "problems"}, "report": {"name", "experiment", "runs"}}
        for section, keys in owned.items():
            clash = keys & set(getattr(self, section) or {})
            if clash:
                raise ValueError(f"section {section!r} must not set {sorted(clash)}: the runner sets them")
        DataConfig(tokenizer="-", **self.data)
        if self.label is not None:
            LabelConfig(traces="-", **self.label)
        TrainConfig(data="-", model="-", **self.train)
        for student in self.students:
            clash = STUDENT_FIXED & set(student.generate)
            if clash:
                raise ValueError(f"student {student.name!r}: generate must not set {sorted(clash)}; "
                                 "they are the same for every student (set them in the generate section)")
            GenerateConfig(model="-", **self.generate_fields(student.name))
        GradeConfig(samples="-", problems="-", **self.grade)
        return self

    def generate_fields(self, student: str | None) -> dict[str, Any]:
        """The generate section with the student's own overrides on top (GenerateConfig minus name, model)."""
        own = next((s.generate for s in self.students if s.name == student), {})
        return {**self.generate, **own}


def _absolute(path: str) -> str:
    """Local paths in a spec are relative to the directory the run starts in (the job's working dir)."""
    return path if "://" in path or os.path.isabs(path) else os.path.abspath(path)


def resolve_local_paths(data: dict[str, Any]) -> dict[str, Any]:
    """Make the spec's input paths absolute so stages, which resolve relative paths under the storage
    root, find them."""
    data = json.loads(json.dumps(data))
    for student in data.get("students") or []:
        for key in ("model", "tokenizer"):
            if isinstance(student.get(key), str):
                student[key] = _absolute(student[key])
    for section, key in (("data", "inputs"), ("generate", "problems"), ("generate", "problem_metadata")):
        values = (data.get(section) or {}).get(key)
        if isinstance(values, list):
            data[section][key] = [_absolute(v) if isinstance(v, str) else v for v in values]
    for join in (data.get("data") or {}).get("joins") or []:
        files = join.get("from") if isinstance(join, dict) else None
        if isinstance(files, list):
            join["from"] = [_absolute(v) if isinstance(v, str) else v for v in files]
        elif isinstance(files, dict):
            join["from"] = {split: [_absolute(v) for v in ([vs] if isinstance(vs, str) else vs)]
                            for split, vs in files.items()}
    return data


def load_spec(path: str | Path, overrides: list[str] | None = None) -> ExperimentSpec:
    data = config_mod.apply_overrides(config_mod.load_yaml(path), overrides or [])
    return config_mod.build(ExperimentSpec, resolve_local_paths(data), source=str(path))
