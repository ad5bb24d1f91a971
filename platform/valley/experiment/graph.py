"""`plan_study`: the study as a graph of stage runs, derived from the spec alone (pure: no Ray, no storage).

A node is one stage run (its config name names its output directory, as before the graph existed, so studies
made by the sequential runner are found and skipped); an edge is a data dependency. Per student:

    data ─┬─ train r1K ─ … ─ train r30K ─┬─ correct-from-r30K …       (stage 2 waits for its parent run only)
          └─ label ─ data (labelled) ────┴─ correct-from-base …
    every trained model ─ generate ─ grade ─┐
    base model ────────── generate ─ grade ─┴─ report

Per-epoch evaluations hang off their training run; their first and last points reuse the evaluations of the
start model and of the final model (`EvalRun.alias_of`) instead of generating again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from valley.experiment.spec import ExperimentSpec, StudentSpec

KINDS = ("data", "label", "train", "generate", "grade", "report")


@dataclass(frozen=True)
class Node:
    """One stage run of the study. `params` holds what the node needs beyond the spec's stage section."""

    id: str
    kind: str
    name: str  # the stage config's name: it names the output directory
    deps: tuple[str, ...] = ()
    resources: Mapping[str, float] = field(default_factory=dict)  # held while it runs, whole node
    student: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "name": self.name, "deps": list(self.deps),
                "resources": dict(self.resources), "student": self.student, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Node:
        return cls(id=d["id"], kind=d["kind"], name=d["name"], deps=tuple(d["deps"]), resources=d["resources"],
                   student=d.get("student"), params=d.get("params") or {})


