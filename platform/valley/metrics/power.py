"""What a study design can detect, before spending GPU-hours on it.

The paired test of paired.py compares two arms on the same problems. Its estimator's variance has three
parts: the problems' own disagreement between the two models (tau^2 / P: some problems get easier, some
harder, beyond sampling noise), binomial sampling within each problem (n samples per seed), and the
training-seed spread of each arm (sigma^2 / S per arm). The last is a floor that more problems or samples
cannot lower, and an arm with ONE seed cannot even measure it: with one seed per arm the bootstrap test
speaks about these two trained models, not about the recipes that made them. Every function therefore
takes `include_seeds`: False gives the detectable difference "for these trained models" (what the test as
run can see), True "for the recipes" (the arms' expected scores over training seeds).

Per-problem true pass rates follow a Beta with mean `base_pass` and concentration kappa; LiveCodeBench's
problems are extremely heterogeneous (most sit near 0 or 1), which makes kappa small and the binomial term
small next to tau.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np

from valley.metrics.paired import paired_difference

# Constants measured on /work/shared/data/lcb_verdicts (official lcb_runner verdicts, T = 0.2; see
# tests/test_power.py, which recomputes them with the two estimators below):
# - CONCENTRATION: method-of-moments Beta-binomial fit (concentration_of) of the two files with 10 samples
#   per problem (gu-ni output_test6: Llama-3.1-8B-Instruct 0.1355, Qwen2.5-Coder-7B-Instruct 0.1354, 116
#   problems each; the mean). At T = 0.2 a model mostly always or never solves a problem; hotter sampling
#   spreads the rates, raises kappa and the binomial term, so this is the optimistic end for that term.
# - DIFFERENCE_SD: difference_sd_of over the 6 pairs of the four 7-8B models on their shared problems
#   (Qwen2.5-7B-Instruct, "Qwen-3-8B" (base), both n = 1 on 714 problems; the two n = 10 files above,
#   116 problems); per pair 0.197 .. 0.327, the median 0.233. The o1 pairs (0.39 .. 0.48) are left out:
#   30-45 points apart, not the size of difference a valley study compares.
# - BASE_PASS: Qwen2.5-7B-Instruct's pass@1 in the same files (181 / 714 = 0.2535), the usual base model.
# - SEED_SD: run-to-run spread of LCB pass@1 of 1-2 points (NeMo-Skills documents it); 1.5 points.
CONCENTRATION = 0.1355
DIFFERENCE_SD = 0.233
BASE_PASS = 0.25
SEED_SD = 0.015
# seeds of an arm that is not trained (the base model): it has no seed-to-seed spread, and a count this
# large makes its σ²/seeds term vanish; `design_for` never changes it
UNTRAINED = 10**9

Vary = Literal["samples", "seeds"]
_NORMAL = NormalDist()


@dataclass(frozen=True)
class Design:
    """Problems evaluated (the same in both arms), samples per problem per seed, seeds per arm."""

    problems: int
    samples: int
    seeds_a: int = 1
    seeds_b: int = 1

    def __post_init__(self) -> None:
        if min(self.problems, self.samples, self.seeds_a, self.seeds_b) < 1:
            raise ValueError(f"every count of a design must be >= 1: {self}")


@dataclass(frozen=True)
class Assumptions:
    """What the world looks like: base pass rate, Beta concentration kappa of per-problem rates, the
    spread tau across problems of two models' true per-problem difference, and the training-seed sd
    sigma of an arm's pass@1 (all as fractions, not points)."""

    base_pass: float = BASE_PASS
    concentration: float = CONCENTRATION
    difference_sd: float = DIFFERENCE_SD
    seed_sd: float = SEED_SD

    def __post_init__(self) -> None:
        if not 0 < self.base_pass < 1:
            raise ValueError(f"base_pass must lie in (0, 1), got {self.base_pass}")
        if self.concentration <= 0 or self.difference_sd < 0 or self.seed_sd < 0:
            raise ValueError(f"concentration must be > 0 and the sds >= 0: {self}")


