"""The data stage end to end on Ray: rejects, manifest, shards, over-length policy, skip, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from valley import schemas
from valley.data.config import DataConfig, SubsetSpec
from valley.data.stage import run_data
from valley.demo import build_demo_tokenizer, make_traces
from valley.storage import Storage


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("corpus")
    rows = make_traces(600, seed=3)
    for i, row in enumerate(rows):
        row["correct"] = i % 2 == 0
    good = root / "traces.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in rows[:500]))
    # The rest as Parquet, plus a file of bad rows at known positions.
    pq.write_table(pa.Table.from_pylist(rows[500:]), root / "more.parquet", row_group_size=40)
    bad = root / "bad.jsonl"
    bad.write_text("\n".join([
        json.dumps({"id": "b0", "question": "q", "response": ""}),
        "{broken",
        json.dumps({"id": "b2", "question": "q", "response": "r", "correct": "perhaps"}),
        json.dumps(rows[0]),  # duplicate id of traces.jsonl row 0
    ]) + "\n")
    tok = build_demo_tokenizer(root / "tok")
    return {"dir": str(root), "tok": str(tok)}


def _cfg(corpus, **kw) -> DataConfig:
    base = dict(
        name="t",
        inputs=[f"{corpus['dir']}/*.jsonl", f"{corpus['dir']}/more.parquet"],
        tokenizer=corpus["tok"],
        max_seq_len=1024,
        chunk_rows=128,
        group_docs=200,
        subsets=[SubsetSpec(name="r50", kind="random", size=50), SubsetSpec(name="r400", kind="random", size=400),
                 SubsetSpec(name="ok", kind="correct"), SubsetSpec(name="bad", kind="incorrect"),
                 SubsetSpec(name="easy", kind="easy", size=60), SubsetSpec(name="hard", kind="hard", size=60)],
    )
    base.update(kw)
    return DataConfig(**base)


def _tokenized(storage: Storage, result, subset: str) -> pa.Table:
    return storage.read_parquet(result.subsets[subset]["path"])


def test_data_stage_end_to_end(ray_local, corpus, tmp_path):
    storage = Storage(str(tmp_path / "s"))
    result = run_data(_cfg(corpus), storage)
    assert result.accepted == 600
    assert result.rejected_by_reason == {"empty": 1, "invalid_json": 1, "wrong_type": 1, "duplicate_id": 1}
    out = result.stage_dir
    rejects = storage.read_parquet(out, "rejects").to_pylist()
    where = {(Path(r["source_file"]).name, r["source_row"], r["field"]) for r in rejects}
    # The first occurrence in (file, row) order is kept: bad.jsonl sorts before traces.jsonl.
    assert where == {("bad.jsonl", 0, "response"), ("bad.jsonl", 1, "<row>"), ("bad.jsonl", 2, "correct"),
                     ("traces.jsonl", 0, "id")}
    manifest = storage.read_json(out, "manifest.json")
    assert manifest["seq_len"] == 1024 and manifest["subsets"]["ok"]["rows"] == manifest["subsets"]["bad"]["rows"] == 300
    assert (manifest["pad_id"], manifest["pad_id_from"]) == (0, "pad_token_id")  # the demo tokenizer's <pad>
    for name, info in result.subsets.items():
        table = _tokenized(storage, result, name)
        assert table.schema.equals(schemas.TOKENIZED, check_metadata=False)
        subset_ids = storage.read_parquet(out, "subsets", f"{name}.parquet").column("id").to_pylist()
        packed_ids = [t for ids in table.column("trace_ids").to_pylist() for t in ids]
        assert sorted(packed_ids) == sorted(subset_ids)  # each doc exactly once
        assert all(len(x) == 1024 for x in table.column("input_ids").to_pylist())
        assert info["pack_efficiency"] > 0.8 and info["tokens"] == sum(table.column("n_tokens").to_pylist())
    assert set(_tokenized(storage, result, "r50").column("trace_ids").to_pylist()[0]) <= set(
        storage.read_parquet(out, "subsets", "r400.parquet").column("id").to_pylist())
    # Tokenizer travels with the data so training needs nothing else.
    assert storage.exists(out, "tokenizer", "tokenizer.json")
    again = run_data(_cfg(corpus), storage)
    assert again.skipped and again.subsets == result.subsets


def test_manifest_pad_id_is_the_tokenizers_pad_else_eos(corpus):
    """What the data stage records as `pad_id` (and the trainer pads with), and which token it is."""
    from types import SimpleNamespace

    from valley.data.pad import pad_entry, pad_of

    assert pad_entry(corpus["tok"]) == {"pad_id": 0, "pad_id_from": "pad_token_id"}
    assert pad_of(SimpleNamespace(pad_token_id=None, eos_token_id=2)) == (2, "eos_token_id")
    assert pad_of(SimpleNamespace(pad_token_id=None, eos_token_id=None)) == (0, "default")


def test_overlength_policies_are_counted(ray_local, corpus, tmp_path):
    storage = Storage(str(tmp_path / "s"))
    subsets = [SubsetSpec(name="all", kind="all")]
    dropped = run_data(_cfg(corpus, max_seq_len=160, subsets=subsets), storage)
    info = dropped.subsets["all"]
    assert info["dropped"]["overlength"] > 0 and info["docs"] + info["dropped"]["overlength"] == 600
    out = dropped.stage_dir
    assert storage.read_parquet(out, "dropped", "all.parquet").num_rows == info["dropped"]["overlength"]
    truncated = run_data(_cfg(corpus, max_seq_len=160, overlength="truncate", subsets=subsets), storage)
    assert truncated.subsets["all"]["truncated"] > 0
    assert truncated.subsets["all"]["docs"] + sum(truncated.subsets["all"]["dropped"].values()) == 600


def test_outputs_are_byte_for_byte_reproducible(ray_local, corpus, tmp_path):
    a = Storage(str(tmp_path / "a"))
    b = Storage(str(tmp_path / "b"))
    cfg = _cfg(corpus, subsets=[SubsetSpec(name="r400", kind="random", size=400)])
    ra, rb = run_data(cfg, a), run_data(cfg.model_copy(update={"tokenize_concurrency": 1}), b)
    assert _tokenized(a, ra, "r400").equals(_tokenized(b, rb, "r400"))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


@pytest.mark.slow
def test_killed_run_leaves_nothing_partial_and_resumes(corpus, tmp_path):
    """SIGKILL the CLI mid-ingest; visible files are complete; a re-run finishes identically."""
    cfg = _cfg(corpus, chunk_rows=20, subsets=[SubsetSpec(name="r400", kind="random", size=400)])
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    valley = [sys.executable, "-m", "valley.cli", "data", str(cfg_path), "--num-cpus", "2"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*valley, "--storage", str(killed)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(killed.rglob("_ingest/*.json"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for part in killed.rglob("*.parquet"):
        if not part.name.startswith("._tmp-"):
            pq.read_table(part)  # every visible part is complete
    assert not list(killed.rglob("_SUCCESS"))
    subprocess.run([*valley, "--storage", str(killed)], check=True, capture_output=True)
    clean = tmp_path / "clean"
    subprocess.run([*valley, "--storage", str(clean)], check=True, capture_output=True)
    assert not list(killed.rglob("._tmp-*"))  # the re-run swept the killed run's temporaries
    assert _files(killed) == _files(clean)
