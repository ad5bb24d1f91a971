"""The no-progress watchdog: pure stall logic, a stalled iterator, and a training run whose worker stalls."""

from __future__ import annotations

import json
import threading
import time

import pytest

from valley.watchdog import StallError, default_timeout, stall_in


def _snap(now: float, started: float, **workers: tuple[str, float]) -> dict:
    return {"now": now, "started": started,
            "workers": {w: {"phase": p, "detail": "", "at": at, "beats": 1} for w, (p, at) in workers.items()}}


def test_stall_names_the_phase_and_the_worker_that_moved_least_recently():
    assert stall_in(_snap(100, 0, a=("step", 95), b=("step", 10)), stage="s", timeout_s=30, idle_phase="x") is None
    err = stall_in(_snap(200, 0, a=("first_step", 150), b=("model_load", 120)), stage="train t", timeout_s=30,
                   idle_phase="x")
    assert isinstance(err, StallError) and (err.phase, err.worker) == ("model_load", "b")
    assert "train t stalled in phase 'model_load' on worker b" in str(err) and "a: first_step" in str(err)
    assert err.record()["phase"] == "model_load" and err.record()["idle_s"] == 80
    # a supervisor (Ray Train's controller) beats too, but a stalled worker is the one named
    sup = stall_in(_snap(200, 0, controller=("worker_group", 100), w=("first_step", 150)), stage="s",
                   timeout_s=30, idle_phase="x")
    assert (sup.worker, sup.phase) == ("w", "first_step")
    none = stall_in(_snap(100, 0), stage="s", timeout_s=30, idle_phase="worker_group", idle_detail="need 2 GPUs")
    assert none.phase == "worker_group" and none.worker == "none started" and "need 2 GPUs" in str(none)


def test_default_timeouts_are_sized_for_the_machine(monkeypatch):
    monkeypatch.delenv("VALLEY_STALL_TIMEOUT_S", raising=False)
    assert default_timeout(False) < default_timeout(True)
    assert default_timeout(True, 42) == 42
    monkeypatch.setenv("VALLEY_STALL_TIMEOUT_S", "7")
    assert default_timeout(False) == 7 and default_timeout(False, 9) == 9


def test_a_stalled_stream_fails_fast_and_is_torn_down(ray_local):
    import ray

    from valley.watchdog import Heartbeat, start_board, watch_iter

    board = start_board()
    release = threading.Event()
    torn_down = []

    def items():
        hb = Heartbeat(board, "replica 0")
        for i in range(2):
            hb.beat("generate", f"batch {i}")
            yield i
        hb.beat("generate", "batch 2")
        release.wait(120)  # a replica that never answers
        yield 2

    got = []
    with pytest.raises(StallError) as info:
        for item in watch_iter(items(), board, stage="generate g", timeout_s=3, idle_phase="pool_start",
                               on_stall=torn_down.append, poll_s=0.5):
            got.append(item)
    release.set()
    assert got == [0, 1] and torn_down == [info.value]
    assert info.value.phase == "generate" and info.value.worker == "replica 0" and "batch 2" in str(info.value)
    ray.kill(board)


def test_retried_starts_of_the_train_workers_are_not_progress():
    """Ray Train retries a worker-group start whose resources did not come in time, for ever: only the first
    attempt of each (re)start beats, so resources that never come (a lost node) end in a stall."""
    from types import SimpleNamespace

    from valley.train.stage import _controller_beats

    beats: list[str] = []
    board = SimpleNamespace(beat=SimpleNamespace(remote=lambda worker, phase, detail: beats.append(detail)))
    (callback,) = _controller_beats(board)
    for _ in range(3):  # the start, then two retries after timeouts
        callback.before_worker_group_start(None)
    assert beats == ["placing and starting the train workers"]
    callback.after_worker_group_start(None)
    callback.before_worker_group_start(None)  # a restart after a started group (a worker died): progress
    assert beats[1:] == ["workers started; setting up their process group", "placing and starting the train workers"]


@pytest.mark.slow
def test_training_worker_stalled_in_startup_fails_with_the_phase_named(ray_local, storage, tmp_path):
    """Rank 1 sleeps an hour on entering model loading: the stage fails after the watchdog's limit, names
    the phase and the worker, records the stall, and frees the workers' CPUs for whatever runs next.
    (The limit must exceed the workers' normal start-up, which takes tens of seconds on a loaded machine.)"""
    import ray

    from fixtures import build_data_dir, build_tiny_train_model
    from valley.train.config import TrainConfig
    from valley.train.stage import STALL_RECORD, run_train

    tok, model = build_tiny_train_model(tmp_path)
    data, _ = build_data_dir(storage, tok, n_traces=8, seq_len=256, name="data/stall")
    cfg = TrainConfig(name="stall", data=data, model=str(model), global_batch_size=2, micro_batch_size=1,
                      num_workers=2, epochs=1, max_seq_len=256, cpus_per_worker=0.5, max_failures=0,
                      stall_timeout_s=120, fault_stall_phase="model_load", fault_stall_s=3600)
    with pytest.raises(StallError) as info:
        run_train(cfg, storage)
    err = info.value
    assert err.phase == "model_load" and err.stage == "train stall", str(err)
    assert "rank 1@" in str(err) and err.idle_s >= 120
    record = json.loads(storage.read_text("train", f"stall-{cfg.config_hash()[:12]}", STALL_RECORD))
    assert record["phase"] == "model_load" and record["timeout_s"] == 120
    deadline = time.monotonic() + 120  # the killed run's workers give their CPUs back
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] and time.monotonic() < deadline:
        time.sleep(1)
    assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]
