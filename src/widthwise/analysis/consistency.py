"""Successive-width differences and the consistency verdict (paper Section 2, Figure 4).

The paper calls a quantity *consistent* when, beyond some width, its values lie in
a small interval: differences between successive widths shrink as width grows.
:func:`successive_differences` measures |q(2n) − q(n)| between consecutive widths of
the study; :func:`consistency_verdict` turns them into "consistent from width n on".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np
import xarray as xr

from widthwise.analysis._checks import (
    AnalysisError,
    as_dims,
    member_mean,
    require_dataarray,
    require_dims,
    sort_by,
)

Norm = Literal["rms", "fro", "max"]


def _norm(da: xr.DataArray, over: tuple[str, ...], norm: Norm) -> xr.DataArray:
    if not over:
        return abs(da)
    if norm == "rms":
        return np.sqrt((da**2).mean(over, skipna=False))
    if norm == "fro":
        return np.sqrt((da**2).sum(over, skipna=False))
    if norm == "max":
        return abs(da).max(over, skipna=False)
    raise AnalysisError(f"The 'norm' parameter must be one of 'rms', 'fro', 'max'. Got {norm!r}.")


def successive_differences(
    da: xr.DataArray,
    *,
    over: str | Iterable[str] = (),
    dim: str = "width",
    seed_dim: str = "seed",
    ensemble: bool = False,
    relative: bool = False,
    norm: Norm = "rms",
) -> xr.DataArray:
    """‖q(n_{i+1}) − q(n_i)‖ between consecutive widths of the study (paper Fig. 4).

    Widths are sorted by their coordinate; in a doubling study n_{i+1} = 2 n_i, so this
    is |q(2n) − q(n)|. ``over`` names the sample dims the norm runs over: ``()`` for a
    scalar such as a loss (then the difference is just |Δq|), ``("point", "output")``
    for logits, ``("kernels_point_i", "kernels_point_j")`` for kernels. ``norm`` is
    ``"rms"`` (root mean square, default), ``"fro"`` (root sum of squares) or ``"max"``.
    ``relative=True`` divides by the same norm of the wider width's q.

    ``ensemble=False`` compares seed ``s`` with seed ``s`` (seed dim kept);
    ``ensemble=True`` compares seed means (members with NaN in their sample left out).

    Returns dims ``da``'s minus ``over`` with ``dim`` one shorter, labelled by the
    narrower width of each pair; the coordinate ``{dim}_wider`` (along ``dim``) names
    the wider one and ``{dim}_pair`` is a "n-2n" string label. Units: those of q
    (absolute) or dimensionless (relative); ``attrs`` say which.
    """
    da = require_dataarray(da, "da")
    over = as_dims(over)
    require_dims(da, (dim, *over), "da")
    if da.sizes[dim] < 2:
        raise AnalysisError(f"successive differences need at least 2 entries along {dim!r}.")
    if ensemble:
        da = member_mean(da, seed_dim, over)
    da = sort_by(da, dim)
    narrow = da.isel({dim: slice(None, -1)})
    wide = da.isel({dim: slice(1, None)})
    labels_n = narrow[dim].values if dim in da.coords else np.arange(da.sizes[dim] - 1)
    labels_w = wide[dim].values if dim in da.coords else np.arange(1, da.sizes[dim])
    narrow = narrow.drop_vars(dim, errors="ignore")
    wide = wide.drop_vars(dim, errors="ignore")
    diff = _norm(wide - narrow, over, norm)
    if relative:
        diff = diff / _norm(wide, over, norm)
    diff = diff.assign_coords(
        {
            dim: labels_n,
            f"{dim}_wider": (dim, labels_w),
            f"{dim}_pair": (dim, [f"{a}-{b}" for a, b in zip(labels_n, labels_w)]),
        }
    )
    diff.name = "successive_difference"
    diff.attrs = {
        "description": f"{norm} norm of q(wider) - q(narrower) between consecutive {dim}s"
        + (", divided by the wider's norm" if relative else ""),
        "units": "dimensionless" if relative else da.attrs.get("units", "units of q"),
        "relative": int(relative),
        "norm": norm,
        "ensemble": int(bool(ensemble)),
        "over": list(over),
    }
    return diff


def _first_consistent(diffs: np.ndarray, labels: np.ndarray, tol: float) -> np.ndarray:
    """diffs (..., pair): label of the first pair from which all later pairs are ≤ tol."""
    ok = np.where(np.isnan(diffs), False, diffs <= tol)
    # tail_ok[..., i] is True when pairs i, i+1, ..., last are all within tol
    tail_ok = np.flip(np.logical_and.accumulate(np.flip(ok, -1), axis=-1), -1)
    any_ok = tail_ok.any(-1)
    first = np.argmax(tail_ok, axis=-1)
    out = np.asarray(labels, dtype=np.float64)[first]
    return np.where(any_ok, out, np.nan)


def consistency_verdict(
    diffs: xr.DataArray | xr.Dataset, *, tol: float, dim: str = "width"
) -> xr.DataArray | xr.Dataset:
    """Smallest width from which every successive difference stays ≤ ``tol``.

    ``diffs`` is the output of :func:`successive_differences` (or a Dataset of them,
    one variable per quantity): entries along ``dim`` are labelled by the narrower
    width of each pair. The verdict at every other index (step, seed, layer, ...) is the
    narrower width n_i of the first pair such that the differences of that pair and of
    all wider pairs are ≤ ``tol``: widths n_i, n_{i+1}, ... lie within ``tol`` of their
    neighbours. NaN when even the widest pair exceeds ``tol``. A NaN difference (a
    diverged member, a width that has not reached the step) counts as exceeding it.

    Whether ``tol`` is relative or absolute follows from how ``diffs`` was made; the
    result's ``attrs`` state ``tol``, ``relative`` and ``norm``. Dims: ``diffs``' minus
    ``dim``; values are widths (float, NaN = never consistent).
    """
    if isinstance(diffs, xr.Dataset):
        return diffs.map(lambda v: consistency_verdict(v, tol=tol, dim=dim), keep_attrs=True)
    diffs = require_dataarray(diffs, "diffs")
    require_dims(diffs, dim, "diffs")
    if not np.isfinite(tol) or tol < 0:
        raise AnalysisError(f"The 'tol' parameter must be a finite number >= 0. Got {tol!r}.")
    labels = diffs[dim].values if dim in diffs.coords else np.arange(diffs.sizes[dim])
    out = xr.apply_ufunc(
        _first_consistent,
        diffs,
        kwargs={"labels": labels, "tol": float(tol)},
        input_core_dims=[[dim]],
    )
    out = out.drop_vars([c for c in out.coords if dim in out[c].dims], errors="ignore")
    out.name = "consistent_from"
    relative = bool(diffs.attrs.get("relative", 0))
    out.attrs = {
        "description": f"smallest {dim} from which successive differences stay <= tol "
        f"({'relative' if relative else 'absolute'}); NaN: never",
        "units": dim,
        "tol": float(tol),
        "relative": int(relative),
        "norm": diffs.attrs.get("norm", "rms"),
    }
    return out
