"""Storage faults: a full disk, a read-only root, a root that cannot be made. Each gives an error naming the
path and what failed, never a `_SUCCESS` over partial outputs, and the re-run after the fault is fixed
completes.

Two layers: `faulty://`, an fsspec local filesystem that raises ENOSPC past a byte budget or EROFS on every
write (always available; the driver's writes only), and a real tmpfs filled to the brim (where this
machine lets the tests mount one; skipped elsewhere), which every process writing a stage sees."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import fsspec
import pyarrow as pa
import pytest
from fsspec.implementations.local import LocalFileSystem

from valley.errors import StorageError
from valley.stage import StageResult, run_stage
from valley.storage import SUCCESS, TMP_PREFIX, Storage

REPO = Path(__file__).resolve().parents[1]


class FaultyFileSystem(LocalFileSystem):
    """A local filesystem whose writes fail as a full or read-only disk does. `budget`: bytes that may still
    be written (None: no limit); `read_only`: every file opened for writing fails."""

    protocol = "faulty"
    budget: int | None = None
    read_only = False
    timing_out = False  # every write times out, as an object store that stopped answering

    def _open(self, path, mode="rb", block_size=None, **kwargs):
        if "w" in mode or "a" in mode:
            if FaultyFileSystem.read_only:
                raise OSError(errno.EROFS, "Read-only file system", path)
            if FaultyFileSystem.timing_out:
                raise TimeoutError(errno.ETIMEDOUT, "Connection timed out", path)
            return _Budgeted(super()._open(path, mode, block_size, **kwargs))
        return super()._open(path, mode, block_size, **kwargs)


class _Budgeted:
    """A file that takes bytes from FaultyFileSystem.budget and fails with ENOSPC when it runs out."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        if FaultyFileSystem.budget is not None:
            if len(data) > FaultyFileSystem.budget:
                raise OSError(errno.ENOSPC, "No space left on device")
            FaultyFileSystem.budget -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.fixture()
def faulty(tmp_path):
    fsspec.register_implementation("faulty", FaultyFileSystem, clobber=True)
    FaultyFileSystem.budget, FaultyFileSystem.read_only, FaultyFileSystem.timing_out = None, False, False
    yield Storage(f"faulty://{tmp_path}/store"), tmp_path / "store"
    FaultyFileSystem.budget, FaultyFileSystem.read_only, FaultyFileSystem.timing_out = None, False, False


class Parts(StageResult):
    parts: int = 0


def _three_parts(storage: Storage, calls: Counter, *, disk_fills_after: int | None = None):
    def body(out: str) -> Parts:
        calls["body"] += 1
        for i in range(3):
            if i == disk_fills_after:
                FaultyFileSystem.budget = 100  # room for the Parquet magic, not for a part
            storage.write_parquet(pa.table({"x": list(range(2000))}), out, "samples", f"part-{i}.parquet")
        return Parts(stage_dir=out, parts=3)

    return body


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(TMP_PREFIX)]


def test_a_full_disk_names_the_file_leaves_no_marker_and_the_rerun_completes(faulty):
    storage, root = faulty
    calls = Counter()
    with pytest.raises(StorageError, match=r"cannot write faulty://.*/samples/part-1\.parquet: No space left on "
                                           r"device \(ENOSPC\)"):
        run_stage(storage, "generate", "g", "c" * 64, Parts, _three_parts(storage, calls, disk_fills_after=1))
    out = root / "generate" / f"g-{'c' * 12}"
    assert not (out / SUCCESS).exists() and sorted(p.name for p in (out / "samples").iterdir()) == ["part-0.parquet"]
    assert _temporaries(root) == []  # the failed write removed its temporary
    FaultyFileSystem.budget = None  # space freed
    result = run_stage(storage, "generate", "g", "c" * 64, Parts, _three_parts(storage, calls))
    assert result.parts == 3 and (out / SUCCESS).exists() and calls["body"] == 2
    assert storage.damaged_files(result.stage_dir, hashes=True) == []


def test_a_full_disk_while_writing_the_marker_leaves_no_marker(faulty):
    storage, root = faulty

    def body(out: str) -> Parts:
        storage.write_parquet(pa.table({"x": [1]}), out, "part-0.parquet")
        FaultyFileSystem.budget = 10  # the disk fills between the last part and the marker
        return Parts(stage_dir=out)

    with pytest.raises(StorageError, match=r"_SUCCESS: No space left on device"):
        run_stage(storage, "grade", "g", "d" * 64, Parts, body)
    assert not (root / "grade" / f"g-{'d' * 12}" / SUCCESS).exists() and _temporaries(root) == []


def test_a_read_only_root_is_refused_before_the_stage_runs(faulty):
    storage, _ = faulty
    FaultyFileSystem.read_only = True
    calls = Counter()
    with pytest.raises(StorageError, match=r"cannot write to the storage root faulty://.*: Read-only file system "
                                           r"\(EROFS\)"):
        run_stage(storage, "generate", "g", "e" * 64, Parts, _three_parts(storage, calls))
    assert calls["body"] == 0


