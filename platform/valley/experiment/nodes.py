"""Run one node of the study graph: build its stage config from the spec and its inputs' outputs, call the stage.

A node's outputs are a small JSON dict of root-relative paths (what each runner here returns), kept in its status
record, so a later node, a resumed study and `valley report --partial` all read the same thing.
Every stage is content-hashed and skips itself when finished, so running a finished node again is cheap.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from rich.console import Console

from valley import registry
from valley.experiment import cost_ledger
from valley.experiment.executor import NodeContext, UpstreamFailed
from valley.experiment.graph import (
    DataParams,
    EvalRun,
    GenerateParams,
    GradeParams,
    LabelParams,
    Node,
    StudyGraph,
    TrainParams,
    preset_kind,
)
from valley.experiment.spec import ExperimentSpec
from valley.storage import Storage, stage_dir

console = Console(stderr=True)
Outputs = dict[str, Any]


def _student(spec: ExperimentSpec, name: str | None) -> Any:
    return next(s for s in spec.students if s.name == name)


def data_config(spec: ExperimentSpec, node: Node, storage: Storage, inputs: Mapping[str, Outputs]) -> Any:
    """The data run of a node: the spec's data section, the node's subsets, the student's tokenizer."""
    from valley.data.config import DataConfig, SubsetSpec

    p: DataParams = node.params  # type: ignore[assignment]
    student = _student(spec, node.student)
    fields = spec.section("data")
    if p.labelled:
        # The labelled traces already carry what the joins brought; joining again would only cost time.
        fields.update(inputs=[f"{storage.uri(inputs[p.labelled]['traces'])}/*.parquet"],
                      columns={"preset": "valley"}, joins=[])
    return DataConfig(name=node.name, tokenizer=student.tokenizer or student.model,
                      subsets=[SubsetSpec(**r.spec_fields()) for r in p.subsets], **fields)


def run_data_node(spec: ExperimentSpec, graph: StudyGraph, node: Node, storage: Storage,
                  inputs: Mapping[str, Outputs], context: NodeContext) -> Outputs:
    result = cost_ledger.timed("data", data_config(spec, node, storage, inputs), storage)
    console.log(f"[data] {node.name}: accepted {result.accepted}, rejected {result.rejected}")
    return {"stage_dir": result.stage_dir}


def label_config(spec: ExperimentSpec, node: Node, storage: Storage, inputs: Mapping[str, Outputs]) -> Any:
    from valley.grade.config import LabelConfig

    p: LabelParams = node.params  # type: ignore[assignment]
    return LabelConfig(name=node.name, traces=f"{inputs[p.data]['stage_dir']}/traces", **spec.section("label"))


def run_label_node(spec: ExperimentSpec, graph: StudyGraph, node: Node, storage: Storage,
                   inputs: Mapping[str, Outputs], context: NodeContext) -> Outputs:
    result = cost_ledger.timed("label", label_config(spec, node, storage, inputs), storage)
    console.log(f"[label] {node.name}: correct={result.correct} incorrect={result.incorrect} "
                f"no_tests={result.no_tests}")
    return {"stage_dir": result.stage_dir, "traces": result.traces_dir}


def train_config_of(spec: ExperimentSpec, node: Node, storage: Storage, inputs: Mapping[str, Outputs]) -> Any:
    """The training run of a node: from the student's model, or continued from another run's export."""
    from valley.train.config import TrainConfig

    p: TrainParams = node.params  # type: ignore[assignment]
    # a trained model as the full location the sequential runner passed, so the config hash is the same
    start = storage.uri(inputs[p.start]["model"]) if p.start else _student(spec, node.student).model
    fields = spec.arm_train_fields(p.arm)
    if p.replicate:  # replicate 0 is the run as it was before seeds existed: same fields, same hash
        fields["seed"] = int(fields.get("seed", 0)) + p.replicate
    return TrainConfig(name=node.name, data=inputs[p.data]["stage_dir"], subset=p.subset, model=start,
                       export_every_epoch=p.per_epoch, **fields)


