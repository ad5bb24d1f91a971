"""Validate and join one run's samples, verdicts and problems into a per-sample frame.

Pure table logic (polars over Arrow, zero-copy in and out): no Ray, no I/O. Bad rows raise
`InputError` naming the file, row and field; rows that cannot be matched are never dropped
silently: samples without a verdict stay in (as verdict "ungraded", counted as not passing) and
verdicts without a sample are returned apart so the caller can count them and write them aside.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from valley.errors import InputError
from valley.schemas import VERDICT_VALUES

UNGRADED = "ungraded"
GRADER_ERROR = "grader_error"
UNKNOWN = "unknown"
THINK_TAG = "<think>"
# Anchored regex instead of strip-then-compare: no copy of (long) responses; \s is Unicode whitespace
# like str.lstrip().
THINK_AT_START = r"^\s*" + THINK_TAG


@dataclass
class JoinedRun:
    """Per-sample outcomes, the problems' attributes, and the verdict rows that matched no sample."""

    samples: pl.DataFrame  # question_id, sample_idx, verdict, passed, completed, think, n_tokens
    problems: pl.DataFrame  # question_id, difficulty, platform, contest_date (normalised labels)
    orphan_verdicts: pl.DataFrame
    n_ungraded: int
    n_without_problem: int
    n_grader_error: int = 0  # samples the grader could not run: left out of every rate, reported as a count


def _frame(table: pa.Table | pl.DataFrame, name: str, required: list[str], sources: dict[str, str]) -> pl.DataFrame:
    df = table if isinstance(table, pl.DataFrame) else pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    for col in required:
        if col not in df.columns:
            raise InputError(f"{name} table lacks column {col!r}", file=sources.get(name), field=col)
    return df


def _check_not_null(df: pl.DataFrame, name: str, cols: list[str], sources: dict[str, str]) -> None:
    for col in cols:
        if df[col].null_count():
            row = int(df.with_row_index("_row").filter(pl.col(col).is_null())["_row"][0])
            raise InputError(f"{name} table has a null {col}", file=sources.get(name), row=row, field=col)


def _check_unique(df: pl.DataFrame, key: str, name: str, shown: list[str], sources: dict[str, str]) -> None:
    """`key` is one integer (or string) column standing for the composite key `shown`."""
    if df[key].n_unique() == df.height:  # the cheap check; locate the offender only on failure
        return
    dup = df[key].is_duplicated()
    if dup.any():
        first_row = int(dup.arg_max())  # first True
        first = df.row(first_row, named=True)
        what = ", ".join(f"{k}={first[k]!r}" for k in shown)
        raise InputError(
            f"{name} table has {int(dup.sum())} rows with a repeated key ({what})",
            file=sources.get(name),
            row=first_row,
            field=shown[-1],
        )


