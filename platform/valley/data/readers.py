"""Splitting trace files into independently readable chunks that keep exact row numbers.

Row numbers matter: every reject must name its file and row. Plain JSONL is split at line boundaries
(found by one fast scan), gzip'd JSONL is one chunk per file (gzip cannot seek), Parquet is split by row
groups. Each chunk is read by one Ray task and turned into one traces part, which is what makes the
ingest resumable.

Inputs are URIs: a local path, or anything fsspec opens (s3://, gs://, memory://, and hf://datasets/...
through huggingface_hub's filesystem when that package is installed). Local paths stay plain absolute
paths so rejects name the file the user typed.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow.parquet as pq

from valley.errors import InputError

SCAN_BLOCK = 1 << 22


@dataclass(frozen=True)
class Chunk:
    path: str
    kind: str  # jsonl | jsonl.gz | json | parquet
    first_row: int  # 0-based row number of the chunk's first row within the file
    n_rows: int | None  # None: read to the end of the file
    start: int = 0  # byte offset (jsonl) or first row group (parquet)
    stop: int | None = None  # byte offset / row group after the last

    @property
    def key(self) -> str:
        """Stable name of the chunk, used to name its output part."""
        import hashlib

        digest = hashlib.sha256(f"{self.path}|{self.start}|{self.stop}".encode()).hexdigest()
        return f"{os.path.basename(self.path).split('.')[0][:40]}-{self.first_row:010d}-{digest[:8]}"


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def filesystem(uri: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a URI or local path."""
    return fsspec.core.url_to_fs(uri)


def _full_uri(fs: Any, path: str, pattern: str) -> str:
    if _is_local(pattern):
        return os.path.abspath(path)
    return fs.unstrip_protocol(path)


def expand_inputs(patterns: list[str]) -> list[str]:
    """Files named by the patterns, sorted and de-duplicated; a pattern that matches nothing is an error."""
    files: list[str] = []
    for pattern in patterns:
        fs, path = filesystem(pattern)
        matches = sorted(fs.glob(path)) if any(c in path for c in "*?[") else [path]
        matches = [_full_uri(fs, m, pattern) for m in matches if fs.isfile(m)]
        if not matches:
            from valley.runtime import job_path_hint  # why a path is missing inside a Ray job

            raise InputError("input pattern matches no file" + job_path_hint(pattern), file=pattern)
        files.extend(matches)
    return list(dict.fromkeys(files))


def file_fingerprint(uri: str) -> str:
    """Size plus whatever change marker the filesystem offers (mtime, ETag, blob id)."""
    if _is_local(uri):
        st = os.stat(uri.removeprefix("file://"))
        return f"{uri}|{st.st_size}|{int(st.st_mtime_ns)}"
    fs, path = filesystem(uri)
    info = fs.info(path)
    marker = next((str(info[k]) for k in ("mtime", "LastModified", "last_modified", "ETag", "etag", "blob_id",
                                          "created") if info.get(k) is not None), "")
    return f"{uri}|{info.get('size')}|{marker}"


def open_binary(uri: str):
    """A readable binary file object for a local path or URI."""
    if _is_local(uri):
        return open(uri.removeprefix("file://"), "rb")
    fs, path = filesystem(uri)
    return fs.open(path, "rb")


def file_kind(path: str) -> str:
    name = path.lower()
    for suffix, kind in ((".jsonl.gz", "jsonl.gz"), (".json.gz", "json.gz"), (".jsonl", "jsonl"),
                         (".ndjson", "jsonl"), (".json", "json"), (".parquet", "parquet")):
        if name.endswith(suffix):
            return kind
    raise InputError("unsupported file type (use .jsonl, .jsonl.gz, .json, .parquet)", file=path)


