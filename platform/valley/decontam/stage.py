"""`run_decontam`: every training question against every evaluation problem, streamed with Ray Data.

The evaluation problems' index (decontam/index.py) is built on the driver and put in the object store
once; a pool of Ray Data actors streams the training traces (only the columns matching needs: id and
question text, never the long responses), each actor reading the index zero-copy. Only matches come
back to the driver. With `drop: true` a second streaming pass writes the traces without the
contaminated ones, which are written to `rejects/` with the reason and counted.

Outputs under `decontam/<name>-<hash12>/`: `matches.parquet` (one row per contaminated trace and
evaluation problem), `pairs.parquet` (training question x evaluation problem), `report.json` and
`report.md` (per subset: traces, contaminated, rate, the matching pairs), with `drop`: `traces/` and
`rejects/contaminated.parquet`; `_SUCCESS` last. A finished run with the same config and inputs is
skipped; an interrupted one is redone from the start (matching is one streaming pass).
"""

from __future__ import annotations

import glob as globmod
import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from valley import schemas
from valley.decontam.config import DecontamConfig
from valley.decontam.index import EvalIndex, EvalProblem, build_index
from valley.decontam.match import KINDS, MatchRule, match_question
from valley.errors import ConfigError, InputError
from valley.problems import iter_json_records
from valley.stage import StageResult, run_stage
from valley.storage import Storage

STAGE = "decontam"
ALL = "all"
MAX_PAIRS_MD = 25

MATCHES = pa.schema([
    pa.field("id", pa.string()),
    pa.field("question_id", pa.string()),
    pa.field("source_file", pa.string()),
    pa.field("source_row", pa.int64()),
    pa.field("eval_question_id", pa.string()),
    pa.field("kinds", pa.string()),  # comma-separated: ngram,title,url
    pa.field("shared_ngrams", pa.int64()),
    pa.field("overlap", pa.float64()),  # shared / the evaluation problem's indexed n-grams
])
PAIRS = pa.schema([
    pa.field("question_id", pa.string()),
    pa.field("eval_question_id", pa.string()),
    pa.field("kinds", pa.string()),
    pa.field("overlap", pa.float64()),
    pa.field("traces", pa.int64()),
])


class DecontamResult(StageResult):
    matches: str
    pairs: str
    report_md: str
    report_json: str
    traces: str | None = None  # clean traces (drop only)
    rejects: str | None = None
    n_traces: int
    n_contaminated: int
    subsets: dict[str, dict[str, Any]]
    index: dict[str, Any]

    path_fields: ClassVar[tuple[str, ...]] = ("matches", "pairs", "report_md", "report_json", "traces", "rejects")


# ---- inputs -------------------------------------------------------------------------------------------


def read_eval_problems(paths: list[str]) -> tuple[list[EvalProblem], int]:
    """(problems, duplicate ids skipped) from LCB json(l) files or problems Parquet tables."""
    problems: dict[str, EvalProblem] = {}
    duplicates = 0
    for path in paths:
        if not os.path.exists(path):
            raise InputError("problems file not found", file=path)
        if path.endswith(".parquet") or os.path.isdir(path):
            rows = enumerate(pq.read_table(path).to_pylist())
        else:
            rows = iter_json_records(path)
        for i, row in rows:
            if not isinstance(row, dict):
                raise InputError("a problem must be an object", file=path, row=i)
            for name in ("question_id", "question_content"):
                if row.get(name) in (None, ""):
                    raise InputError("missing field", file=path, row=i, field=name)
            qid = str(row["question_id"])
            if qid in problems:
                duplicates += 1
                continue
            problems[qid] = EvalProblem(qid, str(row["question_content"]), row.get("question_title"),
                                        row.get("platform"))
    return list(problems.values()), duplicates


def resolve_traces(storage: Storage, path: str) -> tuple[pafs.FileSystem, list[str], dict[str, str]]:
    """(filesystem, Parquet files of the traces, subset name -> ids Parquet) for a data-stage dir or tables."""
    if globmod.has_magic(path) and "://" not in path:  # a pattern of local files, from the working directory
        fs, base = pafs.LocalFileSystem(), os.path.abspath(path)
    else:
        st, rel = storage.resolve(path)
        fs, base = st.fs, st.path(rel)
    if globmod.has_magic(base) and isinstance(fs, pafs.LocalFileSystem):
        files = sorted(f for f in globmod.glob(base) if f.endswith(".parquet"))
        if not files:
            raise InputError("pattern matches no Parquet file", file=path)
        return fs, files, {}
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise InputError("traces not found", file=path)
    if info.type == pafs.FileType.File:
        return fs, [base], {}

    def parquet_in(d: str) -> list[str]:
        if fs.get_file_info(d).type != pafs.FileType.Directory:
            return []
        sel = fs.get_file_info(pafs.FileSelector(d, recursive=False))
        return sorted(i.path for i in sel if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                      and not i.base_name.startswith(("_", ".")))

    traces = parquet_in(f"{base}/traces")
    if traces:  # a data-stage output directory
        subsets = {Path(p).name.removesuffix(".parquet"): p for p in parquet_in(f"{base}/subsets")}
        return fs, traces, subsets
    files = parquet_in(base)
    if not files:
        raise InputError("no Parquet traces in directory (expected a data-stage dir or Parquet files)", file=path)
    return fs, files, {}


