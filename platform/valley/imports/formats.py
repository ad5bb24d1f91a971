"""Readers for generations written by other harnesses: one parser per file shape, all yielding the same
`ImportedSample` rows (the generate stage's samples plus the harness's own verdict when it has one).

Pure functions over parsed JSON, so each shape is tested without Ray or storage:

- lcb_runner `*_eval_all.json` and its generations file (`Scenario.codegeneration_<n>_<T>.json`, or the
  custom-evaluator input `[{question_id, code_list}]`): one record per problem with `output_list` /
  `code_list`, plus `graded_list` and `metadata` per sample once evaluated.
- SkyThought `results.json`: {unique_id: {task fields…, responses, token_usages}}; `responses` is a list
  of {content, correctness, reason} (skythought.evals) or, in older skythought_evals files, a mapping
  temperature -> entry or list of entries.
- plain JSONL: one sample per line (`question_id`, `response`, optional `sample_idx`, `n_tokens`,
  `finish_reason`, `official_pass`).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from valley.errors import InputError
from valley.grade.extract import extract_code

FORMATS = ("lcb", "skythought", "jsonl")
# Problem attributes an lcb_runner / SkyThought record carries (the LCB lite fields, tests excepted).
PROBLEM_FIELDS = ("question_title", "question_content", "platform", "contest_id", "contest_date", "difficulty",
                  "starter_code")


@dataclass
class ImportedSample:
    question_id: str
    sample_idx: int
    response: str
    n_tokens: int | None = None
    finish_reason: str | None = None
    official_pass: bool | None = None
    official_detail: str | None = None


@dataclass
class ParsedFile:
    """Everything read from one file: samples, per-problem attributes, and counted oddities."""

    path: str
    format: str
    samples: list[ImportedSample]
    problems: dict[str, dict[str, Any]] = field(default_factory=dict)  # question_id -> PROBLEM_FIELDS found
    # lcb_runner only: samples whose code we extract from output_list[i] differs from its code_list[i]
    extraction_differs: int = 0
    fenced_code: int = 0  # samples imported from code_list (no raw output): the code wrapped in a fence


# ---- file access / detection -------------------------------------------------------------------------


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else open(path, encoding="utf-8")


def load_json(path: str) -> Any:
    p = Path(path)
    if not p.exists():
        raise InputError("import file does not exist", file=path)
    with _open_text(p) as f:
        try:
            return json.load(f)
        except ValueError as exc:
            raise InputError(f"not a JSON document: {exc}", file=path) from exc


def is_jsonl(path: str) -> bool:
    name = Path(path).name.lower().removesuffix(".gz")
    return name.endswith((".jsonl", ".ndjson"))


def detect_format(path: str, data: Any) -> str:
    """lcb for a JSON list of problem records, skythought for a JSON object of records."""
    if isinstance(data, list):
        if data and isinstance(data[0], list):
            raise InputError("a list of code lists has no question ids; use the [{question_id, code_list}] "
                             "form of lcb_runner's custom output file", file=path, row=0)
        return "lcb"
    if isinstance(data, dict):
        return "skythought"
    raise InputError("expected a JSON list (lcb_runner) or object (SkyThought results)", file=path)


def fenced(code: str) -> str:
    """Code as a response our extractor returns unchanged (a fenced block)."""
    return f"```python\n{code}\n```"


def _qid(value: Any, *, file: str, row: int, field: str = "question_id") -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise InputError("missing or invalid question id", file=file, row=row, field=field)
    return str(value)


def _problem_attrs(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(rec[k]) if k in ("contest_id", "contest_date") else rec[k])
            for k in PROBLEM_FIELDS if rec.get(k) not in (None, "")}


# ---- lcb_runner ---------------------------------------------------------------------------------------


def parse_lcb(path: str, data: list, *, response_from: str = "output") -> ParsedFile:
    """lcb_runner records -> samples. `response_from`: "output" (raw model output, as generated) or
    "code" (lcb_runner's extracted code, fenced, so grading sees exactly the code lcb_runner ran)."""
    out = ParsedFile(path, "lcb", [])
    seen: set[str] = set()
    for row, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise InputError("an lcb_runner record must be a JSON object", file=path, row=row)
        qid = _qid(rec.get("question_id"), file=path, row=row)
        if qid in seen:
            raise InputError(f"question_id {qid!r} appears twice", file=path, row=row, field="question_id")
        seen.add(qid)
        outputs, codes = rec.get("output_list"), rec.get("code_list")
        for name, value in (("output_list", outputs), ("code_list", codes)):
            if value is not None and not (isinstance(value, list) and all(isinstance(x, str) for x in value)):
                raise InputError("must be a list of strings", file=path, row=row, field=name)
        if outputs is None and codes is None:
            raise InputError("record has neither output_list nor code_list", file=path, row=row, field="output_list")
        n = len(outputs if outputs is not None else codes)
        graded, meta = rec.get("graded_list"), rec.get("metadata")
        for name, value in (("code_list", codes), ("graded_list", graded), ("metadata", meta)):
            if value is not None and (not isinstance(value, list) or len(value) != n):
                raise InputError(f"must be a list of {n} entries (one per sample)", file=path, row=row, field=name)
        if graded is not None and not all(isinstance(g, bool) for g in graded):
            raise InputError("graded_list must hold booleans", file=path, row=row, field="graded_list")
        use_code = response_from == "code" and codes is not None or outputs is None
        for i in range(n):
            if use_code:
                response = fenced(codes[i])
                out.fenced_code += 1
            else:
                response = outputs[i]
                if codes is not None and (extract_code(response) or "").strip() != codes[i].strip():
                    out.extraction_differs += 1
            detail = None if meta is None else (meta[i] if isinstance(meta[i], str) else json.dumps(meta[i]))
            out.samples.append(ImportedSample(qid, i, response, official_pass=None if graded is None else graded[i],
                                              official_detail=detail))
        out.problems[qid] = _problem_attrs(rec)
    return out


# ---- SkyThought ---------------------------------------------------------------------------------------


def _sky_entries(value: Any, temperature: str | None, *, file: str, row: int, field: str) -> list:
    """Normalise `responses` / `token_usages` to a list: newer files hold a list, older ones a mapping
    temperature -> entry (n=1) or list of entries."""
    if isinstance(value, dict) and not {"content", "completion_tokens"} & value.keys():
        keys = sorted(value)
        if temperature is None:
            if len(keys) != 1:
                raise InputError(f"results for several temperatures {keys}; choose one with `temperature`",
                                 file=file, row=row, field=field)
            temperature = keys[0]
        if temperature not in value:
            raise InputError(f"no results for temperature {temperature!r} (found {keys})", file=file, row=row,
                             field=field)
        value = value[temperature]
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list):
        raise InputError("must be a list (or a mapping temperature -> list)", file=file, row=row, field=field)
    return value


