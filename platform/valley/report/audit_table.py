"""The label audit of each run's training subset beside what the run became (pure: audits and results in,
Markdown out).

A student that never stops, or never thinks, may have learnt it from its labels: end-of-turn tokens left
out of the loss, traces cut by the sequence length, think blocks that never close. The data stage audits
every subset (`valley.manifest.SubsetAudit`); the report puts those facts in one row with the run's
completion and think-tag rates, so the cause and the symptom are read together.
"""

from __future__ import annotations

import polars as pl

from valley.manifest import SubsetAudit
from valley.report.tables import _md, fmt_pct


def audit_section(audits: dict[str, SubsetAudit | None], results: pl.DataFrame) -> str:
    """One row per final run of a trained model: its subset's audit, then its completion and think-tag rate.
    Runs whose data run predates audits say so."""
    if not audits:
        return "_No run names the data it trained on (runs made outside `valley run`)._"
    lookup = {(r["run_id"], r["metric"]): r for r in results.iter_rows(named=True)}

    def rate(run_id: str, metric: str) -> str:
        r = lookup.get((run_id, metric))
        return fmt_pct(r["value"], r["ci_low"], r["ci_high"]) if r else "–"

    rows = []
    for run_id, audit in audits.items():
        if audit is None:
            rows.append([run_id, "–", "no audit (data run made before audits)", "–", "–", "–", "–", "–",
                         rate(run_id, "completion_rate"), rate(run_id, "think_rate")])
            continue
        p = audit.length_percentiles
        rows.append([run_id, audit.subset, f"{audit.eot_in_loss:,}/{audit.eot_checked:,}",
                     "yes" if audit.pad_id == audit.eot_id else "no", f"{audit.truncated_share:.1%}",
                     f"{audit.closed_think_share:.1%}", f"{audit.fenced_after_think_share:.1%}",
                     " / ".join(f"{p[k]:,}" for k in ("p50", "p90", "max") if k in p) or "–",
                     rate(run_id, "completion_rate"), rate(run_id, "think_rate")])
    return _md(["Run", "Subset", "End of turn in loss", "pad = end of turn", "Cut by max_seq_len", "Closed <think>",
                "Fenced answer after it", "Trace tokens p50 / p90 / max", "Completion", "Think tag"], rows)
