"""The train stage's input checks (plan_run, TrainConfig) on a stand-in for the data stage's output
(`fixtures.build_data_dir`), so train tests do not depend on the data stage's progress."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from fixtures import build_data_dir
from valley.errors import ConfigError, InputError
from valley.storage import Storage


def rows_have_several_docs(storage: Storage, data: str) -> bool:
    rows = storage.read_parquet(data, "tokenized", "all")
    return min(rows.column("n_docs").to_pylist()) >= 2


def _cfg(data: str, model: str, **kw):
    from valley.train.config import TrainConfig

    base = dict(data=data, model=model, global_batch_size=4, micro_batch_size=1, num_workers=2, epochs=1,
                max_seq_len=256)
    return TrainConfig(**{**base, **kw})


def test_plan_counts_rows_and_steps(storage, tiny_train_model):
    from valley.train.plan import plan_run

    tok, model = tiny_train_model
    data, docs = build_data_dir(storage, tok, n_traces=30, seq_len=256)
    plan = plan_run(_cfg(data, str(model), epochs=3), storage, "train/x")
    assert rows_have_several_docs(storage, data)
    rows = storage.read_parquet(data, "tokenized", "all")
    assert plan.rows == rows.num_rows
    assert plan.steps_per_epoch == rows.num_rows // 4
    assert plan.total_steps == 3 * plan.steps_per_epoch
    assert plan.rows_left_over_per_epoch == rows.num_rows % 4
    assert plan.tokens == sum(len(d["input_ids"]) for d in docs)
    assert plan.accum == 2
    assert plan.max_seq_len == 256 and len(plan.files) == 2


def test_plan_is_frozen_and_travels_to_workers(storage, tiny_train_model):
    """Workers get the plan through Ray's pickling and cannot change what the other ranks see."""
    import dataclasses
    import pickle

    from valley.train.plan import plan_run

    tok, model = tiny_train_model
    data, _ = build_data_dir(storage, tok, n_traces=30, seq_len=256)
    plan = plan_run(_cfg(data, str(model)), storage, "train/x")
    assert pickle.loads(pickle.dumps(plan)) == plan
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.pad_id = 3  # type: ignore[misc]


def test_plan_takes_pad_id_and_seq_len_from_the_data_stage(storage, tiny_train_model, monkeypatch):
    from types import SimpleNamespace

    import transformers

    from valley.train.plan import plan_run

    tok, model = tiny_train_model
    data, _ = build_data_dir(storage, tok, n_traces=30, seq_len=256)
    manifest = storage.read_json(data, "manifest.json")
    storage.write_json({**manifest, "pad_id": 7, "pad_id_from": "eos_token_id"}, data, "manifest.json")
    storage.mark_success(data, "test")  # as the data run that wrote this manifest would (the marker lists sizes)
    plan = plan_run(_cfg(data, str(model), max_seq_len=None), storage, "train/x")
    assert plan.pad_id == 7 and plan.max_seq_len == 256
    # a manifest from before pad_id was recorded: the saved tokenizer's pad (here none, so its eos)
    storage.write_json(manifest, data, "manifest.json")
    storage.mark_success(data, "test")
    seen = []

    def fake_tokenizer(path, **_):
        seen.append(path)
        return SimpleNamespace(pad_token_id=None, eos_token_id=5)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_tokenizer)
    assert plan_run(_cfg(data, str(model)), storage, "train/x").pad_id == 5
    assert seen == [storage.path(data, "tokenizer")]

    def broken(path, **_):
        raise OSError("unreadable")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", broken)
    assert plan_run(_cfg(data, str(model)), storage, "train/x").pad_id == 0  # the trainer's padding before

def test_plan_rejects_bad_inputs(storage, tiny_train_model):
    from valley.train.plan import plan_run

    tok, model = tiny_train_model
    data, _ = build_data_dir(storage, tok, n_traces=40, seq_len=256)
    with pytest.raises(ConfigError, match="subset 'nope'"):
        plan_run(_cfg(data, str(model), subset="nope"), storage, "train/x")
    with pytest.raises(ConfigError, match="seq_len=256 > max_seq_len=128"):
        plan_run(_cfg(data, str(model), max_seq_len=128), storage, "train/x")
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        plan_run(_cfg(data, str(model), global_batch_size=256), storage, "train/x")
    with pytest.raises(ConfigError, match="does not exist"):
        plan_run(_cfg(data, str(storage.path("nowhere"))), storage, "train/x")
    # a shard with a wrong column type names the file and the field
    bad = pa.table({"input_ids": pa.array([[1, 2]], pa.list_(pa.int32())), "loss_mask": pa.array([[0, 1]], pa.list_(pa.int8())),
                    "position_ids": pa.array([["a", "b"]]), "n_tokens": [2], "trace_ids": [["t"]]})
    storage.write_parquet(bad, data, "tokenized", "all", "part-99999.parquet")
    with pytest.raises(InputError, match=r"part-99999.parquet.*field 'position_ids'"):
        plan_run(_cfg(data, str(model)), storage, "train/x")
    storage.remove(data, "_SUCCESS")
    with pytest.raises(ConfigError, match="not finished"):
        plan_run(_cfg(data, str(model)), storage, "train/x")


def test_global_batch_must_divide():
    with pytest.raises(ConfigError, match="not a multiple"):
        _cfg("d", "m", global_batch_size=6, micro_batch_size=2, num_workers=2)
    cfg = _cfg("d", "m", global_batch_size=128, micro_batch_size=2, num_workers=8)
    assert cfg.grad_accum_steps() == 8
    from valley.train.config import TrainConfig

    paper = TrainConfig(data="d", model="m")
    assert (paper.global_batch_size, paper.learning_rate, paper.warmup_ratio, paper.epochs) == (128, 8e-5, 0.10, 5)
    assert paper.max_seq_len is None  # the data stage's seq_len


def test_job_configs_load_and_size_their_batches():
    from valley import config
    from valley.train.config import TrainConfig

    root = Path(__file__).resolve().parents[1] / "jobs" / "configs"
    accum = {p.name: config.load(TrainConfig, p).grad_accum_steps() for p in sorted(root.glob("train_*.yaml"))}
    assert accum["train_qwen7b.yaml"] == 16 and accum["train_llama8b.yaml"] == 8 and "train_demo.yaml" in accum
