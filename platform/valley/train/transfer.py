"""Moving Hugging Face directories between the storage root (local or s3://) and a worker's local disk.

(Which storage a user path lives in is `Storage.resolve`.)
"""

from __future__ import annotations

import posixpath
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from valley.storage import Storage


def local_dir(storage: Storage, rel: str, cache_root: str | None = None) -> str:
    """A local directory with the files of `rel` (the directory itself when the storage is local)."""
    if storage.local:
        return storage.path(rel) if rel else storage.base
    dest = Path(tempfile.mkdtemp(prefix="valley-dl-", dir=cache_root))
    base = storage.path(rel) if rel else storage.base
    for info in storage.fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        target = dest / posixpath.relpath(info.path, base)
        target.parent.mkdir(parents=True, exist_ok=True)
        with storage.fs.open_input_stream(info.path) as src, open(target, "wb") as out:
            while chunk := src.read(64 << 20):
                out.write(chunk)
    return str(dest)


def upload_dir(local: str, storage: Storage, *parts: str) -> list[str]:
    """Copy every file of a local directory under `parts` of the storage, each written atomically."""
    written = []
    for p in sorted(Path(local).rglob("*")):
        if p.is_file():
            rel = p.relative_to(local).as_posix()
            storage.write_bytes(p.read_bytes(), *parts, *rel.split("/"))
            written.append(rel)
    return written