def run_train_node(spec: ExperimentSpec, graph: StudyGraph, node: Node, storage: Storage,
                   inputs: Mapping[str, Outputs], context: NodeContext) -> Outputs:
    result = cost_ledger.timed("train", train_config_of(spec, node, storage, inputs), storage)
    console.log(f"[train] {node.name}: {result.steps} steps, final loss {result.final_loss}")
    return {"stage_dir": result.stage_dir, "model": result.model_dir,
            "epochs": {str(k): v for k, v in result.epoch_model_dirs.items()}}


def generate_config(spec: ExperimentSpec, node: Node, storage: Storage, inputs: Mapping[str, Outputs]) -> Any:
    """The generation of a node: the student's model, a run's final export, or one of its epochs'."""
    from valley.generate.config import GenerateConfig

    p: GenerateParams = node.params  # type: ignore[assignment]
    if p.train is None:
        model = _student(spec, node.student).model
    else:
        trained = inputs[p.train]
        model = storage.uri(trained["epochs"][str(p.epoch)] if p.epoch else trained["model"])
    return GenerateConfig(name=node.name, model=model, run_id=p.run_id, **spec.arm_generate_fields(p.arm, node.student))


def run_generate_node(spec: ExperimentSpec, graph: StudyGraph, node: Node, storage: Storage,
                      inputs: Mapping[str, Outputs], context: NodeContext) -> Outputs:
    """Announces where the samples will appear before generating, so grading can follow them."""
    from valley.generate.stage import STAGE
    from valley.generate.writer import SAMPLES_DIR

    cfg = generate_config(spec, node, storage, inputs)
    out = stage_dir(STAGE, cfg.name, cfg.config_hash())
    context.announce({"stage_dir": out, "samples": f"{out}/{SAMPLES_DIR}", "problems": f"{out}/problems.parquet"})
    result = cost_ledger.timed("generate", cfg, storage)
    console.log(f"[generate] {cfg.run_id}: {result.n_samples} samples, finish {result.finish_reasons}")
    return {"stage_dir": result.stage_dir, "samples": result.samples, "problems": result.problems}


def grade_config(spec: ExperimentSpec, node: Node, generated: Outputs) -> Any:
    from valley.grade.config import GradeConfig

    return GradeConfig(name=node.name, samples=generated["samples"], problems=generated["problems"],
                       **spec.section("grade"))


def run_grade_node(spec: ExperimentSpec, graph: StudyGraph, node: Node, storage: Storage,
                   inputs: Mapping[str, Outputs], context: NodeContext) -> Outputs:
    """Grade a generate run's samples; when the generation is still running, follow it: grade its sample
    parts as they are written (the same batches as afterwards) and finish once it has finished."""
    from valley.grade.stage import run_grade

    p: GradeParams = node.params  # type: ignore[assignment]
    follow = None
    if p.generate in inputs:
        gen = inputs[p.generate]
    else:
        gen = _await_announcement(context, p.generate)

        def follow() -> bool:
            state = context.state_of(p.generate)
            if state in ("failed", "skipped"):
                raise UpstreamFailed(p.generate)
            return state == "done"

    result = cost_ledger.timed("grade", grade_config(spec, node, gen), storage,
                               run=lambda c, st: run_grade(c, st, follow=follow))
    console.log(f"[grade] {p.run_id}: {result.counts}")
    return {"stage_dir": result.stage_dir, "verdicts": result.verdicts_dir, "samples": gen["samples"],
            "problems": gen["problems"]}


def _await_announcement(context: NodeContext, node_id: str, poll_s: float = 1.0) -> dict[str, Any]:
    """Where a running node's output will appear (it announces that before it starts writing)."""
    while (where := context.announced(node_id)) is None:
        if context.state_of(node_id) in ("failed", "skipped"):
            raise UpstreamFailed(node_id)
        time.sleep(poll_s)
    return where


