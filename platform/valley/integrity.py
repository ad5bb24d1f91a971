"""What a finished stage run wrote, and whether it is still there as written.

A stage's `_SUCCESS` marker lists every file under its directory (`files`: path relative to the stage
directory -> [size, sha256]). Files the driver wrote through `Storage` are hashed while being written;
files other processes wrote (Ray workers' parts, DeepSpeed checkpoints, `save_pretrained`) are read once
when the marker is written. Directories a stage names in `size_only` (a training run's resumable
`checkpoints/`, which later stages never read and which can be hundreds of GB) are listed with their
size only.

Readers check sizes always (`run_stage` on a finished run, cheap: one listing); `valley verify` checks
hashes too. A marker written before this contract has no `files` and is reported as unchecked.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from valley.errors import ValleyError

__all__ = ["Damage", "DamagedOutputError", "HashingSink", "check_files", "digest_file", "file_facts"]

HASH = "sha256"
UNHASHED = ""  # the digest recorded for files under a stage's size_only directories
CHUNK = 8 << 20


class DamagedOutputError(ValleyError):
    """A finished stage run's files no longer match its marker."""


@dataclass(frozen=True)
class Damage:
    """One file of a finished run that is not as its marker says."""

    path: str  # relative to the stage directory
    problem: str  # "missing", "size 12 (marker says 40)", "content changed (sha256 …)"

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class HashingSink:
    """A writable file object over an output stream that hashes and counts what passes through it, so a
    file's digest costs no second read. pyarrow's Parquet writer and plain `write` calls both use it."""

    def __init__(self, stream: Any):
        self.stream = stream
        self.hash = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.hash.update(view)
        self.size += view.nbytes
        self.stream.write(data)
        return view.nbytes

    def flush(self) -> None:
        self.stream.flush()

    def tell(self) -> int:
        return self.size

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:  # the stream's owner closes it; pyarrow only marks this wrapper closed
        self.closed = True

    def facts(self) -> tuple[int, str]:
        return self.size, self.hash.hexdigest()


def digest_file(fs: pafs.FileSystem, path: str) -> str:
    """sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_facts(fs: pafs.FileSystem, base: str, infos: Iterable[pafs.FileInfo],
               known: Mapping[str, tuple[int, str]], size_only: tuple[str, ...] = ()) -> dict[str, list]:
    """The marker's `files` for a stage directory at `base`: rel path -> [size, sha256]. A file this
    process wrote (`known`: full path -> size, digest) keeps its digest while its size still matches (the
    stage lease keeps other writers out); any other file is read and hashed, except under `size_only`."""
    files: dict[str, list] = {}
    for info in infos:
        rel = posixpath.relpath(info.path, base)
        size = int(info.size or 0)
        seen = known.get(info.path)
        if any(rel == p.rstrip("/") or rel.startswith(p.rstrip("/") + "/") for p in size_only):
            digest = UNHASHED
        elif seen is not None and seen[0] == size:
            digest = seen[1]
        else:
            digest = digest_file(fs, info.path)
        files[rel] = [size, digest]
    return files


def check_files(fs: pafs.FileSystem, base: str, infos: Iterable[pafs.FileInfo], recorded: Mapping[str, Any],
                *, hashes: bool) -> list[Damage]:
    """Each recorded file that is missing, has another size, or (with `hashes`) other content."""
    present = {posixpath.relpath(i.path, base): i for i in infos}
    damage: list[Damage] = []
    for rel, (size, digest) in sorted(recorded.items()):
        info = present.get(rel)
        if info is None:
            damage.append(Damage(rel, "missing"))
        elif int(info.size or 0) != int(size):
            damage.append(Damage(rel, f"size {info.size} (marker says {size})"))
        elif hashes and digest != UNHASHED and digest_file(fs, info.path) != digest:
            damage.append(Damage(rel, f"content changed ({HASH} differs from the marker's)"))
    return damage
