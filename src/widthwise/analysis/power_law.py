"""Power law in width L(n) = a·n^(−b) + c and the infinite-width limit c (paper Section 4, Fig. 9).

The fit is robust by construction: for a fixed exponent b the model is linear in
(a, c), so a and c ≥ 0 are solved *exactly* by non-negative least squares on the
columns [n^(−b), 1]; b is found by a grid search over ``b_bounds`` refined by a
golden-section search around the best grid point. The two-column NNLS has a closed
form (the unconstrained solution if it is non-negative, else the better of the two
one-column fits), which equals ``scipy.optimize.nnls`` and lets thousands of
bootstrap fits run as array operations.

Uncertainty is a bootstrap over seeds: for every width the seeds are resampled with
replacement, the seed mean refitted, and percentile intervals reported. c is the
extrapolated infinite-width value; fitted at every step it gives the *limit curve*
of any scalar over training (:func:`limit_curve`).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np
import xarray as xr

from widthwise.analysis._checks import AnalysisError, require_dataarray, require_dims

_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0
_CHUNK = 16384


def _nnls2(x, lv, m):
    """Exact NNLS of lv ≈ a·x + c with a, c ≥ 0 and 0/1 weights m, batched over leading axes.

    x, lv, m: (..., n) with lv already 0 where m is 0. Returns a, c, rss of shape (...).
    """
    sxx, sx, s1 = (m * x * x).sum(-1), (m * x).sum(-1), m.sum(-1)
    sxl, sl, sll = (m * x * lv).sum(-1), (m * lv).sum(-1), (m * lv * lv).sum(-1)

    def rss(a, c):
        return sll - 2 * a * sxl - 2 * c * sl + a * a * sxx + 2 * a * c * sx + c * c * s1

    with np.errstate(divide="ignore", invalid="ignore"):
        det = sxx * s1 - sx * sx
        a_u = (s1 * sxl - sx * sl) / det
        c_u = (sxx * sl - sx * sxl) / det
        ok_u = (det > 1e-12 * sxx * s1) & (a_u >= 0) & (c_u >= 0)
        c_0 = np.maximum(sl / s1, 0.0)  # a = 0
        a_0 = np.maximum(np.where(sxx > 0, sxl / sxx, 0.0), 0.0)  # c = 0
    cands = [
        (np.where(ok_u, a_u, 0.0), np.where(ok_u, c_u, 0.0), np.where(ok_u, rss(a_u, c_u), np.inf)),
        (np.zeros_like(c_0), c_0, rss(0.0, c_0)),
        (a_0, np.zeros_like(a_0), rss(a_0, 0.0)),
    ]
    best = np.argmin(np.stack([r for _, _, r in cands]), axis=0)
    a = np.choose(best, [c[0] for c in cands])
    c = np.choose(best, [c[1] for c in cands])
    r = np.choose(best, [c[2] for c in cands])
    return a, c, np.maximum(r, 0.0)


def _fit_batch(logn, y, b_bounds, grid):
    """Fit y (B, W) against widths exp(logn) (W,) relative to the narrowest; NaN = missing."""
    m = np.isfinite(y).astype(np.float64)
    yv = np.where(m > 0, y, 0.0)
    bs = np.linspace(b_bounds[0], b_bounds[1], grid)
    # grid: (B, G) objective through the (B, 1, W) x (G, W) broadcast
    xg = np.exp(-bs[:, None] * logn[None, :])  # (G, W)
    _, _, rss_g = _nnls2(xg[None], yv[:, None, :], m[:, None, :])
    i = np.argmin(rss_g, axis=1)
    lo = bs[np.maximum(i - 1, 0)]
    hi = bs[np.minimum(i + 1, grid - 1)]

    def objective(b):
        return _nnls2(np.exp(-b[:, None] * logn[None, :]), yv, m)[2]

    # golden-section search on [lo, hi], batched
    p = hi - _GOLDEN * (hi - lo)
    q = lo + _GOLDEN * (hi - lo)
    fp, fq = objective(p), objective(q)
    for _ in range(48):
        left = fp < fq
        hi = np.where(left, q, hi)
        lo = np.where(left, lo, p)
        p_new = hi - _GOLDEN * (hi - lo)
        q_new = lo + _GOLDEN * (hi - lo)
        p, q = np.where(left, p_new, q), np.where(left, p, q_new)
        fp, fq = np.where(left, objective(p_new), fq), np.where(left, fp, objective(q_new))
    b_ref = (lo + hi) / 2
    b_grid = bs[i]
    b = np.where(objective(b_ref) <= rss_g[np.arange(len(i)), i], b_ref, b_grid)
    a, c, rss = _nnls2(np.exp(-b[:, None] * logn[None, :]), yv, m)
    n_ok = m.sum(-1)
    mean = (m * yv).sum(-1) / np.maximum(n_ok, 1)
    tss = (m * (yv - mean[:, None]) ** 2).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(tss > 0, 1.0 - rss / tss, np.nan)
    bad = n_ok < 3
    b = np.where(a > 0, b, np.nan)  # with a = 0 the exponent is not identified
    return [np.where(bad, np.nan, v) for v in (a, b, c, r2)]


def _fit(widths, y, b_bounds, grid):
    """y (B, W) -> a, b, c, r2 (B,) in the widths' own units (a multiplies n^(−b))."""
    n0 = float(np.min(widths))
    logn = np.log(np.asarray(widths, dtype=np.float64) / n0)
    parts = [_fit_batch(logn, y[s : s + _CHUNK], b_bounds, grid) for s in range(0, len(y), _CHUNK)]
    a, b, c, r2 = (np.concatenate([p[k] for p in parts]) for k in range(4))
    with np.errstate(invalid="ignore"):
        return np.where(a > 0, a * n0**b, a), b, c, r2


