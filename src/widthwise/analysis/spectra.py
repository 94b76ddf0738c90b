"""Is the whole Hessian spectrum consistent across widths? (paper Section 2, Fig. 6a,
asked of the spectral density, the trace and the per-layer curvature, not only of the
top eigenvalue.)

Inputs are the sharpness probe's variables (``docs/dataset.md``): densities
``sharpness*_density`` with their grids ``sharpness*_density_grid`` (width, seed,
sharpness_step, sharpness_bin), traces ``sharpness*_trace`` (width, seed,
sharpness_step), block values ``sharpness*_block_top`` / ``_block_trace`` (width, seed,
sharpness_step, sharpness_layer).

:func:`density_mean`          the seed-averaged density on each (width, step)'s grid.
:func:`density_w1_to_widest`  W1 = ∫|F_n − F_N| dλ between the seed-mean density of
                              each width n and that of the widest N (F: the CDFs),
                              in eigenvalue units; ``relative=True`` divides by the
                              standard deviation of the widest's density.
:func:`curvature_to_widest`   (q̄_n − q̄_N) / |q̄_N| of a trace or per-layer top
                              eigenvalue (seed means), beside the relative spread
                              over seeds at the same width (``seed_sd / |q̄_N|``): a
                              width is consistent with the widest when its difference
                              is within that spread.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from widthwise.analysis._checks import (
    AnalysisError,
    plain,
    require_dataarray,
    require_dims,
    select_widest,
    widest,
)


def density_mean(
    density: xr.DataArray,
    grid: xr.DataArray,
    *,
    seed_dim: str = "seed",
    bin_dim: str = "sharpness_bin",
) -> xr.Dataset:
    """The seed-averaged spectral density: ``density`` (mean over finite seeds, 1/units
    of the eigenvalue) and ``grid`` (the grid, shared by the seeds of a width and step),
    both without ``seed_dim``. Integral 1 wherever a seed was finite."""
    density = require_dataarray(density, "density")
    grid = require_dataarray(grid, "grid")
    require_dims(density, (seed_dim, bin_dim), "density")
    require_dims(grid, (seed_dim, bin_dim), "grid")
    mean = density.mean(seed_dim, skipna=True)
    g = grid.mean(seed_dim, skipna=True)  # identical rows (NaN for dead seeds)
    out = xr.Dataset({"density": mean, "grid": g})
    out.attrs["description"] = "seed-mean SLQ spectral density on its eigenvalue grid"
    return out


def _w1(ga: np.ndarray, da: np.ndarray, gb: np.ndarray, db: np.ndarray) -> float:
    if not (np.isfinite(ga).all() and np.isfinite(gb).all()):
        return float("nan")
    if not (np.isfinite(da).all() and np.isfinite(db).all()):
        return float("nan")

    def cdf(g: np.ndarray, d: np.ndarray) -> np.ndarray:
        c = np.concatenate([[0.0], np.cumsum(0.5 * (d[1:] + d[:-1]) * np.diff(g))])
        return c / c[-1] if c[-1] > 0 else c

    t = np.union1d(ga, gb)
    fa = np.interp(t, ga, cdf(ga, da), left=0.0, right=1.0)
    fb = np.interp(t, gb, cdf(gb, db), left=0.0, right=1.0)
    return float(np.sum(0.5 * (np.abs(fa - fb)[1:] + np.abs(fa - fb)[:-1]) * np.diff(t)))


def _sd(g: np.ndarray, d: np.ndarray) -> float:
    mass = np.trapezoid(d, g)
    mean = np.trapezoid(g * d, g) / mass
    return float(np.sqrt(np.trapezoid((g - mean) ** 2 * d, g) / mass))


def density_w1_to_widest(
    density: xr.DataArray,
    grid: xr.DataArray,
    *,
    dim: str = "width",
    seed_dim: str = "seed",
    bin_dim: str = "sharpness_bin",
    relative: bool = False,
) -> xr.DataArray:
    """W1 between the seed-mean density of each entry of ``dim`` and the widest's.

    Both densities are normalized to mass 1 on their own grids; their CDFs are compared
    on the union of the grids. Dims: those of ``density`` minus ``seed_dim`` and
    ``bin_dim`` (e.g. width, sharpness_step); 0 at the widest. Units: those of the
    eigenvalue (``relative=True``: a fraction of the widest density's standard
    deviation). NaN where either density is missing.
    """
    mean = density_mean(density, grid, seed_dim=seed_dim, bin_dim=bin_dim)
    require_dims(mean.density, dim, "density")
    ref_d = select_widest(mean.density, dim)
    ref_g = select_widest(mean.grid, dim)
    ref_d, ref_g = ref_d.broadcast_like(mean.density.isel({dim: 0}, drop=True)), ref_g
    fn = np.vectorize(_w1, signature="(n),(n),(m),(m)->()")
    out = xr.apply_ufunc(
        fn,
        mean.grid,
        mean.density,
        ref_g.rename({bin_dim: "_ref_bin"}),
        ref_d.rename({bin_dim: "_ref_bin"}),
        input_core_dims=[[bin_dim], [bin_dim], ["_ref_bin"], ["_ref_bin"]],
    )
    if relative:
        sd = xr.apply_ufunc(
            np.vectorize(_sd, signature="(n),(n)->()"),
            ref_g,
            ref_d,
            input_core_dims=[[bin_dim], [bin_dim]],
        )
        out = out / sd
    out.name = "density_w1_to_widest"
    out.attrs.update(
        units="fraction of the widest density's sd" if relative else "eigenvalue units",
        reference=plain(widest(density, dim)),
        description="W1 distance between seed-mean spectral densities and the widest's",
    )
    return out


def curvature_to_widest(
    da: xr.DataArray, *, dim: str = "width", seed_dim: str = "seed"
) -> xr.Dataset:
    """Relative difference of a curvature scalar (trace, per-layer top eigenvalue or
    trace) to the widest, and the seed spread it is to be judged against.

    ``relative_difference`` = (q̄_n − q̄_N) / |q̄_N| and ``relative_seed_sd`` =
    sd_seed(q_n) / |q̄_N| (ddof 1), q̄ the mean over finite seeds; ``consistent`` is
    True where |relative_difference| ≤ 2·relative_seed_sd / √seeds + that of the
    widest (the two seed means agree within two standard errors). Dims: those of
    ``da`` minus ``seed_dim``; dimensionless.
    """
    da = require_dataarray(da, "da")
    require_dims(da, (dim, seed_dim), "da")
    if da.sizes[dim] < 2:
        raise AnalysisError(f"curvature_to_widest needs at least 2 entries along {dim!r}")
    mean = da.mean(seed_dim, skipna=True)
    ref = abs(select_widest(mean, dim))
    n = np.isfinite(da).sum(seed_dim)
    sd = da.std(seed_dim, ddof=1, skipna=True)
    se = sd / np.sqrt(n)
    se_ref = select_widest(se, dim)
    diff = (mean - select_widest(mean, dim)) / ref
    out = xr.Dataset(
        {
            "relative_difference": diff,
            "relative_seed_sd": sd / ref,
            "consistent": abs(diff) <= 2 * np.sqrt(se**2 + se_ref**2) / ref,
        }
    )
    out.attrs.update(
        reference=plain(widest(da, dim)),
        units="dimensionless",
        description=f"{da.name or 'curvature'} relative to the widest width",
    )
    return out
