"""Chaos benchmark: a reduced demo study on a fake multi-node Ray cluster, run once without faults and once
with faults injected at seeded random times, re-run until done, the way a user would recover:

    node removed        a worker node leaves the cluster mid-run (a new one joins a few seconds later)
    driver killed       `valley run` gets SIGKILL; the user starts it again
    worker killed       a Ray worker process running a task or actor gets SIGKILL
    disk filled, freed  the storage root (a tmpfs, where this machine can mount one) is filled, then freed
    part damaged        a finished generation part is truncated; the next run refuses it by name and the
                        user runs `valley verify --repair`

Between attempts the loop runs `valley verify <root> --repair` and starts `valley run` again, until a run
exits 0 and verify finds nothing. It prints faults injected and survived, samples lost and duplicated
(goal 0 each), whether the final verdicts and report tables equal the fault-free run's, and the extra wall
time. Measure on a quiet machine:

    .venv/bin/python benchmarks/bench_chaos.py --seed 1
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FAULTS = ("node_removed", "driver_killed", "worker_killed", "disk_filled", "part_damaged")
MAX_ATTEMPTS = 12


def chaos_spec(demo: dict[str, str]) -> dict[str, Any]:
    """The reduced demo study of study_cluster.py with two samples per problem in parts of two, so that a
    damaged part and a lost sample can be seen."""
    from study_cluster import reduced_spec

    spec = reduced_spec(demo, [40, 80], workers=2, per_worker_accel=1, max_train=None)
    spec["experiment"] = "chaos"
    spec["train"]["checkpoint_every_steps"] = 2
    spec["generate"].update(n=2, max_tokens=24, part_size=2)
    spec["generate"]["pool"] = {"mode": "stream", "replicas": 1, "batch_size": 4}
    return spec


class Study:
    """`valley run` of one spec on one storage root against the fake cluster, in its own process group."""

    def __init__(self, spec_file: Path, root: Path, address: str, log: Path):
        self.cmd = [sys.executable, "-m", "valley.cli", "run", str(spec_file), "--storage", str(root),
                    "--ray-address", address]
        self.root, self.log = root, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "a") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait(self) -> int:
        assert self.proc is not None
        return self.proc.wait()

    def kill(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        os.killpg(self.proc.pid, signal.SIGKILL)
        return True

    def verify(self, repair: bool) -> dict[str, Any]:
        cmd = [sys.executable, "-m", "valley.cli", "verify", str(self.root), "--json"] + (["--repair"] if repair else [])
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        return json.loads(proc.stdout) if proc.stdout.strip() else {"error": proc.stderr[-2000:]}


# the study's own work (train ranks and their runner, generation replicas, grading and scoring tasks), not
# Ray's internal actors
OUR_WORK = ("FitRunner", "RayTrainWorker", "Replica", "GenerateWorker", "grade", "evaluate_run", "MapWorker")


def ray_workers() -> list[int]:
    """Pids of Ray worker processes busy with the study's tasks or actors (title `ray::<name>`, not IDLE)."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    pids = []
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if args.startswith("ray::") and "IDLE" not in args and any(name in args for name in OUR_WORK):
            pids.append(int(pid))
    return pids


def finished_parts(root: Path) -> list[Path]:
    return sorted(p for d in (root / "generate").glob("*") if (d / "_SUCCESS").exists()
                  for p in (d / "samples").glob("part-*.parquet"))


