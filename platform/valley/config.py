"""Configuration: the pydantic base every stage config derives from, YAML load/dump, overrides.

Each stage keeps its own config model beside its code (`valley.<stage>.config`); this module gives
them one hashing rule (the content hash that names output directories and marks them complete) and
one way to load them from YAML with `--set key.sub=value` overrides.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from valley.errors import ConfigError

C = TypeVar("C", bound="StageConfig")


class StageConfig(BaseModel):
    """Base of every stage config: strict fields, a stable content hash, a run name."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = "default"

    # Fields that change how a stage runs but not what it produces (parallelism, addresses, logging).
    hash_exclude: ClassVar[frozenset[str]] = frozenset({"name"})
    # Fields left out of the hash while None: optional fields added after configs that set them were
    # hashed (None = take the value from an earlier stage's output, which the hash already names).
    hash_exclude_if_none: ClassVar[frozenset[str]] = frozenset()

    def run_resources(self) -> dict[str, float]:
        """What one run holds on the cluster for its whole length, as one request (a placement group, a pool
        of replicas). Empty: the stage spreads short tasks over whatever CPUs (or `grader` slots) are free."""
        return {}

    def config_hash(self) -> str:
        """sha256 over the canonical JSON of every field that can change the outputs."""
        unset = {f for f in self.hash_exclude_if_none if getattr(self, f) is None}
        payload = self.model_dump(mode="json", exclude=set(self.hash_exclude) | unset)
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=3` -> (["a", "b"], 3); the value is parsed as YAML so numbers, lists and bools work."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (dots for nesting)")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw != "" else ""


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    out = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        keys, value = parse_override(item)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k!r} is not a mapping")
        node[keys[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def build(model: type[C], data: dict, *, source: str = "<config>") -> C:
    """Validate `data` into `model`, turning pydantic's error into one that names the file and field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = [f"invalid {model.__name__} in {source}:"]
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "<root>"
            lines.append(f"  field {loc}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from exc


def load(model: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    data = load_yaml(path) if path else {}
    data = apply_overrides(data, overrides or [])
    return build(model, data, source=str(path or "<overrides>"))
