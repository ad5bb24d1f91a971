"""The experiment spec: the paper's study in one YAML file, validated before any work starts.

The spec names the students, the corpus and the study (RQ1 data scaling, RQ2 correct vs incorrect, RQ3 easy vs
hard, each from the instruct model and from the stage-2 checkpoint) and holds each stage's config fields minus
those the study plan sets (`plan.plan_study` derives every stage run from it).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from valley import config as config_mod
from valley import registry
from valley.errors import ConfigError
from valley.experiment.arms import ArmSpec, ComparisonSpec, arms_of_study, check_design, start_student


class StudentSpec(BaseModel):
    """One student model: a local Hugging Face directory (weights, config, tokenizer with chat template)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    model: str
    tokenizer: str | None = None  # default: the model directory
    # GenerateConfig fields for this student's runs only, over the `generate` section: model-specific
    # settings such as rope_scaling (YaRN) for a model whose window is shorter than the budget needs.
    generate: dict[str, Any] = Field(default_factory=dict)
    # When its training data ends (ISO date): this student's generate runs then keep only LCB problems
    # after it (filters.start_date = the day after), unless the generate section or the student's own
    # generate overrides set a window (filters.window, start_date or end_date), which wins; an arm that
    # sets its own `filters` replaces them whole, this date included.
    cutoff: dt.date | None = None

    def filters_after_cutoff(self, filters: Any) -> Any:
        """`filters` (a dict, ProblemFilter or None) starting the day after `cutoff` when no window is set."""
        given = filters.model_dump(exclude_unset=True) if isinstance(filters, BaseModel) else dict(filters or {})
        if self.cutoff is None or any(given.get(k) is not None for k in ("window", "start_date", "end_date")):
            return filters
        return {**given, "start_date": (self.cutoff + dt.timedelta(days=1)).isoformat()}


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


def section_model(stage: str) -> type[BaseModel]:
    """A spec section's type: the stage's config class without the fields a study sets for each run
    (`registry`'s `study_sets`), so a section is checked field by field, with its path, when the spec loads."""
    if stage not in _SECTION_MODELS:
        record = registry.stage(stage)
        config = record.config_class()
        fields: dict[str, Any] = {name: (info.annotation, info) for name, info in config.model_fields.items()
                                  if name not in record.study_sets}
        _SECTION_MODELS[stage] = create_model(f"{config.__name__}Section", __config__=ConfigDict(extra="forbid"),
                                              **fields)
    return _SECTION_MODELS[stage]


_SECTION_MODELS: dict[str, type[BaseModel]] = {}
DataSection = section_model("data")
LabelSection = section_model("label")
TrainSection = section_model("train")
GenerateSection = section_model("generate")
GradeSection = section_model("grade")
ReportSection = section_model("report")