def _fingerprint(fs: pafs.FileSystem, files: list[str]) -> str:
    h = hashlib.sha256()
    for info in fs.get_file_info(files):
        h.update(f"{info.path}|{info.size}|{info.mtime_ns}\n".encode())
    return h.hexdigest()


# ---- the Ray Data matcher ------------------------------------------------------------------------------


class Matcher:
    """Ray Data actor UDF: a batch of traces in, the rows of its matches out (usually none)."""

    def __init__(self, index_ref: list, rule: MatchRule, fields: dict[str, str | None]):
        import ray

        self.index: EvalIndex = ray.get(index_ref[0])
        self.rule, self.fields = rule, fields

    def __call__(self, batch: pa.Table) -> pa.Table:
        f = self.fields
        cols = {k: (batch.column(v).to_pylist() if v and v in batch.column_names else [None] * batch.num_rows)
                for k, v in f.items()}
        out: dict[str, list] = {name: [] for name in MATCHES.names}
        cache: dict[tuple, list] = {}
        for i in range(batch.num_rows):
            question = cols["question"][i]
            if not isinstance(question, str):
                out["id"].append(None if cols["id"][i] is None else str(cols["id"][i]))
                out["question_id"].append(None)
                out["source_file"].append(cols["source_file"][i])
                out["source_row"].append(cols["source_row"][i])
                out["eval_question_id"].append(None)  # marks a bad row for the driver to report
                out["kinds"].append("bad_question")
                out["shared_ngrams"].append(0)
                out["overlap"].append(0.0)
                continue
            key = (question, cols["title"][i], cols["url"][i])
            if key not in cache:
                cache[key] = match_question(self.index, self.rule, question, title=cols["title"][i], url=cols["url"][i])
            for m in cache[key]:
                out["id"].append(str(cols["id"][i]))
                qid = cols["question_id"][i]
                out["question_id"].append(str(qid) if qid is not None else str(cols["id"][i]))
                out["source_file"].append(cols["source_file"][i])
                out["source_row"].append(cols["source_row"][i])
                out["eval_question_id"].append(self.index.question_ids[m.problem])
                out["kinds"].append(",".join(m.kinds))
                out["shared_ngrams"].append(m.shared)
                out["overlap"].append(float(m.overlap))
        return pa.Table.from_pydict(out, schema=MATCHES)


class DropContaminated:
    """Ray Data UDF of the drop pass: the batch without the rows whose id is in the contaminated set."""

    def __init__(self, ids_ref: list, id_field: str):
        import ray

        self.ids: pa.Array = ray.get(ids_ref[0])
        self.id_field = id_field

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = pc.cast(batch.column(self.id_field), pa.string())
        return batch.filter(pc.invert(pc.fill_null(pc.is_in(ids, value_set=self.ids), False)))


def _fields(cfg: DecontamConfig, schema: pa.Schema, file: str) -> dict[str, str | None]:
    for name in (cfg.question_field, cfg.id_field):
        if name not in schema.names:
            raise InputError("traces lack a required column", file=file, field=name)
    for name in (cfg.title_field, cfg.url_field):
        if name is not None and name not in schema.names:
            raise InputError("traces lack the configured column", file=file, field=name)
    optional = {k: (k if k in schema.names else None) for k in ("question_id", "source_file", "source_row")}
    return {"id": cfg.id_field, "question": cfg.question_field, "title": cfg.title_field, "url": cfg.url_field,
            **optional}