class Injector:
    """Applies the seeded schedule while a study runs; records what it did and when."""

    def __init__(self, schedule: list[tuple[float, str]], cluster: Any, study: Study, root: Path, tmpfs: bool,
                 rng: random.Random):
        self.pending = list(schedule)
        self.cluster, self.study, self.root, self.tmpfs, self.rng = cluster, study, root, tmpfs, rng
        self.done: list[dict[str, Any]] = []
        self.t0 = time.time()

    def step(self) -> None:
        """Inject the next fault if its time has come."""
        if not self.pending or time.time() - self.t0 < self.pending[0][0]:
            return
        at, fault = self.pending[0]
        detail = self.apply(fault)
        if detail is None:  # nothing to hit yet (no finished part, no busy worker, no driver): retry in 5 s
            self.pending[0] = (at + 5, fault)
            return
        self.pending.pop(0)
        self.done.append({"fault": fault, "at_s": round(time.time() - self.t0, 1), "detail": detail})

    def apply(self, fault: str) -> str | None:
        if fault == "node_removed":
            node = self.rng.choice(sorted(self.cluster.worker_nodes, key=lambda n: n.unique_id))
            self.cluster.remove_node(node)
            time.sleep(3)
            self.cluster.add_node(num_cpus=3, resources={"accel": 2})
            return "a worker node removed, a fresh one added 3 s later"
        if fault == "driver_killed":
            return "valley run killed (SIGKILL)" if self.study.kill() else None
        if fault == "worker_killed":
            pids = ray_workers()
            if not pids:
                return None
            pid = self.rng.choice(pids)
            title = Path(f"/proc/{pid}/cmdline").read_text().split("\0")[0] if Path(f"/proc/{pid}").exists() else "?"
            os.kill(pid, signal.SIGKILL)
            return f"pid {pid} ({title[:60]}) killed (SIGKILL)"
        if fault == "disk_filled":
            if not self.tmpfs:
                return "skipped: no tmpfs could be mounted here"
            ballast = self.root.parent / "ballast"
            free = shutil.disk_usage(self.root).free
            chunk = b"\0" * (1 << 20)
            with contextlib.suppress(OSError), open(ballast, "wb") as f:  # to the last byte: ENOSPC ends it
                while True:
                    f.write(chunk)
                    f.flush()
            time.sleep(8)
            ballast.unlink()
            return f"storage filled ({free >> 20} MiB) for 8 s, then freed"
        if fault == "part_damaged":
            parts = finished_parts(self.root)
            if not parts:
                return None
            part = self.rng.choice(parts)
            data = part.read_bytes()
            part.write_bytes(data[: len(data) // 2])
            return f"{part.relative_to(self.root)} truncated to {len(data) // 2} of {len(data)} bytes"
        raise ValueError(fault)


def run_until_done(spec_file: Path, root: Path, cluster: Any, address: str, log: Path,
                   schedule: list[tuple[float, str]], tmpfs: bool, rng: random.Random) -> dict[str, Any]:
    """Run the study (on a thread: `valley run`, then `valley verify --repair`, again until a run exits 0 with
    nothing to redo and every fault has been injected) while the main thread injects the faults (Ray adds and
    removes fake nodes from the main thread only)."""
    study = Study(spec_file, root, address, log)
    injector = Injector(schedule, cluster, study, root, tmpfs, rng)
    t0 = time.time()
    attempts: list[int] = []
    repairs: list[list[str]] = []
    finished = threading.Event()

    def loop() -> None:
        for _ in range(MAX_ATTEMPTS):
            study.start()
            attempts.append(study.wait())
            checked = study.verify(repair=True)
            if checked.get("repaired"):
                repairs.append(checked["repaired"])
            if attempts[-1] == 0 and not checked.get("redo") and not injector.pending:
                break
        finished.set()

    runner = threading.Thread(target=loop, daemon=True)
    runner.start()
    while not finished.is_set():
        injector.step()
        time.sleep(0.5)
    runner.join()
    return {"wall_s": round(time.time() - t0, 1), "attempts": attempts, "repairs": repairs,
            "faults": injector.done, "not_injected": [f for _, f in injector.pending],
            "final_exit": attempts[-1] if attempts else None}


def tables(root: Path) -> dict[str, Any]:
    """What the study produced, for comparison: samples per run, verdicts and the report's tables."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def read(paths: list[Path]) -> pa.Table | None:
        parts = [pq.read_table(p) for p in paths]
        return pa.concat_tables(parts, promote_options="default") if parts else None

    # keyed by run id, not by directory: a trained model's path (and so its evaluation's config hash) is under
    # its own storage root, which differs between the two runs
    out: dict[str, Any] = {"samples": {}, "verdicts": [], "report": {}}
    for d in sorted((root / "generate").glob("*")):
        t = read(sorted((d / "samples").glob("part-*.parquet")))
        if t is not None:
            for row in t.select(["run_id", "question_id", "sample_idx", "response"]).to_pylist():
                out["samples"].setdefault(row.pop("run_id"), []).append(row)
    for rows in out["samples"].values():
        rows.sort(key=lambda r: (r["question_id"], r["sample_idx"]))
    for d in sorted((root / "grade").glob("*")):
        t = read(sorted((d / "verdicts").glob("*.parquet")))
        if t is not None:
            cols = [c for c in ("run_id", "question_id", "sample_idx", "verdict", "passed_tests", "total_tests")
                    if c in t.column_names]
            out["verdicts"].extend(t.select(cols).to_pylist())
    out["verdicts"].sort(key=lambda r: (r["run_id"], r["question_id"], r["sample_idx"]))
    for d in sorted((root / "report").glob("*")):
        for name in ("results.parquet", "comparisons.parquet"):
            if (d / name).exists():
                out["report"][name] = pq.read_table(d / name).to_pylist()
    return out


def losses_and_copies(clean: dict[str, Any], chaos: dict[str, Any]) -> dict[str, Any]:
    lost = duplicated = 0
    for run, rows in clean["samples"].items():
        want = {(r["question_id"], r["sample_idx"]) for r in rows}
        have = [(r["question_id"], r["sample_idx"]) for r in chaos["samples"].get(run, [])]
        lost += len(want - set(have))
        duplicated += len(have) - len(set(have))
    same_samples = clean["samples"] == chaos["samples"]
    return {"samples_expected": sum(len(v) for v in clean["samples"].values()), "samples_lost": lost,
            "samples_duplicated": duplicated, "samples_identical": same_samples,
            "verdicts_identical": clean["verdicts"] == chaos["verdicts"],
            "report_identical": _rounded(clean["report"]) == _rounded(chaos["report"])}


def _rounded(obj: Any) -> Any:
    """Report tables compared to 9 digits (bootstrap intervals are seeded; float sums may differ in the last bit)."""
    if isinstance(obj, float):
        return round(obj, 9)
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj


def mount_tmpfs(where: Path, size_mb: int) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1, help="seed of the fault schedule")
    ap.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/chaos-<date>.json)")
    ap.add_argument("--keep", default=None, help="keep the work directory here")
    args = ap.parse_args()

    from study_cluster import start_cluster
    from valley.demo import write_demo

    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-chaos-"))
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    demo = write_demo(work / "demo", n_traces=240, n_problems=4)
    spec_file = work / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(chaos_spec(demo)))
    tmpfs = mount_tmpfs(work / "chaos-fs", 2048)
    chaos_root = (work / "chaos-fs" if tmpfs else work) / "store"
    cluster = start_cluster(2, 3, accel=2, head_cpus=2)
    address = cluster.address
    try:
        t0 = time.time()
        clean = Study(spec_file, work / "clean", address, work / "clean.log")
        clean.start()
        if clean.wait() != 0:
            sys.exit(f"the fault-free run failed: see {work / 'clean.log'}")
        clean_wall = time.time() - t0
        rng = random.Random(args.seed)
        times = sorted(rng.uniform(0.1, 0.8) * clean_wall for _ in FAULTS)
        order = list(FAULTS)
        rng.shuffle(order)
        schedule = list(zip(times, order, strict=True))
        chaos = run_until_done(spec_file, chaos_root, cluster, address, work / "chaos.log", schedule, tmpfs, rng)
        compared = losses_and_copies(tables(work / "clean"), tables(chaos_root))
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()
        if tmpfs:
            subprocess.run(["umount", "-l", str(work / "chaos-fs")], check=False)
    injected = [f for f in chaos["faults"] if not f["detail"].startswith("skipped")]
    survived = chaos["final_exit"] == 0 and compared["samples_lost"] == 0 and compared["samples_duplicated"] == 0 \
        and compared["verdicts_identical"] and compared["report_identical"]
    result = {
        "date": dt.date.today().isoformat(), "seed": args.seed, "cpus": os.cpu_count(),
        "cluster": "fake: head 2 CPUs + 2 worker nodes of 3 CPUs and 2 accel slots (ray.cluster_utils)",
        "storage": "tmpfs (2 GiB)" if tmpfs else "local disk (no tmpfs: disk_filled skipped)",
        "schedule": [{"at_s": round(t, 1), "fault": f} for t, f in schedule],
        "clean_wall_s": round(clean_wall, 1), **chaos, **compared,
        "faults_injected": len(injected), "faults_survived": len(injected) if survived else 0,
        "extra_wall_s": round(chaos["wall_s"] - clean_wall, 1),
        "extra_wall_ratio": round(chaos["wall_s"] / clean_wall, 2),
    }
    out = Path(args.out) if args.out else RESULTS / f"chaos-{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"faults injected {result['faults_injected']}, survived {result['faults_survived']}; samples lost "
          f"{compared['samples_lost']}, duplicated {compared['samples_duplicated']} (goal 0 each); verdicts "
          f"identical {compared['verdicts_identical']}, report identical {compared['report_identical']}; "
          f"attempts {len(chaos['attempts'])}; wall {chaos['wall_s']} s vs {result['clean_wall_s']} s fault-free "
          f"(x{result['extra_wall_ratio']})")
    print(f"wrote {out}")
    return 0 if survived else 1


if __name__ == "__main__":
    sys.exit(main())