def parse_skythought(path: str, data: dict, *, temperature: str | None = None) -> ParsedFile:
    out = ParsedFile(path, "skythought", [])
    seen: set[str] = set()
    for row, (key, rec) in enumerate(data.items()):
        if not isinstance(rec, dict) or "responses" not in rec:
            raise InputError(f"record {key!r} has no responses", file=path, row=row, field="responses")
        qid = _qid(rec.get("question_id", key), file=path, row=row)
        if qid in seen:
            raise InputError(f"question_id {qid!r} appears twice", file=path, row=row, field="question_id")
        seen.add(qid)
        entries = _sky_entries(rec["responses"], temperature, file=path, row=row, field="responses")
        usages = _sky_entries(rec.get("token_usages") or [], temperature, file=path, row=row, field="token_usages")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
                raise InputError(f"response {i} lacks a string content", file=path, row=row, field="responses")
            correct = entry.get("correctness")
            if correct is not None and not isinstance(correct, bool | int):
                raise InputError(f"response {i}: correctness must be a boolean", file=path, row=row,
                                 field="responses")
            usage = usages[i] if i < len(usages) and isinstance(usages[i], dict) else {}
            tokens = usage.get("completion_tokens")
            reason = entry.get("reason")
            out.samples.append(ImportedSample(
                qid, i, entry["content"], n_tokens=int(tokens) if isinstance(tokens, int | float) else None,
                official_pass=None if correct is None else bool(correct),
                official_detail=None if reason is None else (reason if isinstance(reason, str) else json.dumps(reason)),
            ))
        out.problems[qid] = _problem_attrs(rec)
    return out


# ---- plain JSONL --------------------------------------------------------------------------------------