@dataclass(frozen=True)
class EvalRun:
    """One evaluated point of the study: a model (base, trained, or one epoch of a run) and where it sits."""

    run_id: str
    student: str
    data_size: int
    subset: str
    checkpoint: str  # "base", or the size of the RQ1 run a stage-2 run continued from
    train: str | None = None  # the train node whose export is evaluated (None: the student's base model)
    epoch: int | None = None  # set for the per-epoch points of a training run
    alias_of: str | None = None  # already evaluated as this run (the final epoch, or epoch 0 = the start)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class StudyGraph:
    """Nodes in a valid run order (every node after its dependencies) and the study's evaluation points."""

    experiment: str
    nodes: tuple[Node, ...]
    runs: tuple[EvalRun, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for node in self.nodes:
            missing = [d for d in node.deps if d not in seen]
            if node.id in seen or missing:
                raise ValueError(f"node {node.id!r}: duplicate id or dependencies {missing} not before it")
            seen.add(node.id)

    def node(self, node_id: str) -> Node:
        return self.by_id()[node_id]

    def by_id(self) -> dict[str, Node]:
        return {n.id: n for n in self.nodes}

    def children(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {n.id: [] for n in self.nodes}
        for n in self.nodes:
            for d in n.deps:
                out[d].append(n.id)
        return out

    def descendants(self, node_id: str) -> list[str]:
        """Every node that needs `node_id`'s output, directly or not, in run order."""
        kids, found, todo = self.children(), set(), [node_id]
        while todo:
            for child in kids[todo.pop()]:
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return [n.id for n in self.nodes if n.id in found]

    def count(self, kind: str) -> int:
        return sum(1 for n in self.nodes if n.kind == kind)


def epoch_runs(final: EvalRun, epochs: int, start_run_id: str | None) -> list[EvalRun]:
    """The per-epoch points of one training run: epoch 0 is the model it started from (already evaluated
    as `start_run_id`, when the study evaluates it), the last epoch is the final run itself, and only the
    epochs between need their own generation and grading."""
    points = []
    if start_run_id is not None:
        points.append(replace(final, run_id=f"{final.run_id}-e0", epoch=0, alias_of=start_run_id))
    points += [replace(final, run_id=f"{final.run_id}-e{k}", epoch=k) for k in range(1, epochs)]
    points.append(replace(final, run_id=f"{final.run_id}-e{epochs}", epoch=epochs, alias_of=final.run_id))
    return points


def train_fields(spec: ExperimentSpec) -> dict[str, Any]:
    """The spec's train section, with `max_seq_len` taken from the data section when the train section does
    not set it (declared once: the data stage packs to it and training must accept it)."""
    from valley.data.config import DataConfig

    fields = dict(spec.train)
    if fields.get("max_seq_len") is None:
        fields["max_seq_len"] = DataConfig(tokenizer="-", **spec.data).max_seq_len
    return fields


def train_config(spec: ExperimentSpec) -> Any:
    """The spec's train section as a TrainConfig (placeholders for what each run sets)."""
    from valley.train.config import TrainConfig

    return TrainConfig(data="-", model="-", **train_fields(spec))


def train_resources(cfg: Any) -> dict[str, float]:
    """What one training run of `cfg` (a TrainConfig) holds: its workers' CPUs, GPUs and custom resources."""
    per_worker = {"CPU": cfg.cpus_per_worker, **({"GPU": 1.0} if cfg.use_gpu else {}), **cfg.resources_per_worker}
    return {k: v * cfg.num_workers for k, v in per_worker.items() if v}


def generate_resources(spec: ExperimentSpec) -> dict[str, float]:
    from valley.generate.config import GenerateConfig

    cfg = GenerateConfig(model="-", **spec.generate)
    per_replica = {"CPU": float(cfg.pool.num_cpus), "GPU": cfg.replica_gpus()}
    return {k: v * cfg.pool.replicas for k, v in per_replica.items() if v}


def _subset_dicts(names_sizes: Iterable[tuple[str, str, int]], sources: list[str] | None) -> list[dict[str, Any]]:
    return [{"name": name, "kind": kind, "size": size, "sources": sources} for name, kind, size in names_sizes]


def _student_nodes(spec: ExperimentSpec, student: StudentSpec) -> tuple[list[Node], list[EvalRun]]:
    study, exp, s = spec.study, spec.experiment, student.name
    train_cfg = train_config(spec)
    train_res, gen_res, epochs = train_resources(train_cfg), generate_resources(spec), train_cfg.epochs
    nodes: list[Node] = []
    runs: list[EvalRun] = []

    # data: RQ1 + RQ3 subsets; RQ2 too when the traces already carry `correct` (no label section)
    wanted = [(f"r{n}", "random", n) for n in study.scaling_sizes]
    subsets = _subset_dicts(wanted, study.scaling_sources)
    if study.difficulty_size:
        subsets += _subset_dicts([(k, k, study.difficulty_size) for k in ("easy", "hard")], study.subset_sources)
    paired_subsets = [("correct", "correct", study.correctness_size), ("incorrect", "incorrect",
                                                                        study.correctness_size)]
    labelled_here = bool(study.correctness_size) and spec.label is None
    if labelled_here:
        subsets += _subset_dicts(paired_subsets, study.subset_sources)
    data_id = f"data:{s}"
    nodes.append(Node(data_id, "data", f"{exp}-{s}", (), {}, s, {"subsets": subsets}))
    provider = {d["name"]: data_id for d in subsets}
    if study.correctness_size and spec.label is not None:
        label_id, labelled_id = f"label:{s}", f"data:{s}-labelled"
        nodes.append(Node(label_id, "label", f"{exp}-{s}", (data_id,), {}, s, {"data": data_id}))
        nodes.append(Node(labelled_id, "data", f"{exp}-{s}-labelled", (label_id,), {}, s,
                          {"subsets": _subset_dicts(paired_subsets, study.subset_sources), "labelled": label_id}))
        provider.update({"correct": labelled_id, "incorrect": labelled_id})

    sizes = {d["name"]: d["size"] for d in subsets} | {k: study.correctness_size for k in ("correct", "incorrect")}

    def train(tag: str, subset: str, start: str | None) -> str:
        node_id = f"train:{s}-{tag}"
        deps = (provider[subset],) + ((start,) if start else ())
        per_epoch = ("random" if subset.startswith("r") and subset[1:].isdigit() else subset) in study.per_epoch_eval
        nodes.append(Node(node_id, "train", f"{exp}-{s}-{tag}", deps, train_res, s,
                          {"subset": subset, "size": sizes[subset], "data": provider[subset], "start": start,
                           "per_epoch": per_epoch}))
        return node_id

    base_run = f"{s}-base" if study.evaluate_base else None
    if base_run:
        runs.append(EvalRun(base_run, s, 0, "random", "base"))

    def evaluated(run: EvalRun, per_epoch: bool, start_run: str | None) -> None:
        runs.append(run)
        if per_epoch:
            runs.extend(epoch_runs(run, epochs, start_run))

    rq1: dict[int, str] = {}
    for size in sorted(study.scaling_sizes):
        rq1[size] = train(f"r{size}", f"r{size}", None)
        evaluated(EvalRun(f"{s}-r{size}", s, size, "random", "base", train=rq1[size]),
                  "random" in study.per_epoch_eval, base_run)
    starts: list[tuple[str, str | None, str | None]] = [("base", None, base_run)]
    if study.stage2_from_size is not None:
        size = study.stage2_from_size
        starts.append((f"r{size}", rq1[size], f"{s}-r{size}"))
    paired = []
    if study.correctness_size:
        paired += [("correct", study.correctness_size), ("incorrect", study.correctness_size)]
    if study.difficulty_size:
        paired += [("easy", study.difficulty_size), ("hard", study.difficulty_size)]
    for subset, size in paired:
        for start_tag, start_node, start_run in starts:
            tag = f"{subset}-from-{start_tag}"
            node_id = train(tag, subset, start_node)
            checkpoint = "base" if start_tag == "base" else start_tag.removeprefix("r")
            evaluated(EvalRun(f"{s}-{tag}", s, size, subset, checkpoint, train=node_id),
                      subset in study.per_epoch_eval, start_run)

    for run in runs:
        if run.alias_of is not None:
            continue
        gen_id, grade_id = f"generate:{run.run_id}", f"grade:{run.run_id}"
        nodes.append(Node(gen_id, "generate", f"{exp}-{run.run_id}", (run.train,) if run.train else (), gen_res, s,
                          {"run_id": run.run_id, "train": run.train, "epoch": run.epoch if run.epoch else None}))
        nodes.append(Node(grade_id, "grade", f"{exp}-{run.run_id}", (gen_id,), {}, s,
                          {"run_id": run.run_id, "generate": gen_id, "follows": [gen_id]}))
    return nodes, runs


def plan_study(spec: ExperimentSpec) -> StudyGraph:
    """Every stage run of the study and what it waits for. Pure: the same spec gives the same graph."""
    nodes: list[Node] = []
    runs: list[EvalRun] = []
    for student in spec.students:
        student_nodes, student_runs = _student_nodes(spec, student)
        nodes += student_nodes
        runs += student_runs
    grades = tuple(n.id for n in nodes if n.kind == "grade")
    nodes.append(Node("report", "report", spec.experiment, grades, {"CPU": 1.0}, None, {}))
    return StudyGraph(spec.experiment, tuple(nodes), tuple(runs))


def plan_rows(graph: StudyGraph) -> list[dict[str, str]]:
    """The plan as table rows (`valley run --plan`): node, what it waits for, what it holds while it runs."""
    rows = []
    for n in graph.nodes:
        deps = ", ".join(n.deps) if len(n.deps) <= 3 else f"{len(n.deps)} nodes ({n.deps[0]}, …)"
        held = ", ".join(f"{k}={v:g}" for k, v in n.resources.items()) or _held_by_kind(n.kind)
        rows.append({"node": n.id, "kind": n.kind, "waits for": deps or "-", "holds": held})
    return rows


def _held_by_kind(kind: str) -> str:
    return {"data": "Ray Data tasks (cluster CPUs)", "label": "grading tasks", "grade": "grading tasks"}.get(kind, "-")
