"""The study's wall-clock before it runs: the executor's own policy (`executor.starts`) on simulated time.

Discrete events over the study graph, each node given how long its work takes and what it holds. Two things
decide when a node runs, as on a real cluster:

- the executor starts it (`executor.starts`, the same function `StudyExecutor` calls: inputs done, kind under
  its limit, most training below it first); from then on it holds its kind's slot;
- Ray places its resources: the node's request is `bundles` equal parts (a training run's workers, a
  generation pool's replicas), granted whole or not at all, each part on one machine, first fit, the
  machines it already uses first (Ray Train's PACK). Its work starts when it is placed. By default the
  newest requests are served first: Ray's GCS ranks a pending placement group by its creation time plus a
  backoff that grows with every failed try, so a request made as machines free up tends to go ahead of one
  that has been waiting (`queue="oldest"`: the other way round; benchmarks/bench_makespan.py measures
  both against Ray). Requests made at the same moment go in start order.

A node that follows another (grading its generation) ends no earlier than the node it follows. A resource no
machine declares is not modelled (as in `executor.fits`: the autoscaler's to provide). Pure: no Ray, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from valley.experiment.executor import critical_path_s, priorities, starts
from valley.experiment.graph import Node, StudyGraph

EPS = 1e-9


class Unplaceable(ValueError):
    """A node's request fits no machine of the cluster even when it is empty: the study would wait for ever."""


@dataclass(frozen=True)
class Work:
    """One node's work: its length once placed, and in how many equal parts its resources come."""

    seconds: float
    bundles: int = 1


@dataclass
class Prediction:
    """When each node starts (takes its executor slot), is placed (its work begins) and ends, in seconds."""

    makespan_s: float
    dependency_bound_s: float  # the critical path with unlimited machines: no schedule beats it
    start: dict[str, float] = field(default_factory=dict)
    placed: dict[str, float] = field(default_factory=dict)
    end: dict[str, float] = field(default_factory=dict)
    critical_path: list[str] = field(default_factory=list)
    limits: dict[str, int | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"makespan_s": self.makespan_s, "dependency_bound_s": self.dependency_bound_s,
                "critical_path": self.critical_path, "limits": self.limits,
                "nodes": {n: {"start_s": self.start[n], "placed_s": self.placed[n], "end_s": self.end[n]}
                          for n in self.start}}


