"""ray_cluster.yaml: valid for Ray's autoscaler, and its grader node type autoscales (fake provider).

The slow test starts its own single-machine Ray cluster with Ray's fake multi-node provider
(`RAY_FAKE_CLUSTER=1`): the head has no task slots, grader nodes (the `cpu_grader` type of
ray_cluster.yaml, shrunk to 1 CPU) start at zero; a burst of grading tasks that need the `grader`
resource must make the autoscaler add grader nodes, and once idle they must go away. The cluster
runs under its own RAY_TMPDIR, ports and process group, so it never touches another Ray on the
machine (`ray stop` would: it kills every Ray process of the user) and is always torn down.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "ray_cluster.yaml"
GRADER_TYPE, GPU_TYPE = "cpu_grader", "gpu_h100"
N_TASKS, MAX_FAKE_GRADERS = 8, 2


def _load() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_is_valid_for_rays_autoscaler():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _load()
    validate_config(cfg)  # Ray's ray-schema.json plus its cross-field checks
    validate_config(prepare_config(copy.deepcopy(cfg)))  # and after Ray merges the AWS defaults
    types = cfg["available_node_types"]
    head = cfg["head_node_type"]
    assert types[head]["resources"].get("CPU") == 0  # the head runs drivers, not tasks
    grader = types[GRADER_TYPE]
    assert grader["min_workers"] == 0 and grader["max_workers"] >= 8
    assert grader["resources"]["grader"] == grader["resources"]["CPU"]
    assert [name for name, t in types.items() if t["resources"].get("grader")] == [GRADER_TYPE]
    gpu = types[GPU_TYPE]
    assert gpu["resources"]["GPU"] == 8 and gpu["node_config"]["InstanceType"].startswith("p5.")
    assert sum(t.get("max_workers", 0) for name, t in types.items() if name != head) <= cfg["max_workers"]


def test_schema_rejects_a_broken_node_type():
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    cfg = _load()
    cfg["available_node_types"][GRADER_TYPE]["resources"]["grader"] = 0.5  # resources must be integers
    with pytest.raises(jsonschema.ValidationError):
        validate_config(cfg)
    cfg = _load()
    del cfg["available_node_types"][GRADER_TYPE]["node_config"]
    with pytest.raises(jsonschema.ValidationError):
        validate_config(cfg)


# ---- fake multi-node autoscaling ---------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def fake_cluster_config(gcs_address: str) -> dict:
    """The fake-provider version of ray_cluster.yaml: same grader type, sized for one laptop."""
    real = _load()
    grader = copy.deepcopy(real["available_node_types"][GRADER_TYPE])
    grader["resources"] = {"CPU": 1, "grader": 1, "object_store_memory": 100 * 1024 * 1024}
    grader["node_config"] = {}
    grader["max_workers"] = MAX_FAKE_GRADERS
    grader["idle_timeout_s"] = 5
    grader.pop("worker_setup_commands", None)
    head = real["available_node_types"][real["head_node_type"]]
    return {
        "cluster_name": "valley-fake",
        "max_workers": MAX_FAKE_GRADERS,
        "upscaling_speed": real["upscaling_speed"],
        "idle_timeout_minutes": 0.1,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,  # not the default 6379: never collide with another cluster
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "available_node_types": {
            "ray.head.default": {"resources": dict(head["resources"]), "node_config": {}, "max_workers": 0},
            GRADER_TYPE: grader,
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def _stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM the cluster's own process group (head, GCS, autoscaler, fake nodes), then SIGKILL."""
    if proc.poll() is None or _group_alive(proc.pid):
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.time() + 15
        while time.time() < deadline and _group_alive(proc.pid):
            time.sleep(0.5)
            proc.poll()
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_fake_cluster_scales_graders_up_and_down(tmp_path):
    import ray._private.services as services

    ip = services.get_node_ip_address()
    port = _free_port()
    address = f"{ip}:{port}"
    config_path = tmp_path / "fake_cluster.json"
    config_path.write_text(json.dumps(fake_cluster_config(address)))
    ray_tmp = tempfile.mkdtemp(prefix="vfc-", dir="/tmp")  # short: unix socket paths are length-limited
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_USAGE_STATS_ENABLED="0")
    ray_bin = str(Path(sys.executable).with_name("ray"))
    head_cmd = [
        ray_bin, "start", "--head", "--block", f"--port={port}", "--num-cpus=0",
        f"--autoscaling-config={config_path}", "--include-dashboard=false",
        f"--dashboard-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
        f"--ray-client-server-port={_free_port()}", "--disable-usage-stats",
    ]
    log = open(tmp_path / "head.log", "w")  # noqa: SIM115 - closed in finally
    head = subprocess.Popen(head_cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address_file = Path(ray_tmp) / "ray" / "ray_current_cluster"
        deadline = time.time() + 90
        while not address_file.exists() and head.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert address_file.exists(), f"head did not start:\n{(tmp_path / 'head.log').read_text()[-3000:]}"
        driver = subprocess.run(
            [sys.executable, __file__, "driver", address, str(tmp_path / "store")], env=env, capture_output=True,
            text=True, timeout=300,
        )
        assert driver.returncode == 0, driver.stdout[-3000:] + driver.stderr[-3000:]
        report = json.loads(driver.stdout.strip().splitlines()[-1])
    finally:
        _stop_process_group(head)
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    print("fake cluster:", json.dumps(report))  # visible with -s: burst and scale-down timings
    assert report["graders_before"] == 0  # min_workers 0: nothing running before the burst
    assert report["results_ok"]  # every grading task ran its program and got the right answer
    assert report["peak_graders"] == MAX_FAKE_GRADERS  # the burst scaled graders up to the max
    assert report["distinct_grader_nodes"] >= 2  # and the tasks really spread over them
    assert not report["ran_on_head"]
    assert report["graders_after"] == 0, report  # idle graders were released
    # the real grade stage, asking for the grader resource, brought graders back and graded everything
    assert report["stage_graders_before"] == 0
    assert report["stage_counts"] == {"pass": 4, "wrong_answer": 4}, report


def _real_grade_on_graders(store: str, graders) -> dict:
    """The grade stage itself with `task_resources: {grader: 1}`: with no grader left, its sandboxed batches
    must bring grader nodes back (the head has no CPUs, so nowhere else could run them)."""
    import pyarrow as pa

    from valley import schemas
    from valley.grade.config import GradeConfig
    from valley.grade.stage import run_grade
    from valley.storage import Storage

    storage = Storage(store)
    tests = json.dumps([{"input": "2 3\n", "output": "5\n", "testtype": "stdin"}])
    storage.write_parquet(pa.Table.from_pylist(
        [{"question_id": "add", "question_content": "add", "testtype": "stdin", "tests": tests}],
        schema=schemas.PROBLEMS), "in", "problems.parquet")
    good, bad = "```python\na, b = map(int, input().split())\nprint(a + b)\n```", "```python\nprint(4)\n```"
    rows = [{"run_id": "r", "question_id": "add", "sample_idx": i, "response": good if i % 2 else bad}
            for i in range(8)]
    storage.write_parquet(pa.Table.from_pylist(rows, schema=schemas.SAMPLES), "in", "samples", "part-0.parquet")
    before = graders()
    result = run_grade(GradeConfig(samples="in/samples", problems="in/problems.parquet", timeout_s=5.0,
                                   batch_size=1, task_resources={"grader": 1}), storage)
    return {"stage_graders_before": before, "stage_counts": {k: v for k, v in result.counts.items() if v}}


def _driver(address: str, store: str) -> None:
    """Runs in its own process: connect, burst grading tasks, watch grader nodes come and go."""
    import ray

    ray.init(address=address, log_to_driver=False)
    head_id = ray.get_runtime_context().get_node_id()

    def graders() -> int:
        return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("grader"))

    @ray.remote(num_cpus=1, resources={"grader": 1}, max_retries=2)
    def grade(i: int) -> tuple[bool, str]:
        # A stand-in submission run in a child process, as the sandboxed grader does.
        out = subprocess.run([sys.executable, "-c", f"print(sum(range({i})))"], capture_output=True, text=True, timeout=30)
        time.sleep(2)  # long enough that one node cannot drain the queue before more are added
        return out.stdout.strip() == str(sum(range(i))), ray.get_runtime_context().get_node_id()

    before = graders()
    t0 = time.time()
    refs = [grade.remote(i) for i in range(N_TASKS)]
    peak = before
    pending = refs
    while pending and time.time() - t0 < 150:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=1)
        peak = max(peak, graders())
    results = ray.get(refs, timeout=30)
    t_done = time.time()
    while graders() > 0 and time.time() - t_done < 90:
        time.sleep(1)
    nodes = {node for _, node in results}
    report = {
        "graders_before": before,
        "peak_graders": peak,
        "results_ok": all(ok for ok, _ in results),
        "distinct_grader_nodes": len(nodes),
        "ran_on_head": head_id in nodes,
        "graders_after": graders(),
        "burst_s": round(t_done - t0, 1),
        "scale_down_s": round(time.time() - t_done, 1),
    }
    report.update(_real_grade_on_graders(store, graders))
    ray.shutdown()
    print(json.dumps(report), flush=True)


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "driver":
    _driver(sys.argv[2], sys.argv[3])
