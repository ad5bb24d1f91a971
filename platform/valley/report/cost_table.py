"""The report's cost table (pure): wall time and core-/GPU-seconds per stage and run, with stage totals."""

from __future__ import annotations

from typing import Any

STAGE_ORDER = ("data", "label", "train", "generate", "grade", "report")


def _hms(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:,.2f}"


def cost_table(costs: list[dict[str, Any]]) -> str:
    """Markdown: one row per stage run (as `valley.experiment.cost_ledger` records them), then one total per stage and
    the study's total. Core/GPU-hours are reserved capacity × wall time."""
    if not costs:
        return "_No stage timings recorded (stages run outside `valley run`)._"
    order = {s: i for i, s in enumerate(STAGE_ORDER)}
    rows = sorted(costs, key=lambda r: (order.get(r["stage"], len(order)), r["run"]))
    lines = ["| Stage | Run | Wall | Core-hours | GPU-hours |", "|---|---|---|---|---|"]
    for r in rows:
        note = " (timed when already finished)" if r.get("timed_when_skipped") else ""
        lines.append(f"| {r['stage']} | {r['run']}{note} | {_hms(r['wall_s'])} | {_hours(r['core_s'])} | "
                     f"{_hours(r['gpu_s'])} |")
    totals: dict[str, list[float]] = {}
    for r in rows:
        t = totals.setdefault(r["stage"], [0.0, 0.0, 0.0])
        t[0] += r["wall_s"]
        t[1] += r["core_s"]
        t[2] += r["gpu_s"]
    for stage, (wall, core, gpu) in totals.items():
        lines.append(f"| **{stage}** | all runs | {_hms(wall)} | {_hours(core)} | {_hours(gpu)} |")
    wall, core, gpu = (sum(t[i] for t in totals.values()) for i in range(3))
    lines.append(f"| **total** | | {_hms(wall)} | {_hours(core)} | {_hours(gpu)} |")
    return "\n".join(lines)
