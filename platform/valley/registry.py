"""Every stage declared once: its config, result and run function, what one run asks of the cluster, and
which config fields a study sets for it.

The CLI's stage subcommands, the study graph's node kinds, the executor's node runners, the cost ledger,
the report's stage order, the plan table and spec validation all read this table. Adding a stage is:
write its package (config, result, run function), then add its record here.

Records name their classes and functions as "module:attribute" strings, imported on first use, so
`valley --help` stays instant and a CPU install never imports GPU-only packages.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from valley.errors import ConfigError


def _load(ref: str) -> Any:
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class StageRecord:
    """One stage. `study_sets`: the config fields a study derives for each run (never written in a spec);
    `node_runner`: the study executor's function for a node of this kind (None: not part of a study)."""

    name: str
    config: str  # "module:ConfigClass"
    result: str  # "module:ResultClass"
    run: str  # "module:run_function", (cfg, storage) -> result
    help: str
    study_sets: frozenset[str] = frozenset()
    node_runner: str | None = None
    # what a run spreads its tasks over when it holds no fixed request (its cost is that capacity)
    spreads_over: str = "CPU"
    holds: str = "-"  # the plan table's words for what a run holds when it asks for no fixed request
    # a module with `add_parser(sub, add_common)` and `run_from_args(args)` for a stage whose command line
    # is more than a config file (None: `valley <name> config.yaml --set …`)
    command: str | None = None

    def config_class(self) -> type:
        return _load(self.config)

    def result_class(self) -> type:
        return _load(self.result)

    def run_function(self) -> Callable[..., Any]:
        return _load(self.run)

    def node_runner_function(self) -> Callable[..., Any]:
        if self.node_runner is None:
            raise ConfigError(f"stage {self.name!r} is not part of a study")
        return _load(self.node_runner)

    def resources(self, cfg: Any) -> dict[str, float]:
        """What one run of `cfg` holds on the cluster for its whole length ({} for task-spreading stages)."""
        return dict(cfg.run_resources())

    def reserved(self, cfg: Any, cluster: Mapping[str, float]) -> tuple[float, float]:
        """(CPUs, GPUs) a run holds while it runs, for cost accounting: its fixed request, else the
        cluster capacity its tasks spread over (an upper bound on what was busy)."""
        held = self.resources(cfg)
        if held:
            return float(held.get("CPU", 0.0)), float(held.get("GPU", 0.0))
        over = "grader" if "grader" in (getattr(cfg, "task_resources", None) or {}) else self.spreads_over
        return float(cluster.get(over, 0.0)), 0.0


_NODES = "valley.experiment.nodes"
STAGES: dict[str, StageRecord] = {r.name: r for r in (
    StageRecord("data", "valley.data.config:DataConfig", "valley.data.stage:DataResult", "valley.data.stage:run_data",
                "ingest, validate, select subsets, tokenize and pack traces",
                study_sets=frozenset({"name", "tokenizer", "subsets"}), node_runner=f"{_NODES}:run_data_node",
                holds="Ray Data tasks (cluster CPUs)"),
    StageRecord("label", "valley.grade.config:LabelConfig", "valley.grade.label:LabelResult",
                "valley.grade.label:run_label", "grade training traces against their tests (correct/incorrect)",
                study_sets=frozenset({"name", "traces"}), node_runner=f"{_NODES}:run_label_node",
                holds="grading tasks"),
    StageRecord("train", "valley.train.config:TrainConfig", "valley.train.stage:TrainResult",
                "valley.train.stage:run_train", "SFT with Ray Train and DeepSpeed ZeRO-3",
                study_sets=frozenset({"name", "data", "subset", "model", "export_every_epoch"}),
                node_runner=f"{_NODES}:run_train_node"),
    StageRecord("generate", "valley.generate.config:GenerateConfig", "valley.generate.stage:GenerateResult",
                "valley.generate.stage:run_generate", "sample LiveCodeBench responses from a model",
                study_sets=frozenset({"name", "model", "run_id"}), node_runner=f"{_NODES}:run_generate_node"),
    StageRecord("grade", "valley.grade.config:GradeConfig", "valley.grade.stage:GradeResult",
                "valley.grade.stage:run_grade", "run generated programs against the problems' tests",
                study_sets=frozenset({"name", "samples", "problems"}), node_runner=f"{_NODES}:run_grade_node",
                holds="grading tasks"),
    StageRecord("report", "valley.report.config:ReportConfig", "valley.report.stage:ReportResult",
                "valley.report.stage:run_report", "score runs and render the report",
                study_sets=frozenset({"name", "experiment", "runs"}), node_runner=f"{_NODES}:run_report_node",
                holds="scoring tasks (cluster CPUs)"),
    StageRecord("import", "valley.imports.config:ImportConfig", "valley.imports.stage:ImportResult",
                "valley.imports.stage:run_import", "import other harnesses' generations as samples",
                command="valley.imports.command"),
    StageRecord("decontam", "valley.decontam.config:DecontamConfig", "valley.decontam.stage:DecontamResult",
                "valley.decontam.stage:run_decontam",
                "n-gram/title/URL overlap of training questions with the evaluation problems",
                command="valley.decontam.command"),
)}


def stage(name: str) -> StageRecord:
    """The record of a stage, or a ConfigError naming those there are."""
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; stages: {sorted(STAGES)}")
    return STAGES[name]


def study_kinds() -> tuple[str, ...]:
    """The stages a study graph is made of, in pipeline order."""
    return tuple(name for name, record in STAGES.items() if record.node_runner is not None)
