"""The makespan simulator (experiment/simulate.py): the executor's own start policy on simulated time, Ray's
placement modelled; checked against hand-worked schedules, against the real executor with sleeping stand-in
stages (no Ray), and `valley plan` printing the paper study's predicted wall-clock. The comparison with the
real executor on a fake multi-node Ray cluster is benchmarks/bench_makespan.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from valley.experiment import executor, simulate
from valley.experiment.executor import StudyExecutor, critical_path_s, priorities, starts
from valley.experiment.graph import GenerateParams, GradeParams, Node, StudyGraph, TrainParams
from valley.experiment.simulate import Unplaceable, Work

ROOT = Path(__file__).resolve().parents[1]
PAPER = str(ROOT / "jobs" / "configs" / "paper.yaml")
UNLIMITED = {"train": None, "generate": None, "grade": None}


def _train(name: str, deps: tuple[str, ...] = (), gpus: float = 0.0) -> Node:
    return Node(f"train:{name}", "train", name, deps, {"GPU": gpus} if gpus else {},
                params=TrainParams(name, "r", 1, "data", None, False))


def _generate(name: str, train: str, gpus: float = 0.0) -> Node:
    return Node(f"generate:{name}", "generate", name, (f"train:{train}",), {"GPU": gpus} if gpus else {},
                params=GenerateParams(name, f"train:{train}"))


def _grade(name: str) -> Node:
    gen = f"generate:{name}"
    return Node(f"grade:{name}", "grade", name, (gen,), params=GradeParams(name, gen), follows=(gen,))


def test_the_simulator_runs_the_executors_own_policy():
    assert simulate.starts is executor.starts and simulate.priorities is executor.priorities
    g = StudyGraph("t", (_train("a"), _train("b"), _train("c", ("train:a",)), _generate("a", "a"), _grade("a")), ())
    states = {n.id: "queued" for n in g.nodes}
    # the run with training below it first; one at a time
    assert [n.id for n in starts(g, states, {"train": 1}, priorities(g))] == ["train:a"]
    assert states["train:a"] == "queued"  # pure: the caller's states are untouched
    states.update({"train:a": "done", "train:b": "running"})
    # a grade node starts in the same breath as the generation it follows
    assert [n.id for n in starts(g, states, {"train": 1}, priorities(g))] == ["generate:a", "grade:a"]
    assert starts(g, {**states, "train:b": "running"}, {"all": 1}, priorities(g)) == []


def test_unlimited_cluster_gives_the_dependency_bound():
    g = StudyGraph("t", (_train("a"), _train("b", ("train:a",)), _train("c"), _generate("b", "b"), _grade("b")), ())
    work = {"train:a": Work(10), "train:b": Work(5), "train:c": Work(12), "generate:b": Work(3), "grade:b": Work(1)}
    p = simulate.simulate(g, work, [], UNLIMITED)
    assert p.makespan_s == pytest.approx(18) and p.dependency_bound_s == pytest.approx(18)
    assert p.dependency_bound_s == critical_path_s(g, {n: (0.0, w.seconds) for n, w in work.items()})
    assert p.end["grade:b"] == p.end["generate:b"] == pytest.approx(18)  # grading ends with its generation
    assert p.critical_path == ["train:a", "train:b", "generate:b", "grade:b"]


def test_limits_and_placement_each_hold_a_node_back():
    g = StudyGraph("t", (_train("a", gpus=8), _train("b", gpus=8), _generate("a", "a", gpus=8)), ())
    work = {"train:a": Work(10, 8), "train:b": Work(4, 8), "generate:a": Work(2, 8)}
    # a limit of one training: b starts when a ends (the executor holds it back)
    p = simulate.simulate(g, work, [{"GPU": 16}], {"train": 1})
    assert (p.start["train:b"], p.makespan_s) == (pytest.approx(10), pytest.approx(14))
    # two at once but one machine of 8 GPUs: b is started at once and waits for Ray to place it
    p = simulate.simulate(g, work, [{"GPU": 8}], {"train": 2})
    # (and a's generation, asking as a frees the machine, goes ahead of it: Ray serves newer requests first)
    assert p.start["train:b"] == 0 and p.placed["generate:a"] == pytest.approx(10)
    assert p.placed["train:b"] == pytest.approx(12) and p.makespan_s == pytest.approx(16)
    assert p.critical_path == ["train:a", "generate:a", "train:b"]


def test_requests_are_gang_placed_across_machines():
    g = StudyGraph("t", (_train("a", gpus=8),), ())
    p = simulate.simulate(g, {"train:a": Work(3, 8)}, [{"GPU": 4}, {"GPU": 4}], UNLIMITED)
    assert p.makespan_s == pytest.approx(3)  # 8 workers over two 4-GPU machines
    with pytest.raises(Unplaceable, match="train:a"):
        simulate.simulate(g, {"train:a": Work(3, 1)}, [{"GPU": 4}, {"GPU": 4}], UNLIMITED)  # one 8-GPU bundle


def test_the_ray_queue_order_decides_who_waits():
    """a and c are started at once on a machine that holds one of them; when a ends, b (after a) and a's
    generation ask too. Ray's queue serves the newest requests first: c, waiting since the start, goes last."""
    g = StudyGraph("t", (_train("a", gpus=8), _train("b", ("train:a",), gpus=8), _generate("a", "a", gpus=8),
                         _train("c", gpus=8)), ())
    work = {"train:a": Work(10, 8), "train:b": Work(5, 8), "generate:a": Work(1, 8), "train:c": Work(2, 8)}
    newest = simulate.simulate(g, work, [{"GPU": 8}], {"train": 2, "generate": 1})
    oldest = simulate.simulate(g, work, [{"GPU": 8}], {"train": 2, "generate": 1}, queue="oldest")
    assert newest.start["train:c"] == 0 and newest.start["train:b"] == pytest.approx(10)
    placed = {n: newest.placed[n] for n in ("train:b", "generate:a", "train:c")}
    assert placed == {"train:b": pytest.approx(10), "generate:a": pytest.approx(15), "train:c": pytest.approx(16)}
    placed = {n: oldest.placed[n] for n in ("train:b", "generate:a", "train:c")}
    assert placed == {"train:b": pytest.approx(12), "generate:a": pytest.approx(17), "train:c": pytest.approx(10)}
    with pytest.raises(ValueError, match="queue"):
        simulate.simulate(g, work, [{"GPU": 8}], {}, queue="random")


