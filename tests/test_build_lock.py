"""Issue 17's hang: a killed DeepSpeed op build leaves torch's `lock` file behind and every later
`deepspeed.init_distributed` on CPU waits on it forever. Reproduced here in a subprocess, then shown gone:
the worker preparation removes a lock no process holds and never builds the op in the first place."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from valley.train import ops

PLATFORM = str(Path(__file__).resolve().parents[1] / "platform")

# One rank of gloo DeepSpeed; with `fix`, the training worker's preparation runs first. faulthandler dumps
# the stack every few seconds, so the test can see where a hung process is waiting.
INIT_ONE_RANK = """
import faulthandler, json, os, socket, sys
sys.path.insert(0, {platform!r})
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
os.environ.update(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0",
                  WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_SIZE="1")
prepared = None
if sys.argv[1] == "fix":
    from valley.train import ops
    prepared = ops.prepare_worker({{}}, "cpu")
import deepspeed
print("INIT", flush=True)
faulthandler.dump_traceback_later(3, repeat=True)
deepspeed.init_distributed(dist_backend="gloo")
faulthandler.cancel_dump_traceback_later()
print("DONE " + json.dumps(prepared), flush=True)
"""


def _plant_stale_lock(ext: Path, op: str = "deepspeed_shm_comm") -> Path:
    """What `kill -9` during torch's JIT build leaves: the build dir with a `lock` nobody holds."""
    (ext / op).mkdir(parents=True, exist_ok=True)
    lock = ext / op / "lock"
    lock.touch()
    return lock


def _run(mode: str, ext: Path, tmp_path: Path) -> subprocess.Popen:
    script = tmp_path / "init_one_rank.py"
    script.write_text(INIT_ONE_RANK.format(platform=PLATFORM))
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(ext)}
    return subprocess.Popen([sys.executable, str(script), mode], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_stale_lock_is_removed_and_a_held_one_is_left_alone(tmp_path):
    stale = _plant_stale_lock(tmp_path, "cpu_adam")
    held = _plant_stale_lock(tmp_path, "fused_adam")
    holder = subprocess.Popen([sys.executable, "-c", f"f = open({str(held)!r}); import time; time.sleep(300)"])
    try:
        deadline = time.monotonic() + 60
        while not any(lk["holders"] for lk in ops.find_locks([tmp_path])) and time.monotonic() < deadline:
            time.sleep(0.2)
        found = {Path(lk["path"]).parent.name: lk["holders"] for lk in ops.find_locks([tmp_path])}
        assert found == {"cpu_adam": [], "fused_adam": [holder.pid]}
        assert ops.clear_stale_locks([tmp_path]) == [str(stale)]
        assert not stale.exists() and held.exists()
    finally:
        holder.kill()
        holder.wait()


def test_needed_ops_must_be_prebuilt_and_the_report_says_what_is():
    from valley.train.config import TrainConfig
    from valley.train.deepspeed_config import build_ds_config

    plain = build_ds_config(TrainConfig(data="d", model="m", num_workers=2, global_batch_size=2), 2)
    assert ops.needed_ops(plain, "cpu") == {} and ops.needed_ops(plain, "cuda") == {}
    ops.check_prebuilt(plain, "cpu")  # nothing needed: nothing to build
    offload = build_ds_config(TrainConfig(data="d", model="m", num_workers=2, global_batch_size=2,
                                          offload_optimizer=True, use_gpu=True), 2)
    assert set(ops.needed_ops(offload, "cuda")) == {"cpu_adam"}
    if not ops.prebuilt_ops("cuda").get("cpu_adam"):
        with pytest.raises(ops.OpsError, match="DS_BUILD_CPU_ADAM=1"):
            ops.check_prebuilt(offload, "cuda")
    report = ops.op_report("cpu", plain)
    assert "deepspeed_shm_comm" in report["disabled"] and report["needed"] == {}
    assert report["extensions_dir"] == str(ops.extensions_dir()) and isinstance(report["prebuilt"], list)
    assert "deepspeed_shm_comm" in ops.summary(report)


def test_leftover_lock_hangs_deepspeed_init_without_the_fix(tmp_path):
    """The cause, reproduced: with a lock no process holds, `init_distributed` sits in torch's
    FileBaton.wait forever (the stack dump shows it there); the test kills it."""
    ext = tmp_path / "ext"
    _plant_stale_lock(ext)
    proc = _run("nofix", ext, tmp_path)
    lines: list[str] = []
    try:
        for line in proc.stdout:  # until a stack dump shows the wait inside DeepSpeed's shm op build
            lines.append(line)
            if "build_shm_op" in line and any("file_baton.py" in x for x in lines):
                break
    finally:
        proc.kill()
        proc.wait()
    out = "".join(lines)
    assert "INIT" in out and "DONE" not in out, out[-3000:]
    assert "in wait" in out and "build_shm_op" in out, out[-3000:]


def test_leftover_lock_no_longer_blocks_deepspeed_init(tmp_path):
    """The fix: the worker's preparation removes the lock (no live holder) and switches the
    shared-memory op off, so `init_distributed` neither waits nor compiles."""
    ext = tmp_path / "ext"
    lock = _plant_stale_lock(ext)
    proc = _run("fix", ext, tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    done = json.loads(next(line for line in out.splitlines() if line.startswith("DONE "))[5:])
    assert done["removed_locks"] == [str(lock)] and done["disabled"] == ["deepspeed_shm_comm"]
    assert done["extensions_dir"] == str(ext)
    assert not lock.exists() and not (ext / "deepspeed_shm_comm" / "deepspeed_shm_comm.so").exists()
    assert "file_baton" not in out  # never waited long enough for a stack dump to show the lock


def test_training_proceeds_past_a_leftover_lock(ray_local, storage, tmp_path):
    """The stage itself: a lock left in the workers' extensions dir (the environment's) does not stop a
    two-worker ZeRO-3 run; the workers remove it."""
    from fixtures import build_data_dir, build_tiny_train_model
    from valley.train.config import TrainConfig
    from valley.train.stage import run_train

    ext = ops.extensions_dir()  # what the embedded Ray's workers inherit (runtime.init sets it)
    if any(lk["holders"] for lk in ops.find_locks([ext])):
        pytest.skip(f"a live build holds a lock under {ext}")
    lock = _plant_stale_lock(ext)
    tok, model = build_tiny_train_model(tmp_path)
    data, _ = build_data_dir(storage, tok, n_traces=8, seq_len=256, name="data/lock")
    cfg = TrainConfig(name="lock", data=data, model=str(model), global_batch_size=2, micro_batch_size=1,
                      num_workers=2, epochs=1, max_seq_len=256, cpus_per_worker=0.5, max_failures=0,
                      stall_timeout_s=600)
    try:
        result = run_train(cfg, storage)
        assert result.steps >= 1 and not lock.exists()
    finally:
        lock.unlink(missing_ok=True)
        if not any(lock.parent.iterdir()):
            lock.parent.rmdir()  # leave the environment's extensions dir as it was
