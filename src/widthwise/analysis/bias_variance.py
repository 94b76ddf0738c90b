"""Bias and variance over initialization (paper Section 3.1, Appendix F, Appendix H).

With E seeds at width n, f̄_n = mean over seeds of the logits f_n,s (Appendix F,
Eq. 8). The variance of width n is the mean over seeds of |f_n,s − f̄_n|²; its bias is
measured against the widest width's ensemble f̄_widest, the infinite-width proxy. In
loss space (Section 3.1, Fig. 7): the expected single-network loss, the loss of the
ensemble-averaged logits (for cross-entropy too: logits are averaged, not
probabilities), and their gaps.
"""

from __future__ import annotations

from itertools import combinations
from math import comb
from typing import Literal

import numpy as np
import xarray as xr

from widthwise.analysis._checks import (
    AnalysisError,
    alive_members,
    plain,
    require_dataarray,
    require_dims,
    select_widest,
    widest,
)

LossKind = Literal["mse", "cross_entropy"]


def _infer_loss(target: xr.DataArray, output_dim: str, loss: LossKind | None) -> LossKind:
    if loss is None:
        loss = "mse" if output_dim in target.dims else "cross_entropy"
    if loss not in ("mse", "cross_entropy"):
        raise AnalysisError(
            f"The 'loss' parameter must be 'mse' or 'cross_entropy'. Got {loss!r} instead."
        )
    if loss == "cross_entropy" and not np.issubdtype(target.dtype, np.integer):
        raise AnalysisError(
            "cross_entropy needs integer class labels (dims (point,), e.g. ds['test_label']); "
            f"got dtype {target.dtype}. For regression pass ds['test_target'] with loss='mse'."
        )
    return loss


def probe_loss(
    logits: xr.DataArray,
    target: xr.DataArray,
    *,
    loss: LossKind | None = None,
    point_dim: str = "point",
    output_dim: str = "output",
) -> xr.DataArray:
    """Loss of ``logits`` on the probe set, averaged over points, as widthwise trains it.

    ``mse``: mean over points and outputs of (f − y)² (no ½), ``target`` (point, output).
    ``cross_entropy``: mean over points of −log softmax(f)[label], ``target`` (point,)
    integer labels. ``loss=None`` infers it: a target with ``output_dim`` is regression.
    Dims: ``logits``' minus (point, output). Units: loss.
    """
    logits = require_dataarray(logits, "logits")
    require_dims(logits, (point_dim, output_dim), "logits")
    require_dims(target, point_dim, "target")
    kind = _infer_loss(target, output_dim, loss)
    if kind == "mse":
        return ((logits - target) ** 2).mean((point_dim, output_dim), skipna=False)
    lse = xr.apply_ufunc(_logsumexp, logits, input_core_dims=[[output_dim]])
    picked = logits.isel({output_dim: target.astype(np.int64)}, drop=True)
    return (lse - picked).mean(point_dim, skipna=False)