def _encode_keys(
    s: pl.DataFrame, v: pl.DataFrame, keys: list[str], sources: dict[str, str]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Add one int64 `_key` per row standing for (run_id,) question_id, sample_idx in both tables.

    Hashing and joining one integer is several times cheaper than a three-column string key on
    millions of rows; the string columns are mapped through one shared Enum so codes agree.
    """
    s = s.with_columns(pl.col("sample_idx").cast(pl.Int64))
    v = v.with_columns(pl.col("sample_idx").cast(pl.Int64))
    span = max(int(s["sample_idx"].max() or 0), int(v["sample_idx"].max() or 0)) + 1
    for name, df in (("samples", s), ("verdicts", v)):
        if int(df["sample_idx"].min() or 0) < 0:
            raise InputError(f"{name} table has a negative sample_idx", file=sources.get(name),
                             row=int(df["sample_idx"].arg_min() or 0), field="sample_idx")
    s_key = pl.col("sample_idx")
    v_key = pl.col("sample_idx")
    for col in keys[:-1][::-1]:  # question_id, then run_id, as higher-order digits
        values = pl.concat([s[col].cast(pl.String), v[col].cast(pl.String)]).unique().sort()
        enum = pl.Enum(values)
        code = pl.col(col).cast(pl.String).cast(enum).to_physical().cast(pl.Int64)
        s_key = s_key + code * span
        v_key = v_key + code * span
        span *= len(values)
    return s.with_columns(s_key.alias("_key")), v.with_columns(v_key.alias("_key"))


def _required_frames(
    samples: pa.Table | pl.DataFrame,
    verdicts: pa.Table | pl.DataFrame,
    problems: pa.Table | pl.DataFrame,
    sources: dict[str, str],
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, list[str]]:
    """The three inputs as frames, refused (naming file, row and field) when a column the join needs is
    missing or null, and the join key: run_id is part of it only when samples and verdicts both carry it."""
    s = _frame(samples, "samples", ["question_id", "sample_idx", "response", "finish_reason"], sources)
    v = _frame(verdicts, "verdicts", ["question_id", "sample_idx", "verdict"], sources)
    p = _frame(problems, "problems", ["question_id"], sources)
    keys = ["question_id", "sample_idx"]
    if "run_id" in s.columns and "run_id" in v.columns:
        keys = ["run_id", *keys]
    _check_not_null(s, "samples", [*keys, "response"], sources)
    _check_not_null(v, "verdicts", [*keys, "verdict"], sources)
    _check_not_null(p, "problems", ["question_id"], sources)
    return s, v, p, keys


def _check_verdict_values(v: pl.DataFrame, sources: dict[str, str]) -> None:
    """Refuse a verdict outside the schema's values, which would otherwise count silently as a failure."""
    bad = v.with_row_index("_row").filter(~pl.col("verdict").is_in(list(VERDICT_VALUES)))
    if bad.height:
        first = bad.row(0, named=True)
        raise InputError(
            f"unknown verdict {first['verdict']!r} ({bad.height} rows); expected one of {', '.join(VERDICT_VALUES)}",
            file=sources.get("verdicts"),
            row=int(first["_row"]),
            field="verdict",
        )


def _keyed_unique(
    s: pl.DataFrame, v: pl.DataFrame, p: pl.DataFrame, keys: list[str], sources: dict[str, str]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Samples and verdicts with their integer `_key`, once no sample, verdict or problem repeats its key:
    a repeat would multiply rows in the join and count one sample twice."""
    s, v = _encode_keys(s, v, keys, sources)
    _check_unique(s, "_key", "samples", keys, sources)
    _check_unique(v, "_key", "verdicts", keys, sources)
    _check_unique(p, "question_id", "problems", ["question_id"], sources)
    return s, v


def _sample_outcomes(s: pl.DataFrame, v: pl.DataFrame, max_tokens: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Every sample with its verdict ("ungraded" when it has none) and its derived passed / completed /
    think, plus the verdicts that matched no sample (kept apart, never dropped silently)."""
    if "n_tokens" not in s.columns:  # no token counts: completion trusts the finish reason
        s = s.with_columns(pl.lit(None, dtype=pl.Int64).alias("n_tokens"))
    joined = s.select("_key", "question_id", "sample_idx", "response", "finish_reason", "n_tokens").join(
        v.select("_key", "verdict"), on="_key", how="left"
    )
    orphans = v.join(s.select("_key"), on="_key", how="anti").drop("_key")
    frame = joined.select(
        pl.col("question_id").cast(pl.String),
        pl.col("sample_idx"),
        pl.col("verdict").fill_null(UNGRADED),
        (pl.col("verdict") == "pass").fill_null(False).alias("passed"),
        # Null when the sample has no finish reason (imported lcb_runner/SkyThought files carry none):
        # unknown, so it leaves the completion rate's denominator instead of counting as incomplete.
        pl.when(pl.col("finish_reason").is_null())
        .then(pl.lit(None, dtype=pl.Boolean))
        .otherwise(
            (pl.col("finish_reason") == "stop")
            & (pl.col("n_tokens").is_null() | (pl.col("n_tokens") <= max_tokens))
        )
        .alias("completed"),
        pl.col("response").str.contains(THINK_AT_START).alias("think"),
        pl.col("n_tokens").cast(pl.Int64),
    )
    return frame, orphans


def _problem_attributes(p: pl.DataFrame) -> pl.DataFrame:
    """The problems' breakdown attributes, normalised, and "unknown" (a null date) where a column is absent."""
    return p.select(
        pl.col("question_id").cast(pl.String),
        *[
            (_label(pl.col(c)) if c in p.columns else pl.lit(UNKNOWN)).alias(c)
            for c in ("difficulty", "platform")
        ],
        (pl.col("contest_date").cast(pl.String) if "contest_date" in p.columns else pl.lit(None, dtype=pl.String))
        .alias("contest_date"),
    )


def _counted(frame: pl.DataFrame, attrs: pl.DataFrame, orphans: pl.DataFrame) -> JoinedRun:
    """The joined run with grader errors left out (not a model failure: such a sample is no evidence either
    way) and counted, as are the samples without a verdict and those without a problem."""
    n_grader_error = int((frame["verdict"] == GRADER_ERROR).sum())
    if n_grader_error:
        frame = frame.filter(pl.col("verdict") != GRADER_ERROR)
    n_ungraded = int((frame["verdict"] == UNGRADED).sum())
    n_without = frame.join(attrs.select("question_id"), on="question_id", how="anti").height
    return JoinedRun(frame, attrs, orphans, n_ungraded, n_without, n_grader_error)


def join_run(
    samples: pa.Table | pl.DataFrame,
    verdicts: pa.Table | pl.DataFrame,
    problems: pa.Table | pl.DataFrame,
    *,
    max_tokens: int,
    sources: dict[str, str] | None = None,
) -> JoinedRun:
    """Join on (run_id,) question_id, sample_idx and derive pass / completed / think per sample.

    completed: finish_reason == "stop" and n_tokens <= max_tokens, so "length" (the budget ran out) and
    "context" (the window filled first) are both incomplete (a null n_tokens trusts the
    finish reason; a null finish reason makes it unknown). think: the response, after leading whitespace,
    begins with "<think>" — the paper counts a response that *begins* with the tag; we strip whitespace
    first because chat templates often leave a newline before the first generated token, which is not a
    choice the model made.
    """
    sources = sources or {}
    s, v, p, keys = _required_frames(samples, verdicts, problems, sources)
    _check_verdict_values(v, sources)
    s, v = _keyed_unique(s, v, p, keys, sources)
    frame, orphans = _sample_outcomes(s, v, max_tokens)
    return _counted(frame, _problem_attributes(p), orphans)


def _label(col: pl.Expr) -> pl.Expr:
    """Breakdown label: trimmed, lower-case, "unknown" when missing ("Medium " and "medium" agree)."""
    return col.cast(pl.String).str.strip_chars().str.to_lowercase().fill_null(UNKNOWN)
