"""The label audit, computed where documents are made (pure): per-document facts, tallied per group of
documents, merged per subset into a `valley.manifest.SubsetAudit`.

Why: a student learns to stop only if every document trains on its end-of-turn token. A mask step that
drops padding by token id drops that token too when pad = eos (SmolLM2's `<|im_end|>` is all three), and
a student trained so never stops. The facts are checked on the document as trained: rendered by the
student's template and cut to max_seq_len. A tally is JSON (it rides in each group's stats sidecar, so a
resumed run keeps it) and holds each trace's length, so percentiles are exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from valley.data.byte_spans import tokens_ending_by
from valley.data.validate import THINK_CLOSE, THINK_OPEN, think_structure
from valley.manifest import SubsetAudit

EXAMPLES = 5  # trace ids kept per failing check
FENCE = "```"
PERCENTILES = {"p50": 50, "p90": 90, "p99": 99, "max": 100}
COUNTS = ("traces", "documents", "truncated", "eot_checked", "eot_in_loss", "closed_think", "fenced_after_think",
          "tokens", "loss_tokens", "think_tokens")


@dataclass(frozen=True)
class DocFacts:
    """What the audit needs to know of one trace of a subset."""

    trace_id: str
    n_tokens: int  # as rendered, before any cut
    cut: bool  # longer than max_seq_len (then truncated or dropped)
    trained: bool = False  # packed into the subset's rows
    eot_in_loss: bool | None = None  # None: not trained, or truncated (no end of turn left)
    closed_think: bool = False
    fenced_after_think: bool = False
    tokens: int = 0  # tokens trained on (after the cut)
    loss_tokens: int = 0
    think_tokens: int = 0


def doc_facts(trace_id: str, input_ids: Sequence[int], loss_mask: Sequence[int], offsets: Sequence[tuple[int, int]],
              text: str, prompt_chars: int, kept: int, eot_id: int) -> DocFacts:
    """Facts of a trained document: the whole encoding (ids, mask and character offsets of `text`, whose
    first `prompt_chars` characters are the prompt) of which the first `kept` tokens are trained on."""
    n = len(input_ids)
    cut = kept < n
    reply = tokens_ending_by(offsets, prompt_chars)  # first token of the reply
    end = offsets[kept - 1][1] if kept else prompt_chars
    body = text[prompt_chars:end]  # the reply as trained (with what the template writes after it)
    closed = think_structure(body) == "closed"
    think_tokens = 0
    opened = body.find(THINK_OPEN)
    if opened >= 0:
        close = body.find(THINK_CLOSE, opened)
        stop = close + len(THINK_CLOSE) if close >= 0 else len(body)
        think_tokens = (tokens_ending_by(offsets, prompt_chars + stop, hi=kept)
                        - tokens_ending_by(offsets, prompt_chars + opened, hi=kept))
    fenced = False
    if closed:
        after = body[body.find(THINK_CLOSE) + len(THINK_CLOSE):]
        first = after.find(FENCE)
        fenced = first >= 0 and after.find(FENCE, first + len(FENCE)) >= 0
    eot_in_loss = None
    if not cut:  # the reply's end of turn: the last eot token after the prompt
        at = next((i for i in range(n - 1, reply - 1, -1) if input_ids[i] == eot_id), None)
        eot_in_loss = at is not None and bool(loss_mask[at] == 1)
    return DocFacts(trace_id, n, cut, trained=True, eot_in_loss=eot_in_loss, closed_think=closed,
                    fenced_after_think=fenced, tokens=kept, loss_tokens=int(np.asarray(loss_mask[:kept]).sum()),
                    think_tokens=think_tokens)


def tally(facts: Iterable[DocFacts]) -> dict[str, Any]:
    """One group's facts as JSON: counts, each trace's length, and the first failing trace ids."""
    out: dict[str, Any] = dict.fromkeys(COUNTS, 0)
    out.update(lengths=[], eot_missing_ids=[], truncated_ids=[])
    for f in facts:
        out["traces"] += 1
        out["lengths"].append(f.n_tokens)
        if f.cut:
            out["truncated"] += 1
            if len(out["truncated_ids"]) < EXAMPLES:
                out["truncated_ids"].append(f.trace_id)
        if not f.trained:
            continue
        out["documents"] += 1
        if f.eot_in_loss is not None:
            out["eot_checked"] += 1
            out["eot_in_loss"] += f.eot_in_loss
            if not f.eot_in_loss and len(out["eot_missing_ids"]) < EXAMPLES:
                out["eot_missing_ids"].append(f.trace_id)
        out["closed_think"] += f.closed_think
        out["fenced_after_think"] += f.fenced_after_think
        out["tokens"] += f.tokens
        out["loss_tokens"] += f.loss_tokens
        out["think_tokens"] += f.think_tokens
    return out


def percentiles(values: Sequence[int] | np.ndarray) -> dict[str, int]:
    """Nearest-rank p50/p90/p99/max (each one of the values); empty for no values."""
    if not len(values):
        return {}
    ordered = np.sort(np.asarray(values, np.int64))
    return {name: int(ordered[max(0, -(-p * len(ordered) // 100) - 1)]) for name, p in PERCENTILES.items()}


def _share(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def subset_audit(subset: str, tallies: list[dict[str, Any]], *, eot_id: int, eot_token: str, pad_id: int | None,
                 max_seq_len: int, overlength: str) -> SubsetAudit:
    """Merge a subset's group tallies (in group order) into its audit."""
    total = {k: sum(t[k] for t in tallies) for k in COUNTS}
    return SubsetAudit(
        subset=subset, eot_token=eot_token, eot_id=eot_id, pad_id=pad_id, max_seq_len=max_seq_len,
        overlength=overlength, **total,
        eot_missing_ids=[i for t in tallies for i in t["eot_missing_ids"]][:EXAMPLES],
        truncated_ids=[i for t in tallies for i in t["truncated_ids"]][:EXAMPLES],
        truncated_share=_share(total["truncated"], total["traces"]),
        closed_think_share=_share(total["closed_think"], total["documents"]),
        fenced_after_think_share=_share(total["fenced_after_think"], total["documents"]),
        length_percentiles=percentiles(np.concatenate([np.asarray(t["lengths"], np.int64) for t in tallies])
                                       if tallies else []),
        loss_tokens_share=_share(total["loss_tokens"], total["tokens"]),
        think_tokens_share=_share(total["think_tokens"], total["tokens"]),
    )