def bias_variance(
    logits: xr.DataArray,
    target: xr.DataArray,
    *,
    loss: LossKind | None = None,
    dim: str = "width",
    seed_dim: str = "seed",
    point_dim: str = "point",
    output_dim: str = "output",
) -> xr.Dataset:
    """Bias/variance decomposition over initialization seeds (Appendix F; Fig. 7, 8).

    ``logits`` (width, seed, [step,] point, output), e.g. ``ds.test_logits``;
    ``target`` ``ds.test_target`` (point, output) for mse or ``ds.test_label`` (point,)
    for cross-entropy. Members with a NaN anywhere in their (point, output) logits at a
    step (diverged ones) are left out of every mean at that step; ``members`` counts
    those kept. Returns a Dataset with dims (width, [step]):

    - ``single_loss``: mean over kept seeds of each network's loss.
    - ``ensemble_loss``: loss of the ensemble-averaged logits f̄_n.
    - ``variance``: mean over seeds, points and outputs of (f_n,s − f̄_n)² (Eq. 10; the
      squared norm over outputs divided by their number, identical for one output).
    - ``bias``: mean over points and outputs of (f̄_n − f̄_widest)² (Eq. 9 with the
      widest ensemble as the infinite-width proxy; 0 at the widest).
    - ``variance_gap`` = single_loss − ensemble_loss (what ensembling removes) and
      ``bias_gap`` = ensemble_loss − ensemble_loss(widest) (Section 3.1's loss-space
      bias of narrower width).
    - ``members``: number of seeds kept.

    For mse the decomposition is exact: ``single_loss = ensemble_loss + variance``
    (both use 1/E, not 1/(E−1)). Units: loss (variance/bias: squared logit).
    """
    logits = require_dataarray(logits, "logits")
    require_dims(logits, (dim, seed_dim, point_dim, output_dim), "logits")
    kind = _infer_loss(target, output_dim, loss)
    sample = (point_dim, output_dim)
    alive = alive_members(logits, sample)
    f = logits.astype(np.float64).where(alive)
    fbar = f.mean(seed_dim, skipna=True)
    members = alive.sum(seed_dim)
    single = probe_loss(f, target, loss=kind, point_dim=point_dim, output_dim=output_dim)
    single = single.mean(seed_dim, skipna=True)
    ens = probe_loss(fbar, target, loss=kind, point_dim=point_dim, output_dim=output_dim)
    variance = ((f - fbar) ** 2).mean(sample, skipna=False).mean(seed_dim, skipna=True)
    ref = select_widest(fbar, dim)
    bias = ((fbar - ref) ** 2).mean(sample, skipna=False)
    units = {"units": "loss"}
    ds = xr.Dataset(
        {
            "single_loss": single.assign_attrs(description="mean single-network loss", **units),
            "ensemble_loss": ens.assign_attrs(
                description="loss of the ensemble-averaged logits", **units
            ),
            "variance": variance.assign_attrs(
                description="mean over seeds, points, outputs of (f - f_bar)^2",
                units="logit^2",
            ),
            "bias": bias.assign_attrs(
                description="mean over points, outputs of (f_bar - f_bar_widest)^2",
                units="logit^2",
            ),
            "variance_gap": (single - ens).assign_attrs(
                description="single_loss - ensemble_loss", **units
            ),
            "bias_gap": (ens - select_widest(ens, dim)).assign_attrs(
                description="ensemble_loss - ensemble_loss of the widest width", **units
            ),
            "members": members.assign_attrs(description="seeds kept (not diverged)"),
        }
    )
    ds.attrs = {"loss": kind, "reference_width": plain(widest(logits, dim))}
    return ds


