"""Study graph benchmark: a reduced demo study on a fake multi-node Ray cluster (benchmarks/study_cluster.py),
run twice on fresh storage, each in its own process and Ray:

1. as the graph (trainings concurrent where the fake nodes hold them, evaluation beside training): study wall
   time over the critical path of its own recorded node times (goal <= 1.3: what scheduling gaps, polling and
   contention cost beyond the longest chain of dependent stages);
2. one node at a time (the order of the runner before the graph): wall time, and the graph's speed-up over it;
3. the projection: the one-at-a-time run's node times (each measured alone) along the graph's critical path,
   the wall time the graph reaches where every concurrent stage has a node of its own.

The fake nodes share this machine's cores, so CPU-bound stages slow each other when they overlap: the speed-up
here understates a real cluster's, where each node brings its own cores and GPUs. Measure on a quiet machine:

    .venv/bin/python benchmarks/bench_study.py --sizes 40,80,120,160
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
GOAL_WALL_OVER_CRITICAL = 1.3


def run(mode: str, sizes: str, work: Path) -> dict:
    out = work / f"{mode}.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "study_cluster.py"), "--out", str(out), "--work",
           str(work / mode), "--sizes", sizes] + (["--sequential"] if mode == "sequential" else [])
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray-", dir="/tmp")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{mode} run failed:\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="40,80,120,160", help="RQ1 sizes of the reduced study")
    ap.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/study-<date>.json)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-study-") as tmp:
        graph = run("graph", args.sizes, Path(tmp))
        seq = run("sequential", args.sizes, Path(tmp))
    for name, o in (("graph", graph), ("sequential", seq)):
        bad = {n: s for n, s in o["states"].items() if s != "done"}
        if bad:
            sys.exit(f"{name} run left nodes unfinished: {bad}")
    by_kind: dict[str, float] = {}
    for node, (start, end) in seq["intervals"].items():
        kind = seq["kinds"][node]
        by_kind[kind] = round(by_kind.get(kind, 0.0) + end - start, 1)
    result = {
        "date": dt.date.today().isoformat(),
        "sizes": args.sizes,
        "cpus": os.cpu_count(),
        "limits": graph["limits"],
        "graph_wall_s": round(graph["wall_s"], 1),
        "graph_critical_path_s": round(graph["critical_path_s"], 1),
        "wall_over_critical_path": round(graph["wall_s"] / graph["critical_path_s"], 3),
        "goal_wall_over_critical_path": GOAL_WALL_OVER_CRITICAL,
        "sequential_wall_s": round(seq["wall_s"], 1),
        "sequential_seconds_by_kind": by_kind,
        "speedup_over_sequential": round(seq["wall_s"] / graph["wall_s"], 3),
        # the sequential run's node times, each measured with nothing else running, along the graph's longest
        # chain: the wall time the graph would reach with a node of its own for every concurrent stage
        "sequential_critical_path_s": round(seq["critical_path_s"], 1),
        "projected_speedup_with_enough_nodes": round(seq["wall_s"] / seq["critical_path_s"], 3),
        "nodes": len(graph["states"]),
    }
    print(f"graph: wall {result['graph_wall_s']} s, critical path {result['graph_critical_path_s']} s, "
          f"ratio {result['wall_over_critical_path']} (goal <= {GOAL_WALL_OVER_CRITICAL})")
    print(f"sequential: wall {result['sequential_wall_s']} s; speed-up of the graph {result['speedup_over_sequential']}x "
          "(same cores shared by every fake node)")
    print(f"projected: the sequential node times along the critical path take {result['sequential_critical_path_s']} s, "
          f"a speed-up of {result['projected_speedup_with_enough_nodes']}x where every concurrent stage has its own node")
    path = Path(args.out) if args.out else RESULTS / f"study-{result['date']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
