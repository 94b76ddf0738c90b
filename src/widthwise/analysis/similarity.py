"""Representation similarity across widths: CKA, histogram and attention distances.

Paper Section 2 ("Convergence of representations"), Figure 5 b/c/e/f and Figure 12:
feature kernels, preactivation distributions and attention maps of every width
compared with the widest. Kernel relative Frobenius distance lives in
:mod:`widthwise.analysis.distance` (:func:`relative_frobenius_to_widest`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
import xarray as xr

from widthwise.analysis._checks import (
    AnalysisError,
    Dims,
    as_dims,
    member_mean,
    plain,
    reference_of,
    require_dataarray,
    require_dims,
    select_widest,
    widest,
)
from widthwise.analysis._kernels import apply_on_matrices, center, check_kernel, split_sample_dims

# ---------------------------------------------------------------- CKA


def _hsic_biased(k: np.ndarray, g: np.ndarray) -> np.ndarray:
    """tr(K H G H) / (n − 1)² (Gretton et al. 2005), batched over leading axes."""
    n = k.shape[-1]
    return (center(k) * center(g)).sum(axis=(-2, -1)) / (n - 1) ** 2


def _hsic_unbiased(k: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Unbiased HSIC of Song et al. (2012), Eq. 5: a U-statistic; needs n ≥ 4."""
    n = k.shape[-1]
    eye = np.eye(n, dtype=bool)
    kt = np.where(eye, 0.0, k)
    gt = np.where(eye, 0.0, g)
    trace = np.einsum("...ij,...ji->...", kt, gt)
    sums = kt.sum(axis=(-2, -1)) * gt.sum(axis=(-2, -1)) / ((n - 1) * (n - 2))
    cross = np.einsum("...j,...j->...", kt.sum(-2), gt.sum(-1)) * 2 / (n - 2)
    return (trace + sums - cross) / (n * (n - 3))


def _cka(k: np.ndarray, g: np.ndarray, unbiased: bool) -> np.ndarray:
    h = _hsic_unbiased if unbiased else _hsic_biased
    with np.errstate(invalid="ignore", divide="ignore"):
        den = h(k, k) * h(g, g)
        return np.where(den > 0, h(k, g) / np.sqrt(np.where(den > 0, den, 1.0)), np.nan)


def cka(
    a: xr.DataArray, b: xr.DataArray, *, sample_dims: Sequence[Dims], unbiased: bool = False
) -> xr.DataArray:
    """Centered kernel alignment HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) (Kornblith et al. 2019).

    ``a`` and ``b`` are kernels (Gram matrices) over ``sample_dims`` = (rows, cols),
    e.g. ``("kernels_point_i", "kernels_point_j")``; each side may be a tuple of dims,
    flattened.
    Other dims broadcast by name. ``unbiased=False``: HSIC = tr(K H L H)/(n−1)² with
    H = I − 11ᵀ/n. ``unbiased=True``: the U-statistic HSIC of Song et al. (2012) (as in
    Nguyen et al. 2021), unbiased for finite n (n ≥ 4); it can be slightly negative and
    is NaN where HSIC(K, K) ≤ 0. CKA is 1 for K = L, invariant to K → sK (s > 0).
    Dimensionless; dims: broadcast of the non-sample dims.
    """
    rows, cols = split_sample_dims(sample_dims)
    for name, k in (("a", a), ("b", b)):
        check_kernel(require_dataarray(k, name), rows, cols, name)
    n = int(np.prod([a.sizes[d] for d in rows]))
    if unbiased and n < 4:
        raise AnalysisError(f"unbiased HSIC needs at least 4 samples; the kernels have {n}.")
    out = apply_on_matrices(_cka, a, b, rows=rows, cols=cols, unbiased=bool(unbiased))
    out.name = "cka"
    out.attrs = {
        "description": "centered kernel alignment",
        "units": "dimensionless",
        "hsic": "unbiased (Song et al. 2012)" if unbiased else "biased",
    }
    return out


