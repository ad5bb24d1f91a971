"""valley.config: overrides, build errors, and the content-hash rule of every stage config.

The hash names output directories and marks them complete, so for each stage config this checks field by
field that exactly the fields in `hash_exclude` leave it unchanged and every other field changes it.
"""

from __future__ import annotations

import hashlib
import json
import types
from typing import Any, Literal, Union, get_args, get_origin

import pytest
from pydantic import ValidationError

from valley.config import StageConfig, apply_overrides, build, load
from valley.data.config import DataConfig
from valley.decontam.config import DecontamConfig
from valley.errors import ConfigError
from valley.generate.config import GenerateConfig
from valley.grade.config import GradeConfig, LabelConfig
from valley.imports.config import ImportConfig
from valley.report.config import ReportConfig
from valley.train.config import TrainConfig

RUN = {"run_id": "a", "data_size": 0, "samples": "s", "verdicts": "v", "problems": "p"}

# a valid instance of every stage config with as few fields as it needs
MINIMAL: dict[type[StageConfig], dict[str, Any]] = {
    DataConfig: {"inputs": ["a.jsonl"], "tokenizer": "tok"},
    LabelConfig: {"traces": "t"},
    GradeConfig: {"samples": "s", "problems": "p"},
    TrainConfig: {"data": "d", "model": "m"},
    GenerateConfig: {"model": "m", "problems": ["p.jsonl"]},
    ReportConfig: {"experiment": "e", "runs": [RUN]},
    ImportConfig: {"inputs": [{"path": "a.jsonl"}]},
    DecontamConfig: {"traces": "t", "problems": ["p.jsonl"]},
}

# changed values where the type alone does not give a valid one (nested models, dates, ...)
OVERRIDES: dict[type[StageConfig], dict[str, list[Any]]] = {
    DataConfig: {
        "columns": [{"question": "prompt"}],
        "joins": [[{"name": "j", "on": ["id"], "from": ["x.jsonl"]}]],
        "subsets": [[{"name": "r10", "kind": "random", "size": 10}]],
    },
    GenerateConfig: {"filters": [{"limit": 3}], "pool": [{"replicas": 2}],
                     "rope_scaling": [{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}],
                     "hf_overrides": [{"max_position_embeddings": 65536}]},
    ReportConfig: {
        "runs": [[RUN, {**RUN, "run_id": "b"}]],
        "date_windows": [[("2024-01-01", "2024-06-01")]],
        "costs": [[{"stage": "train", "seconds": 1.0}]],
        "comparisons": [[{"name": "c", "kind": "series", "arms": ["a"], "runs": {"a": ["a"]}}]],
        "ks": [[1, 2]],
    },
    ImportConfig: {"inputs": [[{"path": "a.jsonl"}, {"path": "b.jsonl"}]]},
}


def candidates(ann: Any, cur: Any) -> list[Any]:
    """Values of type `ann` that differ from `cur` (the caller keeps the first one the model accepts)."""
    origin, args = get_origin(ann), get_args(ann)
    if origin is Literal:
        return [a for a in args if a != cur]
    if origin in (Union, types.UnionType):
        out: list[Any] = [] if cur is None else [None] if type(None) in args else []
        for a in args:
            if a is not type(None):
                out += candidates(a, cur if _fits(a, cur) else None)
        return out
    if ann is bool:
        return [True, False] if cur is None else [not cur]
    if ann is int:
        return [3, 2, 1, 1024] if cur is None else [cur + 1, cur * 2, max(cur - 1, 0), 3]
    if ann is float:
        return [0.5, 10.0] if not cur else [cur / 2, cur * 2, cur + 0.5]
    if ann is str:
        return [(cur or "") + "x"]
    if origin is list:
        return [[*(cur or []), c] for c in candidates(args[0], None)[:2]] + ([[]] if cur else [])
    if origin is tuple and cur is not None:
        return [(cur[0] / 2, *cur[1:])] if isinstance(cur[0], float) else []
    if origin is dict or ann is dict:
        return [{"x": 1.0}]
    return []


def _fits(ann: Any, value: Any) -> bool:
    if value is None:
        return False
    base = get_origin(ann) or ann
    return isinstance(base, type) and isinstance(value, base)


def changed(model: type[StageConfig], field: str) -> StageConfig:
    """A valid instance of `model` that differs from its minimal one in `field` only."""
    base = model.model_validate(MINIMAL[model])
    before = base.model_dump(mode="json")[field]
    info = model.model_fields[field]
    tries = OVERRIDES.get(model, {}).get(field) or candidates(info.annotation, getattr(base, field))
    for value in tries:
        try:
            cfg = model.model_validate({**MINIMAL[model], field: value})
        except (ValidationError, ConfigError):
            continue
        if cfg.model_dump(mode="json")[field] != before:
            return cfg
    raise AssertionError(f"no valid changed value for {model.__name__}.{field}: add one to OVERRIDES")


