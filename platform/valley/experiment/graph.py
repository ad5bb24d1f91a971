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
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from valley import legacy, registry
from valley.experiment.spec import ExperimentSpec, StudentSpec

KINDS = registry.study_kinds()


@dataclass(frozen=True)
class SubsetRequest:
    """One subset a data node selects (the data stage's `SubsetSpec` fields)."""

    name: str
    kind: str
    size: int
    sources: tuple[str, ...] | None = None

    def spec_fields(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "size": self.size,
                "sources": list(self.sources) if self.sources is not None else None}


@dataclass(frozen=True)
class DataParams:
    subsets: tuple[SubsetRequest, ...]
    labelled: str | None = None  # the label node whose traces (with `correct`) this data run reads


@dataclass(frozen=True)
class LabelParams:
    data: str  # the data node whose traces are graded


@dataclass(frozen=True)
class TrainParams:
    tag: str  # the run's name within its student: r1000, correct-from-r30000, ...
    subset: str
    size: int
    data: str  # the data node holding the subset
    start: str | None  # the train node whose export this run continues from (None: the student's model)
    per_epoch: bool  # export (and evaluate) every epoch


@dataclass(frozen=True)
class GenerateParams:
    run_id: str
    train: str | None  # the train node whose export is evaluated (None: the student's model)
    epoch: int | None = None  # an earlier epoch's export of that run


@dataclass(frozen=True)
class GradeParams:
    run_id: str
    generate: str  # the generate node whose samples are graded (and followed while it runs)


@dataclass(frozen=True)
class ReportParams:
    pass


NodeParams = DataParams | LabelParams | TrainParams | GenerateParams | GradeParams | ReportParams
PARAMS_OF_KIND: dict[str, type] = {"data": DataParams, "label": LabelParams, "train": TrainParams,
                                   "generate": GenerateParams, "grade": GradeParams, "report": ReportParams}


def params_from_dict(kind: str, data: Mapping[str, Any]) -> NodeParams:
    fields = dict(data)
    if kind == "data":
        fields["subsets"] = tuple(SubsetRequest(**{**s, "sources": tuple(s["sources"]) if s.get("sources") else
                                                   s.get("sources")}) for s in fields["subsets"])
    return PARAMS_OF_KIND[kind](**fields)


@dataclass(frozen=True)
class Node:
    """One stage run of the study. `params` holds what the node needs beyond the spec's stage section, typed
    per kind; `follows` names inputs it may start beside (reading their output as it appears)."""

    id: str
    kind: str
    name: str  # the stage config's name: it names the output directory
    deps: tuple[str, ...] = ()
    resources: Mapping[str, float] = field(default_factory=dict)  # held while it runs, whole node
    student: str | None = None
    params: NodeParams = field(default_factory=ReportParams)
    follows: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "name": self.name, "deps": list(self.deps),
                "resources": dict(self.resources), "student": self.student, "params": asdict(self.params),
                "follows": list(self.follows)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Node:
        params, follows = legacy.node_fields_of_old_graph(d)
        return cls(id=d["id"], kind=d["kind"], name=d["name"], deps=tuple(d["deps"]), resources=d["resources"],
                   student=d.get("student"), params=params_from_dict(d["kind"], params), follows=tuple(follows))


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
    fields = spec.section("train")
    if fields.get("max_seq_len") is None:
        fields["max_seq_len"] = spec.section_config("data").max_seq_len
    return fields


def train_config(spec: ExperimentSpec) -> Any:
    """The spec's train section as a TrainConfig (placeholders for what each run sets)."""
    return registry.stage("train").config_class()(data="-", model="-", **train_fields(spec))


def run_resources(kind: str, cfg: Any) -> dict[str, float]:
    """What one run of a stage holds on the cluster (the registry's rule), for the executor's limits."""
    return registry.stage(kind).resources(cfg)


