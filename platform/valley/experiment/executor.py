"""Run a study graph: every node as soon as its inputs are finished and its kind is under its limit.

Each running node is a driver thread that calls its stage; the stage asks Ray for what it needs (a training run
its workers as one placement group, which Ray grants whole or not at all, so two half-placed trainers never hold
each other up; a generation pool its replicas; grading its tasks), and Ray places the work on the cluster. The
executor only decides *when* a node may start: its dependencies are done, and fewer than `limits[kind]` nodes of
its kind run. Among ready nodes, those with the most training still below them start first (the critical path:
the largest RQ1 run, which the stage-2 runs wait for, before the small ones). That decision is one pure
function, `starts`, which the makespan simulator (`simulate.py`, `valley plan`) runs on simulated time.

A node may follow an input instead of waiting for it (`Node.follows`): grading starts once its
generation has started and grades sample parts as they are written. A failed node fails only its descendants
(marked skipped, with the failed node named); every other node runs to its end, and the outcome lists what
failed, why, and where its traceback is.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from valley.experiment.graph import Node, StudyGraph
from valley.experiment.status import StudyStatus


class UpstreamFailed(RuntimeError):
    """A node that followed another's stream stops because that node failed (it is skipped, not failed)."""

    def __init__(self, node_id: str):
        super().__init__(f"{node_id} failed")
        self.node_id = node_id


@dataclass
class NodeContext:
    """What a running node may learn of the study besides its finished inputs: it can announce where its
    output will appear before it is finished, and see the state and announcement of a node it follows."""

    announce: Callable[[dict[str, Any]], None]
    state_of: Callable[[str], str]
    announced: Callable[[str], dict[str, Any] | None]


RunNode = Callable[[Node, Mapping[str, dict[str, Any]], NodeContext], dict[str, Any]]
LIMITED_KINDS = ("train", "generate", "grade")
POLL_S = 2.0


@dataclass
class Outcome:
    """What became of each node."""

    states: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # failed node -> one-line error
    logs: dict[str, str] = field(default_factory=dict)  # failed node -> traceback location
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # node -> (start, end), epoch s
    limits: dict[str, int | None] = field(default_factory=dict)  # the per-kind limits it ran under

    @property
    def failed(self) -> list[str]:
        return [n for n, s in self.states.items() if s == "failed"]

    @property
    def skipped(self) -> list[str]:
        return [n for n, s in self.states.items() if s == "skipped"]


def priorities(graph: StudyGraph) -> dict[str, tuple[int, int]]:
    """(training runs on the longest path below a node, its index): higher starts first, then plan order."""
    kids = graph.children()
    depth: dict[str, int] = {}
    for node in reversed(graph.nodes):
        below = max((depth[k] for k in kids[node.id]), default=0)
        depth[node.id] = below + (1 if node.kind == "train" else 0)
    return {n.id: (depth[n.id], -i) for i, n in enumerate(graph.nodes)}


def fits(need: Mapping[str, float], cluster: Mapping[str, float], reserve_cpu: float = 0.0) -> int:
    """How many copies of `need` the cluster's totals hold at once (at least 1: Ray queues, an autoscaler may
    add nodes, and a resource the cluster lacks today is the autoscaler's to provide)."""
    counts = []
    for key, amount in need.items():
        have = float(cluster.get(key, 0.0)) - (reserve_cpu if key == "CPU" else 0.0)
        if amount > 0 and have > 0:
            counts.append(math.floor(have / amount + 1e-9))
    return max(1, min(counts)) if counts else 1


def default_limits(graph: StudyGraph, cluster: Mapping[str, float],
                   configured: Mapping[str, int | None]) -> dict[str, int | None]:
    """Per kind: the spec's `max_concurrent` where set, else what the cluster holds. A training run keeps one
    CPU free for reading its data (as the train stage itself checks); grading tasks queue in Ray, so grading
    runs are not limited unless the spec says so."""
    limits: dict[str, int | None] = {}
    for kind in LIMITED_KINDS:
        if configured.get(kind) is not None:
            limits[kind] = configured[kind]
            continue
        needs = [n.resources for n in graph.nodes if n.kind == kind and n.resources]
        if kind == "grade" or not needs:
            limits[kind] = None
            continue
        largest = {k: max(float(r.get(k, 0.0)) for r in needs) for r in needs for k in r}
        limits[kind] = fits(largest, cluster, reserve_cpu=1.0 if kind == "train" else 0.0)
    return limits


def ready(graph: StudyGraph, states: Mapping[str, str]) -> list[Node]:
    """Queued nodes whose inputs are done; an input the node follows (`Node.follows`: it reads the input's
    stream as it is written) only needs to have started."""

    def met(node: Node, dep: str) -> bool:
        return states[dep] == "done" or (dep in node.follows and states[dep] == "running")

    return [n for n in graph.nodes if states[n.id] == "queued" and all(met(n, d) for d in n.deps)]


