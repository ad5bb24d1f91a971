"""Our verdicts beside the official ones, for runs imported with their harness's verdicts.

For every run whose samples carry `official_pass` (see `valley import`): official pass@1 and ours on
the same samples, the agreement table (both pass, both fail, and the two kinds of disagreement) and
the disagreeing samples with the first failing test each side saw.

The official verdicts of lcb_runner used LCB's private tests as well; graded on public tests only, an
official failure may pass here. Such a sample is a true disagreement only when the test the official
grader failed it on is one of the public tests; `failing_test_public` says which it was.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa

from valley.report.config import ReportConfig, RunSpec
from valley.report.tables import _md, fmt_pct
from valley.storage import Storage

LCB_ERRORS = {-1: "compile_error", -2: "wrong_answer", -3: "time_limit", -4: "runtime_error", -5: "runner_error"}
GRADER_ERROR = "grader_error"  # the sandbox could not run the sample: not a verdict on the code
MAX_LISTED = 40  # disagreements shown in report.md; all of them are in agreement.parquet
DETAIL_CHARS = 160

DISAGREEMENTS = pa.schema([
    pa.field("run_id", pa.string()),
    pa.field("question_id", pa.string()),
    pa.field("sample_idx", pa.int64()),
    pa.field("official_pass", pa.bool_()),
    pa.field("verdict", pa.string()),
    pa.field("failing_test_public", pa.bool_()),  # official failure on a public test (null: unknown)
    pa.field("official_failure", pa.string()),
    pa.field("our_failure", pa.string()),
])


@dataclass
class Agreement:
    rows: list[dict]  # results rows (schemas.RESULTS minus the experiment column)
    markdown: str
    disagreements: pa.Table


def _read(storage: Storage, path: str, columns: list[str]) -> pl.DataFrame | None:
    try:
        table = storage.read_parquet(path, columns=columns)
    except (pa.ArrowInvalid, KeyError, FileNotFoundError):
        return None
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    return df


def _filter_run(df: pl.DataFrame, run: RunSpec) -> pl.DataFrame:
    if run.table_run_id == "*" or "run_id" not in df.columns:
        return df
    return df.filter(pl.col("run_id") == run.table_run_id)


def _parse_value(text: str) -> Any:
    """lcb_runner logs functional inputs/outputs with str() of Python values; stdin ones as text."""
    try:
        return json.loads(text)
    except ValueError:
        return ast.literal_eval(text)


def failing_test_is_public(detail: str | None, tests_json: str | None, functional: bool) -> bool | None:
    """Whether the official metadata's failing test (inputs/expected) is one of the public tests."""
    if not detail or not tests_json:
        return None
    try:
        meta = json.loads(detail)
        tests = json.loads(tests_json)
    except ValueError:
        return None
    if not isinstance(meta, dict) or "inputs" not in meta or "(truncated)" in str(meta.get("inputs")):
        return None
    inputs = str(meta["inputs"])
    try:
        if functional:
            args = _parse_value(inputs)
            args = args if isinstance(args, list) else [args]
            return any([json.loads(line) for line in t["input"].split("\n")] == args for t in tests)
        return any(t["input"].strip() == inputs.strip() for t in tests)
    except (ValueError, SyntaxError, TypeError, KeyError, MemoryError, RecursionError):
        return None


def official_failure_text(detail: str | None) -> str | None:
    """A short description of the official failure: error kind, then the test's input and expected output."""
    if not detail:
        return None
    try:
        meta = json.loads(detail)
    except ValueError:
        return detail[:DETAIL_CHARS]
    if not isinstance(meta, dict):
        return str(meta)[:DETAIL_CHARS]
    kind = LCB_ERRORS.get(meta.get("error_code"), meta.get("error_message") or "failed")
    parts = [str(kind)]
    for key in ("inputs", "expected", "output"):
        if key in meta:
            parts.append(f"{key}={str(meta[key])[:60]!r}")
    return " ".join(parts)[:DETAIL_CHARS]


