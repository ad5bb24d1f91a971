"""Row validation: turn a mapped source row into a clean trace, or into a reject with its reason."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from valley.data.difficulty import difficulty_bucket

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
PLACEHOLDER_QUESTIONS = frozenset({"-"})  # OpenCodeReasoning-2 ships "-": the text lives in the source dataset
FINISHED = frozenset({"stop", "eos", "end_turn"})  # finish reasons of a reply that was not cut off
RAW_LIMIT = 4096  # characters of the offending row kept in the rejects table


@dataclass(frozen=True)
class Reject:
    field: str
    reason: str
    detail: str = ""


def think_structure(response: str) -> str:
    """closed | unclosed | none | malformed — how the response uses the think tags."""
    text = response.lstrip()
    opens, closes = response.count(THINK_OPEN), response.count(THINK_CLOSE)
    if opens == 0 and closes == 0:
        return "none"
    if text.startswith(THINK_OPEN) and opens == 1 and closes == 0:
        return "unclosed"
    if text.startswith(THINK_OPEN) and opens == 1 and closes == 1:
        return "closed"
    return "malformed"


def _as_text(value: Any, field: str) -> str | Reject:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Reject(field, "invalid_utf8", str(exc))
    if not isinstance(value, str):
        return Reject(field, "wrong_type", f"expected a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")  # lone surrogates from JSON \ud8xx escapes cannot be encoded
    except UnicodeEncodeError as exc:
        return Reject(field, "invalid_utf8", str(exc))
    return value


def _as_optional_text(value: Any, field: str) -> str | None | Reject:
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)  # TACO's input_output may come parsed
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return _as_text(value, field)


def _as_bool(value: Any) -> bool | None | Reject:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    return Reject("correct", "wrong_type", f"cannot read {value!r} as a boolean")


def validate_trace(
    mapped: dict[str, Any],
    *,
    source_file: str,
    source_row: int,
    max_chars: int,
    think_policy: str = "record",
    allow_placeholder: bool = False,
) -> dict[str, Any] | Reject:
    """Return a row of schemas.TRACES, or a Reject naming the field and the reason.

    `allow_placeholder` lets a "-" question through ingest when a join will fill it in; the joined row
    is validated again without it.
    """
    out: dict[str, Any] = {}
    for field in ("question", "response"):
        value = _as_text(mapped.get(field), field) if mapped.get(field) is not None else Reject(field, "missing_field")
        if isinstance(value, Reject):
            return value
        if not value.strip():
            return Reject(field, "empty")
        out[field] = value
    if not allow_placeholder and out["question"].strip() in PLACEHOLDER_QUESTIONS:
        return Reject("question", "placeholder", f"{out['question'].strip()!r} (join the source dataset's text)")
    finish = mapped.get("finish_reason")
    if finish is not None and str(finish).strip().lower() not in FINISHED:
        return Reject("response", "unfinished", f"finish_reason {finish!r}")
    if len(out["question"]) + len(out["response"]) > max_chars:
        return Reject("response", "too_long", f"{len(out['question']) + len(out['response'])} > {max_chars} chars")
    for field in ("id", "question_id", "source", "difficulty", "teacher", "tests", "starter_code"):
        value = _as_optional_text(mapped.get(field), field)
        if isinstance(value, Reject):
            return value
        out[field] = value
    correct = _as_bool(mapped.get("correct"))
    if isinstance(correct, Reject):
        return correct
    out["correct"] = correct
    if out["difficulty"] is not None:
        out["difficulty"] = out["difficulty"].strip() or None
    out["difficulty_bucket"] = difficulty_bucket(out["difficulty"], mapped.get("_dataset") or out["source"])
    out["think"] = think_structure(out["response"])
    if think_policy == "require_closed" and out["think"] != "closed":
        return Reject("response", f"think_{out['think']}")
    name = os.path.basename(source_file)
    if out["id"] is None:
        suffix = f":{mapped['_explode_index']}" if "_explode_index" in mapped else ""
        out["id"] = f"{name}:{source_row}{suffix}"
    if out["question_id"] is None:
        out["question_id"] = derived_question_id(out["question"])
    out["source_file"] = source_file
    out["source_row"] = source_row
    return out


def derived_question_id(question: str) -> str:
    """The question id of a corpus that has none: a hash of the question text."""
    return "q-" + hashlib.sha256(question.encode("utf-8")).hexdigest()[:16]


def reject_row(reject: Reject, raw: Any, *, source_file: str, source_row: int) -> dict[str, Any]:
    """A row of schemas.REJECTS."""
    try:
        text = json.dumps(raw, ensure_ascii=True, default=str)
    except (TypeError, ValueError):
        text = repr(raw)
    reason = reject.reason if not reject.detail else f"{reject.reason}: {reject.detail}"
    return {"source_file": source_file, "source_row": source_row, "field": reject.field, "reason": reason,
            "raw": text[:RAW_LIMIT]}
