"""A data run's documents: each trace templated, tokenized and put through the over-length policy once,
as one row of `schemas.DOCUMENTS` (pure functions; the Ray tasks that write and read them are in
tokenize.py).

Why: nested subsets, arms, seeds and mixtures take the same traces again and again; tokenizing each trace
once and packing every subset from its documents makes another subset cost a pack, not a tokenization.
A document keeps what a subset's stats and label audit need (its length as rendered, why it was dropped,
the audit's facts), so a subset's outputs are exactly what encoding its traces again would give.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from valley import schemas
from valley.data.audit import DocFacts, doc_facts, tally
from valley.data.chat import Encoded
from valley.data.packing import concatenated

OVERLENGTH = "overlength"
NO_LOSS = "no_assistant_tokens"


@dataclass(frozen=True)
class Policy:
    """What decides a document as trained: the row length and what happens to a longer trace."""

    max_seq_len: int
    overlength: str  # drop | truncate
    eot_id: int  # the template's end-of-turn token (the audit checks each document trains on it)


def document_table(ids: list[str], encoded: Iterable[Encoded], policy: Policy) -> pa.Table:
    """The documents of traces `ids` from their encodings (in the same order), as `schemas.DOCUMENTS`.
    Only ids, mask and facts are kept: each encoding's text is freed as the next one is read. Each
    document's tokens become a numpy array at once: Arrow converts one flat list of Python ints at a
    tenth of the speed, which on real R1 traces cost as much as a quarter of their encoding."""
    token_parts: list[np.ndarray] = []
    mask_parts: list[np.ndarray] = []
    ends: list[int] = []
    total = 0
    cols: dict[str, list[Any]] = {name: [] for name in schemas.DOCUMENTS.names[3:]}
    for trace_id, enc in zip(ids, encoded, strict=True):
        facts, reason, truncated, kept = _decide(trace_id, enc, policy)
        if reason is None:
            token_parts.append(np.asarray(enc.input_ids[:kept] if truncated else enc.input_ids, np.int32))
            mask_parts.append(np.asarray(enc.loss_mask[:kept] if truncated else enc.loss_mask, np.int8))
            total += len(token_parts[-1])
        ends.append(total)
        for name, value in (("n_tokens", facts.n_tokens), ("dropped", reason), ("truncated", truncated),
                            ("loss_tokens", facts.loss_tokens), ("eot_in_loss", facts.eot_in_loss),
                            ("closed_think", facts.closed_think), ("fenced_after_think", facts.fenced_after_think),
                            ("think_tokens", facts.think_tokens)):
            cols[name].append(value)
    offsets = pa.array([0, *ends], pa.int32())
    arrays = [pa.array(ids, pa.string()),
              pa.ListArray.from_arrays(offsets, pa.array(concatenated(token_parts, np.int32))),
              pa.ListArray.from_arrays(offsets, pa.array(concatenated(mask_parts, np.int8)))]
    arrays += [pa.array(cols[f.name], f.type) for f in list(schemas.DOCUMENTS)[3:]]
    return pa.Table.from_arrays(arrays, schema=schemas.DOCUMENTS)


def _decide(trace_id: str, enc: Encoded, policy: Policy) -> tuple[DocFacts, str | None, bool, int]:
    """(audit facts, drop reason or None, truncated, tokens kept) of one encoded trace: the over-length
    policy first, then a document left with nothing to learn is dropped too."""
    n = len(enc.input_ids)
    cut = n > policy.max_seq_len
    if cut and policy.overlength == "drop":
        return DocFacts(trace_id, n, cut=True), OVERLENGTH, False, 0
    kept = min(n, policy.max_seq_len)
    if not np.asarray(enc.loss_mask[:kept]).any():
        return DocFacts(trace_id, n, cut=cut), NO_LOSS, cut, kept
    facts = doc_facts(trace_id, enc.input_ids, enc.loss_mask, enc.offsets, enc.text, enc.prompt_chars, kept,
                      policy.eot_id)
    return facts, None, cut, kept


@dataclass
class GroupOutcome:
    """What one subset group's documents give: the trained ones (to pack) and its stats' other fields."""

    trained: pa.Table  # the group's documents that are trained on, in order
    dropped: list[dict[str, Any]]  # over-length ones first, then those without assistant tokens (as before)
    truncated: int
    audit: dict[str, Any]  # the label audit's tally (audit.tally)


def group_outcome(docs: pa.Table, max_seq_len: int) -> GroupOutcome:
    """Split a group's documents (in the group's order) into the trained ones and the rest."""
    cols = docs.select(schemas.DOCUMENTS.names[3:] + ["id"]).to_pydict()
    facts, overlength, no_loss = [], [], []
    for i, trace_id in enumerate(cols["id"]):
        n, reason = cols["n_tokens"][i], cols["dropped"][i]
        if reason == OVERLENGTH:
            overlength.append({"id": trace_id, "n_tokens": n, "reason": OVERLENGTH})
        elif reason is not None:
            no_loss.append({"id": trace_id, "n_tokens": min(n, max_seq_len), "reason": reason})
        facts.append(_facts(cols, i, max_seq_len))
    trained = docs.filter(pc.is_null(docs.column("dropped")))
    return GroupOutcome(trained, overlength + no_loss, sum(cols["truncated"]), tally(facts))


def _facts(cols: dict[str, list[Any]], i: int, max_seq_len: int) -> DocFacts:
    """The audit's facts of document i, as `_decide` made them."""
    n = cols["n_tokens"][i]
    if cols["dropped"][i] is not None:
        return DocFacts(cols["id"][i], n, cut=n > max_seq_len)
    return DocFacts(cols["id"][i], n, cut=n > max_seq_len, trained=True, eot_in_loss=cols["eot_in_loss"][i],
                    closed_think=cols["closed_think"][i], fenced_after_think=cols["fenced_after_think"][i],
                    tokens=min(n, max_seq_len), loss_tokens=cols["loss_tokens"][i],
                    think_tokens=cols["think_tokens"][i])
