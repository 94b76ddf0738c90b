"""Verdicts: estimate, interval over seeds, tolerance and rule -> consistent or not.

A verdict is what a researcher can sign (paper Sections 2-3: a quantity is
consistent when, beyond some width, its values lie within a small interval *with
high probability*). For a distance d with a seed-bootstrap interval [lo, hi] and a
tolerance tol:

- ``hi <= tol``  -> "consistent"      (even the pessimistic end is within tolerance)
- ``lo > tol``   -> "not consistent"  (even the optimistic end exceeds it)
- otherwise      -> "undetermined", also whenever an entering ensemble has < 2 finite
  seeds ("too few seeds"), no seed spread ("no seed variation": identical members,
  e.g. constant inputs, say nothing about seed noise) or any value is not finite
  ("non-finite values": NaN, inf, a zero reference norm).

Distances here compare *seed means* (the ensemble, Appendix F) and resample every
width's seeds independently, the widest's included (``uncertainty.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np
import xarray as xr

from widthwise.analysis._checks import (
    AnalysisError,
    as_dims,
    plain,
    require_dataarray,
    require_dims,
)
from widthwise.analysis._resample import (
    PARTS,
    in_chunks,
    layout,
    out_array,
    seed_mean_moments,
    slope_part,
)
from widthwise.analysis.uncertainty import Method, bootstrap_over_seeds, percentile_interval

RULE = "consistent if hi <= tol; not consistent if lo > tol; otherwise undetermined"
RESULTS = ("consistent", "not consistent", "undetermined")


def verdict(interval: xr.Dataset, tol: float, *, min_seeds: int = 2) -> xr.Dataset:
    """Add ``verdict`` and ``reason`` (strings, the dims of ``estimate``) to ``interval``.

    ``interval`` has ``estimate``, ``lo``, ``hi`` and optionally ``n_seeds`` and
    ``seed_varies`` (as every function of ``uncertainty.py`` returns). ``verdict`` is
    one of :data:`RESULTS` by the rule of the module docstring; ``reason`` is one of
    "upper bound <= tolerance", "lower bound > tolerance", "interval straddles the
    tolerance", "too few seeds", "no seed variation", "non-finite values" (checked
    in that order from the last). ``attrs``: ``tolerance``, ``rule``.
    """
    if not np.isfinite(tol) or tol < 0:
        raise AnalysisError(f"The 'tol' parameter must be a finite number >= 0. Got {tol!r}.")
    if not isinstance(interval, xr.Dataset) or not {"estimate", "lo", "hi"} <= set(interval):
        raise AnalysisError(
            "The 'interval' parameter must be a Dataset with 'estimate', 'lo' and 'hi' "
            "(as bootstrap_over_seeds or standard_error_interval return)."
        )
    est, lo, hi = (interval[k] for k in ("estimate", "lo", "hi"))
    ones = xr.ones_like(est, dtype=bool)
    n = interval.get("n_seeds", ones * min_seeds)
    varies = interval.get("seed_varies", ones)
    finite = np.isfinite(est) & np.isfinite(lo) & np.isfinite(hi)
    cases = [  # later entries win
        (ones, "undetermined", "interval straddles the tolerance"),
        (hi <= tol, "consistent", "upper bound <= tolerance"),
        (lo > tol, "not consistent", "lower bound > tolerance"),
        (~finite, "undetermined", "non-finite values"),
        (~varies.astype(bool), "undetermined", "no seed variation"),
        (~(n >= min_seeds), "undetermined", "too few seeds"),
    ]
    v = np.full(est.shape, "", dtype="<U14")
    r = np.full(est.shape, "", dtype="<U32")
    for mask, result, why in cases:
        m = (mask & ones).transpose(*est.dims).values
        v[m], r[m] = result, why
    out = interval.copy()
    out["verdict"] = xr.DataArray(v, dims=est.dims, coords=est.coords)
    out["reason"] = xr.DataArray(r, dims=est.dims, coords=est.coords)
    out.attrs = {**interval.attrs, "tolerance": float(tol), "rule": RULE}
    return out


def _labels(da: xr.DataArray, dim: str) -> np.ndarray:
    return da[dim].values if dim in da.coords else np.arange(da.sizes[dim])


def mean_distance(
    da: xr.DataArray,
    pairs: list[tuple[object, object]],
    *,
    over: str | Iterable[str] = (),
    relative: bool = True,
    dim: str = "width",
    seed_dim: str = "seed",
    independent: str | Iterable[str] = (),
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    method: Method = "expanded",
) -> xr.Dataset:
    """RMS_over(m_a − m_b) [/ RMS_over(m_b)] of seed means m for width pairs (a, b).

    ``pairs`` lists (a, b) width labels; the result's ``dim`` is labelled by a. The
    seed means drop missing members (non-finite anywhere over ``over``). With more
    sample entries than seeds, replicates use the members' E×E Gram matrices, so each
    costs O(E²) per index however many points ``over`` spans. Dims: ``da``'s minus seed and ``over``; the interval
    Dataset of ``uncertainty.py``. Dimensionless if ``relative``, else units of ``da``.
    """
    da, over = require_dataarray(da, "da"), as_dims(over)
    kw = dict(over=over, relative=relative, dim=dim, seed_dim=seed_dim, independent=independent)
    kw.update(n_boot=n_boot, level=level, seed=seed, method=method)
    fixed = (dim, seed_dim, *as_dims(independent))
    return in_chunks(da, over, fixed, n_boot, lambda part: _mean_distance(part, pairs, **kw))


def _mean_distance(
    da, pairs, *, over, relative, dim, seed_dim, independent, n_boot, level, seed, method
) -> xr.Dataset:
    lay, nw = layout(da, dim, seed_dim, over, independent)
    labels = list(_labels(da, dim))
    a = np.array([labels.index(p) for p, _ in pairs], dtype=np.int64)
    b = np.array([labels.index(q) for _, q in pairs], dtype=np.int64)
    est, rep, p, n_alive, vv = seed_mean_moments(lay, nw, a, b, n_boot, seed, {"dd", "bb"})
    with np.errstate(invalid="ignore", divide="ignore"):
        est, rep = ((m["dd"] / (m["bb"] if relative else p)) ** 0.5 for m in (est, rep))
    n, varies = np.minimum(n_alive[a], n_alive[b]), vv[a] & vv[b]
    lab = np.asarray([q for q, _ in pairs])
    ds = percentile_interval(
        out_array(lay, est, dim, lab, False),
        out_array(lay, rep, dim, lab, True),
        out_array(lay, n, dim, lab, False),
        out_array(lay, varies, dim, lab, False),
        level=level,
        method=method,
    )
    ds.attrs.update(relative=int(relative), over=list(over), seed=seed)
    return ds


def _to_widest(da, tol, over, name, units, *, dim, **kw) -> xr.Dataset:
    da = require_dataarray(da, "da")
    labels = _labels(da, dim)
    ref = labels[int(np.argmax(labels))]
    pairs = [(n, ref) for n in sorted(labels) if n != ref]
    if not pairs:
        raise AnalysisError(f"A comparison with the widest needs at least 2 entries along {dim!r}.")
    ds = verdict(mean_distance(da, pairs, over=over, dim=dim, **kw), tol)
    ds["estimate"].attrs = {"description": name, "units": units}
    ds.attrs.update(quantity=name, reference_width=plain(ref), dim=dim)
    return ds


def loss_gap_to_widest(
    loss: xr.DataArray, *, tol: float = 0.05, dim: str = "width", **kw
) -> xr.Dataset:
    """|L̄_n(t) − L̄_N(t)| / L̄_N(t) per step, L̄ the seed mean, N the widest (Fig. 2).

    ``loss`` (width, seed, step) or (width, seed, test_step). Returns (width, step)
    without the widest: the interval Dataset of ``uncertainty.py`` plus ``verdict``
    and ``reason`` at relative tolerance ``tol``. Keywords as :func:`mean_distance`.
    """
    return _to_widest(loss, tol, (), "relative loss gap to the widest", "fraction", dim=dim, **kw)


def logit_distance_to_widest(
    logits: xr.DataArray,
    *,
    tol: float = 0.05,
    over: str | Iterable[str] = ("point", "output"),
    dim: str = "width",
    **kw,
) -> xr.Dataset:
    """Scaled RMSE of seed-mean logits to the widest's seed mean (Fig. 3 d-f).

    ``logits`` (width, seed, test_step, point, output) -> (width, test_step) without the
    widest: interval, ``verdict`` and ``reason`` (dimensionless, tolerance ``tol``).
    """
    name = "scaled RMSE of ensemble logits to the widest"
    return _to_widest(logits, tol, over, name, "fraction of the widest's RMS", dim=dim, **kw)


def kernel_distance_to_widest(
    kernels: xr.DataArray,
    *,
    tol: float = 0.05,
    over: str | Iterable[str] = ("kernels_point_i", "kernels_point_j"),
    dim: str = "width",
    **kw,
) -> xr.Dataset:
    """‖K̄_n − K̄_N‖_F / ‖K̄_N‖_F of seed-mean kernels (Fig. 5 c/f, Fig. 12).

    ``kernels`` e.g. (width, seed, kernels_step, kernels_layer, kernels_point_i, kernels_point_j) ->
    (width, kernels_step, kernels_layer) without the widest; dimensionless.
    """
    name = "relative Frobenius distance of seed-mean kernels to the widest"
    return _to_widest(kernels, tol, over, name, "fraction of the widest's norm", dim=dim, **kw)


def successive_gap(
    da: xr.DataArray,
    *,
    tol: float = 0.05,
    over: str | Iterable[str] = (),
    relative: bool = True,
    dim: str = "width",
    **kw,
) -> xr.Dataset:
    """‖m(n_{i+1}) − m(n_i)‖ [/ ‖m(n_{i+1})‖] of seed means of successive widths (Fig. 4).

    Labelled by the narrower width, with ``{dim}_wider`` and ``{dim}_pair`` coords as
    ``successive_differences``. Dims: ``da``'s minus seed and ``over``.
    """
    da = require_dataarray(da, "da")
    labels = sorted(_labels(da, dim))
    if len(labels) < 2:
        raise AnalysisError(f"successive gaps need at least 2 entries along {dim!r}.")
    pairs = list(zip(labels[:-1], labels[1:]))
    ds = verdict(mean_distance(da, pairs, over=over, relative=relative, dim=dim, **kw), tol)
    ds = ds.assign_coords(
        {f"{dim}_wider": (dim, labels[1:]), f"{dim}_pair": (dim, [f"{a}-{b}" for a, b in pairs])}
    )
    ds.attrs.update(quantity="gap of successive widths", dim=dim)
    return ds


def width_slope(
    da: xr.DataArray,
    *,
    quantity: Literal["variance", "bias", "mean"] = "variance",
    over: str | Iterable[str] = (),
    expected: float | None = None,
    tol: float = 0.25,
    dim: str = "width",
    seed_dim: str = "seed",
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    method: Method = "expanded",
) -> xr.Dataset:
    """Log-log slope of a seed quantity q(n) against width, with a bootstrap interval.

    ``quantity``: ``"variance"`` = mean over seeds and ``over`` of (f − f̄)² (Eq. 10;
    theory: ∝ 1/n, slope −1); ``"bias"`` = mean over ``over`` of (f̄_n − f̄_N)² for
    n below the widest N (Eq. 9; ∝ 1/n² far from N); ``"mean"`` = RMS over ``over``
    of f̄_n. OLS of log q on log n over every width used; NaN if any q ≤ 0 or is not
    finite. Dims: ``da``'s minus (width, seed, over), dimensionless. With ``expected``
    the Dataset adds ``verdict``/``reason`` for |slope − expected| ≤ ``tol``.
    """
    if quantity not in ("variance", "bias", "mean"):
        raise AnalysisError(
            f"The 'quantity' parameter must be 'variance', 'bias' or 'mean'. Got {quantity!r}."
        )
    da, over = require_dataarray(da, "da"), as_dims(over)
    kw = dict(quantity=quantity, over=over, dim=dim, seed_dim=seed_dim, n_boot=n_boot, seed=seed)
    ds = in_chunks(da, over, (dim, seed_dim), n_boot, lambda part: slope_part(part, **kw))
    ds = percentile_interval(*(ds[k] for k in PARTS), level=level, method=method)
    ds.attrs.update(quantity=f"log-log slope of the {quantity} in {dim}", over=list(over))
    if expected is not None:
        e = float(expected)
        lo, hi = ds["lo"] - e, ds["hi"] - e
        dev = ds.assign(
            estimate=abs(ds["estimate"] - e),
            lo=xr.where((lo <= 0) & (hi >= 0), 0.0, np.minimum(abs(lo), abs(hi))),
            hi=np.maximum(abs(lo), abs(hi)),
        )
        v = verdict(dev, tol)
        ds = ds.assign(verdict=v["verdict"], reason=v["reason"])
        ds.attrs.update(expected=e, tolerance=float(tol), rule=RULE + " (on |slope - expected|)")
    return ds


def plateau(
    da: xr.DataArray,
    *,
    fraction: float = 0.2,
    step_dim: str = "step",
    dim: str = "width",
    seed_dim: str = "seed",
    **kw,
) -> xr.Dataset:
    """Seed mean of a curve averaged over its last ``fraction`` of recorded steps.

    The window is the last ⌈fraction · T⌉ of the T entries along ``step_dim`` (at
    least one). A member with a non-finite value in the window is left out. Dims:
    ``da``'s minus (seed, step_dim), units of ``da``; the interval Dataset, each width
    resampled on its own. Keywords as :func:`bootstrap_over_seeds`.
    """
    da = require_dataarray(da, "da")
    if not 0 < fraction <= 1:
        raise AnalysisError(f"The 'fraction' parameter must be in (0, 1]. Got {fraction!r}.")
    require_dims(da, (step_dim, dim, seed_dim), "da")
    t = da.sizes[step_dim]
    window = da.sortby(step_dim) if step_dim in da.coords else da
    window = window.isel({step_dim: slice(t - max(1, int(np.ceil(fraction * t))), None)})
    member = window.mean(step_dim, skipna=False)
    ds = bootstrap_over_seeds(
        member, lambda x: x.mean(seed_dim), dim=seed_dim, independent=(dim,), **kw
    )
    steps = _labels(window, step_dim)
    ds.attrs.update(
        quantity=f"mean over the last {fraction:g} of {step_dim}s",
        window=[plain(steps[0]), plain(steps[-1])],
    )
    return ds