def cka_to_widest(
    da: xr.DataArray,
    *,
    sample_dims: Sequence[Dims],
    dim: str = "width",
    seed_dim: str = "seed",
    ensemble: bool = True,
    unbiased: bool = False,
) -> xr.DataArray:
    """CKA between each width's kernel and the widest width's (paper Fig. 5 c, Fig. 12).

    ``da`` e.g. ``ds.feature_kernel`` (width, seed, kernels_step, kernels_layer,
    kernels_point_i, kernels_point_j) with ``sample_dims=("kernels_point_i",
    "kernels_point_j")``. ``ensemble=True``: seed-mean kernels (members with NaN left
    out) are compared, dims (width, step, layer);
    ``False``: seed s vs seed s of the widest, dims keep seed. The widest's own CKA is 1.
    """
    rows, cols = split_sample_dims(sample_dims)
    da = require_dataarray(da, "da")
    require_dims(da, dim, "da")
    arr, ref = reference_of(
        da, dim=dim, seed_dim=seed_dim, ensemble=ensemble, sample_dims=(*rows, *cols)
    )
    out = cka(arr, ref, sample_dims=(rows, cols), unbiased=unbiased)
    out.attrs.update(reference_width=plain(widest(da, dim)), ensemble=int(bool(ensemble)))
    return out


# ---------------------------------------------------------------- histograms


def _edges_array(edges, bin_dim: str, edge_dim: str | None, hist: xr.DataArray) -> tuple:
    if not isinstance(edges, xr.DataArray):
        e = np.asarray(edges, dtype=np.float64)
        if e.ndim != 1:
            raise AnalysisError("Pass 'edges' as a 1-d sequence or a DataArray with an edge dim.")
        edges, edge_dim = xr.DataArray(e, dims="_edge"), "_edge"
    elif edge_dim is None:
        extra = [d for d in edges.dims if d not in hist.dims]
        if len(extra) != 1:
            raise AnalysisError(
                f"Cannot tell the edge dim of 'edges' (dims {list(edges.dims)}); "
                "pass edge_dim=... naming it."
            )
        edge_dim = extra[0]
    require_dims(edges, edge_dim, "edges")
    if edges.sizes[edge_dim] != hist.sizes[bin_dim] + 1:
        raise AnalysisError(
            f"{hist.sizes[bin_dim]} bins along {bin_dim!r} need {hist.sizes[bin_dim] + 1} "
            f"edges; 'edges' has {edges.sizes[edge_dim]} along {edge_dim!r}."
        )
    return edges, edge_dim


def _normalize(h: xr.DataArray, bin_dim: str) -> xr.DataArray:
    total = h.sum(bin_dim, skipna=False)
    return h / total.where(total > 0)


def _w1(p: np.ndarray, q: np.ndarray, edges: np.ndarray) -> np.ndarray:
    centers = (edges[..., 1:] + edges[..., :-1]) / 2
    gaps = np.diff(centers, axis=-1)  # (..., bins − 1)
    diff = np.abs(np.cumsum(p, -1) - np.cumsum(q, -1))[..., :-1]
    return (diff * gaps).sum(-1)


def wasserstein1(
    a: xr.DataArray,
    b: xr.DataArray,
    *,
    bin_dim: str,
    edges,
    edge_dim: str | None = None,
) -> xr.DataArray:
    """Wasserstein-1 distance between histograms on shared bin edges (paper Fig. 5 a/d).

    ``a`` and ``b`` hold counts or densities along ``bin_dim`` (each normalized to total
    mass 1; an empty histogram gives NaN). The mass of bin i sits at its centre c_i, so
    W1 = Σ_i |CDF_a(i) − CDF_b(i)| · (c_{i+1} − c_i) — for equal bins, Σ |ΔCDF| × bin
    width; a histogram shifted by k bins is k bin widths away. ``edges``: a 1-d sequence
    of n_bins + 1 edges, or a DataArray (its edge dim ``edge_dim``, other dims such as
    layer broadcast). Units: those of the binned quantity (e.g. preactivation).
    """
    for name, h in (("a", a), ("b", b)):
        require_dims(require_dataarray(h, name), bin_dim, name)
    edges, edge_dim = _edges_array(edges, bin_dim, edge_dim, a)
    out = xr.apply_ufunc(
        _w1,
        _normalize(a, bin_dim),
        _normalize(b, bin_dim),
        edges.astype(np.float64),
        input_core_dims=[[bin_dim], [bin_dim], [edge_dim]],
    )
    out.name = "wasserstein1"
    out.attrs = {
        "description": "Wasserstein-1 distance of normalized histograms",
        "units": "units of the binned quantity",
    }
    return out


