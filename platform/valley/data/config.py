"""Configuration of the data stage: inputs, column mapping, validation, subsets, templating, packing."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from valley.config import StageConfig
from valley.data.conditions import Condition, as_condition, check_conditions
from valley.ordering import dependency_order

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


class MixPart(BaseModel):
    """One named part of a mixture: its share of the subset's size and what its traces must satisfy."""

    model_config = ConfigDict(extra="forbid")

    share: float = Field(gt=0, le=1)
    where: dict[str, Condition] = Field(default_factory=dict)

    @field_validator("where", mode="before")
    @classmethod
    def _bare_values(cls, value: Any) -> Any:
        return {k: as_condition(v) for k, v in value.items()} if isinstance(value, dict) else value


# fields added after configs were hashed: left out of a subset's serialised form while unset, so a subset
# written without them (every `kind`-only subset) hashes as before they existed
_DEFINITION_FIELDS = ("where", "per_question", "mix", "exclusive_of", "seed")


class SubsetSpec(BaseModel):
    """One training subset, defined as data. `kind` is a preset (`random`: any trace, `correct`/`incorrect`:
    the label, `easy`/`hard`: TACO's difficulty buckets, `all`: everything, unsized); `sources` and `where`
    narrow its pool further, `exclusive_of` removes the traces of other subsets, `per_question` keeps at
    most k answers per question, `mix` splits the size over named parts by share. Traces are taken in one
    seeded order (the data run's `seed`, or the subset's own), so the sizes of one definition nest: the
    1K subset is the first 1K of the 10K one.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["all", "random", "correct", "incorrect", "easy", "hard"] = "random"
    size: int | None = Field(default=None, gt=0)  # None: all eligible (balanced for correct/incorrect, easy/hard)
    sources: list[str] | None = None  # restrict the pool to these `source` values
    where: dict[str, Condition] | None = None
    per_question: int | None = Field(default=None, gt=0)
    mix: dict[str, MixPart] | None = None
    exclusive_of: list[str] | None = None  # names of other subsets of this data run
    seed: int | None = None  # this subset's own order (default: the data run's seed)

    @field_validator("where", mode="before")
    @classmethod
    def _bare_values(cls, value: Any) -> Any:
        return {k: as_condition(v) for k, v in value.items()} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _consistent(self) -> SubsetSpec:
        owner = f"subset {self.name!r}"
        for where in self.where_clauses():
            check_conditions(where, owner)
        if self.mix is not None:
            total = sum(p.share for p in self.mix.values())
            if abs(total - 1.0) > 1e-9:
                raise ValueError(f"{owner}: mix shares add up to {total:g}, not 1")
            if self.size is None:
                raise ValueError(f"{owner}: a mix needs a size")
        if self.kind == "all" and any(getattr(self, f) is not None for f in _DEFINITION_FIELDS):
            raise ValueError(f"{owner}: kind 'all' takes no conditions (use kind 'random' with where)")
        return self

    @model_serializer(mode="wrap")
    def _without_unset_definitions(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        return {k: v for k, v in data.items() if k not in _DEFINITION_FIELDS or v is not None}

    def where_clauses(self) -> list[dict[str, Condition]]:
        return [self.where or {}, *[p.where for p in (self.mix or {}).values()]]

    def reads_labels(self) -> bool:
        """Whether the subset selects on `correct` (which the label stage adds to traces that lack it)."""
        return self.kind in ("correct", "incorrect") or any("correct" in w for w in self.where_clauses())


class DataConfig(StageConfig):
    """`valley data`: ingest, validate, select subsets, template, tokenize and pack."""

    inputs: list[str]  # files or glob patterns: .jsonl, .jsonl.gz, .json, .parquet
    columns: ColumnMapping = Field(default_factory=ColumnMapping)
    joins: list[JoinSpec] = Field(default_factory=list)  # applied in order; a trace takes the first that applies
    tokenizer: str  # local Hugging Face tokenizer (or model) directory
    system_prompt: str | None = None  # None: the template's own default
    max_seq_len: int = Field(default=32768, gt=8)
    overlength: Literal["drop", "truncate"] = "drop"
    # the label audit warns when more of a subset's traces are longer than max_seq_len (output-neutral)
    max_truncated_share: float = Field(default=0.05, ge=0, le=1)
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

    hash_exclude: ClassVar[frozenset[str]] = frozenset({"name", "tokenize_concurrency", "max_truncated_share"})

    @model_validator(mode="after")
    def _unique_subset_names(self) -> DataConfig:
        names = [s.name for s in self.subsets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"subset names must be unique, repeated: {dupes}")
        for subset in self.subsets:
            unknown = sorted(set(subset.exclusive_of or []) - set(names))
            if unknown or subset.name in (subset.exclusive_of or []):
                raise ValueError(f"subset {subset.name!r}: exclusive_of names {unknown or [subset.name]}, not another "
                                 f"subset of this data run ({names})")
        exclusion_order(self.subsets)
        joins = [j.name for j in self.joins]
        if len(set(joins)) != len(joins):
            raise ValueError(f"join names must be unique: {joins}")
        return self


def exclusion_order(subsets: list[SubsetSpec]) -> list[SubsetSpec]:
    """The subsets in an order where each comes after those it must exclude; a cycle is refused."""
    by_name = {s.name: s for s in subsets}
    names = dependency_order({s.name: s.exclusive_of or [] for s in subsets}, "subsets exclude each other")
    return [by_name[n] for n in names]