class ExperimentSpec(BaseModel):
    """The whole study. Each stage section holds that stage's config fields, minus those the study sets."""

    model_config = ConfigDict(extra="forbid")

    experiment: str = Field(min_length=1)
    students: list[StudentSpec] = Field(min_length=1)
    # the design: arms and comparisons (experiment/arms.py), or the paper's study as a preset of them
    arms: dict[str, ArmSpec] | None = None
    comparisons: list[ComparisonSpec] | None = None
    evaluate_base: bool | None = None  # with arms: evaluate each student's model itself (default true)
    # training seeds (replicates) of every run whose arm does not set its own `seeds` (experiment/arms.py)
    seeds: int = Field(default=1, ge=1)
    study: StudySpec = Field(default_factory=StudySpec)
    data: DataSection  # type: ignore[valid-type]
    label: LabelSection | None = Field(default_factory=LabelSection)  # type: ignore[valid-type]  # None: traces carry `correct`
    train: TrainSection = Field(default_factory=TrainSection)  # type: ignore[valid-type]
    generate: GenerateSection  # type: ignore[valid-type]
    grade: GradeSection = Field(default_factory=GradeSection)  # type: ignore[valid-type]
    report: ReportSection = Field(default_factory=ReportSection)  # type: ignore[valid-type]
    max_concurrent: ConcurrencySpec = Field(default_factory=ConcurrencySpec)

    @model_validator(mode="before")
    @classmethod
    def _no_fields_the_study_sets(cls, data: Any) -> Any:
        """A section that sets a field the study sets per run would be overwritten silently: refuse it."""
        for stage in registry.study_kinds():
            section = data.get(stage) if isinstance(data, dict) else None
            clash = registry.stage(stage).study_sets & set(section) if isinstance(section, dict) else set()
            if clash:
                raise ValueError(f"section {stage!r} must not set {sorted(clash)}: the study sets them for each run")
        return data

    @model_validator(mode="after")
    def _sections_are_valid(self) -> ExperimentSpec:
        """Build every stage config once with placeholders, so a rule across fields (e.g. a batch that does
        not divide) fails at load, naming its section, before hours of work."""
        for student in self.students:
            clash = STUDENT_FIXED & set(student.generate)
            if clash:
                raise ValueError(f"student {student.name!r}: generate must not set {sorted(clash)}; "
                                 "they are the same for every student (set them in the generate section)")
        for stage in ("data", "label", "train", "grade"):  # report: its runs exist only after grading
            if getattr(self, stage) is not None:
                self.section_config(stage)
        for student in self.students:
            self.section_config("generate", student.name)
        self._design_is_valid()
        return self

    def _design_is_valid(self) -> None:
        if self.arms is None:
            if self.comparisons is not None or self.evaluate_base is not None:
                raise ValueError("comparisons and evaluate_base go with arms; the `study` preset sets its own")
        elif "study" in self.model_fields_set:
            raise ValueError("give either arms (with comparisons) or the `study` preset, not both")
        arms, comparisons, _ = self.design()
        check_design(arms, comparisons)
        students = {st.name for st in self.students}
        named = {start_student(s) for arm in arms.values() for s in arm.starts()} - {None}
        if named - students:
            raise ValueError(f"arms start from runs of students {sorted(named - students)} the study does not have")
        if len(named) > 1:
            raise ValueError(f"arms continue from the runs of several students {sorted(named)}; at most one")
        from valley.data.config import SubsetSpec

        for arm_name, arm in arms.items():
            owner = f"arm {arm_name!r}"
            for size in arm.sizes:
                try:
                    SubsetSpec(name=arm.subset_name(arm_name, size), size=size, **arm.subset)
                except (ValidationError, TypeError) as exc:
                    raise ValueError(f"{owner}: subset: {exc}") from exc
            clash = (registry.stage("train").study_sets & set(arm.train)) | (STUDENT_FIXED & set(arm.generate))
            if clash:
                raise ValueError(f"{owner}: must not override {sorted(clash)} (the study sets them, or every "
                                 "evaluation shares them)")
            try:
                self.arm_train_config(arm_name)
                for student in self.students:
                    self.arm_generate_config(arm_name, student.name)
            except (ValidationError, ConfigError) as exc:
                raise ValueError(f"{owner}: {exc}") from exc

    def design(self) -> tuple[dict[str, ArmSpec], list[ComparisonSpec], bool]:
        """(arms, comparisons, evaluate the base model): the spec's own, or the `study` preset's."""
        if self.arms is not None:
            return dict(self.arms), list(self.comparisons or []), True if self.evaluate_base is None else \
                self.evaluate_base
        arms, comparisons = arms_of_study(self.study)
        return arms, comparisons, self.study.evaluate_base

    def arm_train_fields(self, arm: str | None) -> dict[str, Any]:
        """The train section with the arm's own overrides on top (None: no arm, the section alone)."""
        return {**train_fields(self), **(self.design()[0][arm].train if arm is not None else {})}

    def arm_train_config(self, arm: str | None) -> Any:
        """`arm_train_fields` as a TrainConfig with placeholders for what each run sets."""
        return registry.stage("train").config_class()(data="-", model="-", **self.arm_train_fields(arm))

    def arm_generate_fields(self, arm: str | None, student: str | None) -> dict[str, Any]:
        """The generate section with the student's, then the arm's overrides on top (None: the base model's
        evaluation, no arm)."""
        return {**self.generate_fields(student), **(self.design()[0][arm].generate if arm is not None else {})}

    def arm_generate_config(self, arm: str | None, student: str | None) -> Any:
        """`arm_generate_fields` as a GenerateConfig with a placeholder model."""
        return registry.stage("generate").config_class()(model="-", **self.arm_generate_fields(arm, student))

    def section(self, stage: str) -> dict[str, Any] | None:
        """A section's fields as the spec sets them (unset fields left to the config's defaults, so the
        derived configs hash as they did when sections were plain mappings); None for `label: null`."""
        value = getattr(self, stage)
        return None if value is None else value.model_dump(exclude_unset=True)

    def section_config(self, stage: str, student: str | None = None) -> Any:
        """A section as its stage's config, with placeholders for the fields each run sets."""
        record = registry.stage(stage)
        fields = self.generate_fields(student) if stage == "generate" else (self.section(stage) or {})
        placeholders = {name: PLACEHOLDERS[name] for name in record.study_sets
                        if name in PLACEHOLDERS and name not in fields}
        try:
            return record.config_class()(**placeholders, **fields)
        except (ValidationError, ConfigError) as exc:
            raise ValueError(f"section {stage!r}{f' (student {student!r})' if student else ''}: {exc}") from exc

    def generate_fields(self, student: str | None) -> dict[str, Any]:
        """The generate section with the student's own overrides on top (GenerateConfig minus name, model),
        its problems starting after the student's cutoff unless a window is set."""
        own = next((s for s in self.students if s.name == student), None)
        fields = {**self.section("generate"), **(own.generate if own else {})}
        if own is not None and own.cutoff is not None:
            fields["filters"] = own.filters_after_cutoff(fields.get("filters"))
        return fields


# values for the fields a study sets per run, when a section is checked alone
PLACEHOLDERS: dict[str, Any] = {"tokenizer": "-", "traces": "-", "data": "-", "model": "-", "samples": "-",
                                "problems": "-", "experiment": "-"}


def train_fields(spec: ExperimentSpec) -> dict[str, Any]:
    """The spec's train section, with `max_seq_len` taken from the data section when the train section does
    not set it (declared once: the data stage packs to it and training must accept it)."""
    fields = spec.section("train")
    if fields.get("max_seq_len") is None:
        fields["max_seq_len"] = spec.section_config("data").max_seq_len
    return fields


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
