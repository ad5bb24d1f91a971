"""Problem and test formats: LiveCodeBench rows and TACO `input_output` into one internal representation.

A bottom-layer module (it imports only `valley.schemas`, `valley.errors` and third-party libraries)
so that generate, grade, decontam and imports all read problems the same way without depending on
each other. A problems row (schemas.PROBLEMS) stores its tests as a JSON list of {input, output,
testtype}; `TestSpec` is what the grader's runner executes.
"""

from __future__ import annotations

import base64
import gzip
import json
import pickle
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from valley import schemas
from valley.errors import InputError

STDIN, FUNCTIONAL = "stdin", "functional"


@dataclass(frozen=True)
class TestSpec:
    """Everything needed to run one problem's tests; `compare` picks LCB or TACO output rules."""

    __test__ = False  # not a pytest class, despite the name

    mode: str  # stdin | functional
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    fn_name: str | None = None
    compare: str = "lcb"  # lcb | taco

    def __len__(self) -> int:
        return len(self.inputs)


# ---- LiveCodeBench -------------------------------------------------------------------------------
def decode_private_tests(text: str) -> list[dict]:
    """LCB stores private tests as plain JSON or as base64(zlib(pickle(json string)))."""
    if not text:
        return []
    try:
        return json.loads(text)
    except ValueError:
        pass
    raw = zlib.decompress(base64.b64decode(text.encode("utf-8")))
    # The payload is LCB's own published dataset; pickle here only ever holds a str.
    value = pickle.loads(raw)  # noqa: S301
    return json.loads(value) if isinstance(value, str | bytes) else value


_METHOD = re.compile(r"^\s+def\s+([A-Za-z_]\w*)\s*\(\s*self", re.MULTILINE)
_FUNC = re.compile(r"^def\s+([A-Za-z_]\w*)\s*\(", re.MULTILINE)


def func_name_from_starter(starter_code: str) -> str | None:
    """The method LeetCode asks for: the first `def name(self` in the starter (else a top-level def)."""
    m = _METHOD.search(starter_code or "") or _FUNC.search(starter_code or "")
    return m.group(1) if m else None


def _platform_of(question_id: str, functional: bool) -> str:
    if functional:
        return "leetcode"
    if re.match(r"^(abc|arc|agc|ahc)\d+_[a-z]\d*$", question_id):
        return "atcoder"
    if re.match(r"^\d+_[A-Z]\d*$", question_id):
        return "codeforces"
    return "unknown"


def _norm_tests(tests: Any, *, file: str | None, row: int | None, field: str) -> list[dict]:
    if isinstance(tests, str):
        try:
            tests = json.loads(tests) if tests.strip() else []
        except ValueError as exc:
            raise InputError(f"tests are not valid JSON: {exc}", file=file, row=row, field=field) from exc
    if not isinstance(tests, list):
        raise InputError("tests must be a JSON list", file=file, row=row, field=field)
    out = []
    for i, t in enumerate(tests):
        if not isinstance(t, dict) or not isinstance(t.get("input"), str) or not isinstance(t.get("output"), str):
            raise InputError(f"test {i} must be an object with string input and output", file=file, row=row,
                             field=field)
        testtype = t.get("testtype", STDIN)
        if testtype not in (STDIN, FUNCTIONAL):
            raise InputError(f"test {i} has unknown testtype {testtype!r}", file=file, row=row, field=field)
        out.append({"input": t["input"], "output": t["output"], "testtype": testtype})
    return out


