"""ZeRO-3 gathers each decoder block whole (loop.mark_leaf_blocks); the knob is a performance one, not hashed.
That training is unchanged by it is test_train_stage's end-to-end test (two ZeRO-3 workers against a plain
reference step), which runs with it on."""

from __future__ import annotations

import torch


def test_decoder_blocks_are_flagged_and_their_layers_are_not(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from valley.train.loop import mark_leaf_blocks

    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1))
    assert mark_leaf_blocks(model) == ["Qwen2DecoderLayer"]
    flagged = [name for name, m in model.named_modules() if getattr(m, "_z3_leaf", False)]
    assert flagged == ["model.layers.0", "model.layers.1"]


def test_a_model_that_names_no_blocks_is_left_alone(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    from valley.train.loop import mark_leaf_blocks

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    assert mark_leaf_blocks(model) == []
    assert not any(getattr(m, "_z3_leaf", False) for m in model.modules())


def test_the_knob_does_not_change_the_run_hash():
    from valley.train.config import TrainConfig

    on = TrainConfig(data="d", model="m")
    assert on.zero3_leaf_blocks and on.config_hash() == on.model_copy(update={"zero3_leaf_blocks": False}).config_hash()
