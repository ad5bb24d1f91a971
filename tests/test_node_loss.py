"""Node loss (issue 28): a whole node of a fake multi-node cluster (`ray.cluster_utils.Cluster`) dies, every
process of it killed at once, while (a) a Ray Train + DeepSpeed ZeRO-3 run or (b) a grading stage has its
work on it; a replacement node joins, and the work must finish by itself: nothing lost (the planned steps
each logged once, every sample graded once) and nothing done twice (no duplicate rows). Without a
replacement, the training run can never be placed again: the watchdog must end it as a stall.

The work is made to land on the doomed node with a custom resource only that node offers (`accel` for the
train workers, `grader` for the grading tasks); the replacement offers the same, so nothing else can take the
work over. Each scenario runs in its own process, RAY_TMPDIR and process group (this file run as a script),
so it never touches the session's embedded Ray, and its cluster is always torn down.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from valley.grade.sandbox import bwrap_unavailable_reason

NO_BWRAP = bwrap_unavailable_reason()
STALL_S = 240.0  # the stages' watchdogs: a run stuck after the loss fails naming where, well before pytest's timeout
# Must exceed the longest quiet spell of a healthy run on a loaded 2-core machine (see test_watchdog.py),
# and Ray Train's 60 s wait for a worker group's resources, which it retries for ever
NO_REPLACEMENT_STALL_S = 120.0


def _scenario(kind: str, tmp_path: Path, timeout_s: float) -> dict[str, Any]:
    """Run `python test_node_loss.py <kind> <work>` in its own session; its last stdout line is its report."""
    ray_tmp = tempfile.mkdtemp(prefix="vnl-", dir="/tmp")  # short: unix socket paths are length-limited
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0")
    log = tmp_path / f"{kind}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, __file__, kind, str(tmp_path / "work")], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
        finally:
            _stop_group(proc)
            shutil.rmtree(ray_tmp, ignore_errors=True)
    text = log.read_text()
    assert proc.returncode == 0, text[-6000:]
    return json.loads(text.strip().splitlines()[-1])


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGKILL whatever of the scenario's own process group is left (its nodes' processes), never another Ray."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_training_survives_the_loss_of_its_node(tmp_path):
    r = _scenario("train", tmp_path, timeout_s=840)
    print("train node loss:", json.dumps(r))  # visible with -s: when the node died and how long recovery took
    assert r["pg_nodes_before"] == [r["doomed"]]  # both workers were placed on the doomed node
    # what must outlive a worker node lives on the driver's (a runner lost with the node failed the run)
    assert not {"FitRunner", "TrainController", "HeartbeatBoard"} & set(r["on_doomed_at_kill"]), r
    assert r["pg_nodes_after"] == [r["replacement"]]  # the restarted group was placed on the new one
    assert 0 < r.get("steps_logged_at_kill", 0) < r["planned_steps"]  # the node died mid-run
    assert r["steps"] == r["planned_steps"] and r["logged_steps"] == list(range(1, r["planned_steps"] + 1))
    assert r["exported"] and r["success"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_training_that_lost_its_node_for_good_fails_as_a_stall(tmp_path):
    """No node can take the workers over: Ray Train waits for their resources and retries that wait for
    ever, so it is the watchdog that ends the run, with the stall recorded."""
    r = _scenario("train-no-replacement", tmp_path, timeout_s=840)
    print("train node lost for good:", json.dumps(r))
    assert r.get("steps_logged_at_kill", 0) > 0 and "replacement" not in r
    assert r.get("stall") and r["stall"]["recorded"], r
    assert "placing and starting the train workers" in r["stall"]["message"]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(NO_BWRAP is not None, reason=f"sandbox unavailable: {NO_BWRAP}")
def test_grading_survives_the_loss_of_its_node(tmp_path):
    r = _scenario("grade", tmp_path, timeout_s=540)
    print("grade node loss:", json.dumps(r))
    assert r.get("busy_on_doomed_at_kill", 0) > 0  # grading batches were running on the node that died
    assert 0 < r.get("parts_at_kill", 0) < r["batches"]
    assert r["rows"] == r["unique_keys"] == r["samples"]  # every sample graded, and exactly once
    assert r["parts"] == r["batches"] and r["skipped_batches"] == 0
    assert r["verdicts"] == r["expected_verdicts"] and r["grader_errors"] == 0


# ---- the scenarios, run as `python test_node_loss.py train|train-no-replacement|grade WORK` ----------
def _start_cluster(head_cpus: float, node: dict[str, Any]) -> tuple[Any, Any]:
    """A connected head (the driver's node) and one worker node made of `node` (add_node's arguments): the
    doomed node."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=True,
                      head_node_args={"num_cpus": head_cpus, "include_dashboard": False})
    doomed = cluster.add_node(**node)
    cluster.wait_for_nodes()
    return cluster, doomed


