"""What a study's design can detect, before spending on it: the power table of `valley plan`.

The comparisons are the ones the report will test (report/significance.py plans both, from the same runs);
each gets its design (problems × samples per problem × seeds per arm) and the smallest pass@1 difference
it detects at 80% power, from metrics/power.py's normal approximation to the paired test. With `--detect`
it also says what design would reach a target difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from valley.capacity.render import _table
from valley.metrics import power
from valley.report.config import ComparisonRuns
from valley.report.significance import Cell, cells_of, label, planned_comparisons

UNTRAINED_SEEDS = power.UNTRAINED  # the base model's "seeds": no seed-to-seed spread


@dataclass(frozen=True)
class PowerRow:
    student: str
    comparison: str
    first: str
    second: str
    problems: int
    samples: tuple[int, int]
    seeds: tuple[int, int]
    detectable_models: float  # for these trained models: problems and samples only
    detectable_recipes: float  # for the recipes: training-seed variation too
    false_alarms: float  # how often the test flags two equal recipes (α, unless an arm has one seed)
    needs: str  # what reaches `--detect`, when asked


def _planned_runs(graph: Any) -> list[SimpleNamespace]:
    """The graph's evaluation points with the report's RunSpec field names."""
    return [SimpleNamespace(run_id=r.run_id, model=r.student, subset=r.subset, checkpoint=r.checkpoint,
                            data_size=r.data_size, epoch=r.epoch, replicate=r.replicate) for r in graph.runs]


def _samples(spec: Any, graph: Any, cells: dict[Cell, list[str]]) -> dict[Cell, int]:
    """Samples per problem of each cell's evaluation: its arm's generate `n` (the student's for the base)."""
    arm_of = {r.run_id: r.arm for r in graph.runs}
    return {cell: spec.arm_generate_config(arm_of.get(ids[0]), cell.model).n for cell, ids in cells.items()}


def power_rows(spec: Any, graph: Any, problems: int, assumptions: power.Assumptions,
               detect: float | None = None) -> list[PowerRow]:
    """One row per comparison the report will test, on pass@1."""
    from valley.experiment.nodes import report_comparisons

    cells = cells_of(_planned_runs(graph))
    declared = [ComparisonRuns(**c) for c in report_comparisons(spec, graph, {r.run_id for r in graph.runs})]
    scaling = (spec.section("report") or {}).get("scaling_subset", "random")
    samples = _samples(spec, graph, cells)
    rows = []
    for c in planned_comparisons(cells, scaling, declared):
        a, b = cells[c.first], cells[c.second]
        seeds = tuple(len(ids) if cell.data_size else UNTRAINED_SEEDS for cell, ids in ((c.first, a), (c.second, b)))
        design = power.Design(problems=problems, samples=min(samples[c.first], samples[c.second]),
                              seeds_a=seeds[0], seeds_b=seeds[1])
        rows.append(PowerRow(
            student=c.first.model, comparison=c.name, first=label(c.first, a), second=label(c.second, b),
            problems=problems, samples=(samples[c.first], samples[c.second]), seeds=seeds,
            detectable_models=power.detectable_difference(design, assumptions, include_seeds=False),
            detectable_recipes=power.detectable_difference(design, assumptions, include_seeds=True),
            false_alarms=power.false_positive_rate(design, assumptions),
            needs=_needs(design, assumptions, detect) if detect is not None else ""))
    return rows


def _needs(design: power.Design, assumptions: power.Assumptions, detect: float) -> str:
    """The smallest design change that detects `detect` (a fraction) for the recipes, or why none does."""
    options = []
    for vary, unit in (("samples", "samples/problem"), ("seeds", "seeds/arm")):
        found = power.design_for(detect, design, assumptions, vary=vary)
        options.append(f"{found} {unit}" if found is not None else f"no number of {unit}")
    return " or ".join(options)


def render(rows: list[PowerRow], assumptions: power.Assumptions, detect: float | None) -> str:
    """The table `valley plan` prints under the capacity plan."""
    if not rows:
        return "Power: the study makes no comparison (no base model evaluated and no contrast)."
    head = ["student", "comparison", "first", "second", "problems", "samples", "seeds", "detectable (models)",
            "detectable (recipes)", "false alarms", *(["to detect"] if detect is not None else [])]
    body = [[r.student, r.comparison, r.first, r.second, str(r.problems), f"{r.samples[0]}/{r.samples[1]}",
             "/".join(str(n) if n < UNTRAINED_SEEDS else "-" for n in r.seeds),
             f"{r.detectable_models * 100:.1f} pt", f"{r.detectable_recipes * 100:.1f} pt", f"{r.false_alarms:.0%}",
             *([r.needs] if detect is not None else [])] for r in rows]
    target = f"; --detect {detect * 100:g} points" if detect is not None else ""
    return "\n".join([
        f"Power (pass@1, paired test, α = 0.05, 80% power; base pass@1 {assumptions.base_pass:.0%}{target}):",
        _table(head, body),
        "detectable (models): the smallest difference the report's test finds between these trained models "
        "(problems and samples vary);",
        f"detectable (recipes): between the recipes, counting a training seed's own spread "
        f"(sd {assumptions.seed_sd * 100:.1f} points); a recipe with one seed cannot measure that spread, so",
        "false alarms: how often the report's test calls two equally good recipes different at α = 0.05;",
        "per comparison, before the report's Holm adjustment across all of them (which asks more of all but",
        f"the clearest). Per-problem spread assumed from LCB verdicts: Beta concentration "
        f"{assumptions.concentration:g}, model-to-model difference sd {assumptions.difference_sd:g} (metrics/power.py).",
    ])