def cluster_totals(machines: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """What `ray.cluster_resources()` would report for these machines (the executor's limits read it)."""
    totals: dict[str, float] = {}
    for machine in machines:
        for key, amount in machine.items():
            totals[key] = totals.get(key, 0.0) + float(amount)
    return totals


def _part(resources: Mapping[str, float], bundles: int, modelled: set[str]) -> dict[str, float]:
    return {k: float(v) / bundles for k, v in resources.items() if k in modelled and v}


def _place(part: Mapping[str, float], bundles: int, free: list[dict[str, float]]) -> list[int] | None:
    """Machines for each of the bundles (taken from `free`), or None (and `free` untouched) if not all fit."""
    trial = [dict(m) for m in free]
    used: list[int] = []
    for _ in range(bundles):
        order = sorted(range(len(trial)), key=lambda i: (i not in used, i))
        spot = next((i for i in order if all(trial[i].get(k, 0.0) + EPS >= v for k, v in part.items())), None)
        if spot is None:
            return None
        for k, v in part.items():
            trial[spot][k] -= v
        used.append(spot)
    free[:] = trial
    return used


def simulate(graph: StudyGraph, work: Mapping[str, Work], machines: Sequence[Mapping[str, float]],
             limits: Mapping[str, int | None], queue: str = "newest") -> Prediction:
    """Run the graph on simulated time; nodes missing from `work` take no time and hold nothing."""
    if queue not in ("newest", "oldest"):
        raise ValueError(f"queue must be 'newest' or 'oldest', not {queue!r}")
    newest = queue == "newest"
    modelled = {k for m in machines for k in m}
    by_id, order = graph.by_id(), priorities(graph)
    works = {n.id: work.get(n.id, Work(0.0)) for n in graph.nodes}
    parts = {n.id: _part(n.resources, max(1, works[n.id].bundles), modelled) for n in graph.nodes}
    states = {n.id: "queued" for n in graph.nodes}
    free = [dict(m) for m in machines]
    held: dict[str, list[int]] = {}
    waiting: list[str] = []  # started, not yet placed, in start order
    start: dict[str, float] = {}
    placed: dict[str, float] = {}
    end: dict[str, float] = {}
    now = 0.0
    while True:
        for node in starts(graph, states, limits, order):
            states[node.id], start[node.id] = "running", now
            waiting.append(node.id)
        for node_id in sorted(waiting, key=lambda n: -start[n] if newest else start[n]):  # stable: start order
            spots = _place(parts[node_id], max(1, works[node_id].bundles), free) if parts[node_id] else []
            if spots is not None:
                waiting.remove(node_id)
                held[node_id], placed[node_id] = spots, now
        ends = [_ends_at(by_id[n], placed[n] + works[n].seconds, states, end) for n in placed
                if states[n] == "running"]
        if not ends or math.isinf(now := min(ends)):
            break  # nothing left to run, or what is left waits on a request no machine holds
        finished = True
        while finished:  # a follower may end with the node it follows, at the same moment
            finished = False
            for node_id in [n for n in placed if states[n] == "running"]:
                if _ends_at(by_id[node_id], placed[node_id] + works[node_id].seconds, states, end) <= now + EPS:
                    states[node_id], end[node_id] = "done", now
                    _release(parts[node_id], held.pop(node_id), free)
                    finished = True
    if waiting:
        shapes = ", ".join(sorted({str(dict(m)) for m in machines})) or "none"
        raise Unplaceable(f"{waiting[0]} needs {parts[waiting[0]]} x{works[waiting[0]].bundles}, which the "
                          f"cluster's machines ({shapes}) cannot hold even when idle")
    makespan = max(end.values(), default=0.0)
    bound = critical_path_s(graph, {n: (0.0, works[n].seconds) for n in works})
    return Prediction(makespan, bound, start, placed, end, _chain(graph, start, placed, end, makespan),
                      dict(limits))


def _ends_at(node: Node, own: float, states: Mapping[str, str], end: Mapping[str, float]) -> float:
    """A follower ends once its own work is done and the nodes it follows have ended; inf while they run."""
    if any(states[d] != "done" for d in node.follows):
        return math.inf
    return max([own] + [end[d] for d in node.follows])


def _release(part: Mapping[str, float], spots: list[int], free: list[dict[str, float]]) -> None:
    for spot in spots:
        for k, v in part.items():
            free[spot][k] += v


def _chain(graph: StudyGraph, start: Mapping[str, float], placed: Mapping[str, float],
           end: Mapping[str, float], makespan: float) -> list[str]:
    """What the makespan waited on, first to last: from the node that ends last, back through whichever node
    ended when it started, was placed, or ended itself (an input, a node that freed its slot or its
    machines, or the generation it followed), inputs first."""
    by_id = graph.by_id()
    last = [n.id for n in graph.nodes if n.id in end and abs(end[n.id] - makespan) <= EPS]
    if not last:
        return []
    chain = [last[-1]]
    while True:
        node = by_id[chain[-1]]
        for moment in (end[node.id] if node.follows else None, placed[node.id], start[node.id]):
            if moment is None or moment <= EPS:
                continue
            ended = [n.id for n in graph.nodes if n.id in end and n.id not in chain and abs(end[n.id] - moment) <= EPS]
            before = [d for d in ended if d in node.deps or d in node.follows] or ended
            if before:
                chain.append(before[0])
                break
        else:
            return chain[::-1]
