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

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from valley import legacy, registry
from valley.data.config import SubsetSpec
from valley.experiment.arms import ArmSpec, parse_start, replicate_name, start_order, start_student
from valley.experiment.spec import ExperimentSpec, StudentSpec

KINDS = registry.study_kinds()


@dataclass(frozen=True)
class SubsetRequest:
    """One subset a data node selects: its name, size and definition (the data stage's `SubsetSpec`
    fields besides name and size, as canonical JSON so the request stays hashable and comparable)."""

    name: str
    size: int
    definition: str = "{}"

    @classmethod
    def of(cls, name: str, size: int, definition: Mapping[str, Any]) -> SubsetRequest:
        given = {k: v for k, v in definition.items() if v is not None}  # unset and absent mean the same
        return cls(name, size, json.dumps(given, sort_keys=True))

    def spec_fields(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, **json.loads(self.definition)}


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
    arm: str | None = None  # the arm it trains (its train overrides apply)
    replicate: int = 0  # which training seed of its run (the train seed + replicate)


@dataclass(frozen=True)
class GenerateParams:
    run_id: str
    train: str | None  # the train node whose export is evaluated (None: the student's model)
    epoch: int | None = None  # an earlier epoch's export of that run
    arm: str | None = None  # the arm evaluated (its generate overrides apply); None: the base model


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
        fields["subsets"] = tuple(SubsetRequest(**legacy.subset_request_fields(s)) for s in fields["subsets"])
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
    arm: str | None = None  # the arm it belongs to (None: the student's model itself)
    start: str | None = None  # where its run started: "base" or the start run's name (e.g. r30000)
    replicate: int = 0  # which training seed of its run; the report pools a run's replicates

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


def run_resources(kind: str, cfg: Any) -> dict[str, float]:
    """What one run of a stage holds on the cluster (the registry's rule), for the executor's limits."""
    return registry.stage(kind).resources(cfg)


def preset_kind(arms: Mapping[str, ArmSpec], arm_name: str) -> str | None:
    """The preset kind of an arm that is only a preset (kind and sources) and the only arm of its kind:
    the paper's tables group runs by it. None for any other arm."""
    arm = arms[arm_name]
    kind = str(arm.subset.get("kind", "random"))
    alone = all(str(other.subset.get("kind", "random")) != kind for name, other in arms.items() if name != arm_name)
    return kind if set(arm.subset) <= {"kind", "sources"} and alone else None


def _eval_subset(arms: Mapping[str, ArmSpec], arm_name: str) -> str:
    """What a run's `subset` says in the report: its arm's preset kind (see `preset_kind`), else the arm."""
    return preset_kind(arms, arm_name) or arm_name


