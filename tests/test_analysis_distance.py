"""Scaled RMSE and relative Frobenius distance to the widest width (paper Fig. 3 d-f, 5 c/f)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from widthwise.analysis import (
    AnalysisError,
    relative_frobenius,
    relative_frobenius_to_widest,
    scaled_rmse,
    scaled_rmse_to_widest,
)

pytestmark = pytest.mark.quick

WIDTHS = [16, 64, 32]  # deliberately unsorted: the widest is found by coordinate


def _logits(scales=(1.5, 0.5, 1.0), seeds=3, seed=0):
    """Width n's logits are scales[n] × the widest's (same for every seed)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(seeds, 4, 6, 2))  # (seed, step, point, output)
    data = np.stack([s * base for s in scales])
    return xr.DataArray(
        data,
        dims=("width", "seed", "test_step", "point", "output"),
        coords={"width": WIDTHS, "test_step": [0, 5, 10, 15]},
    )


def test_widest_to_itself_is_zero_and_scaled_copy_is_known():
    d = scaled_rmse_to_widest(_logits())
    assert d.dims == ("width", "seed", "test_step")
    np.testing.assert_allclose(d.sel(width=64), 0.0)
    # the widest (64) holds 0.5 × base: width 16 is 3× it, width 32 is 2× it
    np.testing.assert_allclose(d.sel(width=16), abs(1.5 / 0.5 - 1), rtol=1e-12)
    np.testing.assert_allclose(d.sel(width=32), abs(1.0 / 0.5 - 1), rtol=1e-12)
    assert d.attrs["reference_width"] == 64


def test_ensemble_mode_means_seeds_first_and_skips_diverged():
    da = _logits()
    da[0, 1, 2:] = np.nan  # width 16, seed 1 diverged from the third test step
    d = scaled_rmse_to_widest(da, ensemble=True)
    assert d.dims == ("width", "test_step")
    assert np.isfinite(d).all()
    np.testing.assert_allclose(d.sel(width=16).isel(test_step=[0, 1]), 2.0, rtol=1e-12)
    base = da.sel(width=64).values / 0.5  # (seed, step, point, output)
    kept = 1.5 * base[[0, 2], 3].mean(0)  # width 16 without the diverged seed 1
    ref = 0.5 * base[:, 3].mean(0)
    expected = np.sqrt(((kept - ref) ** 2).mean() / (ref**2).mean())
    assert float(d.sel(width=16).isel(test_step=3)) == pytest.approx(expected)
    per_seed = scaled_rmse_to_widest(da)
    assert np.isnan(per_seed.sel(width=16, seed=1).isel(test_step=3))


def test_hand_computed_rmse_and_frobenius_agree():
    a = xr.DataArray([[1.0, 2.0], [3.0, 4.0]], dims=("i", "j"))
    b = xr.DataArray([[1.0, 0.0], [0.0, 1.0]], dims=("i", "j"))
    # RMS(a-b) = sqrt((0+4+9+9)/4), RMS(b) = sqrt(2/4)
    expected = np.sqrt(22 / 4) / np.sqrt(2 / 4)
    assert float(scaled_rmse(a, b, over=("i", "j"))) == pytest.approx(expected)
    assert float(relative_frobenius(a, b, over=("i", "j"))) == pytest.approx(expected)


def test_relative_frobenius_for_kernels_per_layer():
    rng = np.random.default_rng(1)
    k = rng.normal(size=(2, 3, 5, 5))
    da = xr.DataArray(
        np.stack([k, 2 * k]),
        dims=("width", "seed", "kernels_layer", "kernels_point_i", "kernels_point_j"),
        coords={"width": [8, 16]},
    )
    d = relative_frobenius_to_widest(da, over=("kernels_point_i", "kernels_point_j"))
    assert d.dims == ("width", "kernels_layer")
    np.testing.assert_allclose(d.sel(width=8), 0.5)
    np.testing.assert_allclose(d.sel(width=16), 0.0)


def test_errors_teach():
    da = _logits()
    with pytest.raises(AnalysisError, match=r"Dimensions \['foo'\] do not exist.*Expected one of"):
        scaled_rmse_to_widest(da, over=("foo",))
    with pytest.raises(AnalysisError, match="must not contain"):
        scaled_rmse_to_widest(da, over=("width", "point"))
    with pytest.raises(AnalysisError, match="DataArray"):
        scaled_rmse_to_widest(da.to_dataset(name="test_logits"))