def iter_jsonl(path: str) -> Iterator[tuple[int, dict]]:
    p = Path(path)
    if not p.exists():
        raise InputError("import file does not exist", file=path)
    with _open_text(p) as f:
        for row, line in enumerate(f):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise InputError(f"invalid JSON: {exc}", file=path, row=row) from exc
            if not isinstance(rec, dict):
                raise InputError("a line must hold a JSON object", file=path, row=row)
            yield row, rec


def jsonl_sample(rec: dict, *, file: str, row: int, next_idx: int) -> ImportedSample:
    """One JSONL line -> a sample; `next_idx` is used when the line has no sample_idx."""
    qid = _qid(rec.get("question_id"), file=file, row=row)
    if not isinstance(rec.get("response"), str):
        raise InputError("missing or non-string response", file=file, row=row, field="response")
    idx = rec.get("sample_idx", next_idx)
    checks = (("sample_idx", idx, int, True), ("n_tokens", rec.get("n_tokens"), int, False),
              ("finish_reason", rec.get("finish_reason"), str, False),
              ("official_pass", rec.get("official_pass"), bool, False))
    for name, value, kind, required in checks:
        if (value is None and required) or (value is not None and (not isinstance(value, kind)
                                                                   or (kind is int and isinstance(value, bool)))):
            raise InputError(f"must be {kind.__name__}", file=file, row=row, field=name)
    if idx < 0:
        raise InputError("must be >= 0", file=file, row=row, field="sample_idx")
    detail = rec.get("official_detail")
    return ImportedSample(qid, idx, rec["response"], n_tokens=rec.get("n_tokens"),
                          finish_reason=rec.get("finish_reason"), official_pass=rec.get("official_pass"),
                          official_detail=None if detail is None else str(detail))


def parse_jsonl(path: str) -> ParsedFile:
    """Lines with a sample_idx keep it; lines without one are numbered per question in file order.
    Mixing the two for one question is refused (the numbers could collide)."""
    out = ParsedFile(path, "jsonl", [])
    counters: dict[str, int] = {}
    explicit: dict[str, bool] = {}
    seen: dict[tuple[str, int], int] = {}
    for row, rec in iter_jsonl(path):
        qid = _qid(rec.get("question_id"), file=path, row=row)
        has_idx = "sample_idx" in rec
        if explicit.setdefault(qid, has_idx) != has_idx:
            raise InputError(f"question {qid!r} mixes lines with and without sample_idx", file=path, row=row,
                             field="sample_idx")
        sample = jsonl_sample(rec, file=path, row=row, next_idx=counters.get(qid, 0))
        counters[qid] = counters.get(qid, 0) + 1
        key = (sample.question_id, sample.sample_idx)
        if key in seen:
            raise InputError(f"duplicate sample {key} (first at row {seen[key]})", file=path, row=row,
                             field="sample_idx")
        seen[key] = row
        out.samples.append(sample)
    return out


def parse_file(path: str, fmt: str = "auto", *, response_from: str = "output",
               temperature: str | None = None) -> ParsedFile:
    """Read one file of any supported shape (`fmt` = auto | lcb | skythought | jsonl)."""
    if fmt == "jsonl" or (fmt == "auto" and is_jsonl(path)):
        return parse_jsonl(path)
    data = load_json(path)
    if fmt == "auto":
        fmt = detect_format(path, data)
    if fmt == "lcb":
        if not isinstance(data, list):
            raise InputError("an lcb_runner file holds a JSON list of problem records", file=path)
        return parse_lcb(path, data, response_from=response_from)
    if fmt == "skythought":
        if not isinstance(data, dict):
            raise InputError("a SkyThought results file holds a JSON object id -> record", file=path)
        return parse_skythought(path, data, temperature=temperature)
    raise InputError(f"unknown import format {fmt!r} (use auto, {', '.join(FORMATS)})", file=path)


def model_from_path(path: str) -> str:
    """Run label from the file name: lcb_runner writes output/<model>/Scenario.codegeneration_…json (a
    flattened copy may read `<owner>__<model>__Scenario…`); SkyThought writes <run dir>/results.json."""
    p = Path(path)
    name = p.name
    if "Scenario." in name:
        prefix = name.split("Scenario.", 1)[0].rstrip("_")
        parts = [x for x in prefix.split("__") if x]
        return parts[-1] if parts else p.parent.name
    if name.removesuffix(".gz") == "results.json":
        return p.parent.name
    stem = name.removesuffix(".gz")
    for suffix in (".jsonl", ".ndjson", ".json"):
        stem = stem.removesuffix(suffix)
    return stem
