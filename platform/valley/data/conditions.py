"""Conditions on trace columns (a subset's `where` and its mix parts), checked at config load, applied to arrow.

A condition maps a column to a value (equals) or to operators: `eq`, `ne`, `in`, `not_in`, `gt`, `ge`, `lt`,
`le`; several columns and several operators all must hold. The columns are the traces' own (`TRACE_COLUMNS`)
and a few derived at selection time (`DERIVED_COLUMNS`: a question's answer count, a response's length and
its think block's length, in characters). A column that does not exist, an ordering operator on a text
column or a value of the wrong type is refused when the config loads, naming the subset and the column.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_serializer

Scalar = str | int | float | bool

# column -> its kind: "text", "number" or "flag" (what values and operators it takes)
TRACE_COLUMNS: dict[str, str] = {"id": "text", "question_id": "text", "source": "text", "difficulty": "text",
                                 "difficulty_bucket": "text", "teacher": "text", "correct": "flag", "think": "text",
                                 "source_file": "text", "source_row": "number"}
DERIVED_COLUMNS: dict[str, str] = {
    "answers_per_question": "number",  # accepted traces sharing the trace's question_id
    "response_chars": "number",  # characters in the response
    "think_chars": "number",  # characters inside the <think>…</think> block (0 without a closed block)
    "response_tokens": "number",  # the response's tokens, counted by the data run's (the student's) tokenizer
    "think_tokens": "number",  # the think block's tokens, likewise (0 without a closed block)
}
LENGTH_COLUMNS = {"response_chars", "think_chars"}
TOKEN_COLUMNS = {"response_tokens", "think_tokens"}
COLUMNS = {**TRACE_COLUMNS, **DERIVED_COLUMNS}
ORDERING = ("gt", "ge", "lt", "le")


class Condition(BaseModel):
    """What one column must satisfy; every operator given must hold."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    eq: Scalar | None = None
    ne: Scalar | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in")
    not_in: list[Scalar] | None = None
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    @model_serializer(mode="plain")
    def _operators_given(self) -> dict[str, Any]:
        """Only the operators given, `in` by its name: what a config holds, hashes and sends to workers."""
        return self.operators()

    def operators(self) -> dict[str, Any]:
        return {name.rstrip("_"): getattr(self, name) for name in type(self).model_fields
                if getattr(self, name) is not None}


def as_condition(value: Any) -> Condition:
    """A bare value means equals: `teacher: r1` is `teacher: {eq: r1}`."""
    if isinstance(value, Condition):
        return value
    if isinstance(value, dict):
        return Condition.model_validate(value)
    return Condition(eq=value)


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "flag":
        return isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


def check_conditions(where: dict[str, Condition], owner: str) -> None:
    """Refuse an unknown column, an ordering operator on a text or flag column, a value of the wrong type,
    or a column with no operator; `owner` names the subset in the message."""
    for column, condition in where.items():
        if column not in COLUMNS:
            raise ValueError(f"{owner}: where names column {column!r}, which traces do not have; "
                             f"columns: {sorted(COLUMNS)}")
        kind, ops = COLUMNS[column], condition.operators()
        if not ops:
            raise ValueError(f"{owner}: where.{column} has no operator")
        for op, value in ops.items():
            if op in ORDERING and kind != "number":
                raise ValueError(f"{owner}: where.{column} is {kind}; `{op}` compares numbers only")
            values = value if isinstance(value, list) else [value]
            wrong = [v for v in values if not _type_ok(kind, v)]
            if op not in ORDERING and wrong:
                raise ValueError(f"{owner}: where.{column} is a {kind} column; {op} {wrong!r} does not match")


def derived_needed(where_clauses: list[dict[str, Condition]]) -> set[str]:
    return {c for where in where_clauses for c in where if c in DERIVED_COLUMNS}


def mask(table: pa.Table, where: dict[str, Condition]) -> pa.ChunkedArray | pa.Array:
    """Rows of `table` that meet every condition (null values meet none)."""
    keep = pa.array([True] * table.num_rows, pa.bool_())
    for column, condition in where.items():
        values = table.column(column)
        if pa.types.is_dictionary(values.type):  # part and source_file on the driver (data/dictionary_columns.py)
            values = values.cast(values.type.value_type)
        for op, value in condition.operators().items():
            if op in ("in", "not_in"):
                hit = pc.is_in(values, value_set=pa.array(value, type=values.type))
                test = hit if op == "in" else pc.invert(hit)
            else:
                scalar = pa.scalar(value, type=values.type if COLUMNS[column] != "number" else pa.float64())
                compare = {"eq": pc.equal, "ne": pc.not_equal, "gt": pc.greater, "ge": pc.greater_equal,
                           "lt": pc.less, "le": pc.less_equal}[op]
                test = compare(values if COLUMNS[column] != "number" else pc.cast(values, pa.float64()), scalar)
            keep = pc.and_(keep, pc.fill_null(test, False))
    return keep


def describe(where: dict[str, Condition]) -> str:
    """`teacher in ['qwq'], response_chars le 8000`: a where clause in words, for counts and errors."""
    return ", ".join(f"{c} {op} {v!r}" for c, cond in where.items() for op, v in cond.operators().items())


def think_texts(responses: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """The text inside each response's closed `<think>…</think>` block, null where there is none."""
    return pc.struct_field(pc.extract_regex(responses, r"(?s)<think>(?P<think>.*?)</think>"), "think")


def count_tokens(tokenizer: object, texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Tokens of each text without special tokens (what the student's tokenizer makes of the text itself);
    0 for a null or empty text."""
    values = texts.to_pylist()
    given = [t for t in values if t]
    ids = tokenizer(given, add_special_tokens=False)["input_ids"] if given else []  # type: ignore[operator]
    lengths = iter(len(i) for i in ids)
    return pa.array([next(lengths) if t else 0 for t in values], pa.int64())


def length_columns(responses: pa.Array | pa.ChunkedArray, wanted: set[str],
                   tokenizer: object | None = None) -> dict[str, pa.Array]:
    """The derived length columns named in `wanted`, each computed only when asked for (tokenizing is the
    costly one): characters of the response and of its closed think block, and their tokens."""
    think = think_texts(responses) if wanted & {"think_chars", "think_tokens"} else None
    makers = {"response_chars": lambda: pc.utf8_length(responses),
              "think_chars": lambda: pc.fill_null(pc.utf8_length(think), 0),
              "response_tokens": lambda: count_tokens(tokenizer, responses),
              "think_tokens": lambda: count_tokens(tokenizer, think)}
    return {name: makers[name]() for name in sorted(wanted & set(makers))}


def token_counts(tokenizer: object, responses: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """(response tokens, think-block tokens) per response."""
    found = length_columns(responses, TOKEN_COLUMNS, tokenizer)
    return found["response_tokens"], found["think_tokens"]


def response_lengths(responses: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """(response characters, think-block characters) per response; a response without a closed
    `<think>…</think>` block has a think length of 0."""
    found = length_columns(responses, LENGTH_COLUMNS)
    return found["response_chars"], found["think_chars"]
