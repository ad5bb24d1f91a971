"""`DispatchSettings.from_config`: one object carries every run setting of grade and label to the dispatcher."""

from __future__ import annotations

import dataclasses

import pytest

from valley.grade.config import GradeConfig, LabelConfig
from valley.grade.dispatch import DispatchSettings


@pytest.mark.parametrize("cfg", [
    GradeConfig(samples="s", problems="p", sandbox="rlimit_only", bwrap_path="/x/bwrap", num_cpus_per_task=0.5,
                task_resources={"grader": 1.0}, max_in_flight=7, max_retries=1, stall_timeout_s=12.0,
                timeout_s=2.0),
    LabelConfig(traces="t", max_in_flight=3),
])
def test_settings_come_from_the_config(cfg):
    s = DispatchSettings.from_config(cfg)
    assert s == DispatchSettings(limits=cfg.limits(), sandbox=cfg.sandbox, bwrap=cfg.bwrap_path,
                                 num_cpus=cfg.num_cpus_per_task, resources=cfg.task_resources,
                                 max_in_flight=cfg.max_in_flight, max_retries=cfg.max_retries,
                                 stall_timeout_s=cfg.stall_timeout_s)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.max_retries = 9  # type: ignore[misc]
