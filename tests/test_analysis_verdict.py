"""Verdicts with intervals over seeds: known answers, honesty on noise, NaN and constants."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from widthwise.analysis import AnalysisError, scaled_rmse, scaled_rmse_to_widest
from widthwise.analysis.uncertainty import bootstrap_over_seeds
from widthwise.analysis.verdict import (
    RESULTS,
    kernel_distance_to_widest,
    logit_distance_to_widest,
    loss_gap_to_widest,
    mean_distance,
    plateau,
    successive_gap,
    verdict,
    width_slope,
)

pytestmark = pytest.mark.quick

WIDTHS = [64, 128, 256, 512, 1024]


def _loss(values, steps=None):
    values = np.asarray(values, dtype=float)
    steps = np.arange(values.shape[-1]) if steps is None else steps
    return xr.DataArray(
        values,
        dims=("width", "seed", "step"),
        coords={"width": WIDTHS[: values.shape[0]], "step": steps},
    )


def _interval(est, lo, hi, **extra):
    ds = xr.Dataset({"estimate": ("k", est), "lo": ("k", lo), "hi": ("k", hi)})
    return ds.assign({k: ("k", v) for k, v in extra.items()})


def test_the_rule_and_every_reason():
    nan = np.nan
    ds = _interval(
        est=[0.01, 0.2, 0.05, 0.01, 0.01, 0.01],
        lo=[0.0, 0.15, 0.03, nan, 0.0, 0.0],
        hi=[0.04, 0.3, 0.07, nan, 0.02, 0.02],
        n_seeds=[8, 8, 8, 8, 1, 8],
        seed_varies=[True, True, True, True, True, False],
    )
    v = verdict(ds, 0.05)
    assert list(v["verdict"].values) == [
        "consistent",
        "not consistent",
        "undetermined",
        "undetermined",
        "undetermined",
        "undetermined",
    ]
    assert list(v["reason"].values) == [
        "upper bound <= tolerance",
        "lower bound > tolerance",
        "interval straddles the tolerance",
        "non-finite values",
        "too few seeds",
        "no seed variation",
    ]
    assert v.attrs["tolerance"] == 0.05 and "hi <= tol" in v.attrs["rule"]
    assert set(v["verdict"].values) <= set(RESULTS)
    edge = verdict(_interval([0.05], [0.05], [0.05], n_seeds=[2], seed_varies=[True]), 0.05)
    assert edge["verdict"].item() == "consistent"  # hi == tol counts as within
    with pytest.raises(AnalysisError, match="tol"):
        verdict(ds, -1.0)
    with pytest.raises(AnalysisError, match="estimate"):
        verdict(xr.Dataset({"x": ("k", [1.0])}), 0.1)


def test_loss_gap_known_answer_with_an_exact_interval():
    # narrow seeds {1.0, 1.2}, widest {1.0, 1.1}: resampled means {1.0, 1.1, 1.2} and
    # {1.0, 1.05, 1.1}; the gap |m_n − m_N|/m_N is 0 in 3/16 of the resamples and
    # (1.2 − 1.0)/1.0 = 0.2 in 1/16: the 95 % percentile interval is exactly [0, 0.2]
    loss = _loss([[[1.0], [1.2]], [[1.0], [1.1]]])
    ds = loss_gap_to_widest(loss, tol=0.1, n_boot=4000, method="percentile")
    assert ds["estimate"].dims == ("width", "step") and list(ds.width.values) == [64]
    ds = ds.squeeze()
    assert float(ds["estimate"]) == pytest.approx(0.05 / 1.05)
    assert float(ds["lo"]) == pytest.approx(0.0, abs=1e-12)
    assert float(ds["hi"]) == pytest.approx(0.2)
    assert ds["verdict"].item() == "undetermined"
    assert ds["reason"].item() == "interval straddles the tolerance"
    assert ds.attrs["reference_width"] == 128 and ds.attrs["relative"] == 1


def test_loss_gap_recovers_known_gaps_and_verdicts():
    rng = np.random.default_rng(0)
    gaps = np.array([0.3, 0.1, 0.02, 0.005, 0.0])
    base = 1 + np.exp(-np.arange(30) / 10)
    loss = _loss(base * (1 + gaps)[:, None, None] * (1 + 0.002 * rng.normal(size=(5, 8, 30))))
    ds = loss_gap_to_widest(loss, tol=0.05, n_boot=500)
    np.testing.assert_allclose(ds["estimate"].mean("step"), gaps[:-1], atol=3e-3)
    assert (ds["lo"] <= ds["estimate"]).all() and (ds["estimate"] <= ds["hi"]).all()
    want = ["not consistent", "not consistent", "consistent", "consistent"]
    assert (ds["verdict"] == xr.DataArray(want, dims="width", coords={"width": WIDTHS[:4]})).all()


@pytest.mark.parametrize("points", [12, 1])  # E×E Gram path (12·2 > 5 seeds) and direct means
def test_fast_replicates_equal_the_generic_bootstrap(points):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 1, 3, points, 2)) + 0.3 * rng.normal(size=(3, 5, 3, points, 2))
    x[0, 1, 2, 0, 0] = np.nan  # a diverged member at the last step
    da = xr.DataArray(
        x, dims=("width", "seed", "test_step", "point", "output"), coords={"width": [16, 32, 64]}
    )
    over = ("point", "output")
    fast = logit_distance_to_widest(da, n_boot=300, seed=9)

    def stat(s):
        m = s.mean("seed")
        return scaled_rmse(m.sel(width=[16, 32]), m.sel(width=64, drop=True), over=over)

    slow = bootstrap_over_seeds(da, stat, n_boot=300, seed=9, sample_dims=over)
    ref = scaled_rmse_to_widest(da, ensemble=True).sel(width=[16, 32])
    np.testing.assert_allclose(fast["estimate"], ref, rtol=1e-12)
    np.testing.assert_allclose(fast["lo"], slow["lo"], rtol=1e-9)
    np.testing.assert_allclose(fast["hi"], slow["hi"], rtol=1e-9)
    assert fast["n_seeds"].sel(width=16).values.tolist() == [5, 5, 4]  # the diverged member


def test_kernel_distance_per_layer_and_successive_gaps():
    rng = np.random.default_rng(2)
    k0 = rng.normal(size=(1, 1, 1, 2, 6, 6))
    scale = np.array([0.2, 0.05, 0.0])[:, None, None, None, None, None]
    k = k0 * (1 + scale) + 1e-3 * rng.normal(size=(3, 4, 2, 2, 6, 6))
    da = xr.DataArray(
        k,
        dims=(
            "width",
            "seed",
            "kernels_step",
            "kernels_layer",
            "kernels_point_i",
            "kernels_point_j",
        ),
        coords={"width": [32, 64, 128], "kernels_layer": ["l1", "l2"]},
    )
    ds = kernel_distance_to_widest(da, tol=0.1, n_boot=200)
    assert ds["verdict"].dims == ("width", "kernels_step", "kernels_layer")
    np.testing.assert_allclose(ds["estimate"].sel(width=32), 0.2, atol=5e-3)
    assert (ds["verdict"].sel(width=32) == "not consistent").all()
    assert (ds["verdict"].sel(width=64) == "consistent").all()
    gaps = successive_gap(da, over=("kernels_point_i", "kernels_point_j"), tol=0.1, n_boot=200)
    assert list(gaps["width_pair"].values) == ["32-64", "64-128"]
    np.testing.assert_allclose(gaps["estimate"].sel(width=32), 0.15 / 1.05, atol=5e-3)


def test_noise_only_curves_are_never_consistent():
    # no width effect at all, seed noise (sd 0.3 on a loss of 1) far above tol 0.05
    rng = np.random.default_rng(3)
    loss = _loss(1 + 0.3 * rng.normal(size=(5, 8, 40)))
    for ds in (loss_gap_to_widest(loss, n_boot=300), successive_gap(loss, n_boot=300)):
        assert not (ds["verdict"] == "consistent").any()
        assert (ds["verdict"] == "undetermined").mean() > 0.5
    logits = xr.DataArray(
        rng.normal(size=(4, 8, 3, 32, 1)),
        dims=("width", "seed", "test_step", "point", "output"),
        coords={"width": WIDTHS[:4]},
    )
    assert not (logit_distance_to_widest(logits, n_boot=300)["verdict"] == "consistent").any()


def test_all_nan_and_constant_inputs_are_undetermined():
    nan = _loss(np.full((3, 4, 5), np.nan))
    ds = loss_gap_to_widest(nan, n_boot=50)
    assert (ds["verdict"] == "undetermined").all() and (ds["reason"] == "too few seeds").all()
    const = _loss(np.ones((3, 4, 5)))  # identical constant curves, zero variance
    ds = loss_gap_to_widest(const, n_boot=50)
    np.testing.assert_array_equal(ds["estimate"], 0.0)  # the distance itself is exact ...
    assert (ds["reason"] == "no seed variation").all()  # ... but says nothing about seeds
    one_seed = _loss(np.random.default_rng(4).normal(1, 0.01, size=(3, 1, 5)))
    assert (loss_gap_to_widest(one_seed, n_boot=50)["reason"] == "too few seeds").all()
    zero = np.zeros((3, 4, 2, 8, 1))
    zero[:, :, 1] = np.random.default_rng(5).normal(size=(3, 4, 8, 1))
    zero[-1, :, 0] = [[[1.0]], [[-1.0]], [[1.0]], [[-1.0]]]  # widest mean exactly 0 at step 0
    da = xr.DataArray(zero, dims=("width", "seed", "test_step", "point", "output"))
    ds = logit_distance_to_widest(da.assign_coords(width=[16, 32, 64]), n_boot=50)
    assert (ds["reason"].isel(test_step=0) == "no seed variation").all()  # narrow: all 0
    da[:2, :, 0] = np.random.default_rng(6).normal(size=(2, 4, 8, 1))
    ds = logit_distance_to_widest(da.assign_coords(width=[16, 32, 64]), n_boot=50)
    assert (ds["reason"].isel(test_step=0) == "non-finite values").all()  # 0 reference


def test_diverged_seed_counts_and_verdicts():
    rng = np.random.default_rng(7)
    x = 1 + 0.001 * rng.normal(size=(2, 3, 6))
    x[0, :2, 3:] = np.nan  # two of three seeds of width 64 diverge at step 3
    ds = loss_gap_to_widest(_loss(x), n_boot=200)
    assert ds["n_seeds"].isel(width=0).values.tolist() == [3, 3, 3, 1, 1, 1]
    assert (ds["verdict"].isel(width=0, step=slice(0, 3)) == "consistent").all()
    assert (ds["reason"].isel(width=0, step=slice(3, None)) == "too few seeds").all()


def test_variance_slope_is_minus_one_when_variance_scales_as_one_over_width():
    rng = np.random.default_rng(8)
    n = np.array(WIDTHS, dtype=float)
    z = rng.normal(size=(5, 8, 2, 200, 1))
    logits = xr.DataArray(
        1.0 + z / np.sqrt(n)[:, None, None, None, None],
        dims=("width", "seed", "test_step", "point", "output"),
        coords={"width": WIDTHS},
    )
    ds = width_slope(logits, over=("point", "output"), expected=-1.0, tol=0.25, n_boot=300)
    assert ds["estimate"].dims == ("test_step",)
    np.testing.assert_allclose(ds["estimate"], -1.0, atol=0.1)
    assert ((ds["lo"] < -1) & (ds["hi"] > -1)).all()
    assert (ds["verdict"] == "consistent").all()
    wrong = width_slope(logits, over=("point", "output"), expected=-2.0, tol=0.25, n_boot=300)
    assert (wrong["verdict"] == "not consistent").all()
    bias = width_slope(logits, quantity="bias", over=("point", "output"), n_boot=100)
    assert np.isfinite(bias["estimate"]).all()
    with pytest.raises(AnalysisError, match="quantity"):
        width_slope(logits, quantity="skew", over=("point", "output"))


def test_mean_distance_absolute_and_plateau():
    loss = _loss([[[1.0, 3.0], [2.0, 3.0]], [[1.5, 1.0], [1.5, 1.0]]])
    ds = mean_distance(loss, [(64, 128)], relative=False, n_boot=100)
    np.testing.assert_allclose(ds["estimate"].sel(width=64), [0.0, 2.0])
    curve = _loss(np.broadcast_to(np.r_[np.full(8, 5.0), np.full(2, 1.0)], (2, 3, 10)).copy())
    curve[:, :, -2:] += np.array([0.0, 0.1, 0.2])[None, :, None]
    p = plateau(curve, fraction=0.2, n_boot=200)
    assert p.attrs["window"] == [8, 9]
    np.testing.assert_allclose(p["estimate"], 1.1)
    assert (p["lo"] >= 1.0).all() and (p["hi"] <= 1.2).all() and (p["lo"] < p["hi"]).all()


def test_one_width_is_refused():
    with pytest.raises(AnalysisError, match="at least 2"):
        loss_gap_to_widest(_loss(np.ones((1, 2, 3))))


def test_long_curves_are_split_without_changing_the_answer(monkeypatch):
    from widthwise.analysis import _resample

    rng = np.random.default_rng(9)
    loss = _loss(1 + 0.05 * rng.normal(size=(3, 4, 50)))
    whole = loss_gap_to_widest(loss, n_boot=100)
    slope = width_slope(loss, quantity="variance", n_boot=100)
    monkeypatch.setattr(_resample, "_INDEX_BUDGET", 100 * 3 * 4 * 7)  # 7 steps a piece
    xr.testing.assert_allclose(loss_gap_to_widest(loss, n_boot=100), whole)
    xr.testing.assert_allclose(width_slope(loss, quantity="variance", n_boot=100), slope)
