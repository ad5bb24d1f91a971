"""Paths under one storage root (local or s3:// through pyarrow.fs), atomic writes, stage markers.

Every stage writes through this module so that a kill at any moment leaves either a finished file or
nothing visible: data goes to a hidden temporary name first and is renamed into place; a stage's
`_SUCCESS` marker (carrying the config hash) is written last and is what "done" means.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from valley import integrity
from valley.errors import ConfigError, StorageError

SUCCESS = "_SUCCESS"
TMP_PREFIX = "._tmp-"
MARKERS = (SUCCESS, "_LEASE")  # a stage directory's own bookkeeping, not its outputs (lease: valley/lease.py)


class Storage:
    """A storage root. `Storage("runs/exp1")` or `Storage("s3://bucket/prefix")`."""

    def __init__(self, root: str, *, create: bool = True):
        if "://" in root and not root.startswith("file://"):
            self.fs, base = _filesystem(root)
            self.scheme = root.split("://", 1)[0]
            self.local = False
        else:
            # Absolute at once: Ray workers run in other directories, and they rebuild the Storage
            # from `root`.
            root = os.path.abspath(root.removeprefix("file://"))
            self.fs, base = pafs.LocalFileSystem(), root
            self.scheme = ""
            self.local = True
        self.base = base.rstrip("/") or "/"
        self.root = root
        # path -> (size, digest) of files this process wrote, hashed while writing; mark_success takes the
        # digests of its stage's files from here instead of reading them again
        self._written: dict[str, tuple[int, str]] = {}
        if create:  # an input location (see `resolve`) is only read: nothing is made there
            try:
                self.fs.create_dir(self.base, recursive=True)
            except OSError as exc:
                raise StorageError.of("create the storage root", root, exc) from exc

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    def __getstate__(self) -> dict[str, Any]:  # a copy sent to a Ray worker starts its own record of writes
        return {**self.__dict__, "_written": {}}

    # ---- paths -------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """Filesystem path (for `self.fs`) of a location under the root; empty parts name the root itself."""
        parts = tuple(p for p in parts if p)
        return posixpath.join(self.base, *parts) if parts else self.base

    def uri(self, *parts: str) -> str:
        """The same location as a URI/path other libraries (Ray Data, Ray Train) understand."""
        p = self.path(*parts)
        return f"{self.scheme}://{p}" if self.scheme else p

    def relative(self, path: str) -> str:
        """Inverse of `path` and `uri`: the part under the root ("" for the root). A path that is already
        relative is taken as under the root; an absolute path or URI elsewhere is a ValueError."""
        rel = self._under_root(path)
        if rel is None:
            raise ValueError(f"{path} is not under the storage root {self.root}")
        return rel

    def _under_root(self, path: str) -> str | None:
        """The root-relative form of `path`, or None when it is an absolute location outside the root."""
        scheme, _, bare = path.rpartition("://")
        if not scheme and not os.path.isabs(bare):
            rel = posixpath.normpath(bare)
            return "" if rel == "." else rel
        if (scheme or "file") != (self.scheme or "file"):
            return None
        if bare == self.base or (bare.startswith(self.base.rstrip("/") + "/")):
            rel = posixpath.relpath(bare, self.base)
            return "" if rel == "." else rel
        return None

    def resolve(self, path: str, *, must_exist: bool = False) -> tuple[Storage, str]:
        """A user path -> (storage holding it, path relative to that storage).

        One rule for every stage input: a relative path is under this root, or, when only the working
        directory has it, there (LCB files, corpora beside the checkout); an absolute path or URI inside
        this root is that root-relative path; any other absolute path or URI is its own (read-only) root
        with "" as the path. `must_exist`: a location that is not there is a ConfigError naming `path`.
        """
        rel = self._under_root(path)
        here_only = ("://" not in path and not os.path.isabs(path) and bool(rel) and not self.exists(rel)
                     and os.path.exists(path))
        if rel is not None and not here_only:
            found: tuple[Storage, str] = (self, rel)
        else:
            found = Storage(path if "://" in path else os.path.abspath(path), create=False), ""
        if must_exist and not found[0].exists(found[1]):
            raise ConfigError(f"{path} does not exist")
        return found

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def makedirs(self, *parts: str) -> str:
        p = self.path(*parts)
        self.fs.create_dir(p, recursive=True)
        return p

    def list(self, *parts: str, suffix: str = "") -> list[str]:
        """Finished files directly under a directory (temporaries and markers hidden), sorted."""
        base = self.path(*parts)
        info = self.fs.get_file_info(base)
        if info.type == pafs.FileType.NotFound:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=False))
        names = [
            i.base_name
            for i in infos
            if i.type == pafs.FileType.File
            and not i.base_name.startswith((TMP_PREFIX, "_"))
            and i.base_name.endswith(suffix)
        ]
        return sorted(names)

    def list_dirs(self, *parts: str) -> list[str]:
        """Directories directly under a directory (temporaries hidden), sorted; [] when it does not exist."""
        base = self.path(*parts)
        if self.fs.get_file_info(base).type != pafs.FileType.Directory:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=False))
        return sorted(i.base_name for i in infos
                      if i.type == pafs.FileType.Directory and not i.base_name.startswith(TMP_PREFIX))

    def modified(self, *parts: str) -> float:
        """Modification time of a file in seconds since the epoch (0 where the filesystem keeps none)."""
        mtime = self.fs.get_file_info(self.path(*parts)).mtime
        return mtime.timestamp() if mtime is not None else 0.0

    def remove(self, *parts: str) -> None:
        p = self.path(*parts)
        info = self.fs.get_file_info(p)
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(p)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(p)

    def move(self, source: tuple[str, ...], target: tuple[str, ...]) -> None:
        """Move one file within the root (a rename where the filesystem has one, else copy then delete)."""
        src, dst = self.path(*source), self.path(*target)
        self.fs.create_dir(posixpath.dirname(dst), recursive=True)
        if self.local:
            os.replace(src, dst)
        else:
            self.fs.copy_file(src, dst)
            self.fs.delete_file(src)

    def clean_temporaries(self, *parts: str) -> int:
        """Delete temporaries a killed writer left under a directory; returns how many."""
        base = self.path(*parts)
        if self.fs.get_file_info(base).type == pafs.FileType.NotFound:
            return 0
        stale = [i.path for i in self.fs.get_file_info(pafs.FileSelector(base, recursive=True))
                 if i.type == pafs.FileType.File and i.base_name.startswith(TMP_PREFIX)]
        for path in stale:
            self.fs.delete_file(path)
        return len(stale)

    # ---- atomic writes -----------------------------------------------------------------------
    def _tmp_for(self, final: str) -> str:
        d, name = posixpath.split(final)
        return posixpath.join(d, f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{name}")

    def check_writable(self) -> None:
        """Write and remove a probe file at the root, so that a read-only, full or vanished root is refused
        with its path before any work starts rather than when the first result is saved."""
        probe = posixpath.join(self.base, f"{TMP_PREFIX}probe-{uuid.uuid4().hex[:12]}")
        try:
            with self.fs.open_output_stream(probe) as f:
                f.write(b"valley")
            self.fs.delete_file(probe)
        except OSError as exc:
            raise StorageError.of("write to the storage root", self.root, exc) from exc

    def write_bytes(self, data: bytes, *parts: str) -> str:
        final = self.path(*parts)
        with self._writing(final) as tmp, self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self._written[final] = (len(data), hashlib.sha256(data).hexdigest())
        return final

    def write_text(self, text: str, *parts: str) -> str:
        return self.write_bytes(text.encode("utf-8"), *parts)

    def write_json(self, obj: Any, *parts: str) -> str:
        return self.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", *parts)

    def write_parquet(self, table: pa.Table, *parts: str, schema: pa.Schema | None = None, **kwargs: Any) -> str:
        """Write a Parquet file atomically (temporary name, then rename)."""
        if schema is not None:
            table = conform(table, schema)
        final = self.path(*parts)
        kwargs.setdefault("compression", "zstd")
        with self._writing(final) as tmp, self.fs.open_output_stream(tmp) as stream:
            sink = integrity.HashingSink(stream)
            pq.write_table(table, sink, **kwargs)
        self._written[final] = sink.facts()
        return final

    @contextlib.contextmanager
    def _writing(self, final: str) -> Iterator[str]:
        """A temporary name for `final`, renamed into place when the block ends. A write that fails (a full
        disk, a read-only or vanished root, an object store timing out) removes its temporary and raises
        StorageError naming the file, so nothing half written is ever visible under its final name."""
        tmp = self._tmp_for(final)
        try:
            self.fs.create_dir(posixpath.dirname(final), recursive=True)
            yield tmp
            self._commit(tmp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.fs.delete_file(tmp)
            raise StorageError.of("write", f"{self.scheme}://{final}" if self.scheme else final, exc) from exc

    def _commit(self, tmp: str, final: str) -> None:
        if self.local:
            os.replace(tmp, final)  # atomic on POSIX, replaces an older file in one step
        else:
            # Object stores make an object visible only when its upload completes; copy-then-delete
            # keeps the temporary invisible to readers that ignore TMP_PREFIX.
            self.fs.move(tmp, final)

    # ---- reads -------------------------------------------------------------------------------
    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return f.read()

    def read_text(self, *parts: str) -> str:
        return self.read_bytes(*parts).decode("utf-8")

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_text(*parts))

    def read_parquet(self, *parts: str, columns: list[str] | None = None) -> pa.Table:
        p = self.path(*parts)
        info = self.fs.get_file_info(p)
        if info.type == pafs.FileType.Directory:
            files = [posixpath.join(p, n) for n in self.list(*parts, suffix=".parquet")]
            if not files:
                raise FileNotFoundError(f"no parquet files under {self.uri(*parts)}")
            tables = [pq.read_table(f, filesystem=self.fs, columns=columns) for f in files]
            return pa.concat_tables(tables, promote_options="default")
        return pq.read_table(p, filesystem=self.fs, columns=columns)

    # ---- stage markers -----------------------------------------------------------------------
    def mark_success(self, stage_dir: str, config_hash: str, summary: dict | None = None, *,
                     size_only: tuple[str, ...] = ()) -> None:
        """Written last by a stage: its presence with the same hash means the outputs are complete. It lists
        every file under the stage directory with its size and sha256 (valley/integrity.py); files under
        `size_only` prefixes are listed with their size only."""
        base = self.path(stage_dir)
        infos = self.stage_files(stage_dir)
        files = integrity.file_facts(self.fs, base, infos, self._written, size_only)
        for info in infos:
            self._written.pop(info.path, None)
        payload = {"config_hash": config_hash, "finished_at": time.time(), "summary": summary or {},
                   "files": files}
        self._written.pop(self.write_json(payload, stage_dir, SUCCESS), None)

    def stage_files(self, stage_dir: str) -> list[pafs.FileInfo]:
        """Every finished file under a stage directory, at any depth: temporaries and its markers left out."""
        base = self.path(stage_dir)
        if self.fs.get_file_info(base).type != pafs.FileType.Directory:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True))
        top = {posixpath.join(base, m) for m in MARKERS}
        return sorted((i for i in infos if i.type == pafs.FileType.File and i.path not in top
                       and not i.base_name.startswith(TMP_PREFIX)), key=lambda i: i.path)

    def damaged_files(self, stage_dir: str, *, hashes: bool = False,
                      marker: dict | None = None) -> list[integrity.Damage] | None:
        """The files of a finished stage run that are not as its marker (read here unless given) lists them
        (sizes; contents too with `hashes`); None when the marker predates file lists."""
        recorded = (marker if marker is not None else self.read_json(stage_dir, SUCCESS)).get("files")
        if recorded is None:
            return None
        return integrity.check_files(self.fs, self.path(stage_dir), self.stage_files(stage_dir), recorded,
                                     hashes=hashes)

    def finished_stage_above(self, path: str) -> str | None:
        """The finished stage run holding `path`: the nearest directory at or above it with a marker."""
        here = path.strip("/")
        while here and here != ".":
            if self.exists(here, SUCCESS):
                return here
            here = posixpath.dirname(here)
        return None

    def require_intact_above(self, path: str) -> None:
        """`require_intact` for the finished stage run holding `path`, if any."""
        if (run := self.finished_stage_above(path)) is not None:
            self.require_intact(run)

    def require_intact(self, stage_dir: str, marker: dict | None = None) -> None:
        """Refuse a finished run whose files are missing or changed size since its marker, naming them: what a
        reader does before trusting a stage's outputs (one listing, no file is read)."""
        damage = self.damaged_files(stage_dir, marker=marker)
        if damage:
            shown = "; ".join(map(str, damage[:5])) + (f"; and {len(damage) - 5} more" if len(damage) > 5 else "")
            raise integrity.DamagedOutputError(
                f"{self.uri(stage_dir)} is marked finished but {len(damage)} of its files are damaged: {shown}. "
                f"`valley verify {self.root} --repair` sets them aside and clears the markers of the runs to "
                "redo; the next run redoes exactly those.")

    def is_complete(self, stage_dir: str, config_hash: str) -> bool:
        if not self.exists(stage_dir, SUCCESS):
            return False
        try:
            return self.read_json(stage_dir, SUCCESS).get("config_hash") == config_hash
        except (ValueError, OSError):
            return False

    def success_summary(self, stage_dir: str) -> dict:
        return self.read_json(stage_dir, SUCCESS).get("summary", {})


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's own filesystem for the schemes it knows (s3, gs, hdfs, ...); any other fsspec scheme
    (memory://, and whatever fsspec plugins are installed) through pyarrow's fsspec handler."""
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        import fsspec

        scheme, _, path = uri.partition("://")
        fs = fsspec.filesystem(scheme)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), fs._strip_protocol(uri) or path


def stage_dir(stage: str, name: str, config_hash: str) -> str:
    """Content-addressed output directory of a stage run: a changed config never overwrites."""
    return posixpath.join(stage, f"{name}-{config_hash[:12]}")


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast/reorder a table to `schema`; missing nullable columns become nulls, extra columns are kept."""
    cols, fields = [], []
    for field in schema:
        if field.name in table.column_names:
            cols.append(table.column(field.name).cast(field.type))
        elif field.nullable:
            cols.append(pa.nulls(table.num_rows, field.type))
        else:
            raise ValueError(f"table lacks required column {field.name!r} of schema")
        fields.append(field)
    for name in table.column_names:
        if name not in schema.names:
            cols.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(cols, schema=pa.schema(fields, metadata=schema.metadata))
