"""CKA (biased and unbiased HSIC), Wasserstein-1 of histograms, attention-map distances."""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pytest
import xarray as xr
from scipy.stats import wasserstein_distance

from widthwise.analysis import (
    AnalysisError,
    attention_distance,
    attention_distance_to_widest,
    cka,
    cka_to_widest,
    wasserstein1,
    wasserstein1_to_widest,
)

pytestmark = pytest.mark.quick

DIMS = ("kernels_point_i", "kernels_point_j")


def _gram(seed, n=7, d=3):
    x = np.random.default_rng(seed).normal(size=(n, d))
    return xr.DataArray(x @ x.T, dims=DIMS)


def _hsic_u_loops(k, l):  # noqa: E741
    """Song et al. (2012) HSIC as the U-statistic of its definition, by explicit loops."""
    n = len(k)
    t2 = sum(k[i, j] * l[i, j] for i, j in permutations(range(n), 2)) / (n * (n - 1))
    t3 = sum(k[i, j] * l[i, q] for i, j, q in permutations(range(n), 3)) / (n * (n - 1) * (n - 2))
    t4 = sum(k[i, j] * l[q, r] for i, j, q, r in permutations(range(n), 4)) / (
        n * (n - 1) * (n - 2) * (n - 3)
    )
    return t2 + t4 - 2 * t3


def test_cka_with_itself_is_one_and_scale_invariant():
    k, l = _gram(0), _gram(1)  # noqa: E741
    for unbiased in (False, True):
        assert float(cka(k, k, sample_dims=DIMS, unbiased=unbiased)) == pytest.approx(1.0)
        base = float(cka(k, l, sample_dims=DIMS, unbiased=unbiased))
        scaled = float(cka(3.7 * k, 0.2 * l, sample_dims=DIMS, unbiased=unbiased))
        assert scaled == pytest.approx(base)
        assert float(cka(l, k, sample_dims=DIMS, unbiased=unbiased)) == pytest.approx(base)
    assert 0 < float(cka(k, l, sample_dims=DIMS)) < 1


def test_unbiased_cka_matches_the_u_statistic_by_loops():
    k, l = _gram(2).values, _gram(3).values  # noqa: E741
    expected = _hsic_u_loops(k, l) / np.sqrt(_hsic_u_loops(k, k) * _hsic_u_loops(l, l))
    got = cka(
        xr.DataArray(k, dims=DIMS), xr.DataArray(l, dims=DIMS), sample_dims=DIMS, unbiased=True
    )
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_biased_cka_matches_the_linear_cka_of_features():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(9, 4)), rng.normal(size=(9, 6))
    xc, yc = x - x.mean(0), y - y.mean(0)
    # linear CKA (Kornblith et al. 2019, Eq. 5): |Yᵀ X|²_F / (|Xᵀ X|_F |Yᵀ Y|_F)
    expected = np.linalg.norm(yc.T @ xc) ** 2 / (
        np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)
    )
    got = cka(xr.DataArray(x @ x.T, dims=DIMS), xr.DataArray(y @ y.T, dims=DIMS), sample_dims=DIMS)
    assert float(got) == pytest.approx(expected)


def test_cka_to_widest_per_layer_over_training():
    grams = np.stack([_gram(s).values for s in range(4)]).reshape(2, 2, 7, 7)  # (width, layer)
    da = xr.DataArray(
        np.broadcast_to(grams[:, None, None], (2, 3, 5, 2, 7, 7)).copy(),
        dims=("width", "seed", "kernels_step", "layer", *DIMS),
        coords={"width": [32, 64]},
    )
    da[0, 1] = np.nan  # a diverged member is left out of the ensemble
    out = cka_to_widest(da, sample_dims=DIMS)
    assert out.dims == ("width", "kernels_step", "layer")
    np.testing.assert_allclose(out.sel(width=64), 1.0)
    direct = cka(
        xr.DataArray(grams[0], dims=("layer", *DIMS)),
        xr.DataArray(grams[1], dims=("layer", *DIMS)),
        sample_dims=DIMS,
    )
    np.testing.assert_allclose(out.sel(width=32).isel(kernels_step=0), direct)
    per_seed = cka_to_widest(da, sample_dims=DIMS, ensemble=False)
    assert per_seed.dims == ("width", "seed", "kernels_step", "layer")
    assert np.isnan(per_seed.sel(width=32, seed=1)).all()