class _StudentPlanner:
    """The nodes and evaluation points of one student, built phase by phase: its data runs (and labelling),
    every arm's training runs (each after the arms it starts from), then generate+grade per point."""

    def __init__(self, spec: ExperimentSpec, student: StudentSpec,
                 planned: dict[tuple[str, str, int, int], tuple[str, str]] | None = None):
        self.spec, self.s = spec, student.name
        self.arms, _, self.evaluate_base = spec.design()
        self.prefix = f"{spec.experiment}-{student.name}"
        self.gen_res = run_resources("generate", spec.section_config("generate", student.name))
        self.nodes: list[Node] = []
        self.runs: list[EvalRun] = []
        self.provider: dict[str, str] = {}  # subset -> the data node that packs it
        # the study's training runs planned so far, this student's and those before: the ones a start names
        # (student, arm, size, replicate) -> (train node, its evaluation's run id)
        self.planned = planned if planned is not None else {}

    def plan(self) -> tuple[list[Node], list[EvalRun]]:
        self.data_nodes()
        base_run = f"{self.s}-base" if self.evaluate_base else None
        if base_run:
            self.runs.append(EvalRun(base_run, self.s, 0, "random", "base"))
        for arm_name in start_order(self.arms):
            self.arm_runs(arm_name, base_run)
        self.evaluation_nodes()
        return self.nodes, self.runs

    def data_nodes(self) -> None:
        """One data run for every subset; those that read `correct` from a data run of the labelled traces
        when the spec has a label section (the traces carry `correct` otherwise, and those subsets come
        after the others)."""
        unlabelled, labelled = [], []
        for arm_name, arm in self.arms.items():
            for size in arm.sizes:
                name = arm.subset_name(arm_name, size)
                reads_labels = SubsetSpec(name=name, size=size, **arm.subset).reads_labels()
                for replicate in range(self.subset_draws(arm, size)):
                    request = SubsetRequest.of(replicate_name(name, replicate), size, self.drawn(arm, replicate))
                    (labelled if reads_labels else unlabelled).append(request)
        plain = unlabelled if self.spec.label is not None else unlabelled + labelled
        labelled = labelled if self.spec.label is not None else []
        data_id = f"data:{self.s}"
        self.nodes.append(Node(data_id, "data", self.prefix, (), {}, self.s, DataParams(tuple(plain))))
        self.provider = {r.name: data_id for r in plain}
        if labelled:
            label_id, labelled_id = f"label:{self.s}", f"data:{self.s}-labelled"
            self.nodes.append(Node(label_id, "label", self.prefix, (data_id,), {}, self.s, LabelParams(data_id)))
            self.nodes.append(Node(labelled_id, "data", f"{self.prefix}-labelled", (label_id,), {}, self.s,
                                   DataParams(tuple(labelled), label_id)))
            self.provider.update({r.name: labelled_id for r in labelled})

    def seeds_of(self, arm: ArmSpec, size: int) -> int:
        return arm.replicates(size, self.spec.seeds)

    def subset_draws(self, arm: ArmSpec, size: int) -> int:
        """Subsets a run of `size` trains on: one, or one per replicate when the arm resamples."""
        return self.seeds_of(arm, size) if arm.resample else 1

    def drawn(self, arm: ArmSpec, replicate: int) -> dict:
        """The arm's subset definition for replicate k's own draw: the subset's seed (else the data run's)
        plus k; subsets it excludes follow to their replicate k where those are drawn too."""
        if replicate == 0:
            return dict(arm.subset)
        seed = arm.subset.get("seed")
        base = seed if seed is not None else (self.spec.section("data") or {}).get("seed", 0)
        drawn = {**arm.subset, "seed": int(base) + replicate}
        if arm.subset.get("exclusive_of"):
            resampled = {other.subset_name(name, size) for name, other in self.arms.items() if other.resample
                         for size in other.sizes if self.seeds_of(other, size) > replicate}
            drawn["exclusive_of"] = [replicate_name(n, replicate) if n in resampled else n
                                     for n in arm.subset["exclusive_of"]]
        return drawn

    def _start(self, start: str, base_run: str | None,
               replicate: int = 0) -> tuple[str | None, str | None, str, str]:
        """(train node, its evaluation, its label in run names, its checkpoint in the report) of a start;
        replicate k continues from the start run's replicate k where it has one, else from its first."""
        found = parse_start(start)
        if found is None:
            return None, base_run, "base", "base"
        student = start_student(start) or self.s
        name = self.arms[found[0]].subset_name(found[0], found[1])
        node, run_id = self.planned.get((student, *found, replicate)) or self.planned[(student, *found, 0)]
        if student == self.s:
            return node, run_id, name, str(found[1])
        return node, None, f"{student}-{name}", f"{student} {found[1]}"  # another student's run: no epoch-0 alias

    def arm_runs(self, arm_name: str, base_run: str | None) -> None:
        """One training run per size and start; `<arm>@<size>` names the first start's run of that size."""
        arm = self.arms[arm_name]
        train_cfg = self.spec.arm_train_config(arm_name)
        train_res, epochs = run_resources("train", train_cfg), train_cfg.epochs
        for size in sorted(arm.sizes):
            name = arm.subset_name(arm_name, size)
            for replicate in range(self.seeds_of(arm, size)):
                subset = replicate_name(name, replicate) if arm.resample else name
                for start in arm.starts():
                    self.train_run(arm_name, size, subset, start, replicate, base_run, train_res, epochs)

    def train_run(self, arm_name: str, size: int, subset: str, start: str, replicate: int,
                  base_run: str | None, train_res: dict[str, float], epochs: int) -> None:
        """One training run (a replicate of one size and start) and its evaluation points."""
        arm = self.arms[arm_name]
        start_node, start_run, label, checkpoint = self._start(start, base_run, replicate)
        name = arm.subset_name(arm_name, size)
        tag = replicate_name(name if arm.from_ is None else f"{name}-from-{label}", replicate)
        node_id = f"train:{self.s}-{tag}"
        deps = (self.provider[subset],) + ((start_node,) if start_node else ())
        params = TrainParams(tag, subset, size, self.provider[subset], start_node, arm.per_epoch_eval, arm_name,
                             replicate)
        self.nodes.append(Node(node_id, "train", f"{self.prefix}-{tag}", deps, train_res, self.s, params))
        run = EvalRun(f"{self.s}-{tag}", self.s, size, _eval_subset(self.arms, arm_name), checkpoint, train=node_id,
                      arm=arm_name, start=label, replicate=replicate)
        self.runs.append(run)
        if arm.per_epoch_eval:
            self.runs.extend(epoch_runs(run, epochs, start_run))
        self.planned.setdefault((self.s, arm_name, size, replicate), (node_id, run.run_id))

    def evaluation_nodes(self) -> None:
        """A generate and a grade node per evaluation point that is not an alias of another."""
        for run in self.runs:
            if run.alias_of is not None:
                continue
            gen_id, grade_id = f"generate:{run.run_id}", f"grade:{run.run_id}"
            name = f"{self.spec.experiment}-{run.run_id}"
            params = GenerateParams(run.run_id, run.train, run.epoch if run.epoch else None, run.arm)
            self.nodes.append(Node(gen_id, "generate", name, (run.train,) if run.train else (), self.gen_res, self.s,
                                   params))
            self.nodes.append(Node(grade_id, "grade", name, (gen_id,), {}, self.s, GradeParams(run.run_id, gen_id),
                                   follows=(gen_id,)))


