"""Intervals over init seeds: a seed bootstrap and a standard-error interval.

The paper (Sections 2-3) reads consistency off curves averaged over a handful of
init seeds; whether a width "agrees with the widest" is only as trustworthy as the
spread over seeds allows. Every interval here is over the seed dim only (the data
are the same for every seed and width, paper Appendix F).

Conventions shared by every function (``docs/analysis.md``):

- An interval is a Dataset with ``estimate``, ``lo``, ``hi`` (same dims and units),
  ``n_seeds`` (finite members that fed the entry; the fewest of all the ensembles
  that enter it) and ``seed_varies`` (True when, in every ensemble that enters it, at
  least two finite members differ). ``attrs``: ``level``, ``method``, ``n_boot``.
- A member is *missing* at an index when any value of its sample (``sample_dims``)
  is not finite (a diverged seed is NaN from its divergence step on). Missing
  members are dropped per ensemble and index; the estimate uses the others.
- An ensemble with fewer than ``min_seeds`` (2) finite members, or whose finite
  members are all identical, has no measurable seed spread: every interval it
  enters is NaN (the bootstrap would return a zero-width interval that says
  nothing about seed-to-seed variation, so a verdict on it would be unearned).
- A replicate that is not finite (e.g. a division by a zero reference) makes the
  interval NaN; nothing non-finite is silently skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import numpy as np
import xarray as xr
from scipy import stats

from widthwise.analysis._checks import AnalysisError, as_dims, require_dataarray, require_dims
from widthwise.analysis._resample import REPLICATE, SeedLayout

Method = Literal["expanded", "percentile"]


def _check_level(level: float, n_boot: int, method: str) -> None:
    if not 0 < level < 1:
        raise AnalysisError(f"The 'level' parameter must be in (0, 1). Got {level!r}.")
    if n_boot < 1:
        raise AnalysisError(f"The 'n_boot' parameter must be >= 1. Got {n_boot!r}.")
    if method not in ("expanded", "percentile"):
        raise AnalysisError(
            f"The 'method' parameter must be 'expanded' or 'percentile'. Got {method!r}."
        )


def _like(counts: xr.DataArray, estimate: xr.DataArray, fill) -> np.ndarray:
    """``counts`` on the index of ``estimate`` (missing labels -> ``fill``), as numpy."""
    _, c = xr.align(estimate, counts, join="left", fill_value=fill)
    return c.broadcast_like(estimate).transpose(*estimate.dims).values


def percentile_interval(
    estimate: xr.DataArray,
    replicates: xr.DataArray,
    n_seeds: xr.DataArray,
    seed_varies: xr.DataArray,
    *,
    level: float = 0.95,
    method: Method = "expanded",
) -> xr.Dataset:
    """The interval Dataset from bootstrap ``replicates`` (dim ``replicate``) of ``estimate``.

    ``method="percentile"``: the (1 ∓ level)/2 quantiles of the replicates.
    ``method="expanded"`` (default): the same quantiles at the widened level α' of
    Hesterberg (2015), z_{α'/2} = √(n/(n−1)) · t_{n−1, α/2} with n = ``n_seeds`` (per
    entry): the percentile bootstrap of a mean with n seeds is too narrow by about
    √((n−1)/n)·z/t, covering 0.90 at nominal 0.95 with 8 seeds and 0.81 with 4; the
    expanded one covers 0.94 with 8 (tested). Entries with ``n_seeds`` < 2, no seed
    spread, or any non-finite replicate get NaN bounds. Returns ``estimate``, ``lo``,
    ``hi``, ``n_seeds``, ``seed_varies`` with the dims of ``estimate``.
    """
    require_dims(replicates, REPLICATE, "replicates")
    _check_level(level, replicates.sizes[REPLICATE], method)
    reps = replicates.transpose(REPLICATE, *estimate.dims)
    n = _like(n_seeds.astype(np.float64), estimate, np.nan)
    alpha = 1.0 - level
    with np.errstate(invalid="ignore", divide="ignore"):
        if method == "expanded":
            nn = np.where(n >= 2, n, np.nan)
            alpha = 2 * stats.norm.sf(np.sqrt(nn / (nn - 1)) * stats.t.isf(alpha / 2, nn - 1))
        q = np.broadcast_to(np.asarray(alpha / 2, dtype=np.float64), n.shape)
    r = np.sort(reps.values, axis=0)
    b = r.shape[0]

    def at(p):
        pos = np.clip(np.nan_to_num(p, nan=0.0), 0, 1) * (b - 1)
        i0 = np.floor(pos).astype(np.int64)
        i1 = np.minimum(i0 + 1, b - 1)
        f = pos - i0
        v0 = np.take_along_axis(r, i0[None], 0)[0]
        v1 = np.take_along_axis(r, i1[None], 0)[0]
        return np.where(f > 0, v0 + f * (v1 - v0), v0)

    varies = _like(seed_varies.astype(bool), estimate, False)
    bad = np.isnan(reps.values).any(0) | ~np.isfinite(q) | ~(n >= 2) | ~varies.astype(bool)
    with np.errstate(invalid="ignore"):
        lo, hi = np.where(bad, np.nan, at(q)), np.where(bad, np.nan, at(1 - q))

    def like(v):
        return xr.DataArray(v, dims=estimate.dims, coords=estimate.coords)

    units = {"units": estimate.attrs.get("units", "units of the statistic")}
    ds = xr.Dataset(
        {
            "estimate": estimate,
            "lo": like(lo).assign_attrs(units),
            "hi": like(hi).assign_attrs(units),
            "n_seeds": like(n),
            "seed_varies": like(varies.astype(bool)),
        }
    )
    ds.attrs = {"level": level, "method": method, "n_boot": int(b)}
    return ds


def bootstrap_over_seeds(
    da: xr.DataArray,
    statistic: Callable[[xr.DataArray], xr.DataArray],
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    dim: str = "seed",
    sample_dims: str | Iterable[str] = (),
    independent: str | Iterable[str] | None = None,
    method: Method = "expanded",
    min_seeds: int = 2,
    counts: Callable[[xr.DataArray], xr.DataArray] | None = None,
) -> xr.Dataset:
    """Seed-bootstrap interval of ``statistic(da)``, vectorized over every other dim.

    ``da``: e.g. (width, seed, step) losses or (width, seed, test_step, point, output)
    logits. ``statistic`` maps an array with the seed dim to one without it and must
    act by dim name and keep dims it does not know: it is called once on ``da`` (the
    estimate; missing members NaN) and on chunks of resamples that carry an extra
    leading dim ``replicate``. At an index where an ensemble has k < E finite members,
    a resample has k members and E − k NaN positions, so reduce the seed dim NaN-aware
    (xarray's default ``skipna``). Every ensemble along ``independent`` (default
    ``("width",)`` when present; add sweep dims) is resampled with its own draws —
    the widest width too, so a distance to it carries both widths' seed noise; all
    other dims (steps, layers) share a replicate's draws. ``seed`` seeds a
    ``numpy.random.Generator``; no global state.

    ``counts(c)`` maps the per-ensemble counts (dims independent + shared) to the
    statistic's dims; default: the minimum over dims the statistic removed. Returns
    the interval Dataset (module docstring): units of the statistic.
    """
    da = require_dataarray(da, "da")
    _check_level(level, n_boot, method)
    if independent is None:
        independent = ("width",) if "width" in da.dims else ()
    lay = SeedLayout(da, dim, as_dims(sample_dims), as_dims(independent))
    estimate = statistic(da.where(lay.block(lay.alive, seed=True)))
    reps = []
    for member, keep in lay.draws(n_boot, seed, min_seeds):
        x = np.take_along_axis(
            np.broadcast_to(lay.x[None], (len(member), *lay.x.shape)), member[..., None], axis=2
        )
        x = np.where(keep[..., None], x, np.nan).reshape(len(member), *lay.shape)
        full = lay.block_dims + lay.sample
        coords = {k: c for k, c in da.coords.items() if dim not in c.dims}
        reps.append(statistic(xr.DataArray(x, dims=(REPLICATE, *full), coords=coords)))
    n_seeds, varies = lay.counts()
    if counts is None:

        def counts(c):
            gone = [d for d in c.dims if d not in estimate.dims]
            return c.min(gone) if gone else c

    return percentile_interval(
        estimate,
        xr.concat(reps, REPLICATE),
        counts(n_seeds),
        counts(varies.astype(int)).astype(bool),
        level=level,
        method=method,
    )


def standard_error_interval(
    da: xr.DataArray,
    *,
    level: float = 0.95,
    dim: str = "seed",
    sample_dims: str | Iterable[str] = (),
    dist: Literal["t", "normal"] = "t",
) -> xr.Dataset:
    """mean ± q·sd/√n over the finite members, for a seed mean whose law is known.

    ``sd`` is the sample standard deviation (ddof 1) of the n finite members (missing:
    any non-finite value over ``sample_dims``). ``q`` is Student's t quantile with n − 1
    degrees of freedom (``dist="t"``, exact for normal seeds) or the normal one
    (``dist="normal"``, mean ± z·sd/√n, which covers 0.92 at nominal 0.95 with 8
    seeds). Dims: ``da``'s minus ``dim``; units of ``da``. Returns the interval Dataset
    plus ``se``; n < 2 gives NaN bounds.
    """
    da = require_dataarray(da, "da")
    _check_level(level, 1, "percentile")
    if dist not in ("t", "normal"):
        raise AnalysisError(f"The 'dist' parameter must be 't' or 'normal'. Got {dist!r}.")
    sample = as_dims(sample_dims)
    require_dims(da, (dim, *sample), "da")
    alive = np.isfinite(da).all(list(sample)) if sample else np.isfinite(da)
    x = da.where(alive)
    n = alive.sum(dim)
    mean = x.mean(dim)
    se = x.std(dim, ddof=1) / np.sqrt(n.where(n >= 2))
    df = n.where(n >= 2) - 1
    q = (
        xr.apply_ufunc(stats.t.isf, (1 - level) / 2, df)
        if dist == "t"
        else stats.norm.isf((1 - level) / 2)
    )
    varies = x.max(dim) > x.min(dim)  # two finite members differ
    ds = xr.Dataset(
        {
            "estimate": mean,
            "lo": mean - q * se,
            "hi": mean + q * se,
            "se": se,
            "n_seeds": n,
            "seed_varies": varies & (n >= 2),
        }
    )
    ds.attrs = {"level": level, "method": f"standard error ({dist})"}
    return ds
