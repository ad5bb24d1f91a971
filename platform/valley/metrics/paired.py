"""Is a difference between two arms real? Paired bootstrap over problems (and training seeds).

The paper's claims are differences (a dip below the base model, correct vs incorrect traces), so a
per-run interval is not enough: two runs on the same problems share each problem's difficulty, and
that shared part cancels in the difference. Every resample therefore draws ONE set of problems and
applies it to both arms (paired); an arm with several training seeds also has its seeds resampled,
independently of the other arm, with the seed stage stretched by sqrt(S/(S-1)) so it carries the unbiased
between-seed variance (plain resampling of 2-3 seeds gave false-positive rates of 0.11 and 0.08 at
alpha = 0.05 in simulation; stretched, 0.076 and 0.055). Like bootstrap.py, a resample is a vector of draw
counts and one matrix product serves every seed and metric of an arm.

Inputs per arm are per-seed, per-problem sums shaped (seeds, problems): a numerator and a
denominator (pass@1: c/n and 1; completion rate: completed and responses with a finish reason;
think rate: think count and n). An arm's value is the mean over its seeds of sum(num) / sum(den).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from valley.metrics.bootstrap import _MAX_BLOCK_CELLS, _count_block


@dataclass(frozen=True)
class ArmSummary:
    """One arm's value over its seeds: mean, standard error across seeds, bootstrap interval."""

    mean: float
    standard_error: float | None  # sample sd of the per-seed values / sqrt(seeds); None with one seed
    per_seed: tuple[float, ...]
    ci_low: float
    ci_high: float
    n_problems: int
    n_seeds: int


@dataclass(frozen=True)
class PairedDifference:
    """A − B on the same problems: the difference, its interval and a two-sided p-value."""

    difference: float
    ci_low: float
    ci_high: float
    p_value: float  # NaN when nothing can be resampled (fewer than 2 problems or n_boot == 0)
    n_problems: int
    n_seeds_a: int
    n_seeds_b: int


def _as_arm(num: np.ndarray, den: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(seeds, problems, metrics) float arrays; a 2-d input is one metric."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    if num.shape != den.shape or num.ndim not in (2, 3):
        raise ValueError(f"{name}: num and den must have the same shape (seeds, problems[, metrics]), "
                         f"got {num.shape} and {den.shape}")
    if num.shape[0] < 1:
        raise ValueError(f"{name}: needs at least one seed")
    if num.ndim == 2:
        num, den = num[:, :, None], den[:, :, None]
    return num, den


def _ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1.0), np.nan)