def default_actors() -> int:
    """One CPU fewer than the cluster has: actors hold their CPU for the whole pass, and the Parquet
    read tasks that feed them need one too (all CPUs taken by actors would starve the reads)."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)) - 1)


def stream_matches(fs: pafs.FileSystem, files: list[str], index: EvalIndex, rule: MatchRule,
                   fields: dict[str, str | None], *, batch_size: int, concurrency: int | None) -> pa.Table:
    import ray
    import ray.data

    columns = sorted({c for c in fields.values() if c})
    index_ref = ray.put(index)
    actors = concurrency or default_actors()
    ds = ray.data.read_parquet(files, filesystem=fs).select_columns(columns)  # pushed down into the read
    ds = ds.map_batches(Matcher, fn_constructor_kwargs={"index_ref": [index_ref], "rule": rule, "fields": fields},
                        batch_format="pyarrow", batch_size=batch_size, concurrency=actors, num_cpus=1)
    parts = [pa.Table.from_batches([b]) if isinstance(b, pa.RecordBatch) else b
             for b in ds.iter_batches(batch_format="pyarrow", batch_size=None)]
    parts = [p.cast(MATCHES) for p in parts if p.num_rows]
    return pa.concat_tables(parts) if parts else MATCHES.empty_table()


# ---- reporting ---------------------------------------------------------------------------------------


def pairs_of(matches: pa.Table) -> list[dict[str, Any]]:
    """Training question x evaluation problem: kinds seen, best overlap, contaminated traces."""
    agg: dict[tuple[str, str], dict[str, Any]] = {}
    for m in matches.to_pylist():
        p = agg.setdefault((m["question_id"], m["eval_question_id"]),
                           {"question_id": m["question_id"], "eval_question_id": m["eval_question_id"],
                            "kinds": set(), "overlap": 0.0, "traces": set()})
        p["kinds"].update(m["kinds"].split(","))
        p["overlap"] = max(p["overlap"], m["overlap"])
        p["traces"].add(m["id"])
    return [{**p, "kinds": ",".join(k for k in KINDS if k in p["kinds"]), "traces": len(p["traces"])}
            for p in sorted(agg.values(), key=lambda p: (-p["overlap"], p["question_id"], p["eval_question_id"]))]


def subset_report(name: str, n_traces: int, matches: pa.Table) -> dict[str, Any]:
    ids = set(matches.column("id").to_pylist())
    pairs = pairs_of(matches)
    kinds: dict[str, int] = defaultdict(int)
    for k in matches.column("kinds").to_pylist():
        for kind in k.split(","):
            kinds[kind] += 1
    return {
        "subset": name,
        "traces": n_traces,
        "contaminated": len(ids),
        "rate": len(ids) / n_traces if n_traces else 0.0,
        "training_questions": len({p["question_id"] for p in pairs}),
        "eval_problems": len({p["eval_question_id"] for p in pairs}),
        "matches_by_kind": dict(kinds),
        "pairs": pairs,
    }


def render_markdown(cfg: DecontamConfig, reports: list[dict[str, Any]], index_stats: dict[str, Any],
                    dropped: int | None) -> str:
    lines = [
        "# Decontamination report",
        f"Training questions against {index_stats['problems']} evaluation problems: {cfg.ngram}-gram overlap on "
        f"normalised text (flagged at >= {cfg.min_overlap:.0%} of a problem's n-grams, n-grams found in more than "
        f"{cfg.max_problem_frequency} problems ignored as boilerplate: {index_stats['boilerplate_ngrams']}), "
        f"kinds: {', '.join(cfg.kinds)}.",
        "",
        "| Subset | traces | contaminated | rate | training questions | eval problems | by kind |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(r["matches_by_kind"].items())) or "–"
        lines.append(f"| {r['subset']} | {r['traces']} | {r['contaminated']} | {100 * r['rate']:.2f}% | "
                     f"{r['training_questions']} | {r['eval_problems']} | {kinds} |")
    if dropped is not None:
        lines += ["", f"Dropped {dropped} contaminated traces (written to `rejects/contaminated.parquet`); "
                      "the clean traces are in `traces/`."]
    for r in reports:
        if not r["pairs"]:
            continue
        lines += ["", f"## Matching pairs: {r['subset']} ({len(r['pairs'])}; first {min(MAX_PAIRS_MD, len(r['pairs']))})",
                  "", "| training question | eval problem | kinds | overlap | traces |", "|---|---|---|---|---|"]
        lines += [f"| {p['question_id']} | {p['eval_question_id']} | {p['kinds']} | {100 * p['overlap']:.0f}% | "
                  f"{p['traces']} |" for p in r["pairs"][:MAX_PAIRS_MD]]
    return "\n".join(lines) + "\n"


def _rejects(matches: pa.Table, field: str) -> pa.Table:
    by_trace: dict[str, dict[str, Any]] = {}
    for m in matches.to_pylist():
        r = by_trace.setdefault(m["id"], {"source_file": m["source_file"], "source_row": m["source_row"],
                                          "field": field, "reason": "contaminated",
                                          "matches": [], "id": m["id"], "question_id": m["question_id"]})
        r["matches"].append({"eval_question_id": m["eval_question_id"], "kinds": m["kinds"],
                             "overlap": round(m["overlap"], 4)})
    rows = [{"source_file": r["source_file"], "source_row": r["source_row"], "field": r["field"],
             "reason": r["reason"], "raw": json.dumps({"id": r["id"], "question_id": r["question_id"],
                                                       "matches": r["matches"]})[:4000]}
            for r in by_trace.values()]
    return pa.Table.from_pylist(rows, schema=schemas.REJECTS)


# ---- the stage ---------------------------------------------------------------------------------------


def run_decontam(cfg: DecontamConfig, storage: Storage) -> DecontamResult:
    fs, files, subset_files = resolve_traces(storage, cfg.traces)
    problem_files = list(cfg.problems)
    h = hashlib.sha256((cfg.config_hash() + _fingerprint(fs, files) + _fingerprint(pafs.LocalFileSystem(), [
        os.path.abspath(p) for p in problem_files if os.path.exists(p)])).encode()).hexdigest()
    return run_stage(storage, STAGE, cfg.name, h, DecontamResult,
                     lambda out: _decontam(cfg, storage, out, fs, files, subset_files, problem_files))


def _decontam(cfg: DecontamConfig, storage: Storage, out: str, fs: pafs.FileSystem, files: list[str],
              subset_files: dict[str, str], problem_files: list[str]) -> DecontamResult:
    """The stage body (valley.stage.run_stage does the skip, clean-up and marker around it)."""
    storage.remove(out, "traces")  # a drop pass of an interrupted run is redone, never mixed

    problems, duplicates = read_eval_problems(problem_files)
    if not problems:
        raise ConfigError(f"no evaluation problems in {problem_files}")
    index = build_index(problems, n=cfg.ngram, max_problem_frequency=cfg.max_problem_frequency,
                        min_title_words=cfg.min_title_words)
    index.stats["duplicate_problem_ids"] = duplicates
    schema = pq.read_schema(files[0], filesystem=fs)
    fields = _fields(cfg, schema, files[0])
    rule = MatchRule(kinds=tuple(cfg.kinds), min_overlap=cfg.min_overlap, min_shared=cfg.min_shared)
    matches = stream_matches(fs, files, index, rule, fields, batch_size=cfg.batch_size, concurrency=cfg.concurrency)
    bad = matches.filter(pc.equal(matches.column("kinds"), "bad_question"))
    if bad.num_rows:
        first = bad.slice(0, 1).to_pylist()[0]
        raise InputError(f"{bad.num_rows} traces have no string question", file=first["source_file"] or files[0],
                         row=first["source_row"], field=cfg.question_field)
    matches = matches.sort_by([("id", "ascending"), ("eval_question_id", "ascending")])

    n_traces = sum(pq.ParquetFile(f, filesystem=fs).metadata.num_rows for f in files)
    reports = [subset_report(ALL, n_traces, matches)]
    for name, path in sorted(subset_files.items()):
        ids = pq.read_table(path, filesystem=fs, columns=["id"]).column("id").cast(pa.string())
        in_subset = matches.filter(pc.is_in(matches.column("id"), value_set=ids))
        reports.append(subset_report(name, len(ids), in_subset))

    storage.write_parquet(matches, out, "matches.parquet")
    storage.write_parquet(pa.Table.from_pylist(pairs_of(matches), schema=PAIRS), out, "pairs.parquet")
    contaminated = sorted(set(matches.column("id").to_pylist()))
    traces_dir = rejects_path = None
    dropped = None
    if cfg.drop:
        import ray
        import ray.data

        ids_ref = ray.put(pa.array(contaminated, pa.string()))
        ds = ray.data.read_parquet(files, filesystem=fs)
        ds = ds.map_batches(DropContaminated, fn_constructor_kwargs={"ids_ref": [ids_ref], "id_field": cfg.id_field},
                            batch_format="pyarrow", batch_size=cfg.batch_size,
                            concurrency=cfg.concurrency or default_actors())
        ds.write_parquet(storage.uri(out, "traces"))
        traces_dir = f"{out}/traces"
        storage.write_parquet(_rejects(matches, cfg.question_field), out, "rejects", "contaminated.parquet")
        rejects_path = f"{out}/rejects/contaminated.parquet"
        dropped = len(contaminated)
    summary_reports = [{k: v for k, v in r.items() if k != "pairs"} for r in reports]
    storage.write_json({"config": cfg.model_dump(mode="json"), "index": index.stats, "subsets": reports,
                        "dropped": dropped}, out, "report.json")
    storage.write_text(render_markdown(cfg, reports, index.stats, dropped), out, "report.md")
    return DecontamResult(
        stage_dir=out, matches=f"{out}/matches.parquet", pairs=f"{out}/pairs.parquet", report_md=f"{out}/report.md",
        report_json=f"{out}/report.json", traces=traces_dir, rejects=rejects_path, n_traces=n_traces,
        n_contaminated=len(contaminated), subsets={r["subset"]: r for r in summary_reports}, index=index.stats,
    )
