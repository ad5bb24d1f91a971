"""Reading the stage inputs: tables under the storage root or at absolute paths, checked for the
columns the stage needs, with errors that name the file, row and field."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from valley import schemas
from valley.errors import InputError
from valley.problems import load_lcb_problems
from valley.storage import Storage

_JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")


def read_table(storage: Storage, path: str) -> pa.Table:
    """A Parquet file or directory, wherever `Storage.resolve` finds it (under the storage root, else from
    the working directory, or at an absolute path or URI)."""
    fs, files = _parquet_files(storage, path)
    return pads.dataset(files, filesystem=fs, format="parquet").to_table()


def read_parts(storage: Storage, path: str) -> list[tuple[str, pa.Table]]:
    """(file name, table) per Parquet file of `path`, in name order: the unit a stage that follows a writer
    works in (a part, once visible, never changes)."""
    fs, files = _parquet_files(storage, path)
    return [(f.rsplit("/", 1)[-1], pads.dataset([f], filesystem=fs, format="parquet").to_table()) for f in files]


def _parquet_files(storage: Storage, path: str) -> tuple[pafs.FileSystem, list[str]]:
    st, rel = storage.resolve(path)
    fs, p = st.fs, st.path(rel)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.NotFound:
        raise InputError("input not found", file=path)
    if info.type == pafs.FileType.Directory:
        sel = fs.get_file_info(pafs.FileSelector(p, recursive=False))
        files = sorted(i.path for i in sel if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                       and not i.base_name.startswith(("_", ".")))
        if not files:
            raise InputError("no parquet files in directory", file=path)
    else:
        files = [p]
    return fs, files


def require_columns(table: pa.Table, columns: list[str], *, file: str, non_null: bool = True) -> None:
    for col in columns:
        if col not in table.column_names:
            raise InputError("missing column", file=file, field=col)
        if non_null and table.column(col).null_count:
            row = next(i for i, v in enumerate(table.column(col).is_null().to_pylist()) if v)
            raise InputError("null value in a required column", file=file, row=row, field=col)


def read_problems(storage: Storage, paths: str | list[str]) -> pa.Table:
    """Problems from a PROBLEMS Parquet or from LCB json(l) files."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    if all(p.endswith(_JSON_SUFFIXES) for p in paths):
        found = [storage.resolve(p) for p in paths]
        resolved = [st.path(rel) for st, rel in found]
        for p, (st, _), r in zip(paths, found, resolved):
            if not st.local or not Path(r).exists():
                raise InputError("input not found", file=p)
        return load_lcb_problems(resolved)
    tables = [read_table(storage, p) for p in paths]
    table = pa.concat_tables(tables, promote_options="default")
    require_columns(table, ["question_id", "tests"], file=",".join(paths))
    return table


def read_samples(storage: Storage, path: str) -> pa.Table:
    """The samples table, with a `part` column naming the file each row came from (batches follow parts, so
    grading that starts while generation still writes plans the same batches as grading afterwards)."""
    tables = []
    for part, table in read_parts(storage, path):
        require_columns(table, ["run_id", "question_id", "sample_idx", "response"], file=f"{path}/{part}")
        table = table.select([c for c in schemas.SAMPLES.names if c in table.column_names])
        tables.append(table.append_column("part", pa.array([part] * table.num_rows, pa.string())))
    return pa.concat_tables(tables, promote_options="default")
