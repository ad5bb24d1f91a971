"""`DecontamConfig`: which traces to check against which evaluation problems, and how overlap is matched."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from valley.config import StageConfig
from valley.decontam.match import KINDS


class DecontamConfig(StageConfig):
    """`valley decontam`: flag (and optionally drop) training traces that overlap the evaluation problems."""

    traces: str  # a data-stage output dir (traces/ + subsets/), or Parquet traces: file, dir or glob
    problems: list[str] = Field(min_length=1)  # LCB jsonl/json(.gz) files or problems Parquet tables
    question_field: str = "question"
    id_field: str = "id"
    title_field: str | None = None  # a column holding the training question's title, if the corpus has one
    url_field: str | None = None  # a column holding the problem's URL, if the corpus has one
    ngram: int = Field(13, ge=3)
    min_overlap: float = Field(0.2, ge=0, le=1)  # share of an evaluation problem's n-grams found in the question
    min_shared: int = Field(1, ge=1)
    max_problem_frequency: int = Field(3, ge=1)  # n-grams in more evaluation problems are boilerplate
    kinds: list[Literal["ngram", "title", "url"]] = Field(default_factory=lambda: list(KINDS), min_length=1)
    min_title_words: int = Field(2, ge=1)  # shorter titles ("Sum") are too common to mean the same problem
    drop: bool = False  # write traces/ without the contaminated traces (and them to rejects/)
    # Execution knobs (do not change outputs).
    batch_size: int = Field(2048, ge=1)
    concurrency: int | None = Field(None, ge=1)  # matcher actors; default: the cluster's CPUs less one (reads)

    hash_exclude: ClassVar[frozenset[str]] = frozenset({"name", "batch_size", "concurrency"})
