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
LOSSES = ("mse", "cross_entropy")
IGNORE_INDEX = -100  # = widthwise.losses.IGNORE_INDEX (label without loss); no torch import here


def _study_loss(logits: xr.DataArray, target: xr.DataArray) -> str | None:
    """The loss the study trained with, as ``open_study`` records it (``attrs["loss"]`` of
    ``ds.test_label`` / ``ds.test_target`` / ``ds.test_logits``); None if not recorded."""
    for da in (target, logits):
        loss = da.attrs.get("loss")
        if isinstance(loss, str) and loss:
            return loss
    return None


def _resolve(
    logits: xr.DataArray,
    target: xr.DataArray,
    loss: LossKind | None,
    point_dim: str,
    output_dim: str,
) -> tuple[LossKind, xr.DataArray, tuple[str, ...]]:
    """(loss, target the network trained on, label dims) with every mistake a one-line error.

    The loss: ``loss`` if given (it must agree with the study's recorded loss), else the
    study's, else inferred (a target with ``output_dim`` is regression). The target:
    float (…, ``output_dim``) for mse — integer labels are one-hot encoded over the
    logits' outputs, as the trainer does for ``loss: mse`` on a classification stream —
    or integer labels for cross-entropy. Label dims: the target's dims but ``output_dim``
    (``(point,)``, or ``(point, position)`` for token streams); the loss averages over them.
    """
    require_dims(target, point_dim, "target")
    if loss is not None and loss not in LOSSES:
        raise AnalysisError(
            f"The 'loss' parameter must be 'mse', 'cross_entropy' or None (the study's "
            f"loss). Got {loss!r} instead."
        )
    study = _study_loss(logits, target)
    if loss is not None and study in LOSSES and loss != study:
        raise AnalysisError(
            f"The 'loss' parameter is {loss!r}, but the study trained with {study!r} "
            "(the 'loss' attr open_study records on the target and logits); allowed: "
            f"{study!r} or None."
        )
    labels = np.issubdtype(target.dtype, np.integer) and output_dim not in target.dims
    if loss is None:
        loss = study if study in LOSSES else ("cross_entropy" if labels else "mse")
    label_dims = tuple(d for d in target.dims if d != output_dim)
    require_dims(logits, (*label_dims, output_dim), "logits")
    n_out = logits.sizes[output_dim]
    if loss == "cross_entropy":
        if not labels:
            raise AnalysisError(
                "The 'loss' parameter is 'cross_entropy', which needs integer class labels "
                f"(dims (point,) or (point, position), e.g. ds['test_label']); the target has "
                f"dtype {target.dtype} and dims {target.dims}. Allowed for this target: 'mse'."
            )
        bad = (target != IGNORE_INDEX) & ((target < 0) | (target >= n_out))
        if bool(bad.any()):
            raise AnalysisError(
                f"The 'target' labels must be in 0 … {n_out - 1} (the logits' {output_dim!r} "
                f"units) or {IGNORE_INDEX} (no loss). Got {int(target.where(bad).min())}."
            )
        return loss, target.astype(np.int64), label_dims
    if labels:  # mse on class labels: the one-hot targets the trainer trained on
        values = target.values
        if bool(((values < 0) | (values >= n_out)).any()):
            raise AnalysisError(
                f"The 'target' labels must be in 0 … {n_out - 1} to be one-hot encoded for "
                f"loss 'mse' (labels {IGNORE_INDEX}, no loss, exist only for cross_entropy). "
                f"Got {int(values.min()) if values.min() < 0 else int(values.max())}."
            )
        onehot = np.eye(n_out)[values]
        coords = {k: v for k, v in target.coords.items() if set(v.dims) <= set(target.dims)}
        if output_dim in logits.coords:
            coords[output_dim] = logits[output_dim].values
        return (
            loss,
            xr.DataArray(onehot, dims=(*target.dims, output_dim), coords=coords),
            (label_dims),
        )
    if output_dim not in target.dims:
        if n_out != 1:
            raise AnalysisError(
                f"The 'target' has no {output_dim!r} dim but the logits have {n_out} outputs; "
                f"pass targets with dims ({point_dim}, {output_dim}) (e.g. ds['test_target']) "
                "or integer class labels."
            )
        target = target.expand_dims({output_dim: logits[output_dim].values}, axis=-1)
    return loss, target.astype(np.float64), label_dims


def _loss(
    logits: xr.DataArray,
    kind: LossKind,
    target: xr.DataArray,
    label_dims: tuple[str, ...],
    output_dim: str,
) -> xr.DataArray:
    """The loss per member of a resolved (kind, target), as ``losses.per_member_loss``."""
    if kind == "mse":  # mean over points (and positions) and outputs
        return ((logits - target) ** 2).mean((*label_dims, output_dim), skipna=False)
    labelled = target != IGNORE_INDEX
    lse = xr.apply_ufunc(_logsumexp, logits, input_core_dims=[[output_dim]])
    picked = logits.isel({output_dim: target.where(labelled, 0)}, drop=True)
    per = (lse - picked).where(labelled, 0.0)  # no loss where the label is IGNORE_INDEX
    counted = max(int(labelled.sum()), 1)
    return per.sum(label_dims, skipna=False) / counted


