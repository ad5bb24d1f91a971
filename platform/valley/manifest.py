"""`manifest.json`: what a finished data run holds, the contract between the data stage and its readers.

The data stage writes it (`Manifest.write`); the trainer sizes a run from it and the capacity estimate
reads token counts from it (`Manifest.read`). Fields beyond these are kept as they are (`extra="allow"`),
so a manifest written by newer code still reads; fields a reader relies on are typed here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from valley.errors import ConfigError
from valley.storage import Storage

MANIFEST = "manifest.json"


def pad_of(tokenizer: Any) -> tuple[int, str]:
    """(pad id, which token it is): the tokenizer's pad token, else its eos token, else 0. The data stage
    pads packed rows with it and records it; the trainer pads micro-batches with the recorded id."""
    if getattr(tokenizer, "pad_token_id", None) is not None:
        return int(tokenizer.pad_token_id), "pad_token_id"
    if getattr(tokenizer, "eos_token_id", None) is not None:
        return int(tokenizer.eos_token_id), "eos_token_id"
    return 0, "default"


class SubsetSummary(BaseModel):
    """One subset of a data run: traces chosen, documents packed, tokens, where its packed rows are."""

    model_config = ConfigDict(extra="allow")

    rows: int  # traces chosen for the subset
    eligible: int | None = None  # traces its definition allowed before the size was taken (its pool)
    docs: int = 0  # documents packed (traces minus those dropped as too long)
    sequences: int = 0  # packed rows
    tokens: int = 0
    loss_tokens: int = 0
    pack_efficiency: float = 0.0  # tokens / row slots
    truncated: int = 0
    dropped: dict[str, int] = Field(default_factory=dict)
    shards: int = 0
    path: str | None = None  # its tokenized/ directory, under the storage root


class Manifest(BaseModel):
    """A finished data run, as `manifest.json` records it."""

    model_config = ConfigDict(extra="allow")

    stage_dir: str | None = None
    config_hash: str | None = None
    accepted: int = 0
    rejected: int = 0
    subsets: dict[str, SubsetSummary] = Field(default_factory=dict)
    seq_len: int | None = None  # the row length rows were packed to
    packing: str | None = None
    tokenizer: str | None = None
    pad_id: int | None = None  # None: written before the data stage recorded it (see valley.legacy)
    pad_id_from: str | None = None

    def subset(self, name: str, where: str) -> SubsetSummary:
        """The named subset, or a ConfigError listing those the run has."""
        if name not in self.subsets:
            raise ConfigError(f"subset {name!r} is not in {where}/{MANIFEST} (has: {sorted(self.subsets)})")
        return self.subsets[name]

    def write(self, storage: Storage, stage_dir: str) -> None:
        storage.write_json(self.model_dump(mode="json", exclude_none=True), stage_dir, MANIFEST)

    @classmethod
    def read(cls, storage: Storage, *parts: str) -> Manifest:
        return cls.model_validate(storage.read_json(*parts, MANIFEST))

    @classmethod
    def from_fields(cls, **fields: Any) -> Manifest:
        return cls.model_validate(fields)