def _point(num: np.ndarray, den: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-seed values (seeds, metrics) and the arm's value (metrics,): the mean over seeds."""
    per_seed = _ratio(num.sum(axis=1), den.sum(axis=1))
    return per_seed, per_seed.mean(axis=0)


class _Arm:
    """An arm laid out for the count-matrix product: (problems, seeds * metrics)."""

    def __init__(self, num: np.ndarray, den: np.ndarray) -> None:
        self.seeds, self.problems, self.metrics = num.shape
        self.num = num.transpose(1, 0, 2).reshape(self.problems, -1)
        self.den = den.transpose(1, 0, 2).reshape(self.problems, -1)
        # Resampling S seeds with replacement gives (S-1)/S of their variance; the rescale restores
        # the unbiased between-seed variance, which matters when S is 2 or 3.
        self.stretch = math.sqrt(self.seeds / (self.seeds - 1)) if self.seeds > 1 else 0.0

    def resample(self, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The arm's value under m problem resamples (counts: (m, problems)), seeds resampled too."""
        m = counts.shape[0]
        shape = (m, self.seeds, self.metrics)
        per_seed = _ratio((counts @ self.num).reshape(shape), (counts @ self.den).reshape(shape))
        centre = per_seed.mean(axis=1)
        if self.seeds == 1:
            return centre
        weights = _count_block(rng, self.seeds, m) / self.seeds
        drawn = np.einsum("ms,msk->mk", weights, per_seed)
        return centre + self.stretch * (drawn - centre)


def _resamples(arms: Sequence[_Arm], signs: Sequence[float], n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, metrics) resampled values of sum(sign * arm value): one problem draw shared by all arms."""
    rng = np.random.default_rng(seed)
    p = arms[0].problems
    out = np.empty((n_boot, arms[0].metrics), dtype=np.float64)
    cells = max(p, max(a.seeds * a.metrics for a in arms))
    block = max(1, min(n_boot, _MAX_BLOCK_CELLS // cells))
    for start in range(0, n_boot, block):
        m = min(block, n_boot - start)
        counts = _count_block(rng, p, m)
        out[start : start + m] = sum(s * a.resample(counts, rng) for a, s in zip(arms, signs))
    return out


def _interval(col: np.ndarray, point: float, alpha: float) -> tuple[float, float]:
    col = col[np.isfinite(col)]
    if not col.size or not math.isfinite(point):
        return point, point
    lo, hi = np.quantile(col, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _centred_p(col: np.ndarray, observed: float) -> float:
    """Two-sided p-value of the centred bootstrap: resampled differences moved to mean 0 stand for the
    null, so p is the share (+1 corrected) of resamples at least as far from the observed difference
    as the observed difference is from 0."""
    col = col[np.isfinite(col)]
    if not col.size or not math.isfinite(observed):
        return math.nan
    extreme = np.count_nonzero(np.abs(col - observed) >= abs(observed))
    return float((1 + extreme) / (col.size + 1))


def arm_summary(
    num: np.ndarray, den: np.ndarray, *, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05
) -> ArmSummary:
    """One arm's value with a (1 - alpha) percentile interval that resamples problems and, with
    several seeds, seeds too (the same problem draw for every seed of a resample).

    num, den: (seeds, problems). The standard error is across seeds only (None with one seed): it is
    the spread a reader compares with other recipes; the interval carries problem sampling as well.
    """
    if np.ndim(num) != 2:
        raise ValueError(f"arm_summary takes one metric: 2-d arrays (seeds, problems), got {np.ndim(num)}-d")
    num3, den3 = _as_arm(num, den, "arm")
    s, p, _ = num3.shape
    per_seed, value = _point(num3, den3)
    mean = float(value[0])
    se = float(np.std(per_seed[:, 0], ddof=1) / math.sqrt(s)) if s > 1 else None
    lo = hi = mean
    if p > 0 and n_boot > 0:
        draws = _resamples([_Arm(num3, den3)], [1.0], n_boot, seed)
        lo, hi = _interval(draws[:, 0], mean, alpha)
    return ArmSummary(mean, se, tuple(float(v) for v in per_seed[:, 0]), lo, hi, p, s)


def paired_differences(
    a_num: np.ndarray,
    a_den: np.ndarray,
    b_num: np.ndarray,
    b_den: np.ndarray,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> list[PairedDifference]:
    """A − B for several metrics at once, all sharing the same resamples.

    Arrays are (seeds, problems, metrics); column p of A and of B must be the same problem (the caller
    aligns them, e.g. on question_id). Each resample draws one set of problems used by both arms and,
    per arm with several seeds, an independent draw of that arm's seeds. The interval is the percentile
    interval of the resampled differences; the p-value is the centred bootstrap's (see _centred_p).
    With fewer than 2 problems or n_boot == 0 the interval collapses to the point and p is NaN.
    """
    an, ad = _as_arm(a_num, a_den, "arm A")
    bn, bd = _as_arm(b_num, b_den, "arm B")
    if an.shape[1:] != bn.shape[1:]:
        raise ValueError(f"arms must cover the same problems and metrics: {an.shape[1:]} vs {bn.shape[1:]}")
    (sa, p, k), sb = an.shape, bn.shape[0]
    diff = _point(an, ad)[1] - _point(bn, bd)[1]
    draws = None
    if p >= 2 and n_boot > 0:
        draws = _resamples([_Arm(an, ad), _Arm(bn, bd)], [1.0, -1.0], n_boot, seed)
    out = []
    for j in range(k):
        d = float(diff[j])
        if draws is None:
            out.append(PairedDifference(d, d, d, math.nan, p, sa, sb))
            continue
        lo, hi = _interval(draws[:, j], d, alpha)
        out.append(PairedDifference(d, lo, hi, _centred_p(draws[:, j], d), p, sa, sb))
    return out


def paired_difference(
    a_num: np.ndarray,
    a_den: np.ndarray,
    b_num: np.ndarray,
    b_den: np.ndarray,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> PairedDifference:
    """A − B for one metric; arrays are (seeds, problems) with the same problems, in the same order,
    in both arms (the caller aligns them). See paired_differences for the resampling."""
    for name, arr in (("a_num", a_num), ("a_den", a_den), ("b_num", b_num), ("b_den", b_den)):
        if np.ndim(arr) != 2:
            raise ValueError(f"{name} must be 2-d (seeds, problems), got {np.ndim(arr)}-d")
    return paired_differences(a_num, a_den, b_num, b_den, n_boot=n_boot, seed=seed, alpha=alpha)[0]


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values, in the input order: controls the family-wise error over the
    comparisons a report makes without Bonferroni's loss of power. Missing (None/NaN) p-values pass
    through untouched and do not count toward the number of tests."""
    present = [i for i, p in enumerate(p_values) if p is not None and not math.isnan(p)]
    out: list[float | None] = list(p_values)
    m = len(present)
    running = 0.0
    for rank, i in enumerate(sorted(present, key=lambda i: p_values[i])):  # stable: ties keep input order
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        out[i] = running
    return out


def _fmt_p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"= {p:.2g}"


def describe(
    first: str,
    second: str,
    d: PairedDifference,
    *,
    metric: str = "pass@1",
    adjusted_p: float | None = None,
    alpha: float = 0.05,
    seed_note: bool = True,
) -> str:
    """The comparison in words a report can print, in percentage points.

    A significant difference gets a direction ("is below ... by"); one that is not gets a signed
    "differ by", so the words never claim a direction the data do not support. Significance uses the
    adjusted p-value when one is given. `seed_note=False` leaves out what the interval does not cover
    (for a caller that says it once for many comparisons, see `seed_note`).
    """
    decisive = adjusted_p if adjusted_p is not None else d.p_value
    significant = decisive is not None and not math.isnan(decisive) and decisive < alpha
    pts, lo, hi = 100 * d.difference, 100 * d.ci_low, 100 * d.ci_high
    if significant and pts != 0:
        side = "above" if pts > 0 else "below"
        lo_s, hi_s = (lo, hi) if pts > 0 else (-hi, -lo)  # the interval of the gap's size
        head = f"{first} is {side} {second} by {abs(pts):.1f} points [{lo_s:.1f}, {hi_s:.1f}]"
    else:
        head = f"{first} and {second} differ by {pts:+.1f} points [{lo:.1f}, {hi:.1f}]"
    p_text = "p n/a" if _fmt_p(d.p_value) == "n/a" else f"p {_fmt_p(d.p_value)}"
    if adjusted_p is not None:
        adj = _fmt_p(adjusted_p)
        p_text += f" (Holm {adj[2:] if adj.startswith('= ') else adj})"
    verdict = "significant" if significant else "not significant"
    text = f"{metric}: {head}, {p_text}: {verdict} at α = {alpha:g}"
    note = seed_note_of(first, second, d) if seed_note else ""
    return f"{text}; {note}" if note else text


def seed_note_of(first: str, second: str, d: PairedDifference) -> str:
    """What the interval of `d` does not cover when an arm has a single training seed ("" otherwise)."""
    if d.n_seeds_a == 1 and d.n_seeds_b == 1:
        return "the interval covers problems and samples but not training-seed variation (one seed per arm)"
    if d.n_seeds_a == 1 or d.n_seeds_b == 1:
        single = first if d.n_seeds_a == 1 else second
        return f"the interval does not cover training-seed variation of {single} (one seed)"
    return ""
