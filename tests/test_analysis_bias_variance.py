"""Bias/variance over initialization (Appendix F) and the ensemble-size curve (Appendix H)."""

from __future__ import annotations

from itertools import combinations
from math import exp, log

import numpy as np
import pytest
import xarray as xr

from widthwise.analysis import AnalysisError, bias_variance, ensemble_size_curve, probe_loss

pytestmark = pytest.mark.quick

NAN = np.nan


def _regression():
    """2 widths × 3 seeds × 2 points × 1 output; seed 2 of width 1 diverged (NaN)."""
    f = np.array(
        [
            [[2.0, 0.0], [0.0, 2.0], [NAN, NAN]],  # width 1
            [[1.0, 0.5], [1.0, -0.5], [1.0, 0.0]],  # width 2 (the widest)
        ]
    )[..., None]
    logits = xr.DataArray(
        f, dims=("width", "seed", "point", "output"), coords={"width": [1, 2], "seed": [0, 1, 2]}
    )
    target = xr.DataArray([[1.0], [0.0]], dims=("point", "output"))
    return logits, target


def test_regression_matches_the_hand_computation():
    logits, target = _regression()
    bv = bias_variance(logits, target)
    assert bv.attrs["loss"] == "mse" and bv.attrs["reference_width"] == 2
    # width 1 (seeds 0, 1): f̄ = [1, 1]
    #   single: seed 0 ((2-1)² + 0²)/2 = 0.5, seed 1 ((0-1)² + 2²)/2 = 2.5 -> 1.5
    #   ensemble: ((1-1)² + (1-0)²)/2 = 0.5; variance: ((1² + 1²)/2 + (1² + 1²)/2)/2 = 1
    #   bias: f̄_1 − f̄_2 = [0, 1] -> 0.5
    # width 2 (3 seeds): f̄ = [1, 0]; single (0.125 + 0.125 + 0)/3; ensemble 0
    expected = {
        "single_loss": [1.5, 0.25 / 3],
        "ensemble_loss": [0.5, 0.0],
        "variance": [1.0, 0.25 / 3],
        "bias": [0.5, 0.0],
        "variance_gap": [1.0, 0.25 / 3],
        "bias_gap": [0.5, 0.0],
        "members": [2, 3],
    }
    for name, values in expected.items():
        np.testing.assert_allclose(bv[name].values, values, err_msg=name, atol=1e-15)
    # mse decomposes exactly: single = ensemble + variance
    np.testing.assert_allclose(bv.single_loss, bv.ensemble_loss + bv.variance)


def test_cross_entropy_uses_ensemble_averaged_logits():
    # 2 widths × 2 seeds × 1 point × 2 classes, label 0
    f = np.array([[[[0.0, 0.0]], [[2.0, 0.0]]], [[[1.0, 0.0]], [[1.0, 0.0]]]])
    logits = xr.DataArray(f, dims=("width", "seed", "point", "output"), coords={"width": [8, 16]})
    labels = xr.DataArray([0], dims="point")
    bv = bias_variance(logits, labels)
    assert bv.attrs["loss"] == "cross_entropy"
    ce_1, ce_2 = log(2.0), log(1 + exp(-2.0))  # -log softmax(f)[0]
    ce_bar = log(1 + exp(-1.0))  # f̄ = [1, 0] at both widths
    np.testing.assert_allclose(bv.single_loss, [(ce_1 + ce_2) / 2, ce_bar])
    np.testing.assert_allclose(bv.ensemble_loss, [ce_bar, ce_bar])
    np.testing.assert_allclose(bv.variance, [0.5, 0.0])  # mean over seeds and classes
    np.testing.assert_allclose(bv.bias, [0.0, 0.0])
    np.testing.assert_allclose(probe_loss(logits, labels).isel(width=0), [ce_1, ce_2])


def test_ensemble_size_curve_by_hand():
    # one point, target 0, members f = 1, 2, 3 and a diverged fourth
    f = xr.DataArray(
        np.array([1.0, 2.0, 3.0, NAN])[None, :, None, None],
        dims=("width", "seed", "point", "output"),
        coords={"width": [4]},
    )
    y = xr.DataArray([[0.0]], dims=("point", "output"))
    curve = ensemble_size_curve(f, y)
    assert curve.dims == ("ensemble_size", "width")
    # k=1: (1+4+9)/3; k=2: pairs' means 1.5, 2, 2.5 -> (2.25+4+6.25)/3; k=3: 2² ; k=4: none left
    np.testing.assert_allclose(curve.sel(width=4).values, [14 / 3, 12.5 / 3, 4.0, NAN])


