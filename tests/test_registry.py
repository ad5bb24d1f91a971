"""The stage registry is the one list of stages: the CLI, the study graph, the executor, costs and spec
validation all name the same stages, and every record's references resolve."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from valley import registry
from valley.cli import build_parser
from valley.config import StageConfig
from valley.experiment import load_spec, plan_study
from valley.experiment.graph import KINDS
from valley.stage import StageResult

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"


def _subcommands() -> set[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


@pytest.mark.parametrize("record", list(registry.STAGES.values()), ids=list(registry.STAGES))
def test_every_record_resolves(record):
    assert issubclass(record.config_class(), StageConfig)
    assert issubclass(record.result_class(), StageResult)
    assert callable(record.run_function())
    assert record.study_sets <= set(record.config_class().model_fields)
    if record.node_runner is not None:
        assert callable(record.node_runner_function())


def test_cli_graph_and_executor_name_the_registry_stages():
    assert set(registry.STAGES) <= _subcommands()
    assert KINDS == registry.study_kinds() == ("data", "label", "train", "generate", "grade", "report")
    kinds = {n.kind for name in ("paper", "demo-full") for n in plan_study(load_spec(CONFIGS / f"{name}.yaml")).nodes}
    assert kinds == set(registry.study_kinds())


def test_resources_and_costs_come_from_the_records():
    from valley.experiment.cost_ledger import reserved
    from valley.generate.config import GenerateConfig
    from valley.train.config import TrainConfig

    train = TrainConfig(data="-", model="-", num_workers=4, use_gpu=True, cpus_per_worker=2,
                        resources_per_worker={"accelerator_type:H100": 0.01}, global_batch_size=4, micro_batch_size=1)
    assert registry.stage("train").resources(train) == {"CPU": 8.0, "GPU": 4.0, "accelerator_type:H100": 0.04}
    gen = GenerateConfig(model="-", problems=["-"], backend="vllm", pool={"replicas": 2, "tensor_parallel_size": 4})
    assert registry.stage("generate").resources(gen)["GPU"] == 8.0
    grade = registry.stage("grade").config_class()(samples="-", problems="-", task_resources={"grader": 1})
    assert registry.stage("grade").resources(grade) == {}
    assert registry.stage("grade").reserved(grade, {"CPU": 64.0, "grader": 16.0}) == (16.0, 0.0)
    assert reserved("train", train) == (8.0, 4.0)


def test_unknown_stage_is_a_clear_error():
    from valley.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown stage 'tokenize'"):
        registry.stage("tokenize")


def test_spec_sections_are_the_configs_minus_what_the_study_sets(tmp_path):
    """A section refuses a field the study sets and a misspelled field, naming the section and field."""
    import yaml

    from valley.errors import ConfigError
    from valley.experiment.spec import section_model

    for name, record in registry.STAGES.items():
        if record.node_runner is None:
            continue
        fields = set(section_model(name).model_fields)
        assert fields == set(record.config_class().model_fields) - record.study_sets
    base = {"experiment": "x", "students": [{"name": "s", "model": "m"}], "data": {"inputs": ["a"]},
            "generate": {"problems": ["p"]}}
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({**base, "train": {"learning_rte": 1e-5}}))
    with pytest.raises(ConfigError, match=r"field train\.learning_rte"):
        load_spec(path)
    path.write_text(yaml.safe_dump({**base, "train": {"global_batch_size": 100, "num_workers": 8}}))
    with pytest.raises(ConfigError, match="section 'train'"):
        load_spec(path)


def test_every_stage_has_its_job_entrypoint():
    jobs = Path(__file__).resolve().parents[1] / "jobs"
    for name in registry.STAGES:
        text = (jobs / f"{name}.py").read_text()
        assert f'main(["{name}", *enter_job_dir(sys.argv[1:])])' in text, name