def students_in_start_order(spec: ExperimentSpec) -> list[StudentSpec]:
    """The students, those whose runs others continue from (`<student>/<arm>@<size>`) first."""
    arms, _, _ = spec.design()
    named = {start_student(s) for arm in arms.values() for s in arm.starts()} - {None}
    return sorted(spec.students, key=lambda st: st.name not in named)


def plan_study(spec: ExperimentSpec) -> StudyGraph:
    """Every stage run of the study and what it waits for. Pure: the same spec gives the same graph."""
    nodes: list[Node] = []
    runs: list[EvalRun] = []
    planned: dict[tuple[str, str, int, int], tuple[str, str]] = {}
    for student in students_in_start_order(spec):
        student_nodes, student_runs = _StudentPlanner(spec, student, planned).plan()
        nodes += student_nodes
        runs += student_runs
    # the report reads every grading, and the data runs' label audits of the subsets trained on
    inputs = tuple(n.id for n in nodes if n.kind in ("grade", "data"))
    nodes.append(Node("report", "report", spec.experiment, inputs, {}, None, ReportParams()))
    return StudyGraph(spec.experiment, tuple(nodes), tuple(runs))


def plan_rows(graph: StudyGraph) -> list[dict[str, str]]:
    """The plan as table rows (`valley run --plan`): node, what it waits for, what it holds while it runs."""
    rows = []
    for n in graph.nodes:
        deps = ", ".join(n.deps) if len(n.deps) <= 3 else f"{len(n.deps)} nodes ({n.deps[0]}, …)"
        held = ", ".join(f"{k}={v:g}" for k, v in n.resources.items()) or registry.stage(n.kind).holds
        rows.append({"node": n.id, "kind": n.kind, "waits for": deps or "-", "holds": held})
    return rows
