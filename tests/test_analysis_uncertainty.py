"""Intervals over seeds: the seed bootstrap and the standard-error interval."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy import stats

from widthwise.analysis import AnalysisError
from widthwise.analysis.uncertainty import (
    bootstrap_over_seeds,
    percentile_interval,
    standard_error_interval,
)

pytestmark = pytest.mark.quick


def _seed_mean(x: xr.DataArray) -> xr.DataArray:
    return x.mean("seed")


def _covered(ds: xr.Dataset, truth: float) -> float:
    return float(((ds["lo"] <= truth) & (ds["hi"] >= truth)).mean())


def test_two_seeds_give_their_range_exactly():
    # resample means of {0, 1} are 0, 1/2, 1 with mass 1/4, 1/2, 1/4: the 2.5 % and
    # 97.5 % quantiles are the two seeds themselves
    da = xr.DataArray([[0.0, 1.0], [2.0, 6.0]], dims=("width", "seed"), coords={"width": [8, 16]})
    for method in ("percentile", "expanded"):
        ds = bootstrap_over_seeds(da, _seed_mean, n_boot=2000, method=method)
        np.testing.assert_allclose(ds["estimate"], [0.5, 4.0])
        np.testing.assert_allclose(ds["lo"], [0.0, 2.0])
        np.testing.assert_allclose(ds["hi"], [1.0, 6.0])
        np.testing.assert_array_equal(ds["n_seeds"], [2, 2])
        assert ds.attrs["method"] == method and ds.attrs["level"] == 0.95


def test_percentile_levels_are_exact_on_known_replicates():
    b = 1001
    reps = xr.DataArray(
        np.linspace(0.0, 1.0, b)[:, None] * np.ones((1, 3)), dims=("replicate", "k")
    )
    est = xr.DataArray(np.full(3, 0.5), dims="k")
    n = xr.DataArray([2, 8, 16], dims="k")
    varies = xr.DataArray([True, True, True], dims="k")
    plain = percentile_interval(est, reps, n, varies, method="percentile")
    np.testing.assert_allclose(plain["lo"], 0.025)
    np.testing.assert_allclose(plain["hi"], 0.975)
    ex = percentile_interval(est, reps, n, varies, method="expanded")
    # Hesterberg: z_{α'/2} = sqrt(n/(n−1)) t_{n−1, 0.025}
    nn = np.array([2.0, 8.0, 16.0])
    q = stats.norm.sf(np.sqrt(nn / (nn - 1)) * stats.t.isf(0.025, nn - 1))
    np.testing.assert_allclose(ex["lo"], q, atol=1e-12)
    np.testing.assert_allclose(ex["hi"], 1 - q, atol=1e-12)
    assert (ex["hi"] - ex["lo"] > plain["hi"] - plain["lo"]).all()


def test_large_sample_bootstrap_matches_the_normal_theory():
    rng = np.random.default_rng(1)
    x = rng.normal(size=64)
    da = xr.DataArray(x, dims="seed")
    ds = bootstrap_over_seeds(da, _seed_mean, n_boot=20000, method="percentile", seed=3)
    half = 1.96 * x.std() / np.sqrt(len(x))  # bootstrap sd of the mean: ddof 0
    assert float(ds["lo"]) == pytest.approx(x.mean() - half, abs=0.03 * half)
    assert float(ds["hi"]) == pytest.approx(x.mean() + half, abs=0.03 * half)


@pytest.mark.parametrize(("e", "method", "at_least"), [(8, "expanded", 0.9), (16, "expanded", 0.9)])
def test_coverage_of_the_nominal_95_interval(e, method, at_least):
    # 400 data sets of e seeds from N(1, 2²) as one extra (independent) dim
    rng = np.random.default_rng(7)
    da = xr.DataArray(rng.normal(1.0, 2.0, size=(400, e)), dims=("dataset", "seed"))
    ds = bootstrap_over_seeds(da, _seed_mean, independent="dataset", method=method)
    assert _covered(ds, 1.0) >= at_least
    se = standard_error_interval(da)
    assert _covered(se, 1.0) >= 0.92


def test_plain_percentile_is_too_narrow_with_few_seeds():
    # documents why "expanded" is the default: 4 seeds, nominal 0.95
    rng = np.random.default_rng(8)
    da = xr.DataArray(rng.normal(size=(400, 4)), dims=("dataset", "seed"))
    plain = _covered(
        bootstrap_over_seeds(da, _seed_mean, independent="dataset", method="percentile"), 0.0
    )
    wide = _covered(bootstrap_over_seeds(da, _seed_mean, independent="dataset"), 0.0)
    assert plain < 0.88 < wide


def test_widths_are_resampled_independently_and_steps_share_draws():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(1, 8, 1))
    # both widths hold the same members, constant over 3 steps
    da = xr.DataArray(np.broadcast_to(z, (2, 8, 3)).copy(), dims=("width", "seed", "step"))
    da = da.assign_coords(width=[8, 16])

    def diff(x):
        m = x.mean("seed")
        return m.sel(width=8) - m.sel(width=16)

    ds = bootstrap_over_seeds(da, diff, n_boot=500)
    assert float(ds["estimate"].max()) == 0.0
    assert (ds["hi"] - ds["lo"] > 0.1).all()  # independent draws: the difference varies
    np.testing.assert_allclose(ds["lo"], ds["lo"].isel(step=0))  # same draws at every step


def test_diverged_member_is_dropped_and_too_few_seeds_give_nan():
    x = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # (seed, step)
    x[0, 1:] = np.nan  # seed 0 diverged at step 1
    x[1, 2] = np.nan  # seed 1 at step 2: one member left
    da = xr.DataArray(x[None], dims=("width", "seed", "step"), coords={"width": [32]})
    ds = bootstrap_over_seeds(da, _seed_mean, n_boot=300).isel(width=0)
    np.testing.assert_allclose(ds["estimate"], [2.0, 3.5, 6.0])
    np.testing.assert_array_equal(ds["n_seeds"], [3, 2, 1])
    assert np.isfinite(ds["lo"][:2]).all() and np.isnan(ds["lo"][2]) and np.isnan(ds["hi"][2])
    np.testing.assert_allclose(ds[["lo", "hi"]].isel(step=1).to_array(), [2.0, 5.0])


def test_a_diverged_point_drops_the_whole_member_sample():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 5, 3))  # (seed, point, output)
    x[1, 2, 0] = np.nan
    da = xr.DataArray(x, dims=("seed", "point", "output"))
    ds = bootstrap_over_seeds(da, _seed_mean, sample_dims=("point", "output"), n_boot=50)
    np.testing.assert_allclose(ds["estimate"], x[[0, 2, 3]].mean(0))
    assert (ds["n_seeds"] == 3).all()


def test_identical_seeds_and_nonfinite_replicates_give_no_interval():
    const = xr.DataArray(np.ones((2, 6)), dims=("width", "seed"), coords={"width": [4, 8]})
    ds = bootstrap_over_seeds(const, _seed_mean, n_boot=100)
    assert not ds["seed_varies"].any() and ds["lo"].isnull().all()
    np.testing.assert_allclose(ds["estimate"], 1.0)
    signs = xr.DataArray([-1.0, 1.0, -1.0, 1.0], dims="seed")  # mean 0 in many resamples
    inv = bootstrap_over_seeds(signs, lambda x: 1 / x.mean("seed"), n_boot=200)
    assert np.isinf(float(inv["estimate"])) or np.isnan(float(inv["estimate"]))
    assert not np.isfinite(float(inv["hi"])) or np.isnan(float(inv["lo"]))


def test_seed_and_chunking_determinism():
    rng = np.random.default_rng(4)
    da = xr.DataArray(rng.normal(size=(3, 6, 4)), dims=("width", "seed", "step"))
    a = bootstrap_over_seeds(da, _seed_mean, n_boot=200, seed=5)
    b = bootstrap_over_seeds(da, _seed_mean, n_boot=200, seed=5)
    c = bootstrap_over_seeds(da, _seed_mean, n_boot=200, seed=6)
    xr.testing.assert_identical(a, b)
    assert not np.allclose(a["lo"], c["lo"])


def test_standard_error_interval_known_answer():
    da = xr.DataArray([[1.0, 2.0, 3.0, 4.0, np.nan]], dims=("width", "seed"))
    ds = standard_error_interval(da).isel(width=0)
    se = np.std([1, 2, 3, 4], ddof=1) / 2
    t = stats.t.isf(0.025, 3)
    assert float(ds["estimate"]) == 2.5 and float(ds["se"]) == pytest.approx(se)
    assert float(ds["lo"]) == pytest.approx(2.5 - t * se)
    assert float(ds["hi"]) == pytest.approx(2.5 + t * se)
    assert int(ds["n_seeds"]) == 4 and bool(ds["seed_varies"])
    z = standard_error_interval(da, dist="normal").isel(width=0)
    assert float(z["hi"]) == pytest.approx(2.5 + 1.959964 * se, rel=1e-6)
    one = standard_error_interval(xr.DataArray([1.0, np.nan], dims="seed"))
    assert np.isnan(float(one["lo"])) and int(one["n_seeds"]) == 1


def test_bad_input_names_the_problem():
    da = xr.DataArray(np.ones((2, 3)), dims=("width", "seed"))
    with pytest.raises(AnalysisError, match="level"):
        bootstrap_over_seeds(da, _seed_mean, level=1.5)
    with pytest.raises(AnalysisError, match="method"):
        bootstrap_over_seeds(da, _seed_mean, method="bca")
    with pytest.raises(AnalysisError, match="Dimensions"):
        bootstrap_over_seeds(da, _seed_mean, dim="member")
    with pytest.raises(AnalysisError, match="dist"):
        standard_error_interval(da, dist="cauchy")