# ---- calibration: the estimators behind the constants ------------------------------------------------
def concentration_of(n: np.ndarray, c: np.ndarray) -> float:
    """Method-of-moments Beta concentration of per-problem pass rates from n samples with c passes.

    The spread of observed rates c/n is the spread of the true rates plus binomial noise; the noise part
    is estimated per problem without bias (c(n-c) / (n^2 (n-1))) and subtracted. Needs n >= 2 everywhere:
    with one sample a problem's rate and its noise cannot be told apart.
    """
    n = np.asarray(n, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    if (n < 2).any():
        raise ValueError("the concentration needs at least 2 samples per problem")
    rate = c / n
    mu = rate.mean()
    between = rate.var(ddof=1) - np.mean(c * (n - c) / (n * n * (n - 1)))
    return float(mu * (1 - mu) / between - 1)


def _sampling_variance(n: np.ndarray, c: np.ndarray, concentration: float) -> float:
    """Mean binomial variance of c/n: estimated per problem where n >= 2, else from the Beta model."""
    if (n >= 2).all():
        return float(np.mean(c * (n - c) / (n * n * (n - 1))))
    mu = float(np.mean(c / n))
    return float(mu * (1 - mu) * concentration / (concentration + 1) * np.mean(1 / n))


def difference_sd_of(
    n_a: np.ndarray, c_a: np.ndarray, n_b: np.ndarray, c_b: np.ndarray, concentration: float = CONCENTRATION
) -> float:
    """tau: the sd across problems of two models' true per-problem difference in pass rate.

    Arrays are aligned on the same problems. The observed differences' variance minus both models'
    binomial variance; a model with one sample per problem borrows that variance from the Beta model
    (hence `concentration`). 0 when the noise explains all of the spread.
    """
    n_a, c_a, n_b, c_b = (np.asarray(x, dtype=np.float64) for x in (n_a, c_a, n_b, c_b))
    observed = np.var(c_a / n_a - c_b / n_b, ddof=1)
    tau2 = observed - _sampling_variance(n_a, c_a, concentration) - _sampling_variance(n_b, c_b, concentration)
    return float(math.sqrt(max(tau2, 0.0)))


# ---- the normal approximation -------------------------------------------------------------------------
def _binomial_variance(rate: float, concentration: float) -> float:
    """E[r (1 - r)] for r ~ Beta(mean rate, concentration): one sample's variance, averaged over problems."""
    return rate * (1 - rate) * concentration / (concentration + 1)


def standard_error(design: Design, assumptions: Assumptions, *, include_seeds: bool = True) -> float:
    """Standard error of the paired difference estimator (arm means over seeds, A − B).

    Problem term tau^2 / P, binomial term E[r(1-r)] / (n S) per arm over P, and with include_seeds the
    training-seed term sigma^2 (1/S_a + 1/S_b). Evaluated at the null (both arms at base_pass). A real
    difference lifts some problems off 0 or 1, where they had no binomial variance, so the alternative's
    SE is larger: negligible next to the measured tau, about 10% when tau = 0 (simulate_detection shows it).
    The normal approximation also treats the seed spread as known; the test estimates it from the seeds,
    which costs power with 2-3 seeds per arm (see the module's tests).
    """
    a, d = assumptions, design
    v = _binomial_variance(a.base_pass, a.concentration) / d.samples
    var = (a.difference_sd**2 + v / d.seeds_a + v / d.seeds_b) / d.problems
    if include_seeds:
        var += a.seed_sd**2 * (1 / d.seeds_a + 1 / d.seeds_b)
    return math.sqrt(var)


def _z(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    return _NORMAL.inv_cdf(1 - alpha / 2)


def detectable_difference(
    design: Design,
    assumptions: Assumptions,
    power: float = 0.8,
    alpha: float = 0.05,
    *,
    include_seeds: bool = True,
) -> float:
    """The smallest true difference (a fraction) a two-sided test at `alpha` finds with `power`.

    include_seeds=False: for these two trained models, what the report's test can see when an arm has
    one seed. include_seeds=True: for the recipes (arms' expected scores over training seeds); with one
    seed per arm no test can measure that spread, so this is what an honest claim about recipes needs.
    """
    if not 0 < power < 1:
        raise ValueError(f"power must lie in (0, 1), got {power}")
    return (_z(alpha) + _NORMAL.inv_cdf(power)) * standard_error(design, assumptions, include_seeds=include_seeds)


def power_of(
    design: Design, diff: float, assumptions: Assumptions, alpha: float = 0.05, *, include_seeds: bool = True
) -> float:
    """Probability that the two-sided test at `alpha` finds a true difference `diff` (both tails)."""
    z, shift = _z(alpha), abs(diff) / standard_error(design, assumptions, include_seeds=include_seeds)
    return _NORMAL.cdf(shift - z) + _NORMAL.cdf(-shift - z)


def false_positive_rate(design: Design, assumptions: Assumptions, alpha: float = 0.05) -> float:
    """How often the paired test as run flags two recipes with equal expected scores.

    The bootstrap sees a recipe's seed spread only where that arm has several seeds; an arm with one
    seed hides sigma^2 from it, so its nominal alpha understates the real rate for claims about recipes.
    """
    a, d = assumptions, design
    seen = sum(a.seed_sd**2 / s for s in (d.seeds_a, d.seeds_b) if s > 1)
    test_var = standard_error(d, a, include_seeds=False) ** 2 + seen
    true_var = standard_error(d, a, include_seeds=True) ** 2
    if true_var == 0:
        return alpha
    return 2 * _NORMAL.cdf(-_z(alpha) * math.sqrt(test_var / true_var))


def design_for(
    target_diff: float,
    design: Design,
    assumptions: Assumptions,
    vary: Vary = "samples",
    limit: int = 1000,
    *,
    power: float = 0.8,
    alpha: float = 0.05,
    include_seeds: bool = True,
) -> int | None:
    """The smallest samples per problem (vary="samples") or seeds per arm (vary="seeds", both arms) whose
    detectable difference is <= target_diff, or None when none up to `limit` is.

    None is often a floor, not a budget: more samples shrink only the binomial term, so the problem term
    tau^2/P and (for recipes) the seed term sigma^2 (1/S_a + 1/S_b) stay; more seeds leave tau^2/P.
    """
    if vary not in ("samples", "seeds"):
        raise ValueError(f"vary must be 'samples' or 'seeds', got {vary!r}")

    def with_k(k: int) -> Design:
        if vary == "samples":
            return Design(design.problems, k, design.seeds_a, design.seeds_b)
        return Design(design.problems, design.samples, design.seeds_a if design.seeds_a >= UNTRAINED else k,
                      design.seeds_b if design.seeds_b >= UNTRAINED else k)

    def reaches(k: int) -> bool:
        return detectable_difference(with_k(k), assumptions, power, alpha, include_seeds=include_seeds) <= target_diff

    if not reaches(limit):
        return None
    lo, hi = 1, limit  # detectable difference falls monotonically in k: bisect for the first k that reaches
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reaches(mid) else (mid + 1, hi)
    return lo


# ---- simulation: the check on all of the above ------------------------------------------------------
def _shift_to(rates: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Constants c (one per entry of target) with mean(clip(rates + c)) - mean(rates) == target.

    Clipping at 0 and 1 would otherwise eat part of a plain shift (most LCB problems sit at 0 or 1), so
    the shift is solved for; the mean is monotone in c, so bisection finds it.
    """
    target = np.atleast_1d(np.asarray(target, dtype=np.float64))
    lo, hi = np.full(target.shape, -1.0), np.full(target.shape, 1.0)
    base = rates.mean()
    for _ in range(48):
        mid = (lo + hi) / 2
        moved = np.clip(rates[None, :] + mid[:, None], 0, 1).mean(axis=1) - base
        low = moved < target
        lo, hi = np.where(low, mid, lo), np.where(low, hi, mid)
    return (lo + hi) / 2


def _redraw(diff: float, a: Assumptions) -> tuple[float, float]:
    """(share, mean): B redraws a `share` of the problems from Beta(mean, kappa) and keeps A's rate on the
    rest, so that E[B - A] = diff and sd(B - A) = tau.

    Real models disagree by solving different problems, and each model's rates stay U-shaped (both
    10-sample files give kappa 0.135 though their tau is 0.26); a shift-and-clip B would fill the middle
    and inflate its binomial noise. With d = diff / share, Var(B - A) = share (V(mu) + V(mu + d) + d^2)
    - diff^2 where V(m) = m (1 - m) / (kappa + 1); solved for share, taking the largest share that fits (the
    mildest redraw mean). Some (diff, tau) pairs have no solution: a big difference needs turnover.
    """
    mu, k, tau2 = a.base_pass, a.concentration, a.difference_sd**2

    def excess(share: np.ndarray) -> np.ndarray:
        other = mu + diff / share
        spread = other * (1 - other) / (k + 1) + mu * (1 - mu) / (k + 1)
        return share * spread + diff**2 / share - diff**2 - tau2

    room = (1 - mu) if diff > 0 else mu
    lowest = abs(diff) / room if diff else 0.0
    shares = np.linspace(1.0, lowest, 4001)[:-1]  # mean + diff / share stays inside [0, 1]
    below = np.flatnonzero(excess(shares) <= 0)
    if excess(np.array([1.0]))[0] < 0 or not below.size:
        raise ValueError(f"no world with base {mu:g} and kappa {k:g} has a difference of {diff:g} with "
                         f"per-problem sd {a.difference_sd:g}: a larger difference needs a larger sd")
    hi, lo = shares[max(below[0] - 1, 0)], shares[below[0]]
    for _ in range(60):
        mid = (hi + lo) / 2
        hi, lo = (mid, lo) if excess(np.array([mid]))[0] > 0 else (hi, mid)
    share = (hi + lo) / 2
    return float(share), float(mu + diff / share)


def _seed_rates(rates: np.ndarray, seeds: int, sd: float, rng: np.random.Generator) -> np.ndarray:
    """(seeds, problems) rates: each seed moves the arm's mean pass rate by its own N(0, sd^2) effect."""
    if sd == 0:
        return np.broadcast_to(rates, (seeds, rates.size))
    m = rates.mean()
    effect = np.clip(rng.normal(0.0, sd, seeds), -m + 1e-9, 1 - m - 1e-9)
    c = _shift_to(rates, effect)
    return np.clip(rates[None, :] + c[:, None], 0, 1)


def simulate_detection(
    design: Design,
    diff: float,
    assumptions: Assumptions,
    *,
    n_studies: int = 500,
    alpha: float = 0.05,
    rng: np.random.Generator | None = None,
    n_boot: int = 200,
) -> float:
    """Share of simulated studies in which paired_difference finds p < alpha: the empirical power (or,
    at diff = 0, false-positive rate) to hold power_of and the test's calibration against.

    Per study: problems' rates A ~ Beta(base_pass, kappa); B redraws a share of them (see _redraw) so the
    expected difference is `diff` and its per-problem sd is tau; with tau = 0, B = clip(A + c) with c
    solved for `diff` (clipping leaves a small spread). Each seed moves its arm's mean by N(0, sigma^2);
    binomial samples per seed; arm B is the second argument, so the test sees A − B = −diff.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    a, d = assumptions, design
    k = a.concentration
    if a.difference_sd > 0:
        share, mean = _redraw(diff, a)
    else:
        pop = rng.beta(a.base_pass * k, (1 - a.base_pass) * k, 20_000)
        shift = float(_shift_to(pop, np.array([diff]))[0])
    hits = 0
    for _ in range(n_studies):
        base = rng.beta(a.base_pass * k, (1 - a.base_pass) * k, d.problems)
        if a.difference_sd > 0:
            fresh = rng.beta(mean * k, (1 - mean) * k, d.problems)
            other = np.where(rng.random(d.problems) < share, fresh, base)
        else:
            other = np.clip(base + shift, 0, 1)
        arms = []
        for rates, seeds in ((base, d.seeds_a), (other, d.seeds_b)):
            passed = rng.binomial(d.samples, _seed_rates(rates, seeds, a.seed_sd, rng))
            arms += [passed / d.samples, np.ones(passed.shape)]
        result = paired_difference(*arms, n_boot=n_boot, seed=int(rng.integers(2**32)), alpha=alpha)
        hits += bool(result.p_value < alpha)
    return hits / n_studies