def test_a_store_that_times_out_names_the_file_and_the_rerun_completes(faulty):
    storage, root = faulty
    calls = Counter()

    def body(out: str) -> Parts:
        calls["body"] += 1
        storage.write_parquet(pa.table({"x": [1]}), out, "part-0.parquet")
        FaultyFileSystem.timing_out = calls["body"] == 1  # the store stops answering after the first part
        storage.write_parquet(pa.table({"x": [2]}), out, "part-1.parquet")
        return Parts(stage_dir=out, parts=2)

    with pytest.raises(StorageError, match=r"cannot write faulty://.*/part-1\.parquet: Connection timed out "
                                           r"\(ETIMEDOUT\)"):
        run_stage(storage, "generate", "t", "f" * 64, Parts, body)
    FaultyFileSystem.timing_out = False
    assert run_stage(storage, "generate", "t", "f" * 64, Parts, body).parts == 2 and calls["body"] == 2
    assert (root / "generate" / f"t-{'f' * 12}" / SUCCESS).exists()


def test_the_cli_refuses_a_root_it_cannot_make_before_starting_ray(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = subprocess.run([sys.executable, "-m", "valley.cli", "report", "--storage", str(blocker / "runs")],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2
    assert f"cannot create the storage root {blocker / 'runs'}" in proc.stderr
    assert "Ray" not in proc.stderr.split("valley: error:")[0]  # refused before Ray was started


# ---- a real full filesystem ----------------------------------------------------------------------


@pytest.fixture()
def tmpfs(tmp_path):
    """A 64 MiB tmpfs mounted for the test (root on a machine that allows mounts), else the test skips."""
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root, or no mount privilege): the faulty:// tests cover it")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path, leave: int) -> Path:
    """Write a ballast file so that `leave` bytes stay free."""
    free = shutil.disk_usage(mnt).free
    ballast = mnt / "ballast"
    with open(ballast, "wb") as f:
        f.truncate(0)
        f.write(b"\0" * max(0, free - leave))
    return ballast


def test_generation_on_a_full_tmpfs_fails_by_name_and_finishes_after_space_is_freed(ray_local, tmpfs, tiny_model,
                                                                                    lcb_file, tmp_path):
    from fixtures import tiny_generate_config
    from valley.generate.stage import run_generate

    cfg = tiny_generate_config(tiny_model, lcb_file, "full", mode="stream", replicas=1)
    reference = run_generate(cfg, Storage(str(tmp_path / "ref")))
    size = sum(p.stat().st_size for p in (tmp_path / "ref" / reference.stage_dir).rglob("*") if p.is_file())
    storage = Storage(str(tmpfs / "runs"))
    ballast = _fill(tmpfs, leave=size // 2)
    with pytest.raises(Exception, match=rf"cannot write {tmpfs}/runs/generate/.*No space left on device") as err:
        run_generate(cfg, storage)
    assert "ENOSPC" in str(err.value)
    out = tmpfs / "runs" / reference.stage_dir
    assert not (out / SUCCESS).exists()
    ballast.unlink()
    result = run_generate(cfg, storage)
    assert (out / SUCCESS).exists() and result.n_samples == reference.n_samples
    ours, theirs = (storage.read_parquet(result.stage_dir, "samples"),
                    Storage(str(tmp_path / "ref")).read_parquet(reference.stage_dir, "samples"))
    key = ["question_id", "sample_idx"]
    assert ours.select([*key, "response"]).sort_by([(k, "ascending") for k in key]).equals(
        theirs.select([*key, "response"]).sort_by([(k, "ascending") for k in key]))
    assert storage.damaged_files(result.stage_dir, hashes=True) == []


@pytest.mark.slow  # about 70 s: two ZeRO-3 trainings
def test_training_on_a_full_tmpfs_fails_by_name_and_finishes_after_space_is_freed(ray_local, tmpfs, tmp_path,
                                                                                  tiny_train_model):
    from fixtures import build_data_dir
    from valley.train.config import TrainConfig
    from valley.train.stage import run_train

    tok_dir, model_dir = tiny_train_model
    inputs = Storage(str(tmp_path / "inputs"))
    data, _ = build_data_dir(inputs, tok_dir, n_traces=16, seq_len=512, max_doc=170)
    cfg = TrainConfig(data=inputs.uri(data), model=str(model_dir), global_batch_size=2, micro_batch_size=1,
                      num_workers=2, epochs=1, max_seq_len=512, learning_rate=1e-3, cpus_per_worker=0.5,
                      checkpoint_every_steps=2, max_failures=0)
    storage = Storage(str(tmpfs / "runs"))
    ballast = _fill(tmpfs, leave=256 << 10)  # room for the lease and the metrics, not for a ZeRO checkpoint
    with pytest.raises(Exception, match=r"No space left on device") as err:
        run_train(cfg, storage)
    assert str(tmpfs / "runs" / "train") in str(err.value)
    out = next((tmpfs / "runs" / "train").iterdir())
    assert not (out / SUCCESS).exists()
    ballast.unlink()
    result = run_train(cfg, storage)
    assert (out / SUCCESS).exists() and result.steps > 0
    assert storage.damaged_files(result.stage_dir, hashes=True) == []
