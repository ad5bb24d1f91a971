"""`ImportConfig`: the generation files of other harnesses to import, and which of their problems to keep."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from valley.config import StageConfig
from valley.imports.formats import model_from_path


class ImportInput(BaseModel):
    """One file = one run. `model` is the run label (default: from the file name)."""

    model_config = ConfigDict(extra="forbid")

    path: str
    format: Literal["auto", "lcb", "skythought", "jsonl"] = "auto"
    model: str | None = None
    temperature: str | None = None  # SkyThought files with results for several temperatures

    def label(self) -> str:
        return self.model or model_from_path(self.path)


class ImportConfig(StageConfig):
    """`valley import`: turn existing generations into a samples table for grade and report."""

    inputs: list[ImportInput] = Field(min_length=1)
    problems: list[str] = []  # LCB problem files (jsonl/json, .gz ok) supplying the tests to grade against
    response_from: Literal["output", "code"] = "output"  # lcb_runner: raw output_list, or code_list fenced
    problem_sample: int | None = Field(default=None, ge=1)  # per file: this many problems, seeded choice
    question_ids: list[str] | None = None  # keep only these problems
    seed: int = 0
    part_size: int = Field(default=2048, ge=1)

    hash_exclude: ClassVar[frozenset[str]] = frozenset({"name", "part_size"})

    @model_validator(mode="after")
    def _unique_labels(self) -> ImportConfig:
        labels = [i.label() for i in self.inputs]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"two inputs share the run label(s) {dupes}; set `model` for each input")
        return self