def _bounds(b_bounds):
    lo, hi = map(float, b_bounds)
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 <= lo < hi):
        raise AnalysisError(
            f"The 'b_bounds' parameter must be (low, high), 0 <= low < high. Got {b_bounds}."
        )
    return lo, hi


def _check_widths(w):
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise AnalysisError(f"widths must be positive numbers; got {list(w)}.")


def _bootstrap_means(vals, n_boot, rng):
    """vals (R, W, E) with NaN = missing member -> (n_boot, R, W) resampled seed means.

    For every replicate and width, E uniforms pick members among the finite ones of each
    (row, width), so a replicate reuses the same draws at every step (row).
    """
    alive = np.isfinite(vals)
    n_alive = alive.sum(-1)  # (R, W)
    order = np.argsort(~alive, axis=-1, kind="stable")  # finite members first
    filled = np.where(alive, vals, 0.0)
    e = vals.shape[-1]
    keep = np.arange(e) < n_alive[..., None]  # (R, W, E): first n_alive draws are used
    out = np.empty((n_boot, *vals.shape[:2]))
    step = max(1, _CHUNK // max(1, vals.shape[0] * vals.shape[1]))
    for s in range(0, n_boot, step):
        u = rng.random((min(step, n_boot - s), 1, vals.shape[1], e))
        idx = np.minimum(
            (u * n_alive[None, ..., None]).astype(np.int64),
            np.maximum(n_alive - 1, 0)[None, ..., None],
        )
        members = np.take_along_axis(np.broadcast_to(order, (len(u), *order.shape)), idx, -1)
        picked = np.take_along_axis(np.broadcast_to(filled, members.shape), members, -1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s : s + len(u)] = (picked * keep).sum(-1) / np.where(n_alive > 0, n_alive, np.nan)
    return out


def power_law_fit(
    da: xr.DataArray,
    *,
    dim: str = "width",
    seed_dim: str = "seed",
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
    b_bounds: tuple[float, float] = (0.0, 4.0),
    grid: int = 81,
) -> xr.Dataset:
    """Fit L(n) = a·n^(−b) + c (a, c ≥ 0) to the seed mean of ``da`` at every other index.

    ``da`` has dims (width, [seed], ...) — e.g. ``ds.test_loss`` (width, seed, test_step)
    fits every step; select a step first to fit one. The fitted curve is the mean over
    finite seeds (diverged members, NaN, are left out) at each width; widths that are
    NaN at a step are skipped there (≥ 3 widths needed, else NaN). R² = 1 − RSS/TSS of
    the fitted points; where the best a is 0 (no decrease in width) b is not identified
    and is NaN. One curve without seeds: a DataArray with the single dim ``width``.

    Bootstrap: ``n_boot`` replicates; in each, every width's finite seeds are resampled
    with replacement (same draws at every step of a replicate), the means refitted;
    ``*_ci`` are the percentile intervals at level ``ci`` (dim ``bound`` = low, high).
    ``seed`` seeds the generator. Without ``seed_dim`` or with ``n_boot=0`` the
    intervals are NaN.

    Returns a Dataset with dims ``da``'s minus (width, seed): ``a`` (units of L·width^b),
    ``b`` (dimensionless), ``c`` (units of L, the infinite-width value), ``r2`` (of the
    seed-mean fit), and ``a_ci``, ``b_ci``, ``c_ci`` (+ dim ``bound``).
    """
    da = require_dataarray(da, "da")
    require_dims(da, dim, "da")
    if not 0 < ci < 1:
        raise AnalysisError(f"The 'ci' parameter must be in (0, 1). Got {ci}.")
    if n_boot < 0:
        raise AnalysisError(f"The 'n_boot' parameter must be >= 0. Got {n_boot}.")
    b_bounds = _bounds(b_bounds)
    widths = np.asarray(
        da[dim].values if dim in da.coords else np.arange(1, da.sizes[dim] + 1), dtype=np.float64
    )
    _check_widths(widths)
    has_seed = seed_dim in da.dims
    rest = [d for d in da.dims if d not in (dim, seed_dim)]
    core = [dim, seed_dim] if has_seed else [dim]
    vals = da.transpose(*rest, *core).values.astype(np.float64)
    rest_shape = vals.shape[: len(rest)]
    vals = vals.reshape(-1, *vals.shape[len(rest) :])
    if not has_seed:
        vals = vals[..., None]
    with _quiet():
        mean = np.nanmean(vals, axis=-1)
    est = _fit(widths, mean, b_bounds, grid)
    boot_ci = np.full((3, len(vals), 2), np.nan)
    if has_seed and n_boot > 0:
        rng = np.random.default_rng(seed)
        boot = _bootstrap_means(vals, n_boot, rng)  # (n_boot, R, W)
        a, b, c, _ = _fit(widths, boot.reshape(-1, len(widths)), b_bounds, grid)
        q = [100 * (1 - ci) / 2, 100 * (1 + ci) / 2]
        for k, v in enumerate((a, b, c)):
            with _quiet():
                boot_ci[k] = np.nanpercentile(v.reshape(n_boot, -1), q, axis=0).T
    coords = {d: da[d] for d in rest if d in da.coords}
    dims = tuple(rest)
    data = {
        name: xr.DataArray(v.reshape(rest_shape), dims=dims, coords=coords)
        for name, v in zip(("a", "b", "c", "r2"), est)
    }
    for k, name in enumerate(("a_ci", "b_ci", "c_ci")):
        data[name] = xr.DataArray(
            boot_ci[k].reshape(*rest_shape, 2),
            dims=(*dims, "bound"),
            coords={**coords, "bound": ["low", "high"]},
        )
    units = da.attrs.get("units", "units of L")
    data["a"].attrs = {"description": "amplitude of a*n^-b", "units": f"{units} * {dim}^b"}
    data["b"].attrs = {"description": "exponent of the width", "units": "dimensionless"}
    data["c"].attrs = {"description": "infinite-width value", "units": units}
    data["r2"].attrs = {"description": "R^2 of the seed-mean fit", "units": "dimensionless"}
    ds = xr.Dataset(data)
    ds.attrs = {
        "model": f"L({dim}) = a * {dim}^(-b) + c, a >= 0, c >= 0",
        "ci": ci,
        "n_boot": n_boot,
        "seed": seed,
        "b_bounds": list(b_bounds),
    }
    return ds


@contextmanager
def _quiet():
    """Silence numpy's 'mean of empty slice' warnings for all-NaN slices (NaN is the answer)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def power_law_curve(fit: xr.Dataset, widths, *, dim: str = "width") -> xr.DataArray:
    """Evaluate a fit from :func:`power_law_fit` at ``widths``: a·n^(−b) + c, dims (width, ...)."""
    n = xr.DataArray(
        np.asarray(widths, dtype=np.float64), dims=dim, coords={dim: np.asarray(widths)}
    )
    out = xr.where(fit["a"] > 0, fit["a"] * n ** (-fit["b"]), 0.0) + fit["c"]
    out = out.transpose(dim, ...).rename("power_law")
    out.attrs = {"description": "fitted a * n^-b + c", "units": fit["c"].attrs.get("units", "")}
    return out


def limit_curve(
    da: xr.DataArray,
    *,
    dim: str = "width",
    seed_dim: str = "seed",
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
    b_bounds: tuple[float, float] = (0.0, 4.0),
) -> xr.Dataset:
    """Infinite-width extrapolation of any scalar over training: c(step) with its interval.

    ``da`` (width, seed, step-like dim, ...), e.g. ``ds.test_loss``. Fits
    L(n) = a·n^(−b) + c at every step (:func:`power_law_fit`) and returns ``limit``
    (= c), ``limit_ci`` (bootstrap percentile interval, dim ``bound``) and ``r2``, with
    ``da``'s dims minus (width, seed). Units of ``da``. The model only decreases in
    width: for a quantity that grows with width (accuracy) pass its negation or 1 − q.
    """
    fit = power_law_fit(
        da, dim=dim, seed_dim=seed_dim, n_boot=n_boot, ci=ci, seed=seed, b_bounds=b_bounds
    )
    ds = xr.Dataset({"limit": fit["c"], "limit_ci": fit["c_ci"], "r2": fit["r2"]})
    ds.attrs = {**fit.attrs, "description": "infinite-width value c of a power-law fit in width"}
    return ds