def test_w1_of_shifted_histograms_is_the_shift():
    edges = np.linspace(-2, 2, 21)  # bin width 0.2
    counts = np.zeros(20)
    counts[3:7] = [1, 4, 2, 3]
    a = xr.DataArray(counts, dims="bin")
    for k in (0, 1, 5):
        b = xr.DataArray(np.roll(counts, k) * 7.0, dims="bin")  # normalization irrelevant
        assert float(wasserstein1(a, b, bin_dim="bin", edges=edges)) == pytest.approx(0.2 * k)


def test_w1_matches_scipy_on_unequal_bins():
    rng = np.random.default_rng(5)
    edges = np.cumsum(rng.uniform(0.1, 1.0, size=11))
    p, q = rng.uniform(size=10), rng.uniform(size=10)
    centers = (edges[1:] + edges[:-1]) / 2
    expected = wasserstein_distance(centers, centers, p, q)
    got = wasserstein1(
        xr.DataArray(p, dims="bin"), xr.DataArray(q, dims="bin"), bin_dim="bin", edges=edges
    )
    assert float(got) == pytest.approx(expected)


def test_w1_to_widest_with_per_layer_edges():
    edges = xr.DataArray(np.stack([np.arange(6.0), 10 * np.arange(6.0)]), dims=("layer", "edge"))
    h = np.zeros((2, 2, 2, 5))  # (width, seed, layer, bin)
    h[0, :, :, 1] = 1  # width 8: all mass in bin 1
    h[1, :, :, 3] = 1  # width 16: all mass in bin 3
    da = xr.DataArray(h, dims=("width", "seed", "layer", "bin"), coords={"width": [8, 16]})
    out = wasserstein1_to_widest(da, bin_dim="bin", edges=edges)
    assert out.dims == ("width", "layer")
    np.testing.assert_allclose(out.sel(width=8), [2.0, 20.0])
    np.testing.assert_allclose(out.sel(width=16), [0.0, 0.0])
    with pytest.raises(AnalysisError, match="edges"):
        wasserstein1(da, da, bin_dim="bin", edges=np.arange(5.0))


def test_attention_distances():
    eye = np.eye(4)
    shifted = np.roll(eye, 1, axis=1)
    uniform = np.full((4, 4), 0.25)
    a = xr.DataArray(eye, dims=("query", "key"))
    kw = {"key_dim": "key", "query_dims": "query"}
    assert float(attention_distance(a, a, **kw)) == 0.0
    assert float(attention_distance(a, a.copy(data=shifted), **kw)) == pytest.approx(1.0)
    assert float(attention_distance(a, a.copy(data=uniform), **kw)) == pytest.approx(0.75)
    fro = attention_distance(a, a.copy(data=uniform), metric="frobenius", **kw)
    assert float(fro) == pytest.approx(np.sqrt(12 * 0.0625 + 4 * 0.5625) / np.sqrt(1.0))
    att = xr.DataArray(
        np.stack([eye, uniform])[:, None, None].repeat(2, 1).repeat(3, 2),
        dims=("width", "seed", "head", "query", "key"),
        coords={"width": [64, 128]},
    )
    out = attention_distance_to_widest(att, **kw)
    assert out.dims == ("width", "head")
    np.testing.assert_allclose(out.sel(width=64), 0.75)
    with pytest.raises(AnalysisError, match="metric"):
        attention_distance(a, a, metric="kl", **kw)
