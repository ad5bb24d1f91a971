"""Run an experiment spec: the paper's study in one YAML file, every stage in order, finished ones skipped.

The spec names the students, the corpus and the study (RQ1 data scaling, RQ2 correct vs incorrect,
RQ3 easy vs hard, each from the instruct model and from the stage-2 checkpoint); the runner derives every
stage config from it and calls the stages. Each stage is content-hashed and resumable on its own, so a
killed experiment re-run with the same spec redoes only what had not finished.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from rich.console import Console

from valley import config as config_mod
from valley import costs
from valley.storage import Storage

if TYPE_CHECKING:
    from valley.train.stage import TrainResult

console = Console(stderr=True)


class StudentSpec(BaseModel):
    """One student model: a local Hugging Face directory (weights, config, tokenizer with chat template)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    model: str
    tokenizer: str | None = None  # default: the model directory


TRAINED_SUBSETS = ("random", "correct", "incorrect", "easy", "hard")


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
        GenerateConfig(model="-", **self.generate)
        GradeConfig(samples="-", problems="-", **self.grade)
        return self


@dataclass
class EvalRun:
    """One model to evaluate and how it sits in the study."""

    run_id: str
    student: str
    model_dir: str
    data_size: int
    subset: str
    checkpoint: str
    epoch: int | None = None  # set for the per-epoch evaluations of a training run
    alias_of: str | None = None  # already evaluated as this run (the final epoch, or epoch 0 = the start)


class ExperimentResult(BaseModel):
    experiment: str
    runs: list[dict[str, Any]]
    report_dir: str
    report_md: str
    results: str
    plots: list[str]
    seconds: float


def _rel(storage: Storage, path: str) -> str:
    """Stage results name paths or URIs; configs downstream take paths under the storage root."""
    bare = path.split("://", 1)[-1]
    if bare == storage.base or bare.startswith(storage.base.rstrip("/") + "/"):
        return storage.relative(path)
    return path


def _data_for(spec: ExperimentSpec, student: StudentSpec, storage: Storage) -> dict[str, Any]:
    """Data stage runs for one student's tokenizer: RQ1 + RQ3 subsets, then RQ2 after labelling."""
    from valley.data.config import DataConfig, SubsetSpec
    from valley.data.stage import run_data

    study = spec.study
    tokenizer = student.tokenizer or student.model
    subsets = [SubsetSpec(name=f"r{s}", kind="random", size=s, sources=study.scaling_sources)
               for s in study.scaling_sizes]
    if study.difficulty_size:
        subsets += [SubsetSpec(name=k, kind=k, size=study.difficulty_size, sources=study.subset_sources)
                    for k in ("easy", "hard")]
    labelled_here = study.correctness_size and spec.label is None
    if labelled_here:
        subsets += [SubsetSpec(name=k, kind=k, size=study.correctness_size, sources=study.subset_sources)
                    for k in ("correct", "incorrect")]
    name = f"{spec.experiment}-{student.name}"
    console.log(f"[data] {name}: {len(subsets)} subsets")
    first = costs.timed("data", run_data, DataConfig(name=name, tokenizer=tokenizer, subsets=subsets, **spec.data),
                        storage)
    datasets = {s.name: _rel(storage, first.output_dir) for s in subsets}
    if study.correctness_size and spec.label is not None:
        from valley.grade.config import LabelConfig
        from valley.grade.label import run_label

        console.log(f"[label] {name}: grading traces against their tests")
        labelled = costs.timed("label", run_label, LabelConfig(name=name, traces=f"{_rel(storage, first.output_dir)}/traces",
                                                               **spec.label), storage)
        console.log(f"[label] correct={labelled.correct} incorrect={labelled.incorrect} no_tests={labelled.no_tests}")
        # The labelled traces already carry what the joins brought; joining again would only cost time.
        cfg = dict(spec.data, inputs=[f"{storage.uri(_rel(storage, labelled.traces_dir))}/*.parquet"],
                   columns={"preset": "valley"}, joins=[])
        second = costs.timed("data", run_data, DataConfig(
            name=f"{name}-labelled", tokenizer=tokenizer,
            subsets=[SubsetSpec(name=k, kind=k, size=study.correctness_size, sources=study.subset_sources)
                     for k in ("correct", "incorrect")], **cfg), storage)
        datasets.update({k: _rel(storage, second.output_dir) for k in ("correct", "incorrect")})
    return datasets


def _train(spec: ExperimentSpec, student: StudentSpec, storage: Storage, data_dir: str, subset: str,
           start_model: str, tag: str, per_epoch: bool) -> TrainResult:
    from valley.train.config import TrainConfig
    from valley.train.stage import run_train

    name = f"{spec.experiment}-{student.name}-{tag}"
    console.log(f"[train] {name} on {subset}")
    cfg = TrainConfig(name=name, data=data_dir, subset=subset, model=start_model,
                      export_every_epoch=per_epoch, **spec.train)
    result = costs.timed("train", run_train, cfg, storage)
    console.log(f"[train] {name}: {result.steps} steps, final loss {result.final_loss}")
    return result


def epoch_runs(final: EvalRun, epoch_model_dirs: dict[int, str], start_run_id: str | None) -> list[EvalRun]:
    """The per-epoch points of one training run: epoch 0 is the model it started from (already evaluated
    as `start_run_id`, when the study evaluates it), the last epoch is the final run itself, and only the
    epochs between need their own generation and grading."""
    last = max(epoch_model_dirs)
    points = []
    if start_run_id is not None:
        points.append(dataclasses.replace(final, run_id=f"{final.run_id}-e0", epoch=0, alias_of=start_run_id))
    for epoch in range(1, last):
        points.append(dataclasses.replace(final, run_id=f"{final.run_id}-e{epoch}", epoch=epoch,
                                          model_dir=epoch_model_dirs[epoch]))
    points.append(dataclasses.replace(final, run_id=f"{final.run_id}-e{last}", epoch=last, alias_of=final.run_id))
    return points


