"""End to end on CPU: Ray Train TorchTrainer, 2 workers, DeepSpeed ZeRO-3 over gloo, tiny random Qwen2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fixtures import build_data_dir, unpacked_loss


def _reference_step0(model_dir, docs):
    """Plain transformers, one process, unpacked documents: loss and gradient norm of the first step."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    loss, _ = unpacked_loss(model, docs)
    loss.backward()
    grad_norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None))
    return float(loss), float(grad_norm), model


def _weights(model_dir):
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_train_two_workers_zero3_end_to_end(ray_local, storage, tiny_train_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from valley.train.config import TrainConfig
    from valley.train.plan import resolve_model
    from valley.train.stage import run_train

    tok_dir, model_dir = tiny_train_model
    data, docs = build_data_dir(storage, tok_dir, n_traces=24, seq_len=512, max_doc=170)
    rows = storage.read_parquet(data, "tokenized", "all").num_rows
    assert rows % 2 == 0 and rows >= 6, rows
    # one global batch = every row, so step 1 sees exactly the documents the reference sees
    cfg = TrainConfig(data=data, model=str(model_dir), global_batch_size=rows, micro_batch_size=1, num_workers=2,
                      epochs=3, max_seq_len=512, learning_rate=3e-3, warmup_ratio=0.0, max_grad_norm=0.0,
                      cpus_per_worker=0.5, checkpoint_every_steps=2, max_failures=0, export_every_epoch=True,
                      # partition every parameter, however small (the default keeps small ones whole), so
                      # zero.Init loading, gathered LM-head chunks and the export's gather all really run
                      deepspeed={"zero_optimization": {"stage3_param_persistence_threshold": 0}})
    result = run_train(cfg, storage)

    assert result.steps == 3 and result.steps_per_epoch == 1 and result.rows == rows
    history = [json.loads(x) for x in storage.read_text(result.metrics_path).splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3]
    ref_loss, ref_norm, _ = _reference_step0(model_dir, docs)
    assert abs(history[0]["loss"] - ref_loss) < 1e-4, (history[0]["loss"], ref_loss)
    assert abs(history[0]["grad_norm"] - ref_norm) / ref_norm < 1e-3, (history[0]["grad_norm"], ref_norm)
    assert history[0]["loss_tokens"] == sum(sum(d["loss_mask"][1:]) for d in docs)
    assert history[-1]["loss"] < history[0]["loss"] - 0.05, [h["loss"] for h in history]
    for h in history:  # cosine without warmup over 3 steps
        assert h["lr"] == pytest.approx(3e-3 * 0.5 * (1 + math.cos(math.pi * (h["step"] - 1) / 3)))
        assert h["tokens_per_s"] > 0 and h["tokens"] == sum(len(d["input_ids"]) for d in docs)

    # the export reloads with plain transformers, carries the trained weights and generates
    out = storage.path(result.model_dir)
    exported = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    before, after = _weights(Path(model_dir)), _weights(Path(out))
    assert set(before) == set(after)
    assert max((before[k] - after[k]).abs().max().item() for k in before) > 1e-3
    prompt = tok.apply_chat_template([{"role": "user", "content": "Sum of N integers?"}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    gen = exported.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert gen.shape[1] > prompt["input_ids"].shape[1]
    assert (Path(out) / "generation_config.json").exists() and (Path(out) / "tokenizer_config.json").exists()
    # the gathered ZeRO-3 weights are the trained ones: they fit the training documents better
    assert _reference_step0(out, docs)[0] < history[-1]["loss"]

    # per-epoch exports hold the weights after that epoch: step k+1's logged loss is computed with them
    assert sorted(result.epoch_model_dirs) == [1, 2, 3] and result.epoch_model_dirs[3] == result.model_dir
    for epoch in (1, 2):
        epoch_dir = storage.path(result.epoch_model_dirs[epoch])
        marker = json.loads((Path(epoch_dir) / "valley_train.json").read_text())
        assert marker["epoch"] == epoch and marker["steps"] == epoch
        assert abs(_reference_step0(epoch_dir, docs)[0] - history[epoch]["loss"]) < 1e-4

    # stage 2 (continue training) can start from this run's directory
    assert resolve_model(storage, result.stage_dir) == storage.uri(result.model_dir)
    # same config again: skipped, nothing retrained
    again = run_train(cfg, storage)
    assert again.skipped and again.model_dir == result.model_dir


@pytest.mark.slow
def test_trains_on_the_data_stage_output(ray_local, storage, tmp_path, tiny_train_model):
    """The real data stage's packed shards, tokenizer and manifest are valid train input (the interface)."""
    from valley.data.config import DataConfig, SubsetSpec
    from valley.data.stage import run_data
    from valley.demo import make_traces
    from valley.train.config import TrainConfig
    from valley.train.stage import run_train

    tok_dir, model_dir = tiny_train_model
    traces = tmp_path / "traces.jsonl"
    traces.write_text("".join(json.dumps(r) + "\n" for r in make_traces(60, seed=5)))
    data = run_data(DataConfig(name="d", inputs=[str(traces)], tokenizer=str(tok_dir), max_seq_len=1024,
                               subsets=[SubsetSpec(name="r40", kind="random", size=40)]), storage)
    cfg = TrainConfig(data=data.stage_dir, subset="r40", model=str(model_dir),
                      global_batch_size=2, micro_batch_size=1, num_workers=2, epochs=2,
                      learning_rate=3e-3, cpus_per_worker=0.5, checkpoint_every_steps=100, max_failures=0)
    assert cfg.max_seq_len is None  # the data stage's seq_len, and its pad_id, come from its manifest
    result = run_train(cfg, storage)
    packed = storage.read_parquet(data.subsets["r40"]["path"])
    assert result.rows == packed.num_rows and result.steps == 2 * (result.rows // 2)
    assert result.tokens_per_epoch == sum(packed.column("n_tokens").to_pylist())
    history = [json.loads(x) for x in storage.read_text(result.metrics_path).splitlines()]
    assert len(history) == result.steps and all(math.isfinite(h["loss"]) for h in history)
    assert history[-1]["loss"] < history[0]["loss"]


@pytest.mark.slow
def test_bf16_zero3_path_runs_and_exports_bf16(ray_local, storage, tiny_train_model):
    """The GPU numerics (bf16 weights, fp32 gradient accumulation, bf16 export) through DeepSpeed's CPU
    accelerator, so the config that runs on H100s is exercised here too."""
    from safetensors.torch import load_file

    from valley.train.config import TrainConfig
    from valley.train.stage import run_train

    tok_dir, model_dir = tiny_train_model
    data, _ = build_data_dir(storage, tok_dir, n_traces=24, seq_len=512, name="data/bf16")
    cfg = TrainConfig(data=data, model=str(model_dir), global_batch_size=2, micro_batch_size=1, num_workers=2,
                      epochs=1, max_seq_len=512, precision="bf16", learning_rate=1e-3, cpus_per_worker=0.5,
                      max_failures=0)
    result = run_train(cfg, storage)
    history = [json.loads(x) for x in storage.read_text(result.metrics_path).splitlines()]
    assert len(history) == result.steps and all(math.isfinite(h["loss"]) for h in history)
    weights = load_file(str(Path(storage.path(result.model_dir)) / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
