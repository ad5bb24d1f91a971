"""The study graph on a fake multi-node Ray cluster (benchmarks/study_cluster.py, in its own process and
RAY_TMPDIR): real training runs of the demo model overlap, evaluation runs beside training, a failed node
fails only its descendants, and a training run spread over two nodes trains like a one-node run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _overlap(a: list[float], b: list[float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


@pytest.mark.slow
def test_study_on_a_fake_multi_node_cluster(tmp_path):
    out = tmp_path / "outcome.json"
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray-", dir="/tmp")}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "study_cluster.py"), "--out", str(out), "--work",
           str(tmp_path / "work"), "--sizes", "40,80,120", "--fail", "train:tiny-r120", "--span"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    o = json.loads(out.read_text())
    states, iv = o["states"], o["intervals"]
    assert o["limits"]["train"] == 2  # two nodes of 2 accel slots, 2 workers x 1 slot a run

    # two real training runs overlapped in time
    assert _overlap(iv["train:tiny-r40"], iv["train:tiny-r80"])
    # a run's grading started before another run's training ended (the base model's, at the latest)
    trains_end = max(iv[n][1] for n in ("train:tiny-r40", "train:tiny-r80"))
    assert min(iv[n][0] for n in ("grade:tiny-base", "grade:tiny-r40", "grade:tiny-r80")) < trains_end

    # the failed node: its descendants skipped, everything else finished, the error recorded
    assert states["train:tiny-r120"] == "failed"
    assert "injected failure" in o["errors"]["train:tiny-r120"] and Path(o["logs"]["train:tiny-r120"]).exists()
    assert {states[n] for n in ("generate:tiny-r120", "grade:tiny-r120", "report")} == {"skipped"}
    done = [n for n, s in states.items() if n not in ("train:tiny-r120", "generate:tiny-r120", "grade:tiny-r120",
                                                      "report")]
    assert all(states[n] == "done" for n in done), states

    # one training run with a worker on each of two nodes trains and exports like the one-node run
    span = o["span"]
    assert len(span["worker_nodes"]) == 2
    assert (tmp_path / "work" / "store" / span["model_dir"] / "config.json").exists()
    assert span["losses"] == pytest.approx(span["one_node_losses"], rel=1e-4, abs=1e-5)
