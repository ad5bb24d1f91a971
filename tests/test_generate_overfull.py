"""Issue 28: a generate directory holding samples twice is repaired, not refused.

Before the stage lease, two overlapping `valley generate` runs left every sample twice and every re-run
failed with "expected N samples on disk, found 2N". Now a re-run keeps one copy of each sample (the one
in the lowest-named part), moves the rest to `set_aside/` with the part it came from and why, and
finishes; and two real processes writing one stage run end with one copy of every sample whatever the
timing (the second waits for the first's lease, or stops naming it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from fixtures import GENERATE_QIDS, tiny_generate_config
from valley import schemas
from valley.generate.overfull import FROM_COLUMN, REASON_COLUMN, SET_ASIDE_DIR, set_aside_surplus
from valley.generate.stage import GenerateResult, run_generate
from valley.lease import LEASE
from valley.storage import Storage

ASKED = {(q, i) for q in GENERATE_QIDS for i in range(2)}  # tiny_generate_config: n=2


def _keys(table: pa.Table) -> list[tuple[str, int]]:
    return list(zip(table.column("question_id").to_pylist(), table.column("sample_idx").to_pylist(), strict=True))


def _samples(storage: Storage, out: str) -> dict[tuple[str, int], dict]:
    """Every sample row on disk by key; fails if any key is there twice."""
    rows = storage.read_parquet(out, "samples").to_pylist()
    keys = Counter((r["question_id"], r["sample_idx"]) for r in rows)
    assert max(keys.values()) == 1, f"samples on disk more than once: {[k for k, n in keys.items() if n > 1]}"
    return {(r["question_id"], r["sample_idx"]): r for r in rows}


def test_a_wedged_directory_is_repaired_on_rerun(storage, tiny_model, lcb_file, caplog):
    cfg = tiny_generate_config(tiny_model, lcb_file, "wedged", mode="local", batch_size=1)
    first = run_generate(cfg, storage)
    out, samples = first.stage_dir, Path(storage.path(first.stage_dir, "samples"))
    parts = storage.list(out, "samples", suffix=".parquet")
    assert len(parts) == 4  # part_size=2 and two samples a problem: one problem a part
    original = _samples(storage, out)

    # The wedge as two overlapping writers left it: the second writer's parts numbered from 0 again (under
    # its own suffixes, so its first part sorts before the first writer's), a part holding one of its rows
    # twice, and a part with a copy and a sample index the config never asks for (n=2).
    copies = ["part-00000-00000000.parquet", "part-00001-ffffffff.parquet", "part-00002-ffffffff.parquet"]
    for src, dst in zip(parts[:3], copies, strict=True):
        shutil.copy(samples / src, samples / dst)
    twice = pq.read_table(samples / parts[3])
    pq.write_table(pa.concat_tables([twice, twice.slice(0, 1)]), samples / parts[3])
    stray = pq.read_table(samples / parts[1]).slice(0, 2).to_pylist()
    stray[1]["sample_idx"] = 7
    pq.write_table(pa.Table.from_pylist(stray, schema=twice.schema), samples / "part-00009-stray000.parquet")
    storage.remove(out, "_SUCCESS")
    untouched = {name: (samples / name).read_bytes() for name in (copies[0], parts[1], parts[2])}
    assert storage.read_parquet(out, "samples").num_rows == 8 + 6 + 1 + 2

    with caplog.at_level("WARNING", logger="valley.generate.overfull"):
        repaired = run_generate(cfg, storage)
    assert not repaired.skipped and repaired.stage_dir == out
    assert (repaired.n_generated, repaired.n_resumed, repaired.n_samples) == (0, 8, 8)
    assert (repaired.duplicates_set_aside, repaired.not_asked_set_aside) == (8, 1)
    assert "set aside 8 duplicate(s) and 1 sample(s)" in caplog.text
    assert storage.uri(out, SET_ASIDE_DIR) in caplog.text
    marker = storage.read_json(out, "_SUCCESS")
    assert marker["config_hash"] == cfg.config_hash()
    assert (marker["summary"]["duplicates_set_aside"], marker["summary"]["not_asked_set_aside"]) == (8, 1)

    # one copy of every asked sample, as generated; the lowest-named copy kept, parts without surplus untouched
    assert _samples(storage, out) == original and set(original) == ASKED
    assert storage.list(out, "samples", suffix=".parquet") == sorted([*untouched, parts[3]])
    assert {name: (samples / name).read_bytes() for name in untouched} == untouched
    assert pq.read_table(samples / parts[3]).num_rows == 2

    # every surplus row set aside as it was, with the part it came from and why
    aside = storage.read_parquet(out, SET_ASIDE_DIR)
    assert aside.schema.names == [*twice.schema.names, FROM_COLUMN, REASON_COLUMN]
    moved = aside.to_pylist()
    assert Counter(r[REASON_COLUMN] for r in moved) == {"duplicate": 8, "not_asked": 1}
    assert Counter(r[FROM_COLUMN] for r in moved) == {parts[0]: 2, copies[1]: 2, copies[2]: 2, parts[3]: 1,
                                                      "part-00009-stray000.parquet": 2}
    for r in moved:
        row = {k: v for k, v in r.items() if k not in (FROM_COLUMN, REASON_COLUMN)}
        if r[REASON_COLUMN] == "duplicate":
            assert row == original[(r["question_id"], r["sample_idx"])]
        else:
            assert r["sample_idx"] == 7 and r["response"] == stray[1]["response"]

    assert run_generate(cfg, storage).skipped  # the marker is a normal one

    # a directory that is not over-full is only read: no part and no set-aside file is written again
    def stamps() -> dict[str, dict[str, int]]:
        return {d: {p.name: p.stat().st_mtime_ns for p in (samples.parent / d).iterdir()}
                for d in ("samples", SET_ASIDE_DIR)}

    before = stamps()
    storage.remove(out, "_SUCCESS")
    again = run_generate(cfg, storage)
    assert (again.n_generated, again.n_samples, again.duplicates_set_aside, again.not_asked_set_aside) == (0, 8, 0, 0)
    assert stamps() == before


def test_a_marker_written_before_the_repair_still_reads(storage, tiny_model, lcb_file):
    cfg = tiny_generate_config(tiny_model, lcb_file, "old-marker", mode="local", batch_size=1)
    summary = run_generate(cfg, storage).summary()
    old = {k: v for k, v in summary.items() if k not in ("duplicates_set_aside", "not_asked_set_aside")}
    result = GenerateResult.finished(old, summary["stage_dir"])
    assert (result.duplicates_set_aside, result.not_asked_set_aside, result.n_samples) == (0, 0, 8)


def _sample_rows(keys: list[tuple[str, int]], tag: str) -> pa.Table:
    return pa.Table.from_pylist([{"run_id": "r", "question_id": q, "sample_idx": i, "response": f"{tag} {q} {i}"}
                                 for q, i in keys], schema=schemas.SAMPLES)


class _Killed(Exception):
    pass


class _KilledAfterSettingAside(Storage):
    """A storage whose writer is killed right after the first set-aside file is written (before the part
    it came from is rewritten or removed)."""

    def write_parquet(self, table: pa.Table, *parts: str, **kwargs) -> str:
        written = super().write_parquet(table, *parts, **kwargs)
        if SET_ASIDE_DIR in parts:
            raise _Killed(parts[-1])
        return written


def test_a_repair_killed_halfway_neither_loses_nor_doubles_a_row(tmp_path):
    root, out = str(tmp_path / "store"), "generate/x-0123456789ab"
    storage = Storage(root)
    asked = {("q", i) for i in range(3)}
    storage.write_parquet(_sample_rows([("q", 0), ("q", 1)], "a"), out, "samples", "part-00000-a.parquet")
    storage.write_parquet(_sample_rows([("q", 1), ("q", 2), ("q", 2)], "b"), out, "samples",
                          "part-00001-b.parquet")
    storage.write_parquet(_sample_rows([("q", 0), ("p", 0)], "c"), out, "samples", "part-00002-c.parquet")
    with pytest.raises(_Killed):
        set_aside_surplus(_KilledAfterSettingAside(root), out, asked)
    found = set_aside_surplus(storage, out, asked)
    assert found.kept == asked and (found.duplicates, found.not_asked) == (3, 1)
    assert found.parts_rewritten == ["part-00001-b.parquet"] and found.parts_removed == ["part-00002-c.parquet"]
    kept = storage.read_parquet(out, "samples")
    assert sorted(zip(_keys(kept), kept.column("response").to_pylist(), strict=True)) == [
        (("q", 0), "a q 0"), (("q", 1), "a q 1"), (("q", 2), "b q 2")]
    aside = storage.read_parquet(out, SET_ASIDE_DIR)
    assert sorted(zip(aside.column(FROM_COLUMN).to_pylist(), _keys(aside),
                      aside.column(REASON_COLUMN).to_pylist(), strict=True)) == [
        ("part-00001-b.parquet", ("q", 1), "duplicate"), ("part-00001-b.parquet", ("q", 2), "duplicate"),
        ("part-00002-c.parquet", ("p", 0), "not_asked"), ("part-00002-c.parquet", ("q", 0), "duplicate")]
    assert set_aside_surplus(storage, out, asked).total == 0  # repaired: nothing more to set aside


# ---- two real writers on one storage root ------------------------------------------------------------
def _start(args: list[str], log: Path) -> subprocess.Popen:
    """`valley <args>` in a session of its own (so a failing test can stop it and its Ray), stdout and
    stderr to `log`.out and `log`.err."""
    valley = Path(sys.executable).with_name("valley")
    with open(f"{log}.out", "wb") as out, open(f"{log}.err", "wb") as err:
        return subprocess.Popen([str(valley), *args, "--num-cpus", "1"], stdout=out, stderr=err,
                                start_new_session=True, env={**os.environ})


def _stop_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _finish(proc: subprocess.Popen, log: Path, timeout_s: float = 120) -> tuple[int, dict | None, str]:
    """(exit status, the result it printed or None, its stderr)."""
    rc = proc.wait(timeout=timeout_s)
    out, err = Path(f"{log}.out").read_text(), Path(f"{log}.err").read_text(errors="replace")
    result = json.JSONDecoder().raw_decode(out[out.index("{"):])[0] if "{" in out else None
    return rc, result, err


def _wait_for_lease(path: Path, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, f"the first writer exited ({proc.returncode}) before taking the lease"
        assert time.monotonic() < deadline, "the first writer never took the lease"
        time.sleep(0.05)


@pytest.fixture()
def cli_config(tiny_model, lcb_file, tmp_path) -> tuple[Path, Path, str]:
    """(config file, storage root, stage directory) of a small generate run through the CLI."""
    cfg = tiny_generate_config(tiny_model, lcb_file, "two-writers", mode="local", batch_size=3)
    path = tmp_path / "generate.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_unset=True)))
    return path, tmp_path / "store", f"generate/two-writers-{cfg.config_hash()[:12]}"


def _one_copy_of_every_sample(root: Path, out: str) -> None:
    storage = Storage(str(root))
    assert set(_samples(storage, out)) == ASKED
    assert storage.exists(out, "_SUCCESS") and not storage.exists(out, LEASE)
    assert not storage.exists(out, SET_ASIDE_DIR)  # the lease kept the second writer out: nothing to repair


@pytest.mark.parametrize("timing", ["racing", "first-paused"])
def test_two_overlapping_runs_end_with_one_copy_of_every_sample(cli_config, tmp_path, timing):
    """racing: both start 0.5 s apart, either may take the lease first (so both --wait); first-paused: the
    second starts once the first holds the lease, and the first is stopped for a while so the second surely
    meets the live lease and waits."""
    config, root, out = cli_config
    args = ["generate", str(config), "--storage", str(root)]
    first = _start(args + (["--wait"] if timing == "racing" else []), tmp_path / "first")
    second = None
    try:
        if timing == "racing":
            time.sleep(0.5)
            second = _start([*args, "--wait"], tmp_path / "second")
        else:
            _wait_for_lease(root / out / LEASE, first)
            os.kill(first.pid, signal.SIGSTOP)
            second = _start([*args, "--wait"], tmp_path / "second")
            time.sleep(8)  # the second starts its Ray and reaches the lease meanwhile (or waits for it later)
            os.kill(first.pid, signal.SIGCONT)
        runs = [_finish(first, tmp_path / "first"), _finish(second, tmp_path / "second")]
    finally:
        for proc in (first, second):
            if proc is not None:
                _stop_group(proc)
    assert [rc for rc, _, _ in runs] == [0, 0], [err[-2000:] for _, _, err in runs]
    results = [r for _, r, _ in runs]
    assert sorted((r["skipped"], r["n_generated"]) for r in results) == [(False, 8), (True, 0)]
    if timing == "first-paused":
        assert not results[0]["skipped"] and results[1]["skipped"]
    assert all(r["n_samples"] == 8 and r["duplicates_set_aside"] == 0 for r in results)
    _one_copy_of_every_sample(root, out)


def test_a_second_run_without_wait_stops_naming_the_first(cli_config, tmp_path):
    config, root, out = cli_config
    args = ["generate", str(config), "--storage", str(root)]
    first = _start(args, tmp_path / "first")
    try:
        _wait_for_lease(root / out / LEASE, first)
        os.kill(first.pid, signal.SIGSTOP)  # the first holds the lease however slow the second is to start
        try:
            second = subprocess.run([str(Path(sys.executable).with_name("valley")), *args, "--num-cpus", "1"],
                                    capture_output=True, text=True, timeout=120, env={**os.environ})
        finally:
            os.kill(first.pid, signal.SIGCONT)
        rc, result, err = _finish(first, tmp_path / "first")
    finally:
        _stop_group(first)
    assert second.returncode == 2 and "being written by" in second.stderr and f"pid {first.pid}" in second.stderr
    assert rc == 0, err[-2000:]
    assert not result["skipped"] and result["n_samples"] == 8
    _one_copy_of_every_sample(root, out)