def run_specs(runs: tuple[EvalRun, ...] | list[EvalRun], graded: Mapping[str, Outputs],
              trained: Mapping[str, dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """The report's RunSpec dicts for every evaluation point whose grading (or its alias's) has finished.
    `graded` maps run ids to their grade node's outputs; points without one are left out (a partial report).
    `trained` maps train node ids to what the report adds about their training: the run's name (the cost
    table's, for the compute axis) and the data run and subset it read (for the label audit)."""
    specs = []
    for run in runs:
        source = run.alias_of or run.run_id
        if source not in graded:
            continue
        tables = {k: graded[source][k] for k in ("samples", "verdicts", "problems")}
        entry = {"run_id": run.run_id, "data_size": run.data_size, "subset": run.subset,
                 "checkpoint": run.checkpoint, "model": run.student, "epoch": run.epoch, **tables}
        if run.replicate:
            entry["replicate"] = run.replicate
        if run.train is not None and trained and run.epoch is None:
            entry.update(trained.get(run.train, {}))
        if run.alias_of is not None:
            entry["source_run_id"] = source  # the rows inside those tables carry the source's run id
        specs.append(entry)
    return specs


def training_of(graph: StudyGraph, outputs: Mapping[str, Outputs]) -> dict[str, dict[str, str]]:
    """Train node id -> its run name, and the data run (where finished) and subset it trained on."""
    out = {}
    for n in graph.nodes:
        if n.kind == "train":
            p: TrainParams = n.params  # type: ignore[assignment]
            data = outputs.get(p.data, {}).get("stage_dir")
            out[n.id] = {"train_run": n.name, **({"data": data, "data_subset": p.subset} if data else {})}
    return out


def report_max_tokens(spec: ExperimentSpec) -> int:
    """The completion budget the report scores against: the generate runs' own `max_tokens`."""
    return spec.section_config("generate").max_tokens


def graded_outputs(graph: StudyGraph, outputs: Mapping[str, Outputs]) -> dict[str, Outputs]:
    nodes = graph.by_id()
    return {nodes[nid].params.run_id: out for nid, out in outputs.items()  # type: ignore[union-attr]
            if nid in nodes and nodes[nid].kind == "grade"}


def report_comparisons(spec: ExperimentSpec, graph: StudyGraph, finished: set[str]) -> list[dict[str, Any]]:
    """The spec's comparisons that the paper's tables do not already show (a series of the scaling
    preset is Table 1, a contrast of two other presets Table 2), each with its arms' finished runs."""
    arms, comparisons, _ = spec.design()
    out = []
    for c in comparisons:
        kinds = [preset_kind(arms, arm) for arm in c.arms()]
        if c.series is not None and kinds[0] == "random":
            continue
        if c.contrast is not None and all(k is not None and k != "random" for k in kinds):
            continue
        runs = {arm: [r.run_id for r in graph.runs if r.arm == arm and r.epoch is None and r.run_id in finished]
                for arm in c.arms()}
        out.append({"name": c.name, "kind": "series" if c.series is not None else "contrast", "arms": c.arms(),
                    "runs": runs})
    return out


def report_over(spec: ExperimentSpec, graph: StudyGraph, storage: Storage, outputs: Mapping[str, Outputs],
                name: str | None = None) -> Outputs:
    """The report over every finished evaluation in `outputs` (all of them, unless a partial report)."""
    from valley.report.config import ReportConfig

    specs = run_specs(graph.runs, graded_outputs(graph, outputs), training_of(graph, outputs))
    ledger = cost_ledger.CostLedger(storage, spec.experiment)
    fields = {"costs": ledger.rows(), **spec.section("report")}
    declared = report_comparisons(spec, graph, {s["run_id"] for s in specs})
    if declared:
        fields["comparisons"] = declared
    if fields.get("max_tokens") is None:
        fields["max_tokens"] = report_max_tokens(spec)
    cfg = ReportConfig(name=name or spec.experiment, experiment=spec.experiment, runs=specs, **fields)
    result = registry.stage("report").run_function()(cfg, storage)
    console.log(f"[report] {storage.uri(result.report_md)}")
    return {"stage_dir": result.stage_dir, "report_md": result.report_md, "results": result.results,
            "plots": list(result.plots), "runs": specs}


def run_report_node(spec: ExperimentSpec, graph: StudyGraph, node: Node, storage: Storage,
                    inputs: Mapping[str, Outputs], context: NodeContext) -> Outputs:
    return report_over(spec, graph, storage, inputs)


def run_node(spec: ExperimentSpec, graph: StudyGraph, node: Node, storage: Storage,
             outputs: Mapping[str, Outputs], context: NodeContext) -> Outputs:
    """Run one node with the registry's runner for its kind, given the outputs of its finished inputs."""
    runner = registry.stage(node.kind).node_runner_function()
    return runner(spec, graph, node, storage, {d: outputs[d] for d in node.deps if d in outputs}, context)
