"""Fault-injection knobs share the `fault_` prefix, stay out of the config hash, and old YAML still loads."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from valley.generate.config import GenerateConfig, PoolConfig
from valley.train.config import TrainConfig

TRAIN = {"data": "d", "model": "m"}
OLD_TRAIN = {"debug_kill_at_step": 3, "debug_stall_phase": "model_load", "debug_stall_s": 5}


def test_every_fault_knob_is_prefixed_and_outside_the_hash():
    train = {f for f in TrainConfig.model_fields if f.startswith("fault_")}
    assert train == {"fault_kill_at_step", "fault_stall_phase", "fault_stall_s"}
    assert train <= TrainConfig.hash_exclude
    assert "fault_crash_once_file" in PoolConfig.model_fields and "pool" in GenerateConfig.hash_exclude
    assert not [f for f in TrainConfig.model_fields if f.startswith("debug_")]


def test_old_names_load_and_keep_the_hash():
    old = TrainConfig.model_validate({**TRAIN, **OLD_TRAIN})
    new = TrainConfig(**TRAIN, fault_kill_at_step=3, fault_stall_phase="model_load", fault_stall_s=5)
    assert (old.fault_kill_at_step, old.fault_stall_phase, old.fault_stall_s) == (3, "model_load", 5.0)
    assert old.config_hash() == new.config_hash() == TrainConfig(**TRAIN).config_hash()
    assert TrainConfig.model_validate(old.model_dump()) == old  # dumps under the new names load back
    pool = PoolConfig.model_validate({"crash_once_file": "/tmp/x"})
    assert pool.fault_crash_once_file == "/tmp/x"


def test_old_and_new_name_together_is_an_error():
    with pytest.raises(ValidationError):
        TrainConfig.model_validate({**TRAIN, "debug_kill_at_step": 3, "fault_kill_at_step": 4})