def _stage_configs() -> set[type[StageConfig]]:
    """Every StageConfig subclass that a stage runs with (a base that others extend is left out)."""
    seen, todo = set(), list(StageConfig.__subclasses__())
    while todo:
        cls = todo.pop()
        seen.add(cls)
        todo += cls.__subclasses__()
    return {c for c in seen if not c.__subclasses__()}


def test_every_stage_config_is_covered():
    assert _stage_configs() == set(MINIMAL)


@pytest.mark.parametrize("model", list(MINIMAL), ids=lambda m: m.__name__)
def test_hash_follows_hash_exclude_field_by_field(model):
    base = model.model_validate(MINIMAL[model]).config_hash()
    for field in model.model_fields:
        cfg = changed(model, field)
        if field in model.hash_exclude:
            assert cfg.config_hash() == base, f"{model.__name__}.{field} is in hash_exclude but changes the hash"
        else:
            assert cfg.config_hash() != base, f"{model.__name__}.{field} changes outputs but not the hash"


def _old_rule_hash(cfg: StageConfig, added_later: tuple[str, ...] = ()) -> str:
    """The hash as computed before `hash_exclude_if_none` existed: every field but hash_exclude (and but
    the fields `added_later`, which configs of that time did not have)."""
    payload = cfg.model_dump(mode="json", exclude=set(cfg.hash_exclude) | set(added_later))
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def test_explicit_max_seq_len_hashes_as_before():
    """Configs that set max_seq_len (every finished run's) keep their directories and markers."""
    for seq in (1024, 32768):
        cfg = TrainConfig(data="data/x-0123456789ab", model="/models/m", max_seq_len=seq, epochs=2)
        assert cfg.config_hash() == _old_rule_hash(cfg, added_later=("batch_unit", "last_step"))
        assert json.loads(json.dumps(cfg.model_dump(mode="json")))["max_seq_len"] == seq
    unset = TrainConfig(data="data/x-0123456789ab", model="/models/m")
    assert unset.max_seq_len is None and unset.config_hash() != _old_rule_hash(unset)
    report = ReportConfig(experiment="e", runs=[RUN], max_tokens=32768)
    assert report.config_hash() == _old_rule_hash(report, added_later=("comparisons",))


def test_apply_overrides_nests_and_parses_yaml_values():
    data = {"train": {"epochs": 5}, "name": "x"}
    out = apply_overrides(data, ["train.epochs=2", "train.adam_betas=[0.8, 0.9]", "a.b.c=true", "n=null",
                                 "s=hello world", "e=", "f=1.5e-4"])
    assert out == {"train": {"epochs": 2, "adam_betas": [0.8, 0.9]}, "name": "x", "a": {"b": {"c": True}},
                   "n": None, "s": "hello world", "e": "", "f": 1.5e-4}
    assert data == {"train": {"epochs": 5}, "name": "x"}  # the input is not changed
    assert apply_overrides(data, ["expr=a=b"])["expr"] == "a=b"  # only the first = splits


def test_apply_overrides_errors():
    with pytest.raises(ConfigError, match=r"'epochs' must look like key=value"):
        apply_overrides({}, ["epochs"])
    with pytest.raises(ConfigError, match=r"'train.epochs.x=1': 'epochs' is not a mapping"):
        apply_overrides({"train": {"epochs": 5}}, ["train.epochs.x=1"])


def test_build_error_names_the_file_and_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"invalid TrainConfig in train\.yaml:\n  field epochs: ") as err:
        build(TrainConfig, {"data": "d", "model": "m", "epochs": 0}, source="train.yaml")
    assert "field model" not in str(err.value)
    with pytest.raises(ConfigError, match=r"field columns\.question: "):
        build(DataConfig, {"inputs": ["a"], "tokenizer": "t", "columns": {"question": 3}}, source="d.yaml")
    path = tmp_path / "train.yaml"
    path.write_text("data: d\nmodel: m\nwarmup_ratio: 2\n")
    with pytest.raises(ConfigError, match=rf"invalid TrainConfig in {path}:\n  field warmup_ratio: "):
        load(TrainConfig, path)
    with pytest.raises(ConfigError, match=r"field bogus: "):
        load(TrainConfig, path, ["warmup_ratio=0.1", "bogus=1"])


def test_every_registered_stage_config_is_checked():
    """A stage added to the registry gets the hash-rule check above as soon as it has a minimal instance."""
    from valley import registry

    assert {record.config_class() for record in registry.STAGES.values()} == set(MINIMAL)