def _sleepers(seconds: dict[str, float]):
    def run(node, inputs, context):
        time.sleep(seconds[node.id])
        while any(context.state_of(f) == "running" for f in node.follows):
            time.sleep(0.005)
        return {}

    return run


def test_prediction_matches_the_real_executor_without_ray():
    """The paper's graph for one student, stages sleeping known lengths under the executor's limits (no
    resources: Ray's placement is the benchmark's). Simulated with the lengths the stages took, the training
    runs start in the executor's order and the wall time is the predicted one; the 10% figure on a quiet
    machine is benchmarks/bench_makespan.py's (here a loaded machine's sleeps overshoot)."""
    from valley.experiment import load_spec, plan_study

    spec = load_spec(PAPER, ["students=[{name: s, model: /nonexistent}]"])
    g = plan_study(spec)
    bare = StudyGraph(g.experiment, tuple(Node(n.id, n.kind, n.name, n.deps, {}, n.student, n.params, n.follows)
                                          for n in g.nodes), g.runs)
    seconds = {n.id: (0.1 + n.params.size / 100_000 if n.kind == "train" else 0.15) for n in bare.nodes}
    limits = {"train": 2, "generate": 2, "grade": None}
    t0 = time.time()
    outcome = StudyExecutor(bare, _sleepers(seconds), limits).run()
    wall = time.time() - t0
    assert set(outcome.states.values()) == {"done"}
    took = {n: Work(e - s) for n, (s, e) in outcome.intervals.items() if n not in {f for m in bare.nodes
                                                                                   for f in m.follows}}
    predicted = simulate.simulate(bare, took, [], limits)
    assert predicted.makespan_s <= wall < 1.5 * predicted.makespan_s
    first = {n: outcome.intervals[n][0] for n in outcome.intervals}
    trains = [n.id for n in bare.nodes if n.kind == "train"]
    assert sorted(trains, key=first.__getitem__) == sorted(trains, key=lambda n: (predicted.start[n], first[n]))


def test_cluster_file_gives_the_schedule_nodes():
    from valley.capacity.cluster import gpu_node_from_cluster, resolve_node

    node = gpu_node_from_cluster(ROOT / "ray_cluster.yaml")
    assert (node.nodes, node.cpus_per_node, node.nodes_at_launch) == (4, 192.0, 0)
    flags = resolve_node(str(ROOT / "ray_cluster.yaml"), gpus_per_node=4, nodes=2)
    assert (flags.nodes, flags.gpus_per_node, flags.cpus_per_node, flags.nodes_at_launch) == (2, 4, 0.0, None)


def test_valley_plan_prints_the_papers_predicted_wall_clock(capsys):
    from valley.cli import main

    assert main(["plan", PAPER]) == 0
    text = capsys.readouterr().out
    assert "Predicted wall-clock:" in text and "on 4 node(s) x 8 GPUs" in text
    assert "Critical path: " in text and "report" in text.split("Critical path: ")[1].splitlines()[0]
    assert "At launch only 0 GPU node(s)" in text  # min_workers 0: the executor would see no GPUs
    assert main(["plan", PAPER, "--json", "--nodes", "2"]) == 0
    two = json.loads(capsys.readouterr().out)["schedule"]
    assert two["nodes"] == 2 and two["limits"] == {"train": 2, "generate": 2, "grade": None}
    assert main(["plan", PAPER, "--json", "--nodes", "8"]) == 0
    eight = json.loads(capsys.readouterr().out)["schedule"]
    assert eight["dependency_bound_hours"] <= eight["makespan_hours"] < two["makespan_hours"]
    assert {r["node"] for r in eight["rows"]} >= {"report", "train:qwen2.5-7b-instruct-r100000"}
