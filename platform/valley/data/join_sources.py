"""Source-side presets of a join: how each public problem set becomes question, tests and difficulty.

OpenCodeReasoning-2 names its problems by (dataset, split, index) into four sets, each shaped its own
way (see the OCR-2 dataset card): TACO and APPS keep the statement in `question` and TACO-format tests
(JSON `{"inputs", "outputs", "fn_name"?}`) in `input_output`; CodeContests keeps it in `description`
with tests split over public/private/generated lists; open-r1/codeforces splits the statement into
description, input/output format, examples and note, which OCR-2's prompts joined in that order.
Each preset adds derived columns to a source row and names the default `take` mapping.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from valley.data.columns import parse_structure

TAKE_FIELDS = ("question", "tests", "difficulty", "starter_code", "source", "question_id")


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _io_lists(value: Any) -> tuple[list, list]:
    """(inputs, outputs) from CodeContests' {"input": [...], "output": [...]} (or a JSON/Python text of it)."""
    value = parse_structure(value)
    if not isinstance(value, dict):
        return [], []
    ins, outs = value.get("input") or [], value.get("output") or []
    return (list(ins), list(outs)) if len(ins) == len(outs) else ([], [])


def _pairs(value: Any) -> tuple[list, list]:
    """(inputs, outputs) from a list of {"input", "output"} (codeforces examples / official tests)."""
    value = parse_structure(value)
    if not isinstance(value, list):
        return [], []
    pairs = [(p.get("input"), p.get("output")) for p in value if isinstance(p, dict)]
    pairs = [(i, o) for i, o in pairs if isinstance(i, str) and isinstance(o, str)]
    return [i for i, _ in pairs], [o for _, o in pairs]


def _tests_json(inputs: list, outputs: list) -> str | None:
    return json.dumps({"inputs": inputs, "outputs": outputs}, ensure_ascii=False) if inputs else None


def _derive_code_contests(row: dict[str, Any]) -> dict[str, Any]:
    inputs, outputs = [], []
    for column in ("public_tests", "private_tests", "generated_tests"):
        ins, outs = _io_lists(row.get(column))
        inputs += ins
        outputs += outs
    return {"tests_json": _tests_json(inputs, outputs)}


def codeforces_statement(row: dict[str, Any]) -> str:
    """The statement as OCR-2's prompts show it: description, Input, Output, Examples, Note."""
    parts = [_text(row.get("description"))]
    for heading, column in (("Input", "input_format"), ("Output", "output_format")):
        if _text(row.get(column)):
            parts.append(f"{heading}\n\n{_text(row.get(column))}")
    examples = parse_structure(row.get("examples"))
    if isinstance(examples, list) and examples:
        parts.append("Examples")
        for example in examples:
            if not isinstance(example, dict):
                continue
            for heading, key in (("Input", "input"), ("Output", "output")):
                if isinstance(example.get(key), str):
                    parts.append(f"{heading}\n\n{example[key].strip()}")
    if _text(row.get("note")):
        parts.append(f"Note\n\n{_text(row.get('note'))}")
    return "\n\n".join(p for p in parts if p)


def _derive_codeforces(row: dict[str, Any]) -> dict[str, Any]:
    inputs, outputs = _pairs(row.get("official_tests"))
    if not inputs:
        inputs, outputs = _pairs(row.get("examples"))
    return {"statement": codeforces_statement(row), "tests_json": _tests_json(inputs, outputs)}


def _nothing(row: dict[str, Any]) -> dict[str, Any]:
    return {}


SOURCE_PRESETS: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], dict[str, str]]] = {
    "taco": (_nothing, {"question": "question", "tests": "input_output", "difficulty": "difficulty",
                        "starter_code": "starter_code"}),
    "apps": (_nothing, {"question": "question", "tests": "input_output", "difficulty": "difficulty",
                        "starter_code": "starter_code"}),
    "code_contests": (_derive_code_contests, {"question": "description", "tests": "tests_json",
                                              "difficulty": "difficulty"}),
    "codeforces": (_derive_codeforces, {"question": "statement", "tests": "tests_json", "difficulty": "rating"}),
    "lcb": (_nothing, {"question": "question_content", "difficulty": "difficulty", "starter_code": "starter_code"}),
    "plain": (_nothing, {}),
}


def question_hash(text: str) -> str:
    """Key of a question's text, blind to whitespace differences between copies of a statement."""
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()[:24]


def key_text(value: Any) -> str | None:
    """Key parts compare as text: 12, 12.0 and "12" are one key; None/"" is a missing part."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def as_value(value: Any) -> str | None:
    """A taken value as the trace schema's text: structures as JSON, numbers as their digits."""
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else str(value)
