"""One writer per stage run (valley/lease.py): a second writer stops with the owner named or waits for the
first and finds its run finished; a lease whose process is gone or whose heartbeat expired is taken over;
object stores (memory://) hold leases too; the holder renews its heartbeat."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from valley.lease import LEASE, LeaseHeld, LeaseRecord, StageLease, read_lease
from valley.stage import StageResult, run_stage
from valley.storage import Storage, stage_dir

PLATFORM = str(Path(__file__).resolve().parents[1] / "platform")


class _Result(StageResult):
    writer: str


def _write_once(storage: Storage, writer: str, hold_s: float = 0.0) -> _Result:
    def body(out: str) -> _Result:
        storage.write_text(writer, out, "written-by")
        time.sleep(hold_s)
        return _Result(stage_dir=out, writer=writer)

    return run_stage(storage, "demo", "x", "0123456789abcdef", _Result, body)


def _holder(root: str, hold_s: float) -> subprocess.Popen:
    """Another process that writes the same stage run and holds it for `hold_s` seconds."""
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {PLATFORM!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_lease import _write_once
        from valley.storage import Storage
        _write_once(Storage({root!r}), "first", {hold_s})
    """)
    return subprocess.Popen([sys.executable, "-c", code])


def _wait_for_lease(storage: Storage, out: str, timeout_s: float = 60.0) -> LeaseRecord:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if (held := read_lease(storage, out)) is not None:
            return held
        time.sleep(0.1)
    raise AssertionError("the other writer never took the lease")


def test_a_second_writer_stops_naming_the_first_then_waits_for_it(tmp_path, monkeypatch):
    storage = Storage(str(tmp_path))
    out = stage_dir("demo", "x", "0123456789abcdef")
    first = _holder(str(tmp_path), hold_s=6.0)
    try:
        held = _wait_for_lease(storage, out)
        with pytest.raises(LeaseHeld, match=f"pid {first.pid}"):
            _write_once(storage, "second")
        monkeypatch.setenv("VALLEY_LEASE_WAIT", "1")
        result = _write_once(storage, "second")  # waits, then finds the first writer's run finished
    finally:
        first.wait(timeout=60)
    assert held.pid == first.pid and result.skipped and result.writer == "first"
    assert storage.read_text(out, "written-by") == "first" and not storage.exists(out, LEASE)


def test_a_lease_of_a_dead_process_or_an_expired_heartbeat_is_taken_over(tmp_path):
    storage = Storage(str(tmp_path))
    out = stage_dir("demo", "x", "0123456789abcdef")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = LeaseRecord("someone@here pid 1", os.uname().nodename, int(gone.stdout), "t", 0.0, time.time(), 120.0)
    storage.write_json(dead.__dict__, out, LEASE)
    assert _write_once(storage, "after a kill").writer == "after a kill"
    expired = LeaseRecord("someone@elsewhere pid 7", "another-host", 7, "t", 0.0, time.time() - 300, 120.0)
    storage.write_json(expired.__dict__, out, LEASE)
    storage.remove(out, "_SUCCESS")
    assert _write_once(storage, "after expiry").writer == "after expiry"


def test_leases_on_an_object_store_and_renewal(monkeypatch):
    storage = Storage(f"memory://lease-{os.getpid()}-{time.time_ns()}")
    lease = StageLease(storage, "stage/run", ttl_s=0.4).acquire()
    try:
        first = read_lease(storage, "stage/run")
        with pytest.raises(LeaseHeld, match="being written by"):
            StageLease(storage, "stage/run").acquire(wait=False)
        time.sleep(0.5)
        assert read_lease(storage, "stage/run").heartbeat > first.heartbeat  # renewed every ttl / 4
    finally:
        lease.release()
    assert not storage.exists("stage/run", LEASE)
    done = threading.Event()
    with StageLease(storage, "stage/run").acquire():
        done.set()
    assert done.is_set() and json.loads(json.dumps(first.__dict__))["token"] == first.token
