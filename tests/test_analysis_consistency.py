"""Successive-width differences and the consistency verdict (paper Section 2, Fig. 4)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from widthwise.analysis import AnalysisError, consistency_verdict, successive_differences

pytestmark = pytest.mark.quick

WIDTHS = [8, 16, 32, 64, 128]


def _diffs(values, relative=False):
    """Hand-made successive differences labelled by the narrower width of each pair."""
    d = xr.DataArray(np.asarray(values, dtype=float), dims="width", coords={"width": WIDTHS[:-1]})
    return d.assign_attrs(relative=int(relative), norm="rms")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.5, 0.2, 0.05, 0.01], 32.0),  # decreasing: first pair under 0.1 is 32-64
        ([0.05, 0.2, 0.05, 0.01], 32.0),  # an early small pair does not count
        ([0.01, 0.02, 0.03, 0.04], 8.0),  # all within: consistent from the narrowest
        ([0.5, 0.2, 0.05, 0.2], np.nan),  # the widest pair exceeds tol: never
        ([0.5, 0.05, np.nan, 0.01], 64.0),  # a NaN difference counts as exceeding
    ],
)
def test_verdict_picks_the_right_width(values, expected):
    v = consistency_verdict(_diffs(values), tol=0.1)
    np.testing.assert_equal(float(v), expected)
    assert v.attrs["tol"] == 0.1 and v.attrs["relative"] == 0


def test_verdict_per_step_and_on_a_dataset():
    per_step = xr.concat(
        [_diffs([0.5, 0.2, 0.05, 0.01]), _diffs([0.5, 0.5, 0.5, 0.05])],
        dim=xr.DataArray([0, 10], dims="step"),
    )
    v = consistency_verdict(per_step, tol=0.1)
    np.testing.assert_equal(v.values, [32.0, 64.0])
    ds = xr.Dataset({"loss": per_step, "logits": per_step * 10})
    out = consistency_verdict(ds, tol=0.1)
    np.testing.assert_equal(out["logits"].values, [64.0, np.nan])  # 10 × 0.01 = 0.1 <= tol


def test_successive_differences_of_a_power_law_loss():
    n = np.array(WIDTHS, dtype=float)
    steps = np.arange(3)
    loss = xr.DataArray(
        (1.0 / n)[:, None, None] * (1 + steps)[None, None, :] * np.ones((1, 2, 1)),
        dims=("width", "seed", "step"),
        coords={"width": WIDTHS, "step": steps},
    )
    d = successive_differences(loss[::-1])  # order of the input does not matter
    assert d.dims == ("width", "seed", "step")
    assert list(d.width.values) == WIDTHS[:-1]
    assert list(d.width_wider.values) == WIDTHS[1:]
    assert d.width_pair.values[0] == "8-16"
    # |1/(2n) − 1/n| (1 + step) = (1 + step)/(2n)
    expected = (1 + steps)[None, :] / (2 * n[:-1, None])
    np.testing.assert_allclose(d.isel(seed=0).values, expected)
    rel = successive_differences(loss, relative=True, ensemble=True)
    np.testing.assert_allclose(rel.values, 1.0)  # |q(2n) − q(n)| / q(2n) = 1
    assert rel.dims == ("width", "step")
    v = consistency_verdict(rel, tol=0.5)
    assert v.attrs["relative"] == 1 and np.isnan(v).all()


def test_successive_differences_of_logits_use_rms_over_sample_dims():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 3))
    da = xr.DataArray(
        np.stack([base, base + 2.0, base + 2.5]),
        dims=("width", "point", "output"),
        coords={"width": [16, 32, 64]},
    )
    d = successive_differences(da, over=("point", "output"))
    np.testing.assert_allclose(d.values, [2.0, 0.5])
    fro = successive_differences(da, over=("point", "output"), norm="fro")
    np.testing.assert_allclose(fro.values, [2.0 * np.sqrt(12), 0.5 * np.sqrt(12)])


def test_errors_teach():
    with pytest.raises(AnalysisError, match="tol"):
        consistency_verdict(_diffs([0.1, 0.1, 0.1, 0.1]), tol=-1)
    with pytest.raises(AnalysisError, match="Dimensions"):
        successive_differences(_diffs([1, 2, 3, 4]), over="point")