def wasserstein1_to_widest(
    hist: xr.DataArray,
    *,
    bin_dim: str,
    edges,
    edge_dim: str | None = None,
    dim: str = "width",
    seed_dim: str = "seed",
    ensemble: bool = True,
) -> xr.DataArray:
    """W1 between each width's preactivation histogram and the widest width's.

    ``ensemble=True``: every member's histogram is normalized, then averaged over seeds
    (the pooled distribution; members with NaN left out). ``False``: seed vs seed.
    Dims: ``hist``'s minus ``bin_dim`` (and ``seed_dim`` when ensembled).
    """
    hist = require_dataarray(hist, "hist")
    require_dims(hist, (dim, bin_dim), "hist")
    p = _normalize(hist, bin_dim)
    if ensemble:
        p = member_mean(p, seed_dim, (bin_dim,))
    out = wasserstein1(p, select_widest(p, dim), bin_dim=bin_dim, edges=edges, edge_dim=edge_dim)
    out.attrs.update(reference_width=plain(widest(hist, dim)), ensemble=int(bool(ensemble)))
    return out


# ---------------------------------------------------------------- attention maps

AttentionMetric = Literal["tv", "frobenius"]


def attention_distance(
    a: xr.DataArray,
    b: xr.DataArray,
    *,
    key_dim: str,
    query_dims: str | Iterable[str],
    metric: AttentionMetric = "tv",
) -> xr.DataArray:
    """Distance between attention maps whose rows (over ``key_dim``) are distributions.

    ``metric="tv"``: total variation ½ Σ_key |a − b| of every row, averaged over
    ``query_dims`` (in [0, 1]). ``metric="frobenius"``: ‖a − b‖_F / ‖b‖_F over
    (query_dims, key_dim). Heads, layers and steps not listed are kept. Dimensionless.
    """
    q = as_dims(query_dims)
    for name, x in (("a", a), ("b", b)):
        require_dims(require_dataarray(x, name), (key_dim, *q), name)
    if metric == "tv":
        out = (0.5 * abs(a - b).sum(key_dim, skipna=False)).mean(q, skipna=False)
    elif metric == "frobenius":
        over = (*q, key_dim)
        out = np.sqrt(((a - b) ** 2).sum(over, skipna=False) / (b**2).sum(over, skipna=False))
    else:
        raise AnalysisError(f"The 'metric' parameter must be 'tv' or 'frobenius'. Got {metric!r}.")
    out.name = f"attention_{metric}"
    out.attrs = {"description": f"attention-map distance ({metric})", "units": "dimensionless"}
    return out


def attention_distance_to_widest(
    att: xr.DataArray,
    *,
    key_dim: str,
    query_dims: str | Iterable[str],
    metric: AttentionMetric = "tv",
    dim: str = "width",
    seed_dim: str = "seed",
    ensemble: bool = True,
) -> xr.DataArray:
    """Attention-map distance of each width to the widest (paper Fig. 1d, Fig. 5 e/f).

    ``ensemble=True`` compares seed-mean maps (rows stay distributions), ``False`` seed
    vs seed. Dims: ``att``'s minus (key, query) dims (and seed when ensembled).
    """
    att = require_dataarray(att, "att")
    q = as_dims(query_dims)
    require_dims(att, (dim, key_dim, *q), "att")
    arr, ref = reference_of(
        att, dim=dim, seed_dim=seed_dim, ensemble=ensemble, sample_dims=(*q, key_dim)
    )
    out = attention_distance(arr, ref, key_dim=key_dim, query_dims=q, metric=metric)
    out.attrs.update(reference_width=plain(widest(att, dim)), ensemble=int(bool(ensemble)))
    return out