def probe_loss(
    logits: xr.DataArray,
    target: xr.DataArray,
    *,
    loss: LossKind | None = None,
    point_dim: str = "point",
    output_dim: str = "output",
) -> xr.DataArray:
    """Loss of ``logits`` on the probe set, averaged over points, exactly as widthwise trains it.

    ``probe_loss(ds.test_logits, ds.test_label)`` (or ``ds.test_target``) equals the
    logged ``ds.test_loss`` to float rounding for every stream and loss a spec accepts:

    - ``mse``: mean over points (and positions) and outputs of (f − y)² (no ½); ``target``
      float (point, output), or integer labels (point,) / (point, position), which are
      one-hot encoded over the outputs, as the trainer does for ``loss: mse`` on a
      classification or token stream.
    - ``cross_entropy``: mean of −log softmax(f)[label] over labelled points (and
      positions); ``target`` integer labels, ``-100`` (no loss) positions left out.

    ``loss=None`` (default) uses the study's loss, which ``open_study`` records in the
    target's (and logits') ``attrs["loss"]``; for arrays without it, a target with
    ``output_dim`` is regression and integer labels are cross-entropy. A ``loss`` that
    contradicts the study's, or cross-entropy on real-valued targets, is an
    :class:`~widthwise.analysis.AnalysisError` (one line). Dims: ``logits``' minus the
    target's dims and ``output_dim``. Units: loss.
    """
    logits = require_dataarray(logits, "logits")
    target = require_dataarray(target, "target")
    kind, tgt, label_dims = _resolve(logits, target, loss, point_dim, output_dim)
    return _loss(logits, kind, tgt, label_dims, output_dim)


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

    ``logits`` (width, seed, [step,] point, [position,] output), e.g. ``ds.test_logits``;
    ``target`` ``ds.test_target`` (point, output) or ``ds.test_label`` (point,) /
    (point, position), and ``loss``, as in :func:`probe_loss`: the study's loss by
    default (integer labels one-hot encoded for mse). Members with a NaN anywhere in
    their (point, [position,] output) logits at a step (diverged ones, or a width that has
    not reached the step) are left out of every mean at that step; ``members`` counts
    those kept. Returns a Dataset with dims (width, [step]):

    - ``single_loss``: mean over kept seeds of each network's loss.
    - ``ensemble_loss``: loss of the ensemble-averaged logits f̄_n.
    - ``variance``: mean over seeds, points (positions) and outputs of (f_n,s − f̄_n)² (Eq. 10; the
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
    target = require_dataarray(target, "target")
    require_dims(logits, (dim, seed_dim, point_dim, output_dim), "logits")
    kind, tgt, label_dims = _resolve(logits, target, loss, point_dim, output_dim)
    sample = (*label_dims, output_dim)
    alive = alive_members(logits, sample)
    f = logits.astype(np.float64).where(alive)
    fbar = f.mean(seed_dim, skipna=True)
    members = alive.sum(seed_dim)
    single = _loss(f, kind, tgt, label_dims, output_dim).mean(seed_dim, skipna=True)
    ens = _loss(fbar, kind, tgt, label_dims, output_dim)
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
    ``logits`` (width, seed, [step,] point, [position,] output); ``target`` and
    ``loss`` as in :func:`probe_loss` (the study's loss by default; positions labelled
    ``-100`` left out). Returns dims (``ensemble_size``, width, [step]) with
    ``ensemble_size`` = 1..E. Units: loss.
    """
    logits = require_dataarray(logits, "logits")
    target = require_dataarray(target, "target")
    require_dims(logits, (seed_dim, point_dim, output_dim), "logits")
    kind, target, label_dims = _resolve(logits, target, loss, point_dim, output_dim)
    if max_subsets < 1:
        raise AnalysisError(f"The 'max_subsets' parameter must be >= 1. Got {max_subsets}.")
    sample = (*label_dims, output_dim)
    batch_dims = [d for d in logits.dims if d not in (seed_dim, *sample)]
    arr = logits.transpose(*batch_dims, seed_dim, *sample).values
    lead, n_seeds = arr.shape[: len(batch_dims)], logits.sizes[seed_dim]
    points = int(np.prod([logits.sizes[d] for d in label_dims]))
    # (batch, seed, point, output): the label dims (point, [position]) as one point dim
    flat = arr.reshape(-1, n_seeds, points, logits.sizes[output_dim])
    if kind == "mse":
        tgt = target.transpose(*sample).values.reshape(flat.shape[-2:])
    else:  # positions without a label (IGNORE_INDEX) carry no loss: left out
        tgt = target.transpose(*label_dims).values.reshape(-1)
        flat, tgt = flat[:, :, tgt != IGNORE_INDEX], tgt[tgt != IGNORE_INDEX]
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
        out.reshape(n_seeds, *lead),
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
