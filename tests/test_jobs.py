"""Ray jobs as the README submits them: token authentication, `--chdir`, and the hint for inputs a job's
upload left out. The slow test starts its own head with a token made for it (never a real one)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from valley import runtime

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# ---- pure parts -------------------------------------------------------------------------------
def _in_job(monkeypatch, working_dir: str | None = "gcs://_ray_pkg_x.zip") -> None:
    runtime_env = {"working_dir": working_dir} if working_dir else {}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": runtime_env}))
    monkeypatch.delenv(runtime.JOB_DIR_ENV, raising=False)


def test_job_path_hint_only_for_paths_the_upload_left_out(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert runtime.job_path_hint("demo-data/traces.jsonl") == ""  # not in a job
    _in_job(monkeypatch)
    hint = runtime.job_path_hint("demo-data/traces.jsonl")
    assert "git-ignored" in hint and "--chdir" in hint and "absolute paths" in hint
    assert runtime.job_path_hint(str(tmp_path / "demo-data" / "traces.jsonl")) == hint  # made absolute in the job
    assert runtime.job_path_hint("/data/elsewhere.jsonl") == ""
    assert runtime.job_path_hint("s3://bucket/traces.jsonl") == ""
    monkeypatch.setenv(runtime.JOB_DIR_ENV, str(tmp_path))  # --chdir given: the upload is not the cause
    assert runtime.job_path_hint("demo-data/traces.jsonl") == ""
    _in_job(monkeypatch, working_dir=None)
    assert runtime.job_path_hint("demo-data/traces.jsonl") == ""


def test_missing_input_in_a_job_names_the_cause(monkeypatch, tmp_path):
    from valley.data.readers import expand_inputs
    from valley.errors import InputError

    monkeypatch.chdir(tmp_path)
    _in_job(monkeypatch)
    with pytest.raises(InputError, match=r"git-ignored.*\(file demo-data/traces.jsonl\)"):
        expand_inputs(["demo-data/traces.jsonl"])


def test_enter_job_dir_takes_chdir_out_and_goes_there(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv(runtime.JOB_DIR_ENV, raising=False)
    rest = runtime.enter_job_dir(["cfg.yaml", "--storage", "runs/x", "--chdir", str(tmp_path), "--set", "a=1"])
    assert rest == ["cfg.yaml", "--storage", "runs/x", "--set", "a=1"]
    assert Path.cwd() == tmp_path and os.environ[runtime.JOB_DIR_ENV] == str(tmp_path)
    monkeypatch.chdir(REPO)
    assert runtime.enter_job_dir([f"--chdir={tmp_path}", "cfg.yaml"]) == ["cfg.yaml"] and Path.cwd() == tmp_path
    assert runtime.enter_job_dir(["cfg.yaml"]) == ["cfg.yaml"]
    with pytest.raises(SystemExit, match="no such directory"):
        runtime.enter_job_dir(["--chdir", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="needs a directory"):
        runtime.enter_job_dir(["cfg.yaml", "--chdir"])


def test_auth_help_says_what_to_set(monkeypatch, tmp_path):
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token here
    assert runtime.token_source() is None
    text = runtime.auth_help("10.0.0.1:6379", "InvalidAuthToken")
    assert "Set RAY_AUTH_MODE=token (it is unset)" in text and "`ray get-auth-token` on the head" in text
    token = tmp_path / "token"
    token.write_text("x" * 32)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    assert runtime.token_source() == f"RAY_AUTH_TOKEN_PATH ({token})"
    text = runtime.auth_help("10.0.0.1:6379", "InvalidAuthToken")
    assert "Set RAY_AUTH_MODE=token" in text and "No token" not in text
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert "is not the cluster's" in runtime.auth_help("10.0.0.1:6379", "InvalidAuthToken")


def test_the_sessions_ray_wants_the_sessions_token(ray_local):
    """conftest runs the test session's Ray as users get it, with token authentication: a client that does
    not send the token is refused (and told what to set); the token is the session's, not ~/.ray's."""
    import ray
    from ray._raylet import AuthenticationMode, get_authentication_mode

    assert get_authentication_mode() == AuthenticationMode.TOKEN
    token = Path(os.environ["RAY_AUTH_TOKEN_PATH"])
    assert token.stat().st_size > 0 and Path.home() / ".ray" not in token.parents
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    probe = ("import sys\nfrom valley import runtime\nfrom valley.errors import ConfigError\n"
             "try:\n    runtime.check_cluster_auth(sys.argv[1])\nexcept ConfigError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", probe, ray.get_runtime_context().gcs_address], env=env,
                         capture_output=True, text=True, timeout=120)
    assert "Set RAY_AUTH_MODE=token (it is unset)" in out.stdout, out.stdout + out.stderr[-2000:]


# ---- the README's commands against a head with token authentication ---------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop the head and everything it started (its own process group), never another Ray."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.time() + wait
        while time.time() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.3)
    proc.wait(timeout=30)


def _submit(cmd: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    deadline = time.time() + 120
    while True:  # the head's GCS and job server take a moment to come up
        job = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=1000)
        out = job.stdout + job.stderr
        if job.returncode == 0 or time.time() > deadline or not any(
                s in out for s in ("Connection", "Could not find any running Ray", "Timed out")):
            return job
        time.sleep(3)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_readme_job_commands_with_token_auth(tmp_path):
    """A checkout with make-demo data (git-ignored), `ray start --head` with a token present (so auth is
    on), then the README's two `ray job submit` lines with RAY_AUTH_MODE=token, shrunk by `--set` only."""
    from valley.demo import write_demo

    clone = tmp_path / "clone"  # what the job needs of a checkout: jobs/, .gitignore, and demo-data/
    shutil.copytree(REPO / "jobs", clone / "jobs", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".gitignore", clone / ".gitignore")
    write_demo(clone / "demo-data", n_traces=120, n_problems=6)
    shutil.copytree(clone / "demo-data" / "model", clone / "demo-data" / "student")  # untrained stand-in

    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    ray_tmp = tempfile.mkdtemp(prefix="vjob-", dir="/tmp")  # short: unix socket paths are length-limited
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    base.update(RAY_TMPDIR=ray_tmp, RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0",
                PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")  # = `source .venv/bin/activate`
    ray = str(BIN / "ray")
    gcs_port = _free_port()
    # The clients name this head: one left to find a cluster itself before the head has written its address
    # (seconds, on a loaded machine) takes any other GCS that `ps` shows, such as this session's own Ray: with
    # tokens a refusal from the wrong cluster, without them a job run on it.
    anonymous = {**base, "RAY_ADDRESS": f"127.0.0.1:{gcs_port}"}
    client = {**anonymous, "RAY_AUTH_MODE": "token"}
    head = subprocess.Popen(  # the default start (auth mode unset), on ports of its own
        [ray, "start", "--head", "--block", "--num-cpus", "2", f"--port={gcs_port}",
         f"--dashboard-port={_free_port()}", f"--ray-client-server-port={_free_port()}",
         f"--dashboard-agent-listen-port={_free_port()}", "--disable-usage-stats"],
        env=base, cwd=clone, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        probe = [ray, "job", "submit", "--working-dir", ".", "--", "python", "-c", "pass"]
        refused = _submit(probe, anonymous, clone)  # the symptom: a client that does not send the token
        assert refused.returncode != 0 and "AuthenticationError" in refused.stdout + refused.stderr

        valley = subprocess.run([str(BIN / "valley"), "data", "x.yaml", "--ray-address", f"127.0.0.1:{gcs_port}"],
                                env=base, cwd=clone, capture_output=True, text=True, timeout=300)
        assert valley.returncode == 2 and "Set RAY_AUTH_MODE=token" in valley.stderr, valley.stderr[-2000:]

        data = [ray, "job", "submit", "--working-dir", ".", "--", "python", "jobs/data.py",
                "jobs/configs/data_demo.yaml", "--storage", "runs/jobs", "--chdir", str(clone),
                "--set", "subsets=[{name: r40, kind: random, size: 40}]", "--set", "max_seq_len=512"]
        job = _submit(data, client, clone)
        assert job.returncode == 0 and "succeeded" in job.stdout.lower(), job.stdout[-4000:] + job.stderr[-4000:]
        assert list((clone / "runs" / "jobs" / "data").glob("demo-*/tokenized/r40/*.parquet"))

        small = ["arms.r.sizes=[40]", "label=null", "data.max_seq_len=512",
                 "train.epochs=1", "train.global_batch_size=4", "train.num_workers=1", "train.max_seq_len=512",
                 "generate.n=1", "generate.max_tokens=16", "generate.filters.limit=4", "report.n_boot=20"]
        study = [ray, "job", "submit", "--working-dir", ".", "--", "python", "jobs/run.py",
                 "jobs/configs/demo.yaml", "--storage", "runs/demo", "--chdir", str(clone)]
        job = _submit(study + [a for s in small for a in ("--set", s)], client, clone)
        assert job.returncode == 0 and "succeeded" in job.stdout.lower(), job.stdout[-4000:] + job.stderr[-4000:]
        results = list((clone / "runs" / "demo").glob("report/*/results.parquet"))
        assert len(results) == 1
        table = pq.read_table(results[0])
        assert set(table.column("run_id").to_pylist()) == {"tiny-qwen2-base", "tiny-qwen2-r40"}
        assert {"pass@1", "completion_rate", "think_rate"} <= set(table.column("metric").to_pylist())
    finally:
        _stop_group(head)
        shutil.rmtree(ray_tmp, ignore_errors=True)
