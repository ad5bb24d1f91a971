"""Issue 17 as a user met it: `kill -9` of `valley run` during the first training run, then the same command
again. Before the fix the re-run hung for ever in that training run (a DeepSpeed op build's lock left by
the killed run); now it finishes that run and the study goes on. Prints the re-run's training wall time."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _wait_for(predicate, what: str, proc: subprocess.Popen, timeout_s: float) -> float:
    start = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"`valley run` exited ({proc.returncode}) before {what}")
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"no {what} after {timeout_s:.0f} s")
        time.sleep(1)
    return time.monotonic() - start


def _start(spec: Path, storage: Path, cwd: Path, log: Path) -> subprocess.Popen:
    valley = Path(sys.executable).with_name("valley")
    with open(log, "ab") as out:
        return subprocess.Popen([str(valley), "run", str(spec), "--storage", str(storage)], cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ})


def _stop_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_rerun_after_kill9_in_first_training_finishes_it_and_the_study_goes_on(tmp_path):
    valley = Path(sys.executable).with_name("valley")
    subprocess.run([str(valley), "demo", "--out", "demo-data", "--n-traces", "6000", "--n-problems", "40"],
                   cwd=tmp_path, check=True, capture_output=True)
    spec = tmp_path / "demo.yaml"
    shutil.copy(REPO / "jobs" / "configs" / "demo.yaml", spec)
    storage, log = tmp_path / "runs", tmp_path / "run.log"
    train = storage / "train"

    def train_dirs() -> list[Path]:
        return sorted(p for p in train.iterdir() if p.is_dir()) if train.is_dir() else []

    first = _start(spec, storage, tmp_path, log)
    try:
        # Ray Train makes the run's checkpoint dir when its controller starts; the workers then import
        # DeepSpeed and reach init_distributed (where the op was built) a few seconds later
        _wait_for(lambda: any((d / "checkpoints").exists() for d in train_dirs()), "first training run", first,
                  3600)
        time.sleep(15)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        _stop_group(first)
    (killed_run,) = [d for d in train_dirs() if (d / "checkpoints").exists()]
    assert not (killed_run / "_SUCCESS").exists()

    again = _start(spec, storage, tmp_path, log)
    try:
        took = _wait_for(lambda: (killed_run / "_SUCCESS").exists(), "finished first training run", again, 3600)
        print(f"\nre-run: first training run finished {took:.0f} s after the re-run started")
        _wait_for(lambda: len(train_dirs()) > 1 or (storage / "generate").exists(), "next study node", again, 3600)
    finally:
        _stop_group(again)
    assert "stalled" not in log.read_text(errors="replace")
