"""The study's predicted wall-clock on the plan's cluster: the plan's stage durations run through the
makespan simulator (`experiment/simulate.py`, the executor's own start policy) on `nodes` GPU nodes.

A training run lasts its planned GPU-hours over its workers (one bundle per worker); a generation its
GPU-hours over its pool's GPUs (one bundle per replica). Data, label, grading and report runs have no
estimate and count as no time: grading follows its generation and ends with it. The executor sizes its
limits from the cluster it sees when the study starts, so on a cluster file whose GPU nodes start at
`min_workers` below `max_workers` the schedule is also predicted for what the executor sees at launch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from valley.capacity.cluster import GpuNode
from valley.experiment.executor import default_limits
from valley.experiment.graph import StudyGraph
from valley.experiment.simulate import Prediction, Work, cluster_totals, simulate

NOT_ESTIMATED = ("data", "label", "grade", "report")


@dataclass
class ScheduleEstimate:
    """The predicted schedule in hours; `at_launch` is the makespan under the limits the executor would
    take from the nodes up at launch, when fewer than `nodes` are (None otherwise)."""

    nodes: int
    gpus_per_node: int
    cpus_per_node: float
    limits: dict[str, int | None]
    makespan_hours: float
    dependency_bound_hours: float
    critical_path: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)  # node, kind, hours, start_h, placed_h, end_h
    at_launch: dict[str, Any] | None = None
    not_estimated: tuple[str, ...] = NOT_ESTIMATED

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def stage_work(graph: StudyGraph, train: list[Any], evaluate: list[Any], replicas: dict[str, int]) -> dict[str, Work]:
    """Each node's planned length (s) and bundles from the plan's training and evaluation estimates;
    `replicas`: a generate node's pool replicas."""
    by_id = graph.by_id()
    work = {f"train:{t.run}": Work(t.wall_hours * 3600, max(1, t.gpus)) for t in train}
    for e in evaluate:
        node_id = f"generate:{e.run}"
        gpus = float(by_id[node_id].resources.get("GPU", 0.0))
        work[node_id] = Work(e.gpu_hours * 3600 / max(gpus, 1.0), replicas.get(node_id, 1) if gpus else 1)
    return work


def machines_of(node: GpuNode, count: int | None = None) -> list[dict[str, float]]:
    per = {"GPU": float(node.gpus_per_node), **({"CPU": node.cpus_per_node} if node.cpus_per_node else {})}
    return [dict(per) for _ in range(node.nodes if count is None else count)]


def predict_schedule(graph: StudyGraph, work: dict[str, Work], node: GpuNode,
                     configured: dict[str, int | None]) -> ScheduleEstimate:
    """The study on `node.nodes` nodes under the limits the executor would take from them (and from
    `max_concurrent`, `configured`)."""
    machines = machines_of(node)
    limits = default_limits(graph, cluster_totals(machines), configured)
    p = simulate(graph, work, machines, limits)
    at_launch = None
    if node.nodes_at_launch is not None and node.nodes_at_launch < node.nodes:
        seen = default_limits(graph, cluster_totals(machines_of(node, node.nodes_at_launch)), configured)
        if seen != limits:
            q = simulate(graph, work, machines, seen)
            at_launch = {"nodes_up": node.nodes_at_launch, "limits": seen, "makespan_hours": q.makespan_s / 3600}
    return ScheduleEstimate(node.nodes, node.gpus_per_node, node.cpus_per_node, limits, p.makespan_s / 3600,
                            p.dependency_bound_s / 3600, p.critical_path, _rows(graph, work, p), at_launch)


def _rows(graph: StudyGraph, work: dict[str, Work], p: Prediction) -> list[dict[str, Any]]:
    return [{"node": n.id, "kind": n.kind, "hours": work[n.id].seconds / 3600 if n.id in work else 0.0,
             "start_h": p.start[n.id] / 3600, "placed_h": p.placed[n.id] / 3600, "end_h": p.end[n.id] / 3600}
            for n in sorted(graph.nodes, key=lambda n: (p.start[n.id], p.end[n.id]))]
