"""Valley fit: where the minimum lies and the slope per decade after it, in log10(data size)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from valley.metrics.valley_fit import fit_valley, piecewise_curve


def _hinge(sizes, x0, y0, before, after):
    x = np.log10(sizes)
    return np.where(x <= x0, y0 + before * (x - x0), y0 + after * (x - x0))


def test_piecewise_recovers_a_known_valley():
    sizes = np.array([1e3, 2e3, 5e3, 1e4, 3e4, 1e5, 3e5])
    y = _hinge(sizes, math.log10(5e3), 0.10, -0.15, 0.20)
    fit = fit_valley(sizes, y)
    assert fit["model"] == "piecewise" and fit["piecewise"]["is_valley"]
    assert fit["argmin_size"] == pytest.approx(5e3, rel=0.03)
    assert fit["slope_per_decade_after"] == pytest.approx(0.20, abs=1e-3)
    assert fit["piecewise"]["slope_before"] == pytest.approx(-0.15, abs=1e-3)
    np.testing.assert_allclose(piecewise_curve(fit, sizes), y, atol=2e-3)


def test_noisy_valley_and_quadratic_agree_on_location():
    rng = np.random.default_rng(3)
    sizes = np.logspace(3, 5.5, 12)
    x = np.log10(sizes)
    y = 0.3 * (x - 4.0) ** 2 + 0.1 + rng.normal(0, 0.005, x.size)
    fit = fit_valley(sizes, y)
    assert fit["quadratic"]["is_valley"]
    assert math.log10(fit["quadratic"]["vertex_size"]) == pytest.approx(4.0, abs=0.05)
    assert math.log10(fit["argmin_size"]) == pytest.approx(4.0, abs=0.3)
    assert fit["slope_per_decade_after"] > 0


def test_paper_shape_three_sizes_and_base_is_excluded():
    # Three sizes (1K, 10K, 30K) plus the base model at size 0, as in the paper's Table 1.
    fit = fit_valley([0, 1000, 10000, 30000], [0.30, 0.15, 0.12, 0.20])
    assert fit["n_points"] == 3 and [p["data_size"] for p in fit["points"]] == [1000, 10000, 30000]
    assert fit["observed"]["argmin_size"] == 10000
    # After the minimum the points are (4, 0.12) and (4.477, 0.20): slope 0.08 / 0.477 per decade.
    assert fit["observed"]["slope_per_decade_after"] == pytest.approx(0.08 / math.log10(3), rel=1e-6)
    assert 1000 < fit["argmin_size"] <= 30000


def test_monotone_curve_has_no_valley():
    sizes = [1e3, 1e4, 1e5, 1e6]
    fit = fit_valley(sizes, [0.1, 0.2, 0.3, 0.4])
    assert not fit["piecewise"]["is_valley"] and not fit["quadratic"]["is_valley"]
    assert fit["model"] == "observed" and fit["argmin_size"] == 1e3
    assert fit["slope_per_decade_after"] == pytest.approx(0.1)


def test_too_few_points():
    assert fit_valley([], [])["argmin_size"] is None
    fit = fit_valley([1000, 10000], [0.2, 0.1])
    assert "piecewise" not in fit and fit["argmin_size"] == 10000 and fit["slope_per_decade_after"] is None
