"""Fault tolerance: a worker dies mid-run, Ray Train restarts the group from the last checkpoint, and the
final weights match an uninterrupted run's (same data order thanks to seeded per-epoch shuffles)."""

from __future__ import annotations

import json

import pytest
import torch

from fixtures import build_data_dir, build_tiny_train_model


@pytest.mark.slow
def test_killed_worker_resumes_to_the_same_weights(ray_local, storage, tmp_path):
    from safetensors.torch import load_file

    from valley.train.config import TrainConfig
    from valley.train.loop import KILL_FLAG
    from valley.train.stage import run_train

    tok, model = build_tiny_train_model(tmp_path)
    data, _ = build_data_dir(storage, tok, n_traces=40, seq_len=512)
    common = dict(data=data, model=str(model), global_batch_size=4, micro_batch_size=1, num_workers=2, epochs=2,
                  max_seq_len=512, learning_rate=3e-3, cpus_per_worker=0.5, checkpoint_every_steps=2)
    clean = run_train(TrainConfig(name="clean", max_failures=0, **common), storage)
    assert clean.steps >= 5 and clean.steps_per_epoch >= 2  # both kills below land mid-run
    # The kill lands right after the first epoch's checkpoint, before that epoch's export: the restarted
    # group must notice the missing export and write it before training on.
    drill = TrainConfig(name="drill", max_failures=2, fault_kill_at_step=clean.steps_per_epoch,
                        checkpoint_every_steps=1, export_every_epoch=True,
                        **{k: v for k, v in common.items() if k != "checkpoint_every_steps"})
    killed = run_train(drill, storage)
    out = killed.stage_dir
    assert storage.exists(out, KILL_FLAG), "the fault drill did not fire"
    # resumed from step 3: the logged history has every step once
    steps = [json.loads(x)["step"] for x in storage.read_text(out, "metrics.jsonl").splitlines()]
    assert steps == list(range(1, clean.steps + 1))
    a = load_file(storage.path(clean.model_dir, "model.safetensors"))
    b = load_file(storage.path(out, "model", "model.safetensors"))
    assert set(a) == set(b)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), (k, (a[k] - b[k]).abs().max())
    assert killed.final_loss == pytest.approx(clean.final_loss, abs=1e-5)
    marker = json.loads(storage.read_text(out, "model-epoch1", "valley_train.json"))
    assert marker == {"config_hash": drill.config_hash(), "steps": clean.steps_per_epoch, "epoch": 1}
    assert storage.exists(out, "model-epoch1", "model.safetensors")

    # A job whose driver gave up (no retries left) is simply submitted again: the same config finds the
    # run's checkpoint snapshot in its stage dir and continues from the last checkpoint.
    gave_up = TrainConfig(name="gaveup", max_failures=0, fault_kill_at_step=4, **common)
    with pytest.raises(Exception):  # noqa: B017 - Ray Train's failure type, whatever wraps the worker's exit
        run_train(gave_up, storage)
    out2 = storage.relative(storage.uri("train", f"gaveup-{gave_up.config_hash()[:12]}"))
    assert storage.exists(out2, KILL_FLAG) and not storage.exists(out2, "_SUCCESS")
    resumed = run_train(gave_up, storage)
    steps2 = [json.loads(x)["step"] for x in storage.read_text(out2, "metrics.jsonl").splitlines()]
    assert steps2 == list(range(1, clean.steps + 1))
    c = load_file(storage.path(out2, "model", "model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], c[k], atol=1e-5, rtol=1e-4), (k, (a[k] - c[k]).abs().max())
    assert not resumed.skipped and resumed.final_loss == pytest.approx(clean.final_loss, abs=1e-5)
