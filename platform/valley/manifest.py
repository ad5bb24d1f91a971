"""`manifest.json`: what a finished data run holds, the contract between the data stage and its readers.

The data stage writes it (`Manifest.write`); the trainer sizes a run from it and the capacity estimate
reads token counts from it (`Manifest.read`). Fields beyond these are kept as they are (`extra="allow"`),
so a manifest written by newer code still reads; fields a reader relies on are typed here.

The label audit of each subset (`audit/<subset>.json`, `SubsetAudit`) is part of the same contract: the
data stage computes it (valley.data.audit), the report reads it (`read_audit`, `audit_rows`); it lives on
this floor so that readers need not import the data stage.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from valley.errors import ConfigError
from valley.storage import Storage

MANIFEST = "manifest.json"
AUDIT_DIR = "audit"


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
    audit: dict[str, Any] | None = None  # SubsetAudit.headline() of audit/<subset>.json; None before audits


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


class SubsetAudit(BaseModel):
    """The label audit of one subset: are its documents fit to train a student that stops?

    Counts are over the subset's traces (`traces`) or the documents trained on (`documents`); shares are
    the counts over those. A truncated document has no end of turn left, so the end-of-turn check covers
    the documents that end within max_seq_len (`eot_checked`); truncation is reported on its own.
    """

    model_config = ConfigDict(extra="allow")

    subset: str
    eot_token: str  # the special token the chat template writes after a reply (valley.data.eot)
    eot_id: int
    pad_id: int | None = None
    max_seq_len: int
    overlength: str  # what happened to traces longer than max_seq_len: "drop" or "truncate"
    traces: int
    documents: int
    eot_checked: int
    eot_in_loss: int
    eot_missing_ids: list[str] = Field(default_factory=list)  # the first few whose end of turn is not trained
    truncated: int  # traces longer than max_seq_len (truncated or dropped, per `overlength`)
    truncated_share: float
    truncated_ids: list[str] = Field(default_factory=list)
    closed_think: int  # documents whose trained reply holds one closed <think> block
    closed_think_share: float
    fenced_after_think: int  # ... and a fenced (```) answer after it
    fenced_after_think_share: float
    length_percentiles: dict[str, int] = Field(default_factory=dict)  # p50/p90/p99/max tokens of each trace, uncut
    tokens: int  # tokens of the documents as trained
    loss_tokens: int
    think_tokens: int  # of those, tokens inside <think> ... </think>
    loss_tokens_share: float
    think_tokens_share: float

    @property
    def eot_missing(self) -> int:
        return self.eot_checked - self.eot_in_loss

    def refusal(self) -> str | None:
        """Why the subset must not be trained on (some document's end of turn is outside the loss), or None."""
        if not self.eot_missing:
            return None
        where = (f"subset {self.subset!r}: {self.eot_missing} of {self.eot_checked} documents leave the end-of-turn "
                 f"token {self.eot_token!r} (id {self.eot_id}) outside the loss, e.g. trace ids {self.eot_missing_ids}")
        if self.pad_id == self.eot_id:
            cause = ("likely cause: pad = eos and the mask drops it (masking padding by token id, "
                     "labels[input_ids == pad_id] = -100, masks every end of turn too)")
        else:
            cause = "likely cause: a template or mask step whose assistant span ends before the end-of-turn token"
        return f"{where}; {cause}; a student trained on it never learns to stop"

    def warnings(self, max_truncated_share: float) -> list[str]:
        """Warnings that do not refuse the subset: more traces cut by max_seq_len than `max_truncated_share`."""
        if self.truncated_share <= max_truncated_share:
            return []
        done = "truncated" if self.overlength == "truncate" else "dropped"
        return [f"subset {self.subset!r}: {self.truncated} of {self.traces} traces ({self.truncated_share:.1%}) are "
                f"longer than max_seq_len={self.max_seq_len} and were {done}, above max_truncated_share="
                f"{max_truncated_share:g}; e.g. trace ids {self.truncated_ids}"]

    def headline(self) -> dict[str, Any]:
        """The few numbers the manifest's SubsetSummary carries (the file has the rest)."""
        return {"eot_in_loss": self.eot_in_loss, "eot_checked": self.eot_checked,
                "truncated_share": self.truncated_share, "closed_think_share": self.closed_think_share,
                "fenced_after_think_share": self.fenced_after_think_share}

    def write(self, storage: Storage, stage_dir: str) -> None:
        storage.write_json(self.model_dump(mode="json"), stage_dir, AUDIT_DIR, f"{self.subset}.json")


def read_audit(storage: Storage, data_dir: str, subset: str) -> SubsetAudit | None:
    """The label audit of `subset` in a data run, or None for runs written before audits existed."""
    if not storage.exists(data_dir, AUDIT_DIR, f"{subset}.json"):
        return None
    return SubsetAudit.model_validate(storage.read_json(data_dir, AUDIT_DIR, f"{subset}.json"))


def audit_rows(audit: SubsetAudit) -> list[tuple[str, str]]:
    """(what, value) rows of a small table for the report, the same labels for every audit (so runs line
    up side by side); shares are of the documents trained on unless the label names traces."""
    p = audit.length_percentiles
    lengths = " / ".join(f"{p[k]:,}" for k in ("p50", "p90", "p99", "max") if k in p) or "-"
    return [
        ("end of turn in loss", f"{audit.eot_in_loss:,}/{audit.eot_checked:,} ({audit.eot_token})"),
        ("pad = end of turn", "yes" if audit.pad_id == audit.eot_id else "no"),
        ("traces cut by max_seq_len", f"{audit.truncated_share:.1%} ({audit.truncated:,}/{audit.traces:,} over "
                                      f"{audit.max_seq_len:,}, {audit.overlength})"),
        ("closed <think>", f"{audit.closed_think_share:.1%}"),
        ("fenced answer after </think>", f"{audit.fenced_after_think_share:.1%}"),
        ("trace tokens p50 / p90 / p99 / max", lengths),
        ("think share of tokens", f"{audit.think_tokens_share:.1%}"),
        ("loss share of tokens", f"{audit.loss_tokens_share:.1%}"),
    ]
