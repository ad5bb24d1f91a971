"""A study on a fake multi-node Ray cluster on this one machine (`ray.cluster_utils.Cluster`).

Each fake node declares CPUs and an `accel` resource that train workers request instead of GPUs
(`resources_per_worker: {accel: 1}`), so the study's scheduling is the one it would have on a GPU cluster:
trainings gang-placed on nodes, several at once where the nodes hold them, generation and grading beside them.
Used by tests/test_study_cluster.py (a reduced study with one node made to fail, and one training spread over
two nodes) and benchmarks/bench_study.py (wall time against the critical path and the sequential order).

Runs under its own RAY_TMPDIR (set by the caller) and always shuts its cluster down.

    python benchmarks/study_cluster.py --out result.json --work /tmp/x [--fail train:tiny-r120] [--span]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def start_cluster(nodes: int, cpus: float, accel: float, head_cpus: float) -> Any:
    """Head (drivers, data reading) plus `nodes` workers with `accel` slots each; connected."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=True,
                      head_node_args={"num_cpus": head_cpus, "include_dashboard": False})
    for _ in range(nodes):
        cluster.add_node(num_cpus=cpus, resources={"accel": accel})
    cluster.wait_for_nodes()
    return cluster


def reduced_spec(demo: dict[str, str], sizes: list[int], workers: int, per_worker_accel: float,
                 max_train: int | None) -> dict[str, Any]:
    return {
        "experiment": "tiny",
        "students": [{"name": "tiny", "model": demo["model"]}],
        "study": {"scaling_sizes": sizes, "correctness_size": None, "difficulty_size": None,
                  "stage2_from_size": None, "evaluate_base": True},
        "data": {"inputs": [demo["traces"]], "max_seq_len": 512},
        "label": None,
        "train": {"num_workers": workers, "cpus_per_worker": 0.5, "resources_per_worker": {"accel": per_worker_accel},
                  "global_batch_size": 4, "micro_batch_size": 1, "epochs": 1, "learning_rate": 1e-3},
        "generate": {"problems": [demo["problems"]], "n": 1, "max_tokens": 16, "filters": {"limit": 4},
                     "pool": {"mode": "data", "replicas": 1, "batch_size": 4}},
        "grade": {"timeout_s": 2.0, "batch_size": 4},
        "report": {"n_boot": 20},
        "max_concurrent": {"train": max_train},
    }


def fail_nodes(node_ids: list[str]) -> None:
    """Make the named nodes raise when they start (a stand-in for a real fault, e.g. a broken export)."""
    from valley.experiment import nodes

    if not node_ids:
        return
    inner = nodes.run_node

    def run_node(spec: Any, graph: Any, node: Any, storage: Any, outputs: Any, context: Any) -> Any:
        if node.id in node_ids:
            raise RuntimeError(f"injected failure of {node.id}")
        return inner(spec, graph, node, storage, outputs, context)

    nodes.run_node = run_node


def run_study(spec_dict: dict[str, Any], storage_root: str, sequential: bool = False) -> dict[str, Any]:
    from valley.experiment import plan_study
    from valley.experiment.executor import critical_path_s
    from valley.experiment.runner import execute
    from valley.experiment.spec import ExperimentSpec
    from valley.storage import Storage

    spec = ExperimentSpec.model_validate(spec_dict)
    graph = plan_study(spec)
    t0 = time.time()
    outcome = execute(spec, graph, Storage(storage_root), live=False, limits={"all": 1} if sequential else None)
    wall = time.time() - t0
    return {"wall_s": wall, "critical_path_s": critical_path_s(graph, outcome.intervals),
            "states": outcome.states, "errors": outcome.errors, "logs": outcome.logs,
            "intervals": outcome.intervals, "limits": outcome.limits, "outputs": outcome.outputs,
            "kinds": {n.id: n.kind for n in graph.nodes}}


def train_across_nodes(storage_root: str, data_dir: str, model: str, name: str) -> dict[str, Any]:
    """One training run whose two workers each need a whole node's `accel`: Ray must place them on two nodes."""
    import ray

    from valley.storage import Storage
    from valley.train.config import TrainConfig
    from valley.train.stage import run_train

    before = set(ray.util.placement_group_table())
    cfg = TrainConfig(name=name, data=data_dir, subset="r40", model=model, num_workers=2, cpus_per_worker=0.5,
                      resources_per_worker={"accel": 2}, global_batch_size=4, micro_batch_size=1, epochs=1,
                      learning_rate=1e-3, max_seq_len=512)
    result = run_train(cfg, Storage(storage_root))
    nodes: set[str] = set()
    for pg_id, pg in ray.util.placement_group_table().items():
        if pg_id not in before and any(b.get("accel") == 2 for b in pg.get("bundles", {}).values()):
            nodes |= set(pg.get("bundles_to_node_id", {}).values())
    return {"stage_dir": result.stage_dir, "model_dir": result.model_dir, "worker_nodes": sorted(nodes)}


def losses(storage_root: str, stage_dir: str) -> list[float]:
    text = (Path(storage_root) / stage_dir / "metrics.jsonl").read_text()
    return [json.loads(line)["loss"] for line in text.splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON file for the outcome")
    p.add_argument("--work", required=True, help="directory for the demo files and the storage root")
    p.add_argument("--sizes", default="40,80,120", help="RQ1 sizes of the reduced study")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--node-cpus", type=float, default=3)
    p.add_argument("--max-train", type=int, default=None, help="max_concurrent.train (default: the cluster's)")
    p.add_argument("--fail", action="append", default=[], metavar="NODE", help="node id to make fail")
    p.add_argument("--span", action="store_true", help="also train r40 with workers on two nodes and compare")
    p.add_argument("--sequential", action="store_true", help="one node at a time, as the runner before the graph")
    p.add_argument("--spec", default=None, help="run this spec file instead of the reduced study (bench)")
    args = p.parse_args(argv)

    from valley.demo import write_demo

    work = Path(args.work)
    cluster = start_cluster(args.nodes, args.node_cpus, accel=2, head_cpus=2)
    try:
        if args.spec:
            from valley.experiment.spec import load_spec

            spec_dict = load_spec(args.spec).model_dump(mode="json")
        else:
            demo = write_demo(work / "demo", n_traces=240, n_problems=4)
            sizes = [int(s) for s in args.sizes.split(",")]
            spec_dict = reduced_spec(demo, sizes, workers=2, per_worker_accel=1, max_train=args.max_train)
        fail_nodes(args.fail)
        storage_root = str(work / "store")
        out = run_study(spec_dict, storage_root, sequential=args.sequential)
        if args.span:
            data_dir = out["outputs"]["data:tiny"]["stage_dir"]
            span = train_across_nodes(storage_root, data_dir, spec_dict["students"][0]["model"], "tiny-r40-span")
            span["losses"] = losses(storage_root, span["stage_dir"])
            span["one_node_losses"] = losses(storage_root, out["outputs"]["train:tiny-r40"]["stage_dir"])
            out["span"] = span
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()
    Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