def may_start(node: Node, graph: StudyGraph, states: Mapping[str, str], limits: Mapping[str, int | None]) -> bool:
    """Under its kind's limit, and under `limits["all"]` (1: the old one-stage-at-a-time order) if set."""
    total = limits.get("all")
    if total is not None and sum(1 for s in states.values() if s == "running") >= total:
        return False
    limit = limits.get(node.kind)
    running = sum(1 for n in graph.nodes if n.kind == node.kind and states[n.id] == "running")
    return limit is None or running < limit


def starts(graph: StudyGraph, states: Mapping[str, str], limits: Mapping[str, int | None],
           order: Mapping[str, tuple[int, int]]) -> list[Node]:
    """The executor's one decision, in the order it starts them: which nodes start now. Ready nodes by
    `order` (see `priorities`), each under its limits; looked at again after a start, since a node that
    follows it may now start too. Pure (`states` is not changed), so the makespan simulator
    (`experiment/simulate.py`) runs this same code against simulated time."""
    states = dict(states)
    chosen: list[Node] = []
    started = True
    while started:
        started = False
        for node in sorted(ready(graph, states), key=lambda n: order[n.id], reverse=True):
            if may_start(node, graph, states, limits):
                states[node.id] = "running"
                chosen.append(node)
                started = True
    return chosen


class StudyExecutor:
    """Runs a graph's nodes on driver threads under per-kind limits; see the module docstring."""

    def __init__(self, graph: StudyGraph, run: RunNode, limits: Mapping[str, int | None],
                 status: StudyStatus | None = None, on_change: Callable[[], None] | None = None):
        self.graph, self.run_node, self.limits = graph, run, dict(limits)
        self.status, self.on_change = status, on_change
        self.outcome = Outcome(states={n.id: "queued" for n in graph.nodes}, limits=dict(limits))
        self.announcements: dict[str, dict[str, Any]] = {}

    # ---- state changes (each one also written to the status files) ------------------------------------
    def _set(self, node_id: str, state: str, **fields: Any) -> None:
        self.outcome.states[node_id] = state
        if self.status is not None:
            self.status.update(node_id, state=state, **fields)
        if self.on_change is not None:
            self.on_change()

    def _fail(self, node: Node, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(exc))
        log = self.status.write_traceback(node.id, text) if self.status is not None else None
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        self.outcome.errors[node.id] = error
        if log:
            self.outcome.logs[node.id] = log
        self._set(node.id, "failed", ended_at=time.time(), error=error, log=log)
        for child in self.graph.descendants(node.id):
            if self.outcome.states[child] == "queued":
                self._set(child, "skipped", because=node.id)

    def _call(self, node: Node) -> dict[str, Any]:
        context = NodeContext(announce=lambda where: self.announcements.__setitem__(node.id, dict(where)),
                              state_of=self.outcome.states.__getitem__, announced=self.announcements.get)
        finished = {d: self.outcome.outputs[d] for d in node.deps if d in self.outcome.outputs}
        return self.run_node(node, finished, context)

    # ---- the loop ------------------------------------------------------------------------------------------
    def run(self) -> Outcome:
        order = priorities(self.graph)
        running: dict[Future, Node] = {}
        with ThreadPoolExecutor(max_workers=max(1, len(self.graph.nodes)), thread_name_prefix="study") as pool:
            while True:
                for node in starts(self.graph, self.outcome.states, self.limits, order):
                    start = time.time()
                    self.outcome.intervals[node.id] = (start, start)
                    self._set(node.id, "running", started_at=start)
                    running[pool.submit(self._call, node)] = node
                if not running:
                    break
                done, _ = wait(running, timeout=POLL_S, return_when=FIRST_COMPLETED)
                if self.status is not None:
                    self.status.heartbeat()
                for future in done:
                    node = running.pop(future)
                    end = time.time()
                    self.outcome.intervals[node.id] = (self.outcome.intervals[node.id][0], end)
                    exc = future.exception()
                    if exc is None:
                        self.outcome.outputs[node.id] = future.result()
                        self._set(node.id, "done", ended_at=end, outputs=self.outcome.outputs[node.id])
                    elif isinstance(exc, UpstreamFailed):
                        self._set(node.id, "skipped", ended_at=end, because=exc.node_id)
                        for child in self.graph.descendants(node.id):
                            if self.outcome.states[child] == "queued":
                                self._set(child, "skipped", because=exc.node_id)
                    else:
                        self._fail(node, exc)
                if self.on_change is not None and not done:
                    self.on_change()
        return self.outcome


def critical_path_s(graph: StudyGraph, intervals: Mapping[str, tuple[float, float]]) -> float:
    """The wall time no schedule can beat with these recorded node durations and unlimited resources: each node
    starts when its inputs have ended (or, for an input it follows, started), and a follower cannot end before
    the node it follows."""
    start: dict[str, float] = {}
    end: dict[str, float] = {}
    for node in graph.nodes:
        t0, t1 = intervals.get(node.id, (0.0, 0.0))
        follows = set(node.follows)
        start[node.id] = max((start[d] if d in follows else end[d] for d in node.deps), default=0.0)
        end[node.id] = max([start[node.id] + (t1 - t0)] + [end[d] for d in follows])
    return max(end.values(), default=0.0)