def test_ensemble_size_curve_mse_closed_form_equals_all_subsets():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(2, 5, 3, 4, 2))  # (width, seed, step, point, output)
    y = rng.normal(size=(4, 2))
    f[1, 2, 1:] = NAN  # width 1, seed 2 diverged after step 0
    logits = xr.DataArray(f, dims=("width", "seed", "test_step", "point", "output"))
    curve = ensemble_size_curve(logits, xr.DataArray(y, dims=("point", "output")))
    for w, t in [(0, 0), (0, 2), (1, 0), (1, 2)]:
        members = [s for s in range(5) if np.isfinite(f[w, s, t]).all()]
        for k in range(1, 6):
            got = float(curve.isel(width=w, test_step=t, ensemble_size=k - 1))
            if k > len(members):
                assert np.isnan(got)
                continue
            brute = [((f[w, list(c), t].mean(0) - y) ** 2).mean() for c in combinations(members, k)]
            assert got == pytest.approx(np.mean(brute))


def test_ensemble_size_curve_cross_entropy_samples_seeded_subsets():
    rng = np.random.default_rng(0)
    f = xr.DataArray(
        rng.normal(size=(2, 8, 3, 5, 4)),
        dims=("width", "seed", "test_step", "point", "output"),
        coords={"width": [8, 16]},
    )
    labels = xr.DataArray(rng.integers(0, 4, size=5), dims="point")
    a = ensemble_size_curve(f, labels, max_subsets=8, seed=3)
    xr.testing.assert_identical(a, ensemble_size_curve(f, labels, max_subsets=8, seed=3))
    bv = bias_variance(f, labels)
    # sizes 1 and E have ≤ max_subsets subsets (8 and 1): exact; size 2 has 28: sampled
    np.testing.assert_allclose(a.sel(ensemble_size=1), bv.single_loss.transpose(*a.dims[1:]))
    np.testing.assert_allclose(a.sel(ensemble_size=8), bv.ensemble_loss.transpose(*a.dims[1:]))
    other = ensemble_size_curve(f, labels, max_subsets=8, seed=4)
    assert not np.allclose(a.sel(ensemble_size=2), other.sel(ensemble_size=2))
    everything = ensemble_size_curve(f, labels, max_subsets=100)  # C(8, 2) = 28: all pairs
    x = f.isel(width=0, test_step=0).values
    pair_losses = []
    for c in combinations(range(8), 2):
        m = x[list(c)].mean(0)
        lse = np.log(np.exp(m).sum(-1))
        pair_losses.append((lse - m[np.arange(5), labels.values]).mean())
    assert float(everything.isel(width=0, test_step=0, ensemble_size=1)) == pytest.approx(
        np.mean(pair_losses)
    )


def test_ensemble_size_curve_cross_entropy_sampled_equals_the_same_subsets_by_hand():
    """A sampled size's loss is the mean CE over exactly the sampled subsets (both terms
    of the CE over the same subsets: an earlier version took the label term over all
    members, which biased k=3 of 8 seeds by -12% on real logits)."""
    from widthwise.analysis.bias_variance import _subsets

    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 6, 5)) * 3.0  # (seed, point, output): spread-out members
    labels = rng.integers(0, 5, size=6)
    curve = ensemble_size_curve(
        xr.DataArray(x, dims=("seed", "point", "output")),
        xr.DataArray(labels, dims="point"),
        max_subsets=4,
        seed=7,
    )
    for k in (2, 3, 5):  # C(8, k) > 4: sampled
        losses = []
        for weights in _subsets(8, k, 4, 7):
            m = x[weights > 0].mean(0)  # (point, output)
            lse = np.log(np.exp(m).sum(-1))
            losses.append((lse - m[np.arange(6), labels]).mean())
        assert float(curve.sel(ensemble_size=k)) == pytest.approx(np.mean(losses), rel=1e-12)


def test_errors_teach():
    logits, target = _regression()
    with pytest.raises(AnalysisError, match="integer class labels"):
        bias_variance(logits, target, loss="cross_entropy")
    with pytest.raises(AnalysisError, match="Dimensions"):
        bias_variance(logits.rename(point="sample"), target)


def test_probe_loss_reproduces_the_logged_test_loss_of_a_real_study(tiny_spec):
    import widthwise

    path = widthwise.run(widthwise.load_spec(tiny_spec(widths=[8, 16], steps=5)))
    ds = widthwise.open_study(path)
    np.testing.assert_allclose(probe_loss(ds.test_logits, ds.test_target), ds.test_loss, rtol=1e-5)
    bv = bias_variance(ds.test_logits, ds.test_target)
    assert bv.single_loss.dims == ("width", "test_step")
    np.testing.assert_allclose(bv.single_loss, ds.test_loss.mean("seed"), rtol=1e-5)