def our_failure_text(verdict: str | None, first_failure: str | None) -> str | None:
    if verdict in (None, "pass"):
        return None
    if not first_failure:
        return verdict
    try:
        f = json.loads(first_failure)
    except ValueError:
        return f"{verdict} {first_failure[:DETAIL_CHARS]}"
    if not isinstance(f, dict):
        return verdict
    bits = [verdict, f"test {f.get('test')}"] if "test" in f else [verdict]
    for key in ("error", "expected", "got"):
        if f.get(key):
            bits.append(f"{key}={str(f[key])[:60]!r}")
    return " ".join(bits)[:DETAIL_CHARS]


def run_agreement(storage: Storage, run: RunSpec) -> tuple[dict[str, Any], pl.DataFrame] | None:
    """Counts and the per-sample frame of one run; None when its samples carry no official verdict."""
    samples = _read(storage, run.samples, ["run_id", "question_id", "sample_idx", "official_pass", "official_detail"])
    if samples is None:
        return None
    samples = _filter_run(samples, run).filter(pl.col("official_pass").is_not_null())
    if samples.height == 0:
        return None
    verdicts = _read(storage, run.verdicts, ["run_id", "question_id", "sample_idx", "verdict", "first_failure"])
    if verdicts is None:
        verdicts = pl.DataFrame(schema={"question_id": pl.String, "sample_idx": pl.Int64, "verdict": pl.String,
                                        "first_failure": pl.String})
    verdicts = _filter_run(verdicts, run).select("question_id", pl.col("sample_idx").cast(pl.Int64), "verdict",
                                                 "first_failure")
    problems = _read(storage, run.problems, ["question_id", "tests", "testtype"])
    frame = samples.select("question_id", pl.col("sample_idx").cast(pl.Int64), "official_pass", "official_detail")
    frame = frame.join(verdicts, on=["question_id", "sample_idx"], how="left").with_columns(
        (pl.col("verdict") == "pass").alias("ours"))
    if problems is not None:
        frame = frame.join(problems.select("question_id", "tests", "testtype"), on="question_id", how="left")
    else:
        frame = frame.with_columns(pl.lit(None, pl.String).alias("tests"), pl.lit(None, pl.String).alias("testtype"))
    # No tests / no problem here, or the grader itself failed (host's fault): nothing to compare.
    graded = pl.col("verdict").is_not_null() & (pl.col("verdict") != GRADER_ERROR)
    ungraded = frame.height - frame.filter(graded).height
    frame = frame.filter(graded)
    if frame.height == 0:
        return None
    per_problem = frame.group_by("question_id").agg(pl.col("official_pass").mean().alias("official"),
                                                    pl.col("ours").mean().alias("ours"))
    disagree = frame.filter(pl.col("official_pass") != pl.col("ours")).with_columns(
        pl.struct("official_pass", "official_detail", "tests", "testtype").map_elements(
            lambda r: None if r["official_pass"] else failing_test_is_public(
                r["official_detail"], r["tests"], r["testtype"] == "functional"),
            return_dtype=pl.Boolean).alias("failing_test_public"),
        pl.col("official_detail").map_elements(official_failure_text, return_dtype=pl.String)
        .alias("official_failure"),
        pl.struct("verdict", "first_failure").map_elements(
            lambda r: our_failure_text(r["verdict"], r["first_failure"]), return_dtype=pl.String)
        .alias("our_failure"),
    ).select(pl.lit(run.run_id).alias("run_id"), "question_id", "sample_idx", "official_pass", "verdict",
             "failing_test_public", "official_failure", "our_failure")
    off, ours = frame["official_pass"], frame["ours"]
    counts = {
        "problems": per_problem.height,
        "samples": frame.height,
        "ungraded": ungraded,
        "official_pass@1": float(per_problem["official"].mean()),
        "our_pass@1": float(per_problem["ours"].mean()),
        "both_pass": int((off & ours).sum()),
        "both_fail": int((~off & ~ours).sum()),
        "official_pass_ours_fail": int((off & ~ours).sum()),
        "official_fail_ours_pass": int((~off & ours).sum()),
        "official_fail_ours_pass_public_test": disagree.filter(
            ~pl.col("official_pass") & pl.col("failing_test_public").fill_null(False)).height,
    }
    counts["agreement"] = (counts["both_pass"] + counts["both_fail"]) / counts["samples"]
    return counts, disagree.sort("official_pass", "question_id", "sample_idx", descending=[True, False, False])


