"""Configuration of the data stage: inputs, column mapping, validation, subsets, templating, packing."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from valley.config import StageConfig

TACO_EASY = ("easy", "medium")  # difficulty buckets of RQ3's easy side (data/difficulty.py)
TACO_HARD = ("medium_hard", "hard", "very_hard")
TracePreset = Literal["valley", "ocr", "ocr2", "taco", "codeforces_cots", "openthoughts", "rstar_seed_sft",
                      "messages", "alias"]
SourcePreset = Literal["taco", "apps", "code_contests", "codeforces", "lcb", "plain"]


class ColumnMapping(BaseModel):
    """Which source column feeds each trace field. `preset` fills the defaults; explicit fields win.

    A field left null takes the preset's column; a field the preset does not map is absent from the
    source: `id` is then derived from file and row, `question_id` from a hash of the question text,
    the rest stay null.
    """

    model_config = ConfigDict(extra="forbid")

    preset: TracePreset = "valley"
    id: str | None = None
    question_id: str | None = None
    question: str | None = None
    response: str | None = None
    source: str | None = None
    difficulty: str | None = None
    teacher: str | None = None
    correct: str | None = None
    tests: str | None = None
    starter_code: str | None = None
    finish_reason: str | None = None  # a reply whose finish reason is not "stop" is a reject
    messages: str | None = None  # column holding a chat: [{"role", "content"}, ...]
    explode_responses: bool | None = None  # a list-valued response column gives one trace per element
    constants: dict[str, str] = Field(default_factory=dict)  # e.g. {"source": "taco", "teacher": "r1"}


class JoinSpec(BaseModel):
    """Fill trace fields from a source dataset (OpenCodeReasoning-2's "-" questions, TACO tests/difficulty).

    `on` names the key parts, compared as text: `dataset` routes a trace to this join when its `dataset`
    column is one of `dataset` (default: the join's name); `split` is the name a file group is listed
    under in `from`; `index` is a row's 0-based position within its split (HF `ds[split][index]`, the
    split's files in sorted order); `question_hash` hashes the whitespace-normalised question text on both
    sides; any other name is read from the trace (its field or raw column) and from the source column
    `source_keys[name]` (default the same name). `take` maps trace fields to source columns (the
    preset's derived columns included); given, it replaces the preset's choice, so a join can take only
    tests and difficulty and keep the trace's own question. A trace whose key matches no
    source row (when `required`) or several is a reject naming the key.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str
    from_: dict[str, list[str]] | list[str] = Field(alias="from")  # {split: files/globs/URIs} or files
    preset: SourcePreset = "plain"
    on: list[str] = Field(min_length=1)
    dataset: list[str] | None = None  # values of the trace's `dataset` column this join serves
    source_keys: dict[str, str] = Field(default_factory=dict)
    take: dict[str, str] = Field(default_factory=dict)
    required: bool = True  # False: a trace without a match keeps its own fields (counted, not rejected)

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        """YAML 1.1 (PyYAML) reads a bare `on:` key as the boolean True (and JSON then writes it "true")."""
        if isinstance(data, dict) and "on" not in data:
            data = {("on" if k is True or k == "true" else k): v for k, v in data.items()}
        return data

    @property
    def splits(self) -> dict[str, list[str]]:
        return self.from_ if isinstance(self.from_, dict) else {"train": list(self.from_)}

    @property
    def datasets(self) -> list[str]:
        return self.dataset if self.dataset is not None else [self.name]


class SubsetSpec(BaseModel):
    """One training subset. Sizes of `random` subsets nest (smaller ⊂ larger) by construction."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["all", "random", "correct", "incorrect", "easy", "hard"]
    size: int | None = Field(default=None, gt=0)  # None: all eligible (balanced for correct/incorrect, easy/hard)
    sources: list[str] | None = None  # restrict the pool to these `source` values


class DataConfig(StageConfig):
    """`valley data`: ingest, validate, select subsets, template, tokenize and pack."""

    inputs: list[str]  # files or glob patterns: .jsonl, .jsonl.gz, .json, .parquet
    columns: ColumnMapping = Field(default_factory=ColumnMapping)
    joins: list[JoinSpec] = Field(default_factory=list)  # applied in order; a trace takes the first that applies
    tokenizer: str  # local Hugging Face tokenizer (or model) directory
    system_prompt: str | None = None  # None: the template's own default
    max_seq_len: int = Field(default=32768, gt=8)
    overlength: Literal["drop", "truncate"] = "drop"
    packing: Literal["pack", "none"] = "pack"
    max_chars: int = Field(default=1_000_000, gt=0)  # question + response; longer rows are rejected
    think_policy: Literal["record", "require_closed"] = "record"
    dedup_questions: bool = False  # keep one trace per question (the first in seeded order)
    subsets: list[SubsetSpec] = Field(default_factory=lambda: [SubsetSpec(name="all", kind="all")])
    seed: int = 0
    # Task sizes. All but tokenize_concurrency are hashed; group_docs changes the output: documents are
    # packed only with others of their group, so bigger groups pack tighter into fewer rows.
    chunk_rows: int = Field(default=20_000, gt=0)  # rows per ingest task
    join_partitions: int = Field(default=16, gt=0)  # hash partitions of the join (bounds each task's memory)
    group_docs: int = Field(default=4096, gt=0)  # docs per tokenize/pack task (bigger packs tighter)
    tokenize_concurrency: int | None = None  # tokenizer actors; None = CPUs available (output-neutral)

    hash_exclude: ClassVar[frozenset[str]] = frozenset({"name", "tokenize_concurrency"})

    @model_validator(mode="after")
    def _unique_subset_names(self) -> DataConfig:
        names = [s.name for s in self.subsets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"subset names must be unique, repeated: {dupes}")
        joins = [j.name for j in self.joins]
        if len(set(joins)) != len(joins):
            raise ValueError(f"join names must be unique: {joins}")
        return self
