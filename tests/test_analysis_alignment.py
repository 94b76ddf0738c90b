"""Centered kernel-target alignment (Cortes et al. 2012; paper Appendix D, Fig. 14)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from widthwise.analysis import AnalysisError, kernel_target_alignment

pytestmark = pytest.mark.quick

DIMS = ("i", "j")


def _direct(k, y):
    """A(K, Y) written out: H K H and H YYᵀ H, Frobenius inner product and norms."""
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n
    kc, tc = h @ k @ h, h @ (y @ y.T) @ h
    return np.sum(kc * tc) / (np.linalg.norm(kc) * np.linalg.norm(tc))


def test_target_kernel_is_perfectly_aligned_and_identity_is_known():
    rng = np.random.default_rng(0)
    y = xr.DataArray(rng.normal(size=(8, 1)), dims=("point", "output"))
    yy = xr.DataArray(y.values @ y.values.T, dims=DIMS)
    assert float(kernel_target_alignment(yy, y, sample_dims=DIMS)) == pytest.approx(1.0)
    assert float(kernel_target_alignment(5 * yy, y, sample_dims=DIMS)) == pytest.approx(1.0)
    # ⟨H, H yyᵀ H⟩ / (|H| |H yyᵀ H|) = |y_c|² / (sqrt(n − 1) |y_c|²)
    eye = xr.DataArray(np.eye(8), dims=DIMS)
    assert float(kernel_target_alignment(eye, y, sample_dims=DIMS)) == pytest.approx(1 / np.sqrt(7))


def test_random_kernels_over_training_match_the_direct_formula():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 6, 4))  # (width, step, point, feature)
    k = np.einsum("wspf,wsqf->wspq", x, x)
    y = rng.normal(size=(6, 2))
    da = xr.DataArray(k, dims=("width", "entk_step", *DIMS), coords={"width": [8, 16]})
    out = kernel_target_alignment(da, xr.DataArray(y, dims=("point", "output")), sample_dims=DIMS)
    assert out.dims == ("width", "entk_step")
    expected = [[_direct(k[w, s], y) for s in range(3)] for w in range(2)]
    np.testing.assert_allclose(out.values, expected)


def test_labels_are_one_hot_and_point_output_kernels_flatten():
    rng = np.random.default_rng(2)
    labels = np.array([0, 2, 1, 2, 0])
    onehot = np.eye(3)[labels]
    x = rng.normal(size=(5, 4))
    k = xr.DataArray(x @ x.T, dims=DIMS)
    got = kernel_target_alignment(k, xr.DataArray(labels, dims="point"), sample_dims=DIMS)
    assert float(got) == pytest.approx(_direct(x @ x.T, onehot))
    # a kernel over (point, output) pairs against the flattened targets
    j = rng.normal(size=(5, 3, 7))
    kk = np.einsum("poa,qra->poqr", j, j)
    da = xr.DataArray(kk, dims=("point_i", "output_i", "point_j", "output_j"))
    y = xr.DataArray(onehot, dims=("point", "output"))
    out = kernel_target_alignment(
        da,
        y,
        sample_dims=(("point_i", "output_i"), ("point_j", "output_j")),
        target_dims=("point", "output"),
    )
    assert float(out) == pytest.approx(_direct(kk.reshape(15, 15), onehot.reshape(15, 1)))


def test_errors_teach():
    k = xr.DataArray(np.eye(4), dims=DIMS)
    y = xr.DataArray(np.ones((5, 1)), dims=("point", "output"))
    with pytest.raises(AnalysisError, match="select the kernel's points"):
        kernel_target_alignment(k, y, sample_dims=DIMS)
    with pytest.raises(AnalysisError, match="sample_dims"):
        kernel_target_alignment(k, y, sample_dims="i")


def test_size_one_row_dims_may_be_left_out_of_target_dims():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 4))
    k = xr.DataArray((x @ x.T)[:, None, :, None], dims=("p_i", "o_i", "p_j", "o_j"))
    y = rng.normal(size=(5, 1))
    got = kernel_target_alignment(
        k, xr.DataArray(y, dims=("point", "output")), sample_dims=(("p_i", "o_i"), ("p_j", "o_j"))
    )
    assert float(got) == pytest.approx(_direct(x @ x.T, y))
