"""Power law in width L(n) = a·n^(−b) + c, bootstrap over seeds, limit curve (Section 4, Fig. 9)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy.optimize import curve_fit, nnls

from widthwise.analysis import (
    AnalysisError,
    limit_curve,
    power_law_curve,
    power_law_fit,
)
from widthwise.analysis.power_law import _nnls2

pytestmark = pytest.mark.quick

WIDTHS = np.array([16, 32, 64, 128, 256, 512, 1024], dtype=float)
A, B, C = 3.0, 0.7, 0.2


def _seeds(n_seeds=8, extra=(), noise=0.3, seed=0):
    """Seeds scatter around the power law with std noise·n^(-1/2) (variance ∝ 1/width)."""
    rng = np.random.default_rng(seed)
    truth = A * WIDTHS ** (-B) + C
    shape = (len(WIDTHS), n_seeds, *extra)
    scatter = rng.normal(size=shape) * (noise * WIDTHS ** (-0.5)).reshape(-1, 1, *[1] * len(extra))
    return truth.reshape(-1, 1, *[1] * len(extra)) + scatter


def _fit_curve(widths, values) -> dict[str, float]:
    """power_law_fit on one curve (no seed dim): its a, b, c, r2 as floats."""
    da = xr.DataArray(np.asarray(values, dtype=float), dims="width", coords={"width": widths})
    fit = power_law_fit(da, n_boot=0)
    return {k: float(fit[k]) for k in ("a", "b", "c", "r2")}


def test_exact_data_is_recovered_with_r2_one():
    fit = _fit_curve(WIDTHS, A * WIDTHS ** (-B) + C)
    assert fit["a"] == pytest.approx(A, rel=1e-6)
    assert fit["b"] == pytest.approx(B, rel=1e-6)
    assert fit["c"] == pytest.approx(C, rel=1e-6)
    assert fit["r2"] > 0.99


def test_noisy_data_recovers_the_parameters():
    da = xr.DataArray(_seeds(noise=0.05), dims=("width", "seed"), coords={"width": WIDTHS})
    fit = power_law_fit(da, n_boot=0)
    assert float(fit.b) == pytest.approx(B, abs=0.1)
    assert float(fit.c) == pytest.approx(C, abs=0.01)
    assert float(fit.a) == pytest.approx(A, rel=0.3)
    assert float(fit.r2) > 0.99
    assert np.isnan(fit.c_ci).all()  # no bootstrap asked
    # an interior optimum is the unconstrained least-squares one
    p, _ = curve_fit(lambda n, a, b, c: a * n ** (-b) + c, WIDTHS, da.mean("seed"), p0=[A, B, C])
    np.testing.assert_allclose([fit.a, fit.b, fit.c], p, rtol=1e-5)


def test_two_column_nnls_equals_scipy():
    rng = np.random.default_rng(2)
    for _ in range(200):
        x = rng.uniform(0.01, 2, size=6)
        y = rng.normal(size=6) + rng.normal() * x + rng.normal()
        a, c, rss = _nnls2(x, y, np.ones(6))
        sol, res = nnls(np.stack([x, np.ones(6)], 1), y)
        np.testing.assert_allclose([a, c], sol, atol=1e-9)
        assert rss == pytest.approx(res**2, abs=1e-9)


def test_bootstrap_interval_contains_the_truth():
    """Over 30 synthetic studies (a 'rep' dim, all fitted in one call) the 90% intervals
    of c and b cover the truth about 90% of the time."""
    da = xr.DataArray(
        _seeds(n_seeds=8, extra=(30,), seed=5),
        dims=("width", "seed", "rep"),
        coords={"width": WIDTHS},
    )
    fit = power_law_fit(da, n_boot=200, ci=0.9, seed=1)
    lo, hi = fit.c_ci.sel(bound="low"), fit.c_ci.sel(bound="high")
    covered = ((lo <= C) & (hi >= C)).values
    assert covered.mean() >= 0.75
    b_cov = ((fit.b_ci.sel(bound="low") <= B) & (fit.b_ci.sel(bound="high") >= B)).values
    assert b_cov.mean() >= 0.75
    again = power_law_fit(da.isel(rep=[0]), n_boot=300, ci=0.9, seed=1)
    assert np.isfinite(again.c_ci).all()


def test_limit_curve_over_training_and_diverged_members():
    steps = np.arange(5)
    c_t = 0.2 + 0.5 * np.exp(-steps)
    vals = A * WIDTHS[:, None, None] ** (-B) + c_t[None, None, :] + 0 * np.ones((1, 4, 1))
    vals[2, 1, 3:] = np.nan  # a diverged member
    vals[-1, :, 4] = np.nan  # the widest has not reached the last step
    da = xr.DataArray(
        vals, dims=("width", "seed", "test_step"), coords={"width": WIDTHS, "test_step": steps}
    )
    lim = limit_curve(da, n_boot=50)
    assert lim.limit.dims == ("test_step",)
    np.testing.assert_allclose(lim.limit.values, c_t, rtol=1e-5)
    np.testing.assert_allclose(lim.limit_ci.sel(bound="low"), c_t, rtol=1e-5)  # no scatter
    curve = power_law_curve(power_law_fit(da, n_boot=0), WIDTHS)
    np.testing.assert_allclose(curve.isel(test_step=0), A * WIDTHS ** (-B) + c_t[0], rtol=1e-6)


def test_degenerate_inputs():
    assert np.isnan(_fit_curve([16, 32], [1.0, 0.5])["c"])  # fewer than 3 widths
    flat = _fit_curve(WIDTHS, np.full(len(WIDTHS), 0.5))
    assert flat["a"] == 0 and flat["c"] == pytest.approx(0.5) and np.isnan(flat["b"])
    da = xr.DataArray(np.ones((3, 2)), dims=("width", "seed"), coords={"width": [0, 1, 2]})
    with pytest.raises(AnalysisError, match="positive"):
        power_law_fit(da)
    with pytest.raises(AnalysisError, match="'ci'"):
        power_law_fit(da.assign_coords(width=[1, 2, 4]), ci=95)