def _logsumexp(f: np.ndarray) -> np.ndarray:
    """log Σ exp over the last axis, stable; NaN propagates (scipy's is slower here)."""
    m = np.max(f, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.log(np.exp(f - m).sum(-1)) + m[..., 0]


def _loss_np(f: np.ndarray, target: np.ndarray, kind: LossKind) -> np.ndarray:
    """f (..., point, output) -> loss (...)."""
    if kind == "mse":
        return ((f - target) ** 2).mean(axis=(-2, -1))
    idx = np.broadcast_to(target[:, None], (*f.shape[:-1], 1))
    picked = np.take_along_axis(f, idx, axis=-1)[..., 0]
    return (_logsumexp(f) - picked).mean(-1)


def _subsets(n: int, k: int, max_subsets: int, seed: int) -> np.ndarray:
    """(S, n) averaging weights of k-subsets of n members: all of them or a seeded sample."""
    if comb(n, k) <= max_subsets:
        chosen = [list(c) for c in combinations(range(n), k)]
    else:
        rng = np.random.default_rng([seed, k, n])
        chosen = [rng.choice(n, size=k, replace=False) for _ in range(max_subsets)]
    w = np.zeros((len(chosen), n))
    for i, c in enumerate(chosen):
        w[i, c] = 1.0 / k
    return w


def _curve_mse(f: np.ndarray, target: np.ndarray) -> np.ndarray:
    """f (B, n, P, O) -> (n, B): exact mean over all k-subsets of the subset-mean mse.

    Sampling k of n without replacement, E_S (f̄_S − y)² = (f̄ − y)² + v (n − k)/(k (n − 1))
    with v = mean over members of (f − f̄)² (the finite-population correction).
    """
    n = f.shape[1]
    fbar = f.mean(1)
    full = ((fbar - target) ** 2).mean(axis=(-2, -1))
    if n == 1:
        return full[None]
    v = ((f - fbar[:, None]) ** 2).mean(axis=(1, 2, 3))
    k = np.arange(1, n + 1)[:, None]
    return full[None] + v[None] * (n - k) / (k * (n - 1))


def _curve_sampled(f, labels, max_subsets, seed) -> np.ndarray:
    """f (B, n, P, O) -> (n, B): mean over (sampled) k-subsets of the subset-mean CE loss.

    The label logit is linear in the members, so only log Σ exp needs each subset's mean;
    subset means are one matrix product of the (S, n) weights with the members.
    """
    b, n, p, o = f.shape
    members = np.ascontiguousarray(f.transpose(1, 0, 2, 3)).reshape(n, -1)  # (n, B·P·O)
    idx = np.broadcast_to(labels[None, None, :, None], (b, n, p, 1))
    label_logit = np.take_along_axis(f, idx, axis=-1)[..., 0].mean(-1)  # (B, n)
    out = np.empty((n, b))
    chunk = max(1, 2**23 // max(1, b * p * o))  # subsets per product, ~64 MB of float64
    for k in range(1, n + 1):
        w = _subsets(n, k, max_subsets, seed)
        lse = np.zeros(b)
        for s in range(0, len(w), chunk):
            means = (w[s : s + chunk] @ members).reshape(-1, b, p, o)
            lse += _logsumexp(means).mean(-1).sum(0)
        # the label term over the same subsets as the log-sum-exp (over all members it
        # would be a different average whenever the subsets are a sample)
        out[k - 1] = (lse - (w @ label_logit.T).sum(0)) / len(w)
    return out


def ensemble_size_curve(
    logits: xr.DataArray,
    target: xr.DataArray,
    *,
    loss: LossKind | None = None,
    max_subsets: int = 16,
    seed: int = 0,
    seed_dim: str = "seed",
    point_dim: str = "point",
    output_dim: str = "output",
) -> xr.DataArray:
    """Loss of ensembles of size 1..E (paper Appendix H, Fig. 18): is E seeds enough?

    Ensemble size k: the loss of the average logits of k members, averaged over
    k-subsets of the kept members.

    - ``mse``: exactly the average over *all* k-subsets, in closed form:
      L_k = L_E + v (E − k)/(k (E − 1)), with L_E the full ensemble's loss and v the
      variance of :func:`bias_variance` (finite-population correction of sampling
      without replacement). ``max_subsets`` and ``seed`` are not used.
    - ``cross_entropy``: every k-subset when there are at most ``max_subsets`` of them,
      otherwise ``max_subsets`` random k-subsets (without replacement within a subset)
      from a generator seeded by (``seed``, k, number of kept members), so every width
      and step with the same members uses the same subsets.

    Members with NaN logits at a step (diverged) are left out; sizes beyond the kept
    count are NaN. Size 1 is the mean single-network loss, size E the full ensemble's.
    ``logits`` (width, seed, [step,] point, output); ``target`` as in
    :func:`bias_variance`. Returns dims (``ensemble_size``, width, [step]) with
    ``ensemble_size`` = 1..E. Units: loss.
    """
    logits = require_dataarray(logits, "logits")
    require_dims(logits, (seed_dim, point_dim, output_dim), "logits")
    kind = _infer_loss(target, output_dim, loss)
    if max_subsets < 1:
        raise AnalysisError(f"The 'max_subsets' parameter must be >= 1. Got {max_subsets}.")
    batch_dims = [d for d in logits.dims if d not in (seed_dim, point_dim, output_dim)]
    arr = logits.transpose(*batch_dims, seed_dim, point_dim, output_dim).values
    n_seeds = arr.shape[-3]
    flat = arr.reshape(-1, *arr.shape[-3:])  # (batch, seed, point, output)
    tgt = (
        target.transpose(point_dim, output_dim).values.astype(np.float64)
        if kind == "mse"
        else target.transpose(point_dim).values.astype(np.int64)
    )
    alive = np.isfinite(flat).all(axis=(-2, -1))  # (batch, seed)
    out = np.full((n_seeds, flat.shape[0]), np.nan)
    for pattern in np.unique(alive, axis=0):
        if not pattern.any():
            continue
        rows = np.flatnonzero((alive == pattern).all(-1))
        f = flat[rows][:, pattern].astype(np.float64)  # (rows, kept, point, output)
        sampled = kind != "mse"
        curve = _curve_sampled(f, tgt, max_subsets, seed) if sampled else _curve_mse(f, tgt)
        out[: len(curve), rows] = curve
    coords = {d: logits[d] for d in batch_dims if d in logits.coords}
    return xr.DataArray(
        out.reshape(n_seeds, *arr.shape[:-3]),
        dims=("ensemble_size", *batch_dims),
        coords={"ensemble_size": np.arange(1, n_seeds + 1), **coords},
        name="ensemble_loss",
        attrs={
            "description": "loss of the ensemble-averaged logits of k seeds, averaged over subsets",
            "units": "loss",
            "loss": kind,
            "subsets": "all, closed form"
            if kind == "mse"
            else f"all if at most {max_subsets}, else {max_subsets} random (seed {seed})",
        },
    )