def _result_rows(run: RunSpec, counts: dict[str, Any]) -> list[dict]:
    fields = {"run_id": run.run_id, "data_size": run.data_size, "subset": run.subset, "checkpoint": run.checkpoint,
              "model": run.model, "epoch": run.epoch}
    names = ["official_pass@1", "our_pass@1", "agreement", "ungraded", "both_pass", "both_fail", "official_pass_ours_fail",
             "official_fail_ours_pass", "official_fail_ours_pass_public_test"]
    return [{**fields, "metric": f"official/{n}", "value": float(counts[n]), "ci_low": None, "ci_high": None}
            for n in names]


def evaluate(cfg: ReportConfig, storage: Storage) -> Agreement | None:
    """Agreement of every run that carries official verdicts; None when no run does."""
    rows, table_rows, frames = [], [], []
    for run in cfg.runs:
        got = run_agreement(storage, run)
        if got is None:
            continue
        counts, frame = got
        rows += _result_rows(run, counts)
        frames.append(frame)
        table_rows.append([
            run.run_id, str(counts["problems"]), str(counts["samples"]), str(counts["ungraded"]),
            fmt_pct(counts["official_pass@1"]),
            fmt_pct(counts["our_pass@1"]), str(counts["both_pass"]), str(counts["both_fail"]),
            str(counts["official_pass_ours_fail"]),
            f"{counts['official_fail_ours_pass']} ({counts['official_fail_ours_pass_public_test']})",
            fmt_pct(counts["agreement"]),
        ])
    if not frames:
        return None
    disagreements = pl.concat(frames).to_arrow().cast(DISAGREEMENTS)
    listed = disagreements.slice(0, MAX_LISTED).to_pylist()
    list_rows = [[r["run_id"], r["question_id"], str(r["sample_idx"]), "pass" if r["official_pass"] else "fail",
                  r["verdict"] or "ungraded",
                  {True: "public", False: "not public", None: "–"}[r["failing_test_public"]] if not r["official_pass"]
                  else "", _cell(r["official_failure"]), _cell(r["our_failure"])] for r in listed]
    md = "\n\n".join([
        "## Official verdicts beside ours (imported runs)",
        "pass@1 over the same problems and samples: official = the harness's own verdicts (lcb_runner used "
        "LCB's private tests too), ours = this platform's grade on the problems' tests given here. In brackets: "
        "official failures that pass here although the official failing test is a public one (true "
        "disagreements); the others failed on a test we do not have. Samples not graded here (their problem "
        "has no tests or is unknown) are left out of the comparison and counted.",
        _md(["Run", "problems", "samples", "not graded here", "official pass@1", "our pass@1", "both pass", "both fail",
             "official pass, ours fail", "official fail, ours pass (public test)", "agreement"], table_rows),
        f"### Disagreements ({disagreements.num_rows}; first {min(MAX_LISTED, disagreements.num_rows)} listed, "
        "all in `agreement.parquet`)",
        _md(["Run", "question", "sample", "official", "ours", "official failing test", "official failure",
             "our first failure"], list_rows) if list_rows else "_none_",
    ])
    return Agreement(rows=rows, markdown=md, disagreements=disagreements)


def _cell(text: str | None) -> str:
    return "" if not text else text.replace("|", "\\|").replace("\n", "\\n")
