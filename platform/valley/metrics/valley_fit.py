"""Fit the "valley": score versus log10(data size), where the minimum lies and how fast it climbs.

Two small least-squares models in log space, pure numpy (no scipy):
- piecewise linear with one hinge at x0: y = a + b*x + d*max(0, x - x0); x0 by grid search. It is
  a valley when b < 0 < b + d; then the minimum is at x0 and b + d is the slope per decade after it.
- quadratic: y = a + b*x + c*x^2; a valley when c > 0 with its vertex inside the data range.
The observed minimum and the plain regression slope of the points after it are reported beside
them, because with the paper's three sizes both models pass through every point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_GRID = 400


def _lstsq(design: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    return coef, float(resid @ resid)


def _slope(x: np.ndarray, y: np.ndarray) -> float | None:
    if x.size < 2 or np.ptp(x) == 0:
        return None
    coef, _ = _lstsq(np.column_stack([np.ones_like(x), x]), y)
    return float(coef[1])


def _best_hinge(x: np.ndarray, y: np.ndarray, grid: np.ndarray, x_min_obs: float) -> tuple[float, float, np.ndarray, float]:
    """(sse, distance to the observed minimum, coefficients, x0) of the best hinge on `grid`."""
    best: tuple[float, float, np.ndarray, float] | None = None
    for x0 in grid:
        design = np.column_stack([np.ones_like(x), x, np.maximum(0.0, x - x0)])
        coef, sse = _lstsq(design, y)
        cand = (sse, abs(float(x0) - x_min_obs), coef, float(x0))
        if best is None or (round(sse, 12), cand[1]) < (round(best[0], 12), best[1]):
            best = cand
    assert best is not None
    return best


def fit_piecewise(x: np.ndarray, y: np.ndarray) -> dict:
    """Best single-hinge fit; ties (exact fits) go to the hinge nearest the observed minimum."""
    x_min_obs = x[np.argmin(y)]
    grid = np.linspace(x.min(), x.max(), _GRID)[1:-1]
    best = _best_hinge(x, y, grid, x_min_obs)
    step = grid[1] - grid[0] if grid.size > 1 else 0.0
    # Second, finer pass around the coarse optimum so the hinge is not limited by the grid.
    fine = np.linspace(max(x.min(), best[3] - step), min(x.max(), best[3] + step), _GRID)
    best = min(best, _best_hinge(x, y, fine, x_min_obs), key=lambda b: (round(b[0], 12), b[1]))
    sse, _, coef, x0 = best
    a, b, d = (float(v) for v in coef)
    is_valley = bool(b < 0 < b + d)
    return {
        "breakpoint_size": float(10**x0),
        "slope_before": b,
        "slope_after": b + d,
        "value_at_breakpoint": a + b * x0,
        "is_valley": is_valley,
        "sse": sse,
    }


def fit_quadratic(x: np.ndarray, y: np.ndarray) -> dict:
    coef, sse = _lstsq(np.column_stack([np.ones_like(x), x, x**2]), y)
    a, b, c = (float(v) for v in coef)
    vertex = -b / (2 * c) if c != 0 else math.nan
    is_valley = bool(c > 0 and x.min() < vertex < x.max())
    x_star = float(np.clip(vertex, x.min(), x.max())) if not math.isnan(vertex) else float(x.min())
    # Mean derivative between the minimum and the largest size: (b + 2c x) averaged over [x*, x_max].
    slope_after = float(b + c * (x_star + x.max())) if x.max() > x_star else None
    return {
        "coeffs": [a, b, c],
        "vertex_size": float(10**vertex) if is_valley else None,
        "slope_after": slope_after,
        "is_valley": is_valley,
        "sse": sse,
    }


def fit_valley(sizes: Sequence[float], values: Sequence[float]) -> dict:
    """Fit score vs log10(size) for sizes > 0 (a base model, size 0, has no place on a log axis)."""
    sizes_arr = np.asarray(sizes, dtype=np.float64)
    vals = np.asarray(values, dtype=np.float64)
    keep = (sizes_arr > 0) & np.isfinite(vals)
    sizes_arr, vals = sizes_arr[keep], vals[keep]
    order = np.argsort(sizes_arr)
    sizes_arr, vals = sizes_arr[order], vals[order]
    x = np.log10(sizes_arr)
    out: dict = {
        "n_points": int(sizes_arr.size),
        "points": [{"data_size": float(s), "value": float(v)} for s, v in zip(sizes_arr, vals, strict=True)],
    }
    if sizes_arr.size == 0:
        out.update(argmin_size=None, slope_per_decade_after=None, model=None)
        return out
    i_min = int(np.argmin(vals))
    out["observed"] = {
        "argmin_size": float(sizes_arr[i_min]),
        "min_value": float(vals[i_min]),
        "slope_per_decade_after": _slope(x[i_min:], vals[i_min:]),
        "slope_per_decade_before": _slope(x[: i_min + 1], vals[: i_min + 1]),
    }
    out["model"] = "observed"
    out["argmin_size"] = out["observed"]["argmin_size"]
    out["slope_per_decade_after"] = out["observed"]["slope_per_decade_after"]
    if np.unique(x).size >= 3:
        out["quadratic"] = fit_quadratic(x, vals)
    # A hinge, a level and two slopes are four parameters: with fewer distinct sizes the "fit" would
    # only interpolate, and its hinge can land anywhere between the points.
    if np.unique(x).size >= 4:
        out["piecewise"] = fit_piecewise(x, vals)
        if out["piecewise"]["is_valley"]:
            out["model"] = "piecewise"
            out["argmin_size"] = out["piecewise"]["breakpoint_size"]
            out["slope_per_decade_after"] = out["piecewise"]["slope_after"]
    return out


def piecewise_curve(fit: dict, sizes: np.ndarray) -> np.ndarray | None:
    """The fitted piecewise line at `sizes` (for plotting), or None when there is no fit."""
    pw = fit.get("piecewise")
    if not pw:
        return None
    x = np.log10(sizes)
    x0 = math.log10(pw["breakpoint_size"])
    y0 = pw["value_at_breakpoint"]
    return np.where(x <= x0, y0 + pw["slope_before"] * (x - x0), y0 + pw["slope_after"] * (x - x0))
