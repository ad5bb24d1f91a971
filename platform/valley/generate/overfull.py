"""Repairs an over-full `samples/` directory instead of refusing it (issue 28).

Two writers that overlapped on one stage directory before the stage lease existed, or a part copied in
twice between clusters, leave more copies of a sample than the config asks, and the stage's own count
check would then fail every re-run for ever. Before the stage counts, it keeps exactly one copy of each
asked (question_id, sample_idx), the one in the part with the lowest name (first row within a part), and
moves every other row to `set_aside/` with the part it came from and why ("duplicate", or "not_asked"
for a sample of a problem or index the config does not ask). Nothing is dropped silently, and a
directory that is not over-full is only read, never rewritten.

A part is repaired in two atomic steps through `Storage`: its surplus is written to `set_aside/` first,
then the part is rewritten with the rows it keeps (or removed when it keeps none). A kill between the two
leaves the part as it was; the re-run finds the same surplus and writes the same set-aside file again
(its name comes from its content), so a crash neither loses nor doubles a row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from dataclasses import dataclass, field

import pyarrow as pa

from valley import schemas
from valley.generate.writer import SAMPLES_DIR
from valley.storage import Storage

log = logging.getLogger(__name__)

SET_ASIDE_DIR = "set_aside"
FROM_COLUMN = "set_aside_from"  # the samples part (file name) a set-aside row was taken from
REASON_COLUMN = "set_aside_reason"
DUPLICATE = "duplicate"  # another copy of the same (question_id, sample_idx) is kept
NOT_ASKED = "not_asked"  # the config asks for no such problem or sample index

Key = tuple[str, int]


@dataclass
class SetAside:
    """What `set_aside_surplus` found: the keys kept on disk and how many rows it moved aside, by reason."""

    kept: set[Key] = field(default_factory=set)
    duplicates: int = 0
    not_asked: int = 0
    parts_rewritten: list[str] = field(default_factory=list)
    parts_removed: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.duplicates + self.not_asked


def _plan(storage: Storage, stage_dir: str, asked: set[Key]) -> tuple[set[Key], dict[str, dict[int, str]]]:
    """(keys kept, part -> {row: reason} of the rows to move aside), reading only the key columns. Parts
    are visited in name order, so the copy kept is the same whoever repairs the directory."""
    kept: set[Key] = set()
    surplus: dict[str, dict[int, str]] = {}
    for part in storage.list(stage_dir, SAMPLES_DIR, suffix=".parquet"):
        keys = storage.read_parquet(stage_dir, SAMPLES_DIR, part, columns=["question_id", "sample_idx"])
        rows = zip(keys.column("question_id").to_pylist(), keys.column("sample_idx").to_pylist(), strict=True)
        for row, key in enumerate(rows):
            if key not in asked:
                surplus.setdefault(part, {})[row] = NOT_ASKED
            elif key in kept:
                surplus.setdefault(part, {})[row] = DUPLICATE
            else:
                kept.add(key)
    return kept, surplus


def _set_aside_name(part: str, rows: pa.Table) -> str:
    """A name from the part and the rows themselves: a repair redone after a kill overwrites its own file
    with the same rows, a later repair of the same part never overwrites an earlier one's."""
    digest = hashlib.sha256(part.encode())
    digest.update(json.dumps(rows.to_pylist(), sort_keys=True, default=str).encode())
    return f"{posixpath.splitext(part)[0]}-{digest.hexdigest()[:12]}.parquet"


def set_aside_surplus(storage: Storage, stage_dir: str, asked: set[Key]) -> SetAside:
    """Keep one copy of each asked sample under `samples/`; move every other row to `set_aside/` (rows as
    they were, plus the part they came from and the reason). Parts without surplus are not touched."""
    kept, surplus = _plan(storage, stage_dir, asked)
    found = SetAside(kept=kept)
    for part, reasons in surplus.items():
        table = storage.read_parquet(stage_dir, SAMPLES_DIR, part)
        moved = table.take(pa.array(sorted(reasons), pa.int64()))
        moved = moved.append_column(FROM_COLUMN, pa.array([part] * moved.num_rows, pa.string()))
        moved = moved.append_column(REASON_COLUMN, pa.array([reasons[r] for r in sorted(reasons)], pa.string()))
        storage.write_parquet(moved, stage_dir, SET_ASIDE_DIR, _set_aside_name(part, moved))
        keep = [r for r in range(table.num_rows) if r not in reasons]
        if keep:
            storage.write_parquet(table.take(pa.array(keep, pa.int64())), stage_dir, SAMPLES_DIR, part,
                                  schema=schemas.SAMPLES)
            found.parts_rewritten.append(part)
        else:
            storage.remove(stage_dir, SAMPLES_DIR, part)
            found.parts_removed.append(part)
        found.duplicates += sum(1 for r in reasons.values() if r == DUPLICATE)
        found.not_asked += sum(1 for r in reasons.values() if r == NOT_ASKED)
    if found.total:
        log.warning("%s held more samples than its config asks: set aside %d duplicate(s) and %d sample(s) "
                    "the config does not ask for (%d part(s) rewritten, %d removed) to %s; one copy of each "
                    "sample is kept", storage.uri(stage_dir, SAMPLES_DIR), found.duplicates, found.not_asked,
                    len(found.parts_rewritten), len(found.parts_removed), storage.uri(stage_dir, SET_ASIDE_DIR))
    return found