def plan_chunks(files: list[str], rows_per_chunk: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    for path in files:
        kind = file_kind(path)
        if kind == "jsonl":
            chunks.extend(_plan_jsonl(path, rows_per_chunk))
        elif kind == "parquet":
            chunks.extend(_plan_parquet(path, rows_per_chunk))
        else:
            chunks.append(Chunk(path, kind, 0, None))
    return chunks


def _plan_jsonl(path: str, rows_per_chunk: int) -> list[Chunk]:
    """Byte offsets of every `rows_per_chunk`-th line start, from one scan of the file."""
    cuts, row, offset = [0], 0, 0
    with open_binary(path) as f:
        while block := f.read(SCAN_BLOCK):
            pos = 0
            while True:
                nl = block.find(b"\n", pos)
                if nl < 0:
                    break
                row += 1
                if row % rows_per_chunk == 0:
                    cuts.append(offset + nl + 1)
                pos = nl + 1
            offset += len(block)
    size = offset
    if cuts[-1] != size:
        cuts.append(size)
    return [
        Chunk(path, "jsonl", i * rows_per_chunk, None, start=a, stop=b) for i, (a, b) in enumerate(zip(cuts, cuts[1:]))
    ] or [Chunk(path, "jsonl", 0, 0, start=0, stop=0)]


def _plan_parquet(path: str, rows_per_chunk: int) -> list[Chunk]:
    with open_binary(path) as f:
        meta = pq.ParquetFile(f).metadata
    chunks, first_row, group_start, rows = [], 0, 0, 0
    for g in range(meta.num_row_groups):
        rows += meta.row_group(g).num_rows
        if rows >= rows_per_chunk or g == meta.num_row_groups - 1:
            chunks.append(Chunk(path, "parquet", first_row, rows, start=group_start, stop=g + 1))
            first_row, group_start, rows = first_row + rows, g + 1, 0
    return chunks or [Chunk(path, "parquet", 0, 0, start=0, stop=0)]


def iter_chunk(chunk: Chunk) -> Iterator[tuple[int, Any]]:
    """Yield (row number, parsed row or an InputError for an unparseable line) for one chunk."""
    if chunk.kind == "jsonl":
        with open_binary(chunk.path) as f:
            f.seek(chunk.start)
            data = f.read() if chunk.stop is None else f.read(chunk.stop - chunk.start)
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()  # the chunk ends at a line start: nothing follows the last newline
        yield from _parse_lines(chunk, lines)
    elif chunk.kind == "jsonl.gz":
        with open_binary(chunk.path) as raw, gzip.open(raw, "rb") as f:
            yield from _parse_lines(chunk, f)
    elif chunk.kind in ("json", "json.gz"):
        with open_binary(chunk.path) as raw:
            try:
                rows = json.loads(gzip.decompress(raw.read()) if chunk.kind == "json.gz" else raw.read())
            except (ValueError, UnicodeDecodeError) as exc:
                raise InputError(f"not a JSON document: {exc}", file=chunk.path) from exc
        if not isinstance(rows, list):
            raise InputError("a .json trace file must hold a list of rows", file=chunk.path)
        yield from enumerate(rows)
    elif chunk.kind == "parquet":
        with open_binary(chunk.path) as f:
            pf = pq.ParquetFile(f)
            row = chunk.first_row
            for g in range(chunk.start, chunk.stop or pf.metadata.num_row_groups):
                for rec in pf.read_row_group(g).to_pylist():
                    yield row, rec
                    row += 1


def head_rows(path: str, n: int) -> list[Any]:
    """The first `n` parsed rows of a file, without reading the rest of a JSONL file (a sample for
    estimates); unparseable rows are left out."""
    kind = file_kind(path)
    if kind == "jsonl":
        rows: list[Any] = []
        with open_binary(path) as f:
            for row_number, line in enumerate(f):
                if len(rows) >= n:
                    break
                rows += [r for _, r in _parse_lines(Chunk(path, kind, row_number, 1), [line])]
    else:
        rows = [r for _, r in itertools.islice(iter_chunk(Chunk(path, kind, 0, None)), n)]
    return [r for r in rows if not isinstance(r, InputError)]


def count_rows(path: str) -> int:
    """Rows in one file, counted the way `iter_chunk` numbers them (JSONL: lines, blank ones included)."""
    kind = file_kind(path)
    if kind == "parquet":
        with open_binary(path) as f:
            return pq.ParquetFile(f).metadata.num_rows
    if kind == "jsonl":
        lines, last = 0, b"\n"
        with open_binary(path) as f:
            while block := f.read(SCAN_BLOCK):
                lines += block.count(b"\n")
                last = block[-1:]
        return lines + (last != b"\n")
    return sum(1 for _ in iter_chunk(Chunk(path, kind, 0, None)))


def _parse_lines(chunk: Chunk, lines: Any) -> Iterator[tuple[int, Any]]:
    """Row numbers are 0-based line numbers; a blank line keeps its number but yields nothing."""
    for offset, line in enumerate(lines):
        row = chunk.first_row + offset
        line = line.rstrip(b"\r\n")
        if not line.strip():
            continue
        try:
            yield row, json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            yield row, InputError(f"invalid JSON: {exc}", file=chunk.path, row=row)
