"""Declared column mappings from public corpora to the trace schema (no guessing at field names)."""

from __future__ import annotations

import ast
import json
from typing import Any

from valley.data.config import ColumnMapping

TRACE_FIELDS = (
    "id", "question_id", "question", "response", "source", "difficulty", "teacher", "correct", "tests",
    "starter_code", "finish_reason",
)

# Names the paper's own release and other unknown-shaped corpora use, tried in order (preset `alias`).
ALIASES: dict[str, tuple[str, ...]] = {
    "id": ("id", "trace_id", "uid", "sample_id"),
    "question_id": ("question_id", "problem_id", "task_id"),
    "question": ("question", "problem", "prompt", "input", "instruction", "query"),
    "response": ("response", "r1_generation", "generation", "output", "completion", "answer"),
    "source": ("source", "dataset", "origin"),
    "difficulty": ("difficulty", "level", "rating"),
    "teacher": ("teacher", "model", "generator"),
    "correct": ("correct", "is_correct", "is_passed", "passed", "label"),
    "tests": ("tests", "input_output", "test_cases"),
    "starter_code": ("starter_code",),
    "finish_reason": ("finish_reason",),
}

# Defaults per preset; a field absent here is absent from that corpus.
PRESETS: dict[str, dict[str, Any]] = {
    # The platform's own trace schema (schemas.TRACES), e.g. files written by `valley demo`.
    "valley": {f: f for f in TRACE_FIELDS if f != "finish_reason"},
    # OpenCodeReasoning (v1) rows: the prompt in `input`, the teacher's reply in `output`.
    "ocr": {"id": "id", "question_id": "question_id", "question": "input", "response": "output",
            "source": "source", "difficulty": "difficulty"},
    # nvidia/OpenCodeReasoning-2 (python/cpp splits): `question` is the placeholder "-"; a join on
    # (dataset, split, index) brings the text, tests and difficulty from TACO/APPS/CodeContests/codeforces.
    # `source` is the problem set (taco, apps, code_contests, open-r1/codeforces), which subsets filter on.
    "ocr2": {"id": "id", "question_id": "question_id", "question": "question", "response": "r1_generation",
             "source": "dataset", "difficulty": "difficulty"},
    # TACO-style rows: `solutions` is a list of answers (one trace each), tests in `input_output`.
    "taco": {"id": "id", "question": "question", "response": "solutions", "difficulty": "difficulty",
             "tests": "input_output", "starter_code": "starter_code", "source": "source",
             "explode_responses": True},
    # open-r1/codeforces-cots: `id` names the problem (several generations share it); replies cut off
    # by the length limit (finish_reason "length") are rejects.
    "codeforces_cots": {"question_id": "id", "question": "prompt", "response": "generation",
                        "finish_reason": "finish_reason", "difficulty": "rating"},
    # OpenThoughts: a `system` prompt plus `conversations` [{"from": "user"|"assistant", "value"}].
    "openthoughts": {"messages": "conversations", "source": "source", "difficulty": "difficulty"},
    # rStar-Coder seed_sft: verified replies with their own pass flag.
    "rstar_seed_sft": {"question_id": "question_id", "question": "question", "response": "response",
                       "starter_code": "starter_code", "correct": "is_passed"},
    # Chat rows: first user turn is the question, last assistant turn the response.
    "messages": {"id": "id", "messages": "messages", "source": "source", "difficulty": "difficulty"},
    # Unknown column names (e.g. collinear-ai/valley-of-reasoning-data): the first alias present per row.
    "alias": dict(ALIASES),
}
PRESET_NAMES = tuple(PRESETS)


class MissingField(Exception):
    """A mapped source column is absent or empty in a row."""

    def __init__(self, field: str, column: str, reason: str = "missing_field"):
        super().__init__(f"{reason}: trace field {field!r} (source column {column!r})")
        self.field, self.column, self.reason = field, column, reason


def resolve(mapping: ColumnMapping) -> dict[str, Any]:
    """Merge the preset with explicit overrides into {trace field: source column or None}."""
    resolved: dict[str, Any] = {f: None for f in TRACE_FIELDS}
    resolved["messages"] = None
    resolved["explode_responses"] = False
    resolved.update(PRESETS[mapping.preset])
    # Explicit (non-null) fields win; null means "the preset's choice" so a config that went through
    # JSON (as it does on its way to Ray workers) resolves the same as the original.
    explicit = mapping.model_dump(exclude={"preset", "constants"}, exclude_none=True)
    resolved.update(explicit)
    return resolved


ROLE_NAMES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}


def _turns(messages: list[dict], role: str) -> list[Any]:
    """Contents of one role's turns; OpenAI-style {role, content} and ShareGPT-style {from, value} alike."""
    return [m.get("content", m.get("value")) for m in messages
            if ROLE_NAMES.get(str(m.get("role", m.get("from"))).lower()) == role]


def _messages_to_turns(messages: Any, column: str) -> tuple[str, str, str | None]:
    if isinstance(messages, str):
        messages = parse_structure(messages)
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise MissingField("question", column, "bad_messages")
    users, assistants, systems = (_turns(messages, r) for r in ("user", "assistant", "system"))
    if not users:
        raise MissingField("question", column, "missing_field")
    if not assistants:
        raise MissingField("response", column, "missing_field")
    return users[0], assistants[-1], (systems[0] if systems else None)


def map_row(raw: dict[str, Any], resolved: dict[str, Any], constants: dict[str, str]) -> list[dict[str, Any]]:
    """Map one source row to one or more trace dicts (several when responses are exploded).

    Raises MissingField when a mapped column is absent; values are returned untyped and checked by
    `validate`.
    """
    out: dict[str, Any] = {}
    for field in TRACE_FIELDS:
        column = resolved[field]
        if isinstance(column, (list, tuple)):  # aliases: the first one present in this row
            column = next((c for c in column if raw.get(c) is not None), column[0])
        if column is None:
            out[field] = None
            continue
        if column not in raw:
            if field in ("question", "response"):
                raise MissingField(field, column)
            out[field] = None
            continue
        out[field] = raw[column]
    if resolved["messages"] is not None:
        column = resolved["messages"]
        if column not in raw:
            raise MissingField("question", column)
        out["question"], out["response"], _ = _messages_to_turns(raw[column], column)
    for key, value in constants.items():
        if out.get(key) is None:
            out[key] = value
    if isinstance(raw.get("dataset"), str):
        out["_dataset"] = raw["dataset"]  # disambiguates numeric difficulty scales
    response = out.get("response")
    if resolved["explode_responses"] and isinstance(response, (list, str)):
        answers = _parse_list(response)
        if answers is None:
            return [out]
        base_id = out.get("id")
        rows = []
        for k, answer in enumerate(answers):
            row = dict(out, response=answer)
            row["id"] = None if base_id is None else f"{base_id}:{k}"
            row["_explode_index"] = k
            rows.append(row)
        return rows
    return [out]


def parse_structure(value: Any) -> Any:
    """A list/dict stored as text: JSON first, then a Python literal (TACO's `tags` are "['Sorting']")."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        pass
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def _parse_list(value: Any) -> list | None:
    """TACO stores `solutions` as a JSON string of a list; accept a real list too."""
    parsed = parse_structure(value)
    return parsed if isinstance(parsed, list) else None