def plan_and_train(spec: ExperimentSpec, storage: Storage) -> list[EvalRun]:
    """Every training run of the study (skipping finished ones); returns the models to evaluate."""
    study = spec.study
    runs: list[EvalRun] = []
    for student in spec.students:
        datasets = _data_for(spec, student, storage)
        base_id = f"{student.name}-base"
        if study.evaluate_base:
            runs.append(EvalRun(base_id, student.name, student.model, 0, "random", "base"))
        base_eval = base_id if study.evaluate_base else None

        def add(run: EvalRun, trained: TrainResult, start_run_id: str | None) -> None:
            runs.append(run)
            if run.subset in study.per_epoch_eval:
                runs.extend(epoch_runs(run, trained.epoch_model_dirs, start_run_id))

        exports: dict[int, str] = {}
        for size in sorted(study.scaling_sizes):
            trained = _train(spec, student, storage, datasets[f"r{size}"], f"r{size}", student.model, f"r{size}",
                             "random" in study.per_epoch_eval)
            exports[size] = trained.model_dir
            add(EvalRun(f"{student.name}-r{size}", student.name, trained.model_dir, size, "random", "base"),
                trained, base_eval)
        starts = {"base": (student.model, base_eval)}
        if study.stage2_from_size is not None:
            size = study.stage2_from_size
            starts[f"r{size}"] = (exports[size], f"{student.name}-r{size}")
        paired = []
        if study.correctness_size:
            paired += [("correct", study.correctness_size), ("incorrect", study.correctness_size)]
        if study.difficulty_size:
            paired += [("easy", study.difficulty_size), ("hard", study.difficulty_size)]
        for subset, size in paired:
            for start_tag, (start_model, start_run_id) in starts.items():
                tag = f"{subset}-from-{start_tag}"
                trained = _train(spec, student, storage, datasets[subset], subset, start_model, tag,
                                 subset in study.per_epoch_eval)
                checkpoint = "base" if start_tag == "base" else start_tag.removeprefix("r")
                add(EvalRun(f"{student.name}-{tag}", student.name, trained.model_dir, size, subset, checkpoint),
                    trained, start_run_id)
    return runs


def evaluate(spec: ExperimentSpec, runs: list[EvalRun], storage: Storage) -> list[dict[str, Any]]:
    """Generate on LCB and grade every run; returns report RunSpec dicts."""
    from valley.generate.config import GenerateConfig
    from valley.generate.stage import run_generate
    from valley.grade.config import GradeConfig
    from valley.grade.stage import run_grade

    tables: dict[str, dict[str, str]] = {}
    for run in runs:
        if run.alias_of is not None:
            continue
        name = f"{spec.experiment}-{run.run_id}"
        gen = costs.timed("generate", run_generate,
                          GenerateConfig(name=name, model=run.model_dir, run_id=run.run_id, **spec.generate), storage)
        console.log(f"[generate] {run.run_id}: {gen.n_samples} samples, finish {gen.finish_reasons}")
        grade = costs.timed("grade", run_grade, GradeConfig(name=name, samples=_rel(storage, gen.samples_uri),
                                      problems=_rel(storage, gen.problems_uri), **spec.grade), storage)
        console.log(f"[grade] {run.run_id}: {grade.counts}")
        tables[run.run_id] = {"samples": _rel(storage, gen.samples_uri), "verdicts": _rel(storage, grade.verdicts_dir),
                              "problems": _rel(storage, gen.problems_uri)}
    specs = []
    for run in runs:
        source = run.alias_of or run.run_id
        entry = {"run_id": run.run_id, "data_size": run.data_size, "subset": run.subset,
                 "checkpoint": run.checkpoint, "model": run.student, "epoch": run.epoch, **tables[source]}
        if run.alias_of is not None:
            entry["source_run_id"] = source  # the rows inside those tables carry the source's run id
        specs.append(entry)
    return specs


def run_experiment(spec: ExperimentSpec, storage: Storage) -> ExperimentResult:
    from valley.report.config import ReportConfig
    from valley.report.stage import run_report

    t0 = time.perf_counter()
    ledger = costs.CostLedger(storage, spec.experiment)  # stage timings for the report's cost table
    costs.activate(ledger)
    try:
        runs = plan_and_train(spec, storage)
        run_specs = evaluate(spec, runs, storage)
    finally:
        costs.activate(None)
    report_cfg = {"max_tokens": spec.generate.get("max_tokens", 32768), "costs": ledger.rows(), **spec.report}
    report = run_report(ReportConfig(name=spec.experiment, experiment=spec.experiment, runs=run_specs, **report_cfg),
                        storage)
    where = storage.uri  # full locations, so the user can open the report straight away
    console.log(f"[report] {where(report.report_md)}")
    return ExperimentResult(experiment=spec.experiment, runs=run_specs, report_dir=where(report.stage_dir),
                            report_md=where(report.report_md), results=where(report.results),
                            plots=[where(p) for p in report.plots], seconds=round(time.perf_counter() - t0, 1))


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


def run_experiment_file(path: str, overrides: list[str], storage_root: str) -> ExperimentResult:
    return run_experiment(load_spec(path, overrides), Storage(storage_root))