def problem_from_lcb_row(row: dict, *, file: str | None = None, row_idx: int | None = None) -> dict:
    """One LCB code_generation row (lite fields, optional private tests/metadata) -> a PROBLEMS row."""
    for field in ("question_id", "question_content", "public_test_cases"):
        if not isinstance(row.get(field), str):
            raise InputError("missing or non-string field", file=file, row=row_idx, field=field)
    tests = _norm_tests(row["public_test_cases"], file=file, row=row_idx, field="public_test_cases")
    private = row.get("private_test_cases")
    if private:
        try:
            decoded = decode_private_tests(private) if isinstance(private, str) else private
        except Exception as exc:  # corrupt base64/zlib/pickle all mean the same to the user
            raise InputError(f"cannot decode private tests: {exc}", file=file, row=row_idx,
                             field="private_test_cases") from exc
        tests += _norm_tests(decoded, file=file, row=row_idx, field="private_test_cases")
    starter = row.get("starter_code") or ""
    functional = any(t["testtype"] == FUNCTIONAL for t in tests)
    meta = row.get("metadata") or {}
    if isinstance(meta, str):
        try:
            meta = json.loads(meta) if meta.strip() else {}
        except ValueError as exc:
            raise InputError("metadata is not valid JSON", file=file, row=row_idx, field="metadata") from exc
    func_name = (meta or {}).get("func_name") or (func_name_from_starter(starter) if functional else None)
    if functional and not func_name:
        raise InputError("functional problem without func_name or a method in starter_code", file=file,
                         row=row_idx, field="starter_code")
    qid = row["question_id"]
    return {
        "question_id": qid,
        "question_title": row.get("question_title"),
        "question_content": row["question_content"],
        "platform": row.get("platform") or _platform_of(qid, functional),
        "difficulty": row.get("difficulty"),
        "contest_id": None if row.get("contest_id") is None else str(row["contest_id"]),
        "contest_date": None if row.get("contest_date") is None else str(row["contest_date"]),
        "starter_code": starter,
        "func_name": func_name if functional else None,
        "testtype": FUNCTIONAL if functional else STDIN,
        "tests": json.dumps(tests),
    }


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def iter_json_records(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(row index, record) of a .jsonl / .json (list) file, optionally gzip'd; bad JSON names the row."""
    path = Path(path)
    stem = path.name.removesuffix(".gz")
    with _open_text(path) as f:
        if stem.endswith(".json"):
            data = json.load(f)
            if not isinstance(data, list):
                raise InputError("expected a JSON list of records", file=str(path))
            yield from enumerate(data)
            return
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except ValueError as exc:
                raise InputError(f"invalid JSON: {exc}", file=str(path), row=i) from exc


def load_lcb_problems(paths: str | Path | Iterable[str | Path]) -> pa.Table:
    """LCB problem files (jsonl/json, .gz ok) -> a PROBLEMS table; duplicate ids are an error."""
    if isinstance(paths, str | Path):
        paths = [paths]
    rows, seen = [], {}
    for p in paths:
        for i, rec in iter_json_records(p):
            prob = problem_from_lcb_row(rec, file=str(p), row_idx=i)
            if prob["question_id"] in seen:
                raise InputError(f"duplicate question_id, first seen in {seen[prob['question_id']]}",
                                 file=str(p), row=i, field="question_id")
            seen[prob["question_id"]] = f"{p} row {i}"
            rows.append(prob)
    return pa.Table.from_pylist(rows, schema=schemas.PROBLEMS)


def spec_from_problem(row: dict) -> TestSpec:
    """A PROBLEMS row -> TestSpec (LCB comparison rules)."""
    tests = _norm_tests(row["tests"], file=None, row=None, field="tests")
    functional = row.get("testtype") == FUNCTIONAL or any(t["testtype"] == FUNCTIONAL for t in tests)
    if functional:  # arguments and results are JSON; a bad one would otherwise surface mid-grading
        for i, t in enumerate(tests):
            for what, text in [("output", t["output"]), *(("input", line) for line in t["input"].split("\n"))]:
                try:
                    json.loads(text)
                except ValueError as exc:
                    raise InputError(f"functional test {i}: {what} is not JSON ({exc})", field="tests") from exc
    return TestSpec(
        mode=FUNCTIONAL if functional else STDIN,
        inputs=tuple(t["input"] for t in tests),
        outputs=tuple(t["output"] for t in tests),
        fn_name=row.get("func_name") or (func_name_from_starter(row.get("starter_code") or "") if functional
                                         else None),
    )


# ---- TACO ----------------------------------------------------------------------------------------
def _as_text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return value if isinstance(value, str) else str(value)


def spec_from_taco(input_output: str | dict, *, file: str | None = None, row: int | None = None) -> TestSpec:
    """TACO `input_output` ({"inputs","outputs","fn_name"?}) -> TestSpec with TACO comparison rules.

    Call-based inputs are argument lists; they become one JSON value per line like LCB's functional
    tests, so a single runner serves both.
    """
    io = input_output
    if isinstance(io, str):
        try:
            io = json.loads(io)
        except ValueError as exc:
            raise InputError(f"input_output is not valid JSON: {exc}", file=file, row=row, field="tests") from exc
    if not isinstance(io, dict) or not isinstance(io.get("inputs"), list) or not isinstance(io.get("outputs"), list):
        raise InputError("input_output needs 'inputs' and 'outputs' lists", file=file, row=row, field="tests")
    if len(io["inputs"]) != len(io["outputs"]):
        raise InputError(f"{len(io['inputs'])} inputs but {len(io['outputs'])} outputs", file=file, row=row,
                         field="tests")
    fn_name = io.get("fn_name")
    if fn_name:
        inputs = []
        for i, args in enumerate(io["inputs"]):
            if not isinstance(args, list):
                raise InputError(f"call-based input {i} must be a list of arguments", file=file, row=row,
                                 field="tests")
            inputs.append("\n".join(json.dumps(a) for a in args))
        outputs = [json.dumps(o) for o in io["outputs"]]
        return TestSpec(FUNCTIONAL, tuple(inputs), tuple(outputs), fn_name=str(fn_name), compare="taco")
    return TestSpec(STDIN, tuple(_as_text(x) for x in io["inputs"]), tuple(_as_text(x) for x in io["outputs"]),
                    compare="taco")