class _StudentPlanner:
    """The nodes and evaluation points of one student, built phase by phase: data (and labelling), the
    training runs (RQ1 sizes, then the paired subsets from each start), then generate+grade per point."""

    def __init__(self, spec: ExperimentSpec, student: StudentSpec):
        self.spec, self.study, self.s = spec, spec.study, student.name
        self.prefix = f"{spec.experiment}-{student.name}"
        train_cfg = train_config(spec)
        self.train_res, self.epochs = run_resources("train", train_cfg), train_cfg.epochs
        self.gen_res = run_resources("generate", spec.section_config("generate", student.name))
        self.nodes: list[Node] = []
        self.runs: list[EvalRun] = []
        self.provider: dict[str, str] = {}  # subset -> the data node that packs it
        self.sizes: dict[str, int] = {}

    def plan(self) -> tuple[list[Node], list[EvalRun]]:
        self.data_nodes()
        base_run = f"{self.s}-base" if self.study.evaluate_base else None
        if base_run:
            self.runs.append(EvalRun(base_run, self.s, 0, "random", "base"))
        scaling = self.scaling_runs(base_run)
        self.paired_runs(self.starts(base_run, scaling))
        self.evaluation_nodes()
        return self.nodes, self.runs

    def _requests(self, wanted: Iterable[tuple[str, str, int]], sources: list[str] | None) -> list[SubsetRequest]:
        return [SubsetRequest(name, kind, size, tuple(sources) if sources is not None else None)
                for name, kind, size in wanted]

    def data_nodes(self) -> None:
        """RQ1 + RQ3 subsets; RQ2 too when the traces already carry `correct` (no label section)."""
        study = self.study
        subsets = self._requests([(f"r{n}", "random", n) for n in study.scaling_sizes], study.scaling_sources)
        if study.difficulty_size:
            subsets += self._requests([(k, k, study.difficulty_size) for k in ("easy", "hard")],
                                      study.subset_sources)
        paired = [(k, k, study.correctness_size) for k in ("correct", "incorrect")]
        if study.correctness_size and self.spec.label is None:
            subsets += self._requests(paired, study.subset_sources)
        data_id = f"data:{self.s}"
        self.nodes.append(Node(data_id, "data", self.prefix, (), {}, self.s, DataParams(tuple(subsets))))
        self.provider = {r.name: data_id for r in subsets}
        self.sizes = {r.name: r.size for r in subsets}
        if study.correctness_size and self.spec.label is not None:
            label_id, labelled_id = f"label:{self.s}", f"data:{self.s}-labelled"
            self.nodes.append(Node(label_id, "label", self.prefix, (data_id,), {}, self.s, LabelParams(data_id)))
            self.nodes.append(Node(labelled_id, "data", f"{self.prefix}-labelled", (label_id,), {}, self.s,
                                   DataParams(tuple(self._requests(paired, study.subset_sources)), label_id)))
            self.provider.update({"correct": labelled_id, "incorrect": labelled_id})
        self.sizes.update({k: study.correctness_size for k in ("correct", "incorrect") if study.correctness_size})

    def train(self, tag: str, subset: str, start: str | None) -> str:
        node_id = f"train:{self.s}-{tag}"
        deps = (self.provider[subset],) + ((start,) if start else ())
        kind = "random" if subset.startswith("r") and subset[1:].isdigit() else subset
        params = TrainParams(tag, subset, self.sizes[subset], self.provider[subset], start,
                             kind in self.study.per_epoch_eval)
        self.nodes.append(Node(node_id, "train", f"{self.prefix}-{tag}", deps, self.train_res, self.s, params))
        return node_id

    def evaluated(self, run: EvalRun, per_epoch: bool, start_run: str | None) -> None:
        self.runs.append(run)
        if per_epoch:
            self.runs.extend(epoch_runs(run, self.epochs, start_run))

    def scaling_runs(self, base_run: str | None) -> dict[int, str]:
        """RQ1: one run per size from the student's model; returns size -> train node."""
        trained: dict[int, str] = {}
        for size in sorted(self.study.scaling_sizes):
            trained[size] = self.train(f"r{size}", f"r{size}", None)
            self.evaluated(EvalRun(f"{self.s}-r{size}", self.s, size, "random", "base", train=trained[size]),
                           "random" in self.study.per_epoch_eval, base_run)
        return trained

    def starts(self, base_run: str | None, scaling: dict[int, str]) -> list[tuple[str, str | None, str | None]]:
        """Where the paired runs start: (tag, train node, its evaluation) for the base and the stage-2 run."""
        found: list[tuple[str, str | None, str | None]] = [("base", None, base_run)]
        size = self.study.stage2_from_size
        if size is not None:
            found.append((f"r{size}", scaling[size], f"{self.s}-r{size}"))
        return found

    def paired_runs(self, starts: list[tuple[str, str | None, str | None]]) -> None:
        """RQ2 (correct vs incorrect) and RQ3 (easy vs hard), from every start."""
        study, paired = self.study, []
        if study.correctness_size:
            paired += [("correct", study.correctness_size), ("incorrect", study.correctness_size)]
        if study.difficulty_size:
            paired += [("easy", study.difficulty_size), ("hard", study.difficulty_size)]
        for subset, size in paired:
            for start_tag, start_node, start_run in starts:
                tag = f"{subset}-from-{start_tag}"
                node_id = self.train(tag, subset, start_node)
                checkpoint = "base" if start_tag == "base" else start_tag.removeprefix("r")
                self.evaluated(EvalRun(f"{self.s}-{tag}", self.s, size, subset, checkpoint, train=node_id),
                               subset in study.per_epoch_eval, start_run)

    def evaluation_nodes(self) -> None:
        """A generate and a grade node per evaluation point that is not an alias of another."""
        for run in self.runs:
            if run.alias_of is not None:
                continue
            gen_id, grade_id = f"generate:{run.run_id}", f"grade:{run.run_id}"
            name = f"{self.spec.experiment}-{run.run_id}"
            self.nodes.append(Node(gen_id, "generate", name, (run.train,) if run.train else (), self.gen_res, self.s,
                                   GenerateParams(run.run_id, run.train, run.epoch if run.epoch else None)))
            self.nodes.append(Node(grade_id, "grade", name, (gen_id,), {}, self.s, GradeParams(run.run_id, gen_id),
                                   follows=(gen_id,)))


def plan_study(spec: ExperimentSpec) -> StudyGraph:
    """Every stage run of the study and what it waits for. Pure: the same spec gives the same graph."""
    nodes: list[Node] = []
    runs: list[EvalRun] = []
    for student in spec.students:
        student_nodes, student_runs = _StudentPlanner(spec, student).plan()
        nodes += student_nodes
        runs += student_runs
    grades = tuple(n.id for n in nodes if n.kind == "grade")
    nodes.append(Node("report", "report", spec.experiment, grades, {}, None, ReportParams()))
    return StudyGraph(spec.experiment, tuple(nodes), tuple(runs))


def plan_rows(graph: StudyGraph) -> list[dict[str, str]]:
    """The plan as table rows (`valley run --plan`): node, what it waits for, what it holds while it runs."""
    rows = []
    for n in graph.nodes:
        deps = ", ".join(n.deps) if len(n.deps) <= 3 else f"{len(n.deps)} nodes ({n.deps[0]}, …)"
        held = ", ".join(f"{k}={v:g}" for k, v in n.resources.items()) or registry.stage(n.kind).holds
        rows.append({"node": n.id, "kind": n.kind, "waits for": deps or "-", "holds": held})
    return rows
