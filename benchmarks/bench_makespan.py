"""Makespan simulator vs the real executor: the paper's study graph (one student, 41 nodes) run by
`StudyExecutor` on a fake multi-node Ray cluster with stages of known length, against
`experiment.simulate`'s prediction from the same durations and the same machines (goal: within 10%).

Each stage is a stand-in that does what a real one does to the cluster and nothing else: a training run or a
generation pool asks Ray for its placement group (2 workers/replicas x {GPU: 1, CPU: 0.5 or 0.25}, PACK, as
Ray Train does), holds it once placed and gives it back a quarter second before its known duration ends
(a real stage writes its outputs after its workers are gone); data, label and report nodes
sleep on their driver thread; a grade node follows its generation and ends once it has. The fake nodes
declare GPUs Ray only counts, so the executor's limits (from `ray.cluster_resources()`, as `valley run` reads
them) and Ray's placement queue behave as on a GPU cluster while the machine stays idle. Durations are
seconds here and hours on a real cluster; the order of starts and the queueing are what is checked.

    .venv/bin/python benchmarks/bench_makespan.py [--scale 2] [--nodes 2] [--gpus-per-node 4]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
GOAL = 0.10  # |measured / predicted - 1|
HEAD_CPUS = 1.0  # the driver's node: no GPUs, so no training or generation lands there
NODE_CPUS = 2.0
TAIL_S = 0.25  # a stage's last moments after its workers are gone (writing its marker), within its duration

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def bench_spec() -> Any:
    """The paper's design for one student, scaled to two workers per run and two replicas per pool."""
    from valley.experiment.spec import ExperimentSpec

    d = yaml.safe_load((ROOT / "jobs" / "configs" / "paper.yaml").read_text())
    d["experiment"] = "makespan"
    d["students"] = [{"name": "s", "model": "/nonexistent/s"}]
    d["train"].update(num_workers=2, cpus_per_worker=0.5)
    d["generate"]["pool"].update(replicas=2, num_cpus=0.25)
    return ExperimentSpec.model_validate(d)


def durations(graph: Any, scale: float) -> dict[str, float]:
    """Known stage lengths (s): training grows with its subset, the rest are fixed per kind."""
    fixed = {"data": 2.0, "label": 3.0, "generate": 4.0, "grade": 1.0, "report": 1.0}
    out = {}
    for node in graph.nodes:
        base = 2.0 + node.params.size / 5000 if node.kind == "train" else fixed[node.kind]
        out[node.id] = round(base * scale, 3)
    return out


def bundles_of(node: Any, spec: Any) -> int:
    return {"train": spec.train.num_workers, "generate": spec.generate.pool.replicas}.get(node.kind, 1) \
        if node.resources else 1


