"""Paired statistics: arm summaries over seeds, the paired bootstrap's difference and p-value, Holm, words."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from valley.metrics import power
from valley.metrics.paired import (
    PairedDifference,
    arm_summary,
    describe,
    holm,
    paired_difference,
    paired_differences,
)


def _pass_rates(rng: np.random.Generator, rates: np.ndarray, seeds: int, samples: int) -> np.ndarray:
    """(seeds, problems) pass@1 per problem from binomial samples."""
    return rng.binomial(samples, np.broadcast_to(rates, (seeds, rates.size))) / samples


# ---- arm_summary --------------------------------------------------------------------------------
def test_arm_summary_mean_and_standard_error_over_seeds():
    # Three seeds whose pass@1 over 4 problems is 0.2, 0.3, 0.4: mean 0.3, SE = sd / sqrt(3) = 0.1 / sqrt(3).
    num = np.array([[0.8, 0.0, 0.0, 0.0], [0.4, 0.4, 0.4, 0.0], [1.0, 0.6, 0.0, 0.0]])
    s = arm_summary(num, np.ones_like(num), n_boot=500, seed=3)
    assert s.per_seed == pytest.approx((0.2, 0.3, 0.4))
    assert s.mean == pytest.approx(0.3)
    assert s.standard_error == pytest.approx(0.1 / math.sqrt(3))
    assert (s.n_problems, s.n_seeds) == (4, 3)
    assert s.ci_low <= s.mean <= s.ci_high


def test_arm_summary_ratio_metric_and_single_seed():
    # Completion rate: sum(completed) / sum(responses with a finish reason) = 6 / 10, not the mean of ratios.
    s = arm_summary(np.array([[1.0, 5.0]]), np.array([[2.0, 8.0]]), n_boot=200)
    assert s.mean == pytest.approx(0.6)
    assert s.standard_error is None and s.n_seeds == 1


def test_arm_summary_interval_shrinks_with_more_problems():
    rng = np.random.default_rng(0)
    widths = []
    for p in (50, 2000):
        num = _pass_rates(rng, rng.beta(0.3, 0.7, p), 2, 4)
        s = arm_summary(num, np.ones_like(num), n_boot=400)
        widths.append(s.ci_high - s.ci_low)
    assert widths[0] > 3 * widths[1]


# ---- paired_difference -------------------------------------------------------------------------
def test_identical_arms_give_zero_difference_and_p_one():
    rng = np.random.default_rng(1)
    a = _pass_rates(rng, rng.beta(0.3, 0.7, 300), 1, 4)
    d = paired_difference(a, np.ones_like(a), a.copy(), np.ones_like(a), n_boot=300)
    assert d.difference == 0.0 and d.p_value == 1.0
    assert d.ci_low == d.ci_high == 0.0  # one shared problem draw: every resampled difference is 0
    assert (d.n_problems, d.n_seeds_a, d.n_seeds_b) == (300, 1, 1)


def test_hugely_different_arms_give_tiny_p():
    rng = np.random.default_rng(2)
    rates = rng.beta(0.3, 0.7, 400)
    a = _pass_rates(rng, np.clip(rates + 0.3, 0, 1), 3, 4)
    b = _pass_rates(rng, rates, 2, 4)
    d = paired_difference(a, np.ones_like(a), b, np.ones_like(b), n_boot=999)
    assert d.p_value == pytest.approx(1 / 1000)  # no resample reaches back to 0: the +1 floor
    assert 0 < d.ci_low < d.difference < d.ci_high
    assert (d.n_seeds_a, d.n_seeds_b) == (3, 2)


def test_pairing_cancels_shared_difficulty():
    # Two models that share each problem's difficulty: the paired interval is far narrower than the arms'.
    rng = np.random.default_rng(3)
    rates = rng.beta(0.3, 0.7, 500)
    a, b = _pass_rates(rng, rates, 1, 8), _pass_rates(rng, np.clip(rates + 0.02, 0, 1), 1, 8)
    one = np.ones_like(a)
    d = paired_difference(a, one, b, one, n_boot=500)
    sa, sb = arm_summary(a, one, n_boot=500), arm_summary(b, one, n_boot=500)
    assert d.ci_high - d.ci_low < 0.5 * ((sa.ci_high - sa.ci_low) + (sb.ci_high - sb.ci_low))


def test_several_metrics_share_resamples():
    rng = np.random.default_rng(4)
    a = rng.random((2, 60, 3))
    b = rng.random((2, 60, 3))
    den_a, den_b = rng.integers(1, 5, a.shape).astype(float), rng.integers(1, 5, b.shape).astype(float)
    together = paired_differences(a, den_a, b, den_b, n_boot=300, seed=9)
    for j, got in enumerate(together):
        alone = paired_difference(a[:, :, j], den_a[:, :, j], b[:, :, j], den_b[:, :, j], n_boot=300, seed=9)
        got_v = (got.difference, got.ci_low, got.ci_high, got.p_value)
        assert got_v == pytest.approx((alone.difference, alone.ci_low, alone.ci_high, alone.p_value), abs=1e-12)


def test_nothing_to_resample_gives_nan_p():
    one = np.ones((1, 1))
    d = paired_difference(one, one, 0 * one, one, n_boot=100)
    assert d.difference == 1.0 and d.ci_low == d.ci_high == 1.0 and math.isnan(d.p_value)
    two = np.ones((1, 5))
    assert math.isnan(paired_difference(two, two, two, two, n_boot=0).p_value)


def test_arms_must_cover_the_same_problems():
    with pytest.raises(ValueError, match="same problems"):
        paired_difference(np.ones((1, 5)), np.ones((1, 5)), np.ones((1, 6)), np.ones((1, 6)))
    with pytest.raises(ValueError, match="2-d"):
        paired_difference(np.ones(5), np.ones(5), np.ones(5), np.ones(5))


def test_null_false_positive_rate_is_alpha():
    # Both arms sample the same per-problem rates (tau = 0, one seed each). 1000 studies: the
    # false-positive rate at alpha = 0.05 must lie in 0.05 +- 0.02 (its binomial sd is 0.007).
    assumptions = power.Assumptions(base_pass=0.3, difference_sd=0.0, seed_sd=0.0)
    rate = power.simulate_detection(power.Design(200, 4), 0.0, assumptions, n_studies=1000, alpha=0.05,
                                    rng=np.random.default_rng(11), n_boot=200)
    assert 0.03 <= rate <= 0.07


def test_null_false_positive_rate_with_three_seeds_per_arm():
    # Seed effects (sd 1.5 points) on top of the measured problem spread; three seeds per arm let the test
    # see them. 800 studies: within 0.05 +- 0.025 (binomial sd 0.008; resampling 3 seeds is a bit liberal).
    design = power.Design(200, 4, seeds_a=3, seeds_b=3)
    rate = power.simulate_detection(design, 0.0, power.Assumptions(), n_studies=800, alpha=0.05,
                                    rng=np.random.default_rng(12), n_boot=200)
    assert 0.025 <= rate <= 0.075


# ---- holm ----------------------------------------------------------------------------------------
def test_holm_hand_checked_with_ties_and_missing():
    # Five present p-values (NaN and None do not count): m = 5. Ascending with multipliers m - rank:
    #   0.01 * 5 = 0.05; 0.03 * 4 = 0.12; 0.04 * 3 = 0.12; 0.04 * 2 = 0.08 -> max so far 0.12; 0.5 * 1 = 0.5.
    got = holm([0.01, 0.04, float("nan"), 0.03, None, 0.04, 0.5])
    assert got[0] == pytest.approx(0.05)
    assert got[1] == pytest.approx(0.12) and got[5] == pytest.approx(0.12)  # tied p-values, equal adjusted
    assert got[3] == pytest.approx(0.12)
    assert got[6] == pytest.approx(0.5)
    assert math.isnan(got[2]) and got[4] is None
    # Capped at 1 and kept monotone: 0.7 * 2 = 1.4 -> 1; 0.8 * 1 = 0.8 -> 1.
    assert holm([0.8, 0.7]) == [1.0, 1.0]
    assert holm([]) == []


# ---- describe ------------------------------------------------------------------------------------
def test_describe_significant_dip_with_holm():
    d = PairedDifference(-0.061, -0.103, -0.020, 0.004, 880, 1, 1)
    assert describe("r1000", "base", d, adjusted_p=0.012) == (
        "pass@1: r1000 is below base by 6.1 points [2.0, 10.3], p = 0.004 (Holm 0.012): significant at α = 0.05; "
        "the interval covers problems and samples but not training-seed variation (one seed per arm)")


def test_describe_not_significant_has_no_direction():
    d = PairedDifference(0.008, -0.012, 0.029, 0.43, 880, 3, 3)
    assert describe("correct", "incorrect", d, metric="think_rate") == (
        "think_rate: correct and incorrect differ by +0.8 points [-1.2, 2.9], p = 0.43: "
        "not significant at α = 0.05")


def test_describe_small_p_holm_decides_and_one_single_seed_arm():
    d = PairedDifference(0.031, 0.015, 0.047, 0.0002, 500, 3, 1)
    text = describe("easy", "hard", d, adjusted_p=0.09)
    assert text.startswith("pass@1: easy and hard differ by +3.1 points [1.5, 4.7], p < 0.001 (Holm 0.09): "
                           "not significant")
    assert text.endswith("training-seed variation of hard (one seed)")
    up = describe("easy", "hard", replace(d, n_seeds_b=3), adjusted_p=0.0004)
    assert up == ("pass@1: easy is above hard by 3.1 points [1.5, 4.7], p < 0.001 (Holm < 0.001): "
                  "significant at α = 0.05")
