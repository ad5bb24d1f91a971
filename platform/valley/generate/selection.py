"""LiveCodeBench problems: read code_generation_lite rows (JSONL) or a problems table (Parquet), fill
missing platform/contest dates from lcb_runner outputs, and filter by release, date, difficulty, platform.

Filtering is pure (`select`) and explains itself: every problem it drops is counted by reason, and a
problem whose date or platform is unknown follows the filter's explicit `missing` policy.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from valley import schemas
from valley.errors import InputError
from valley.generate.config import ProblemFilter
from valley.problems import iter_json_records, problem_from_lcb_row

_RELEASE_FILE = re.compile(r"test(\d*)\.jsonl$")
UNKNOWN_PLATFORM = "unknown"  # what valley.problems infers when an id matches no known platform


@dataclass
class Selection:
    """The problems kept, in question_id order, and why the others were not."""

    problems: list[dict[str, Any]]
    total: int
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    missing: Counter = field(default_factory=Counter)  # "<field>_<exclude|include>" -> count
    window: dict[str, Any] = field(default_factory=dict)  # see `window_of`

    def summary(self) -> dict[str, Any]:
        return {"total": self.total, "selected": len(self.problems), "dropped": dict(self.dropped),
                "missing": dict(self.missing), "window": dict(self.window)}


def window_of(problems: list[dict[str, Any]], flt: ProblemFilter) -> dict[str, Any]:
    """The contest-date window a selection was made with and the one its problems span: the stage's marker
    keeps it, so a report names the window each run was scored on."""
    dates = sorted(str(p["contest_date"])[:10] for p in problems if p.get("contest_date"))
    return {"label": flt.window_label(), "start_date": flt.start_date, "end_date": flt.end_date,
            "first_contest_date": dates[0] if dates else None, "last_contest_date": dates[-1] if dates else None,
            "n_dated": len(dates)}


# ---- reading ---------------------------------------------------------------------------------------


def release_of_file(path: str) -> int | None:
    """LCB release increment of a file by its code_generation_lite name (test.jsonl = 1, test5.jsonl = 5)."""
    m = _RELEASE_FILE.search(Path(path).name)
    if not m:
        return None
    return int(m.group(1) or 1)


def parse_release(spec: str) -> set[int]:
    """`release_v3` -> {1,2,3} (cumulative, as LCB tags them); `v3` -> {3}; `v2_v5` -> {2,3,4,5}."""
    s = spec.strip().lower()
    if m := re.fullmatch(r"release_v(\d+)", s):
        return set(range(1, int(m.group(1)) + 1))
    if m := re.fullmatch(r"v(\d+)", s):
        return {int(m.group(1))}
    if m := re.fullmatch(r"v(\d+)_v(\d+)", s):
        lo, hi = int(m.group(1)), int(m.group(2))
        if lo <= hi:
            return set(range(lo, hi + 1))
    raise InputError(f"unknown LCB release {spec!r} (use release_vN, vN or vA_vB)", field="filters.release_version")


def problem_from_table_row(row: dict[str, Any], *, file: str, line: int) -> dict[str, Any]:
    """A row of a Parquet problems table (schemas.PROBLEMS) as given, after checking required fields."""
    for name in ("question_id", "question_content", "tests"):
        if not isinstance(row.get(name), str) or not row[name]:
            raise InputError("missing or empty required field", file=file, row=line, field=name)
    return {name: row.get(name) for name in schemas.PROBLEMS.names}


def read_problem_file(path: str, meta: dict[str, dict[str, Any]] | None = None
                      ) -> Iterator[tuple[dict[str, Any], int | None]]:
    """(problem, release increment or None) for every row of an LCB JSONL/JSON file or problems Parquet.

    `meta` (question_id -> platform/contest fields) fills what an LCB row lacks before it is converted,
    so the row's own values always win.
    """
    p = Path(path)
    if not p.exists():
        raise InputError("problems file does not exist", file=path)
    if p.suffix == ".parquet" or p.is_dir():
        for i, row in enumerate(pq.read_table(str(p)).to_pylist()):
            yield problem_from_table_row(row, file=path, line=i), None
        return
    release = release_of_file(path)
    for i, row in iter_json_records(p):
        if not isinstance(row, dict):
            raise InputError("a problem record must be a JSON object", file=path, row=i)
        extra = (meta or {}).get(str(row.get("question_id")), {})
        row = {**row, **{k: v for k, v in extra.items() if row.get(k) in (None, "")}}
        yield problem_from_lcb_row(row, file=path, row_idx=i), release


def _iso(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def read_metadata(paths: Iterable[str]) -> dict[str, dict[str, Any]]:
    """question_id -> {platform, contest_id, contest_date} from lcb_runner `*_eval_all.json(.gz)` lists
    (or any JSON list / JSONL of LCB rows). Earlier files win on conflicts."""
    out: dict[str, dict[str, Any]] = {}
    for path in paths:
        if not Path(path).exists():
            raise InputError("problem metadata file does not exist", file=path)
        for i, row in iter_json_records(path):
            if not isinstance(row, dict) or "question_id" not in row:
                raise InputError("metadata record lacks question_id", file=path, row=i, field="question_id")
            entry = out.setdefault(str(row["question_id"]), {})
            for key in ("platform", "contest_id", "contest_date"):
                if entry.get(key) is None and row.get(key) not in (None, ""):
                    entry[key] = _iso(row[key]) if key == "contest_date" else str(row[key])
    return out


# ---- selecting -------------------------------------------------------------------------------------


def _date_key(value: str) -> str:
    return value[:10]  # ISO: compare dates as text (YYYY-MM-DD), whole days inclusive


def select(rows: list[tuple[dict[str, Any], int | None]], flt: ProblemFilter) -> Selection:
    """Apply `flt` to (problem, release) pairs; pure, so it is tested without files."""
    sel = Selection(problems=[], total=len(rows))
    releases = parse_release(flt.release_version) if flt.release_version else None
    difficulties = {d.lower() for d in flt.difficulties} if flt.difficulties else None
    platforms = {p.lower() for p in flt.platforms} if flt.platforms else None
    qids = set(flt.question_ids) if flt.question_ids else None
    for problem, release in rows:
        reason = _rejection(problem, release, flt, releases, difficulties, platforms, qids, sel.missing)
        if reason:
            sel.dropped[reason] += 1
        else:
            sel.problems.append(problem)
    sel.problems.sort(key=lambda p: p["question_id"])
    if flt.limit is not None and len(sel.problems) > flt.limit:
        sel.dropped["limit"] += len(sel.problems) - flt.limit
        sel.problems = sel.problems[: flt.limit]
    sel.window = window_of(sel.problems, flt)
    return sel


def _rejection(problem: dict, release: int | None, flt: ProblemFilter, releases: set[int] | None,
               difficulties: set[str] | None, platforms: set[str] | None, qids: set[str] | None,
               missing: Counter) -> str | None:
    """The first filter a problem fails, or None. Unknown values follow `flt.missing` and are counted."""
    checks: list[tuple[str, Any, Any]] = []
    if qids is not None:
        checks.append(("question_id", problem["question_id"], lambda v: v in qids))
    if releases is not None:
        checks.append(("release", release, lambda v: v in releases))
    if flt.start_date or flt.end_date:
        checks.append(("contest_date", problem.get("contest_date"), lambda v: (
            (not flt.start_date or _date_key(v) >= _date_key(flt.start_date))
            and (not flt.end_date or _date_key(v) <= _date_key(flt.end_date)))))
    if difficulties is not None:
        checks.append(("difficulty", problem.get("difficulty"), lambda v: v.lower() in difficulties))
    if platforms is not None:
        platform = problem.get("platform")
        checks.append(("platform", None if platform == UNKNOWN_PLATFORM else platform,
                       lambda v: v.lower() in platforms))
    for name, value, ok in checks:
        if value is None:
            missing[f"{name}_{flt.missing}"] += 1
            if flt.missing == "exclude":
                return f"missing_{name}"
            continue
        if not ok(value):
            return name
    return None


def load_problems(paths: list[str], flt: ProblemFilter, metadata_paths: list[str] | None = None) -> Selection:
    """Read every problems file, fill gaps from metadata, drop duplicate ids (counted), then filter."""
    meta = read_metadata(metadata_paths or [])
    seen: dict[str, dict] = {}
    rows: list[tuple[dict, int | None]] = []
    duplicates = 0
    for path in paths:
        for problem, release in read_problem_file(path, meta):
            qid = problem["question_id"]
            if qid in seen:
                if seen[qid]["question_content"] != problem["question_content"]:
                    raise InputError(f"question_id {qid!r} appears twice with different content", file=path,
                                     field="question_id")
                duplicates += 1
                continue
            seen[qid] = problem
            rows.append((problem, release))
    sel = select(rows, flt)
    if duplicates:
        sel.dropped["duplicate_question_id"] += duplicates
        sel.total += duplicates
    return sel


def problems_table(problems: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(problems, schema=schemas.PROBLEMS)