def stand_in(seconds: dict[str, float], bundles: dict[str, int], placed: dict[str, float]) -> Any:
    """A node runner that holds the node's resources (as one placement group) for its known duration."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    lock = threading.Lock()

    def run(node: Any, inputs: Any, context: Any) -> dict[str, Any]:
        if node.resources:
            count = bundles[node.id]
            part = {k: float(v) / count for k, v in node.resources.items()}
            group = placement_group([part] * count, strategy="PACK")
            ray.get(group.ready())
            with lock:
                placed[node.id] = time.time()
            time.sleep(max(0.0, seconds[node.id] - TAIL_S))
            remove_placement_group(group)
            time.sleep(min(TAIL_S, seconds[node.id]))
        else:
            with lock:
                placed[node.id] = time.time()
            time.sleep(seconds[node.id])
        while any(context.state_of(f) == "running" for f in node.follows):
            time.sleep(0.02)
        return {}

    return run


def measure(spec: Any, graph: Any, seconds: dict[str, float], bundles: dict[str, int], nodes: int,
            gpus: int) -> dict[str, Any]:
    """The real executor on a fake cluster: wall time, limits and per-node (start, placed, end) offsets."""
    import ray
    from ray.cluster_utils import Cluster

    from valley.experiment.executor import StudyExecutor, default_limits

    cluster = Cluster(initialize_head=True, connect=True,
                      head_node_args={"num_cpus": HEAD_CPUS, "include_dashboard": False})
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=NODE_CPUS, num_gpus=gpus)
        cluster.wait_for_nodes()
        resources = dict(ray.cluster_resources())
        limits = default_limits(graph, resources, spec.max_concurrent.model_dump())
        placed: dict[str, float] = {}
        executor = StudyExecutor(graph, stand_in(seconds, bundles, placed), limits)
        t0 = time.time()
        outcome = executor.run()
        wall = time.time() - t0
    finally:
        ray.shutdown()
        cluster.shutdown()
    bad = {n: s for n, s in outcome.states.items() if s != "done"}
    if bad:
        raise SystemExit(f"nodes did not finish: {bad} {outcome.errors}")
    return {"wall_s": wall, "limits": limits,
            "cluster": {k: v for k, v in resources.items() if k in ("CPU", "GPU")},
            "nodes": {n: {"start_s": s - t0, "placed_s": placed[n] - t0, "end_s": e - t0}
                      for n, (s, e) in outcome.intervals.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=2.0, help="multiply every stage's length")
    ap.add_argument("--nodes", type=int, default=2, help="fake worker nodes")
    ap.add_argument("--gpus-per-node", type=int, default=4, help="(counted, not real) GPUs per fake node")
    ap.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/makespan-<date>.json)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="ray-", dir="/tmp"))

    from valley.experiment import plan_study
    from valley.experiment.executor import default_limits
    from valley.experiment.simulate import Work, cluster_totals, simulate

    spec = bench_spec()
    graph = plan_study(spec)
    seconds = durations(graph, args.scale)
    bundles = {n.id: bundles_of(n, spec) for n in graph.nodes}
    machines = [{"CPU": HEAD_CPUS}] + [{"CPU": NODE_CPUS, "GPU": float(args.gpus_per_node)}] * args.nodes
    limits = default_limits(graph, cluster_totals(machines), spec.max_concurrent.model_dump())
    work = {n: Work(s, bundles[n]) for n, s in seconds.items()}
    predicted = simulate(graph, work, machines, limits)
    oldest_first = simulate(graph, work, machines, limits, queue="oldest")
    measured = measure(spec, graph, seconds, bundles, args.nodes, args.gpus_per_node)

    ratio = measured["wall_s"] / predicted.makespan_s
    starts = [abs(measured["nodes"][n]["start_s"] - predicted.start[n]) for n in predicted.start]
    result = {
        "date": dt.date.today().isoformat(),
        "command": " ".join(["python benchmarks/bench_makespan.py", *sys.argv[1:]]),
        "load_average_after": [round(x, 1) for x in os.getloadavg()],  # a busy machine slows Ray's own work
        "graph": {"nodes": len(graph.nodes), "train": graph.count("train"), "generate": graph.count("generate")},
        "cluster": {"head": {"CPU": HEAD_CPUS}, "workers": args.nodes,
                    "per_worker": {"CPU": NODE_CPUS, "GPU": args.gpus_per_node}, "ray_totals": measured["cluster"]},
        "limits": {"simulated": limits, "executor": measured["limits"]},
        "stage_seconds_sum": round(sum(seconds.values()), 1),
        "predicted_makespan_s": round(predicted.makespan_s, 2),
        "dependency_bound_s": round(predicted.dependency_bound_s, 2),
        "measured_wall_s": round(measured["wall_s"], 2),
        "measured_over_predicted": round(ratio, 4),
        "oldest_first_queue": {"predicted_makespan_s": round(oldest_first.makespan_s, 2),
                               "measured_over_predicted": round(measured["wall_s"] / oldest_first.makespan_s, 4)},
        "goal": f"|ratio - 1| <= {GOAL}",
        "met": abs(ratio - 1) <= GOAL,
        "start_error_s": {"mean": round(sum(starts) / len(starts), 2), "max": round(max(starts), 2)},
        "critical_path": predicted.critical_path,
        "nodes": {n: {"seconds": seconds[n], "predicted": {k: round(v, 2) for k, v in p.items()},
                      "measured": {k: round(v, 2) for k, v in measured["nodes"][n].items()}}
                  for n, p in predicted.as_dict()["nodes"].items()},
    }
    out = Path(args.out) if args.out else RESULTS / f"makespan-{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"predicted {predicted.makespan_s:.1f} s, measured {measured['wall_s']:.1f} s: ratio {ratio:.3f} "
          f"({'within' if result['met'] else 'OUTSIDE'} {GOAL:.0%}); dependency bound "
          f"{predicted.dependency_bound_s:.1f} s; with Ray's queue taken oldest first "
          f"{result['oldest_first_queue']['measured_over_predicted']:.3f}; node starts off by {result['start_error_s']['mean']:.2f} s on "
          f"average, {result['start_error_s']['max']:.2f} s at most; limits {limits} (executor: "
          f"{measured['limits']}); written to {out}")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
