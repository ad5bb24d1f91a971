"""The report's paired tests (report/significance.py) and `valley plan`'s power table (capacity/power_table.py):
the comparisons planned are the study's (each size vs the base, the paper's and the declared contrasts),
replicates pool into one recipe, a planted dip is found and a null one is not, Holm adjusts across them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from valley.experiment import load_spec, plan_study
from valley.metrics import power
from valley.report import significance
from valley.report.config import ReportConfig

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"


def _run(run_id: str, size: int, subset: str = "random", checkpoint: str = "base", replicate: int | None = None,
         epoch: int | None = None) -> dict:
    return {"run_id": run_id, "model": "s", "data_size": size, "subset": subset, "checkpoint": checkpoint,
            "epoch": epoch, "samples": "x", "verdicts": "x", "problems": "x", "replicate": replicate}


def _per_problem(rates: dict[str, np.ndarray], samples: int, seed: int = 0) -> pl.DataFrame:
    """Per-problem sums of runs whose problems pass at the given rates (binomial samples)."""
    rng = np.random.default_rng(seed)
    frames = []
    for run_id, rate in rates.items():
        c = rng.binomial(samples, rate)
        frames.append(pl.DataFrame({"run_id": run_id, "question_id": [f"q{i:03d}" for i in range(rate.size)],
                                    "n": samples, "c": c, "completed": samples, "n_with_finish": samples,
                                    "think": c}))
    return pl.concat(frames)


def _cfg(runs: list[dict], **kw) -> ReportConfig:
    return ReportConfig(experiment="x", runs=runs, max_tokens=100, n_boot=200, **kw)


def _problem_rates(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).beta(0.5, 1.0, size=n)


def test_replicates_pool_into_one_recipe_and_a_planted_dip_is_significant():
    base = _problem_rates(300)
    runs = [_run("s-base", 0), _run("s-r100", 100), _run("s-r100-s1", 100, replicate=1),
            _run("s-r100-s2", 100, replicate=2), _run("s-r400", 400)]
    dipped = np.clip(base - 0.12, 0, 1)
    pp = _per_problem({"s-base": base, "s-r100": dipped, "s-r100-s1": dipped, "s-r100-s2": dipped,
                       "s-r400": base}, samples=4)
    cfg = _cfg(runs)
    assert significance.cells_of(cfg.runs)[significance.Cell("s", "random", "base", 100)] == \
        ["s-r100", "s-r100-s1", "s-r100-s2"]
    tested = significance.test_comparisons(cfg, pp)
    pass1 = {t.first_label: t for t in tested if t.metric == "pass@1"}
    assert set(pass1) == {"r100", "r400"}
    assert pass1["r100"].result.n_seeds_a == 3 and pass1["r100"].result.n_seeds_b == 1
    assert pass1["r100"].adjusted_p < 0.05 and pass1["r100"].result.difference < -0.05
    assert pass1["r400"].adjusted_p > 0.05
    (dip,) = significance.dips(tested)
    assert dip.first_label == "r100"
    text = significance.section(cfg, pp, tested)
    assert "The dip is significant" in text and "### Replicates" in text and "r100 is below the base" in text


def test_a_dip_of_noise_is_reported_as_not_significant():
    base = _problem_rates(60)
    runs = [_run("s-base", 0), _run("s-r100", 100)]
    pp = _per_problem({"s-base": base, "s-r100": base}, samples=2, seed=3)
    tested = significance.test_comparisons(_cfg(runs), pp)
    text = significance.section(_cfg(runs), pp, tested)
    assert "cannot tell it from no dip" in text or "no dip to test" in text
    assert all(t.adjusted_p >= t.result.p_value for t in tested)


def test_the_papers_contrasts_and_declared_ones_are_planned_once_per_size_and_start():
    runs = [_run("s-base", 0), _run("s-correct", 6000, "correct"), _run("s-incorrect", 6000, "incorrect"),
            _run("s-easy-from-r30000", 4000, "easy", "30000"), _run("s-hard-from-r30000", 4000, "hard", "30000"),
            _run("s-easy", 4000, "easy"), _run("s-hard", 4000, "hard"), _run("s-a", 10, "a"), _run("s-b", 10, "b"),
            _run("s-a-e1", 10, "a", epoch=1)]
    cfg = _cfg(runs, comparisons=[{"name": "mine", "kind": "contrast", "arms": ["a", "b"],
                                   "runs": {"a": ["s-a"], "b": ["s-b"]}}])
    planned = significance.planned_comparisons(significance.cells_of(cfg.runs), "random", cfg.comparisons)
    pairs = sorted((c.name, c.first.subset, c.second.subset, c.first.checkpoint) for c in planned)
    assert pairs == [("RQ2: trace correctness", "correct", "incorrect", "base"),
                     ("RQ3: question difficulty", "easy", "hard", "30000"),
                     ("RQ3: question difficulty", "easy", "hard", "base"),
                     ("mine", "a", "b", "base")]


def test_no_resampling_means_no_tests():
    runs = [_run("s-base", 0), _run("s-r100", 100)]
    cfg = ReportConfig(experiment="x", runs=runs, max_tokens=100, n_boot=0)
    pp = _per_problem({"s-base": _problem_rates(20), "s-r100": _problem_rates(20)}, samples=2)
    assert significance.test_comparisons(cfg, pp) == []
    assert "No tests" in significance.section(cfg, pp, [])


def test_the_power_table_follows_the_design():
    from valley.capacity import power_table

    spec = load_spec(CONFIGS / "demo-full.yaml")
    rows = power_table.power_rows(spec, plan_study(spec), 48, power.Assumptions(), detect=0.10)
    valley = {r.first: r for r in rows if r.comparison.startswith("valley")}
    assert set(valley) == {"r100", "r400", "r1200", "r2800"}
    assert valley["r100"].seeds == (3, power.UNTRAINED) and valley["r400"].seeds == (1, power.UNTRAINED)
    assert valley["r100"].detectable_recipes < valley["r400"].detectable_recipes
    assert valley["r100"].false_alarms < valley["r400"].false_alarms
    assert {r.comparison for r in rows} >= {"RQ2: trace correctness", "RQ3: question difficulty"}
    text = power_table.render(rows, power.Assumptions(), 0.10)
    assert "detectable (recipes)" in text and "to detect" in text
