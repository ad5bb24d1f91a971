"""The generate stage end to end on Ray: a tiny random model samples real LCB problems through the
Ray Data actor pool and a Ray Serve deployment; resume, skip, replica failure and batch independence."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from fixtures import GENERATE_QIDS, tiny_generate_config
from valley import schemas
from valley.generate.stage import run_generate


def _responses(storage, result) -> dict[tuple[str, int], str]:
    table = storage.read_parquet(result.stage_dir, "samples")
    return {(q, i): r for q, i, r in zip(table.column("question_id").to_pylist(),
                                         table.column("sample_idx").to_pylist(),
                                         table.column("response").to_pylist(), strict=True)}


@pytest.fixture(scope="module")
def local_reference(tiny_model, lcb_file, tmp_path_factory):
    """The same samples generated in-process, one request per batch: the reference for every pool."""
    from valley.storage import Storage

    storage = Storage(str(tmp_path_factory.mktemp("ref")))
    cfg = tiny_generate_config(tiny_model, lcb_file, "ref", mode="local", batch_size=1)
    result = run_generate(cfg, storage)
    return _responses(storage, result)


def test_data_pool_generates_survives_a_crash_resumes_and_skips(ray_local, storage, tiny_model, lcb_file,
                                                                local_reference, tmp_path):
    from transformers import AutoTokenizer

    from valley.generate.prompts import render_prompt

    marker = tmp_path / "crashed"
    cfg = tiny_generate_config(tiny_model, lcb_file, "data", mode="data", replicas=2, max_retries=2,
                               fault_crash_once_file=str(marker))
    result = run_generate(cfg, storage)
    assert marker.exists()  # a replica really died mid-run; Ray Data restarted it and re-ran its batch
    assert (result.n_problems, result.n_samples, result.n_generated) == (4, 8, 8)
    assert sum(result.finish_reasons.values()) == 8

    table = storage.read_parquet(result.stage_dir, "samples")
    assert table.schema.names[: len(schemas.SAMPLES)] == schemas.SAMPLES.names
    keys = sorted(zip(table.column("question_id").to_pylist(), table.column("sample_idx").to_pylist(), strict=True))
    assert keys == sorted((q, i) for q in GENERATE_QIDS for i in range(2))
    rows = table.to_pylist()
    assert all(r["finish_reason"] in ("stop", "length") and 1 <= r["n_tokens"] <= 16 for r in rows)
    assert all(r["n_tokens"] == 16 for r in rows if r["finish_reason"] == "length")
    assert {r["run_id"] for r in rows} == {cfg.resolved_run_id()} and {r["backend"] for r in rows} == {"transformers"}
    tok = AutoTokenizer.from_pretrained(tiny_model)
    problems = {p["question_id"]: p for p in storage.read_parquet(result.stage_dir, "problems.parquet").to_pylist()}
    assert all(r["prompt"] == render_prompt(tok, problems[r["question_id"]]) for r in rows)
    assert {problems[q]["testtype"] for q in GENERATE_QIDS} == {"stdin", "functional"}
    # per-sample seeds: 2 actors with batches of 3 (one retried) give exactly the batch-of-1 samples
    assert _responses(storage, result) == local_reference

    again = run_generate(cfg, storage)
    assert again.skipped and again.n_generated == 0 and again.n_samples == 8

    # An interrupted run: the marker and one part are gone. The pool is not part of the config hash,
    # so an in-process re-run finds the same directory and redoes only that part's problems.
    parts = storage.list(result.stage_dir, "samples", suffix=".parquet")
    assert len(parts) >= 2  # part_size=2 closes parts on problem boundaries while streaming
    lost = pq.read_table(storage.path(result.stage_dir, "samples", parts[0])).num_rows
    storage.remove(result.stage_dir, "samples", parts[0])
    storage.remove(result.stage_dir, "_SUCCESS")
    local = cfg.model_copy(update={"pool": cfg.pool.model_copy(update={"mode": "local", "fault_crash_once_file": None})})
    assert local.config_hash() == cfg.config_hash()
    resumed = run_generate(local, storage)
    assert resumed.stage_dir == result.stage_dir
    assert (resumed.n_generated, resumed.n_resumed, resumed.n_samples) == (lost, 8 - lost, 8)
    assert _responses(storage, resumed) == local_reference


def test_serve_pool_autoscaling_deployment(ray_local, storage, tiny_model, lcb_file, local_reference):
    from ray import serve

    cfg = tiny_generate_config(tiny_model, lcb_file, "serve", mode="serve", replicas=2, min_replicas=1,
                               app_name="valley-generate-test")
    result = run_generate(cfg, storage)
    assert result.n_samples == 8 and _responses(storage, result) == local_reference
    assert "valley-generate-test" not in serve.status().applications  # torn down (keep_serving=False)


@pytest.mark.slow
def test_serve_replaces_a_dead_replica_and_resends_its_batch(ray_local, storage, tiny_model, lcb_file,
                                                             local_reference, tmp_path):
    marker = tmp_path / "crashed"
    cfg = tiny_generate_config(tiny_model, lcb_file, "serve-crash", mode="serve", replicas=2, min_replicas=1,
                               max_retries=3, fault_crash_once_file=str(marker), app_name="valley-generate-crash")
    result = run_generate(cfg, storage)
    assert marker.exists()  # the replica that took a batch died; Serve replaced it, the batch was re-sent
    assert result.n_samples == 8 and _responses(storage, result) == local_reference