def _say(what: str) -> None:
    """A timestamped line in the scenario's log, among Ray's."""
    print(f"[node-loss {time.strftime('%H:%M:%S')}] {what}", flush=True)


def _run_and_kill(stage: Callable[[], Any], ready: Callable[[], bool], cluster: Any, doomed: Any,
                  node: dict[str, Any] | None, report: dict[str, Any]) -> Any:
    """Run `stage` on a thread; once `ready()`, SIGKILL every process of `doomed` at once (no graceful
    drain, as when a machine is lost), then add a node made of `node` (None: no replacement). Nodes are
    added here, on the main thread, because Ray sets signal handlers when it starts one. Returns the
    stage's result."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = stage()
        except BaseException as exc:  # noqa: BLE001 - raised again below, on the main thread
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while thread.is_alive() and not ready():
        time.sleep(0.2)
    if thread.is_alive():
        report["t_kill"] = time.time()
        _say(f"killing node {doomed.node_id[:8]}")
        cluster.remove_node(doomed, allow_graceful=False)
        if node is not None:
            report["replacement"] = cluster.add_node(**node).node_id
            _say(f"replacement node {report['replacement'][:8]} joined")
    thread.join()
    report["t_done"] = time.time()
    if "error" in out:
        raise out["error"]
    report["recovery_s"] = round(report["t_done"] - report["t_kill"], 1) if "t_kill" in report else None
    return out["result"]


def _train_scenario(work: Path, replace: bool = True) -> dict[str, Any]:
    """Two ZeRO-3 workers, each needing one of the doomed node's two `accel`; the node dies a little after
    the first checkpoint, so the restarted group (on the replacement node) resumes from it and trains the
    steps after it again. Without a replacement the restart can never be placed: the watchdog must fail
    the run (`stall` in the report)."""
    import ray

    from fixtures import build_data_dir, build_tiny_train_model
    from valley.storage import Storage, stage_dir
    from valley.train.config import TrainConfig
    from valley.train.stage import STALL_RECORD, run_train
    from valley.watchdog import StallError

    storage = Storage(str(work / "store"))
    tok, model = build_tiny_train_model(work / "tiny")
    data, _ = build_data_dir(storage, tok, n_traces=40, seq_len=512)
    node = {"num_cpus": 1, "resources": {"accel": 2}}  # the head's 1 CPU reads the data (Ray Data)
    cluster, doomed = _start_cluster(1, node)
    cfg = TrainConfig(name="nodeloss", data=data, model=str(model), global_batch_size=4, micro_batch_size=1,
                      num_workers=2, epochs=2, max_seq_len=512, learning_rate=3e-3, cpus_per_worker=0.5,
                      resources_per_worker={"accel": 1}, checkpoint_every_steps=2,
                      stall_timeout_s=STALL_S if replace else NO_REPLACEMENT_STALL_S)
    out = stage_dir("train", cfg.name, cfg.config_hash())
    report: dict[str, Any] = {"doomed": doomed.node_id}
    placed: list[list[str]] = []  # the nodes of the run's placement group, each time they changed
    first_log: list[float] = []

    def logged_steps() -> list[int]:
        if not storage.exists(out, "metrics.jsonl"):
            return []
        return [json.loads(x)["step"] for x in storage.read_text(out, "metrics.jsonl").splitlines() if x]

    def ready() -> bool:
        """Two seconds after the first checkpoint (the history is written with each): into the next steps."""
        if not first_log and logged_steps():
            first_log.append(time.monotonic())
        if first_log and time.monotonic() - first_log[0] > 2.0:
            report["steps_logged_at_kill"] = len(logged_steps())
            report["on_doomed_at_kill"] = sorted(
                a["ActorClassName"] for a in ray._private.state.actors().values()
                if a["State"] == "ALIVE" and a["Address"]["NodeID"] == doomed.node_id)
            return True
        return False

    def watch_placement(stop: threading.Event) -> None:
        while not stop.is_set():
            nodes = sorted({n for pg in ray.util.placement_group_table().values() if pg.get("state") == "CREATED"
                            and any(b.get("accel") for b in pg.get("bundles", {}).values())
                            for n in pg.get("bundles_to_node_id", {}).values()})
            if nodes and (not placed or placed[-1] != nodes):
                placed.append(nodes)
                _say(f"train workers placed on {[n[:8] for n in nodes]}")
            time.sleep(0.2)

    stop = threading.Event()
    threading.Thread(target=watch_placement, args=(stop,), daemon=True).start()
    try:
        result = _run_and_kill(lambda: run_train(cfg, storage), ready, cluster, doomed, node if replace else None,
                               report)
    except StallError as exc:
        report["stall"] = {"phase": exc.phase, "worker": exc.worker, "message": str(exc),
                           "recorded": storage.exists(out, STALL_RECORD)}
        return report
    finally:
        stop.set()
        ray.shutdown()
        cluster.shutdown()
    history = logged_steps()
    report.update(planned_steps=result.steps, steps=len(history), logged_steps=history,
                  pg_nodes_before=placed[0] if placed else [], pg_nodes_after=placed[-1] if placed else [],
                  placements=placed, exported=storage.exists(out, "model", "model.safetensors"),
                  success=storage.exists(out, "_SUCCESS"))
    return report


def _grade_scenario(work: Path) -> dict[str, Any]:
    """Twelve slow samples in batches of two, graded only where the `grader` resource is (the doomed node's
    two slots); the node dies once a first part is written, while batches run on it."""
    import psutil
    import pyarrow as pa
    import ray

    from valley import schemas
    from valley.grade.config import GradeConfig
    from valley.grade.stage import run_grade
    from valley.storage import Storage

    storage = Storage(str(work / "store"))
    tests = json.dumps([{"input": "2 3\n", "output": "5\n", "testtype": "stdin"}])
    storage.write_parquet(pa.Table.from_pylist(
        [{"question_id": "add", "question_content": "add", "testtype": "stdin", "tests": tests}],
        schema=schemas.PROBLEMS), "in", "problems.parquet")
    slow = "```python\nimport time\ntime.sleep(0.5)\n"
    good, bad = slow + "a, b = map(int, input().split())\nprint(a + b)\n```", slow + "print(4)\n```"
    rows = [{"run_id": "r", "question_id": "add", "sample_idx": i, "response": good if i % 2 else bad}
            for i in range(12)]
    storage.write_parquet(pa.Table.from_pylist(rows, schema=schemas.SAMPLES), "in", "samples", "part-0.parquet")
    node = {"num_cpus": 2, "resources": {"grader": 2}}
    cluster, doomed = _start_cluster(1, node)
    cfg = GradeConfig(samples="in/samples", problems="in/problems.parquet", timeout_s=5.0, batch_size=2,
                      task_resources={"grader": 1}, stall_timeout_s=STALL_S)
    report: dict[str, Any] = {"doomed": doomed.node_id}
    raylet = doomed.all_processes["raylet"][0].process.pid

    def parts() -> list[str]:
        return [p.name for p in Path(storage.root).glob("grade/*/verdicts/part-*.parquet")]

    def busy_on_doomed() -> int:
        """Ray workers of the doomed node (children of its raylet) inside a grading batch."""
        with contextlib.suppress(psutil.Error):
            return sum(1 for p in psutil.Process(raylet).children()
                       if any("grade_batch" in a for a in p.cmdline()))
        return 0

    def ready() -> bool:
        written, busy = len(parts()), busy_on_doomed()
        if written and busy:
            report.update(parts_at_kill=written, busy_on_doomed_at_kill=busy)
            return True
        return False

    try:
        res = _run_and_kill(lambda: run_grade(cfg, storage), ready, cluster, doomed, node, report)
    finally:
        ray.shutdown()
        cluster.shutdown()
    verdicts = storage.read_parquet(res.verdicts_dir).to_pylist()
    keys = {(v["run_id"], v["question_id"], v["sample_idx"]) for v in verdicts}
    report.update(samples=len(rows), rows=len(verdicts), unique_keys=len(keys), batches=res.batches,
                  skipped_batches=res.skipped_batches, parts=len(parts()), grader_errors=res.grader_errors,
                  verdicts={str(v["sample_idx"]): v["verdict"] for v in verdicts},
                  expected_verdicts={str(i): "pass" if i % 2 else "wrong_answer" for i in range(len(rows))})
    return report


def _main(kind: str, work: str) -> None:
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # fixtures.py
    scenario = {"train": _train_scenario, "grade": _grade_scenario,
                "train-no-replacement": lambda work: _train_scenario(work, replace=False)}[kind]
    report = scenario(Path(work))
    print(json.dumps(report), flush=True)


if __name__ == "__main__" and len(sys.argv) == 3:
    _main(sys.argv[1], sys.argv[2])
