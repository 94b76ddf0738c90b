"""Shared validation and small helpers of the analysis functions (private).

Everything here works on dimension *names*; no function of the analysis package
takes an axis number.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import xarray as xr

from widthwise.errors import UserError


class AnalysisError(UserError, ValueError):
    """An analysis function called with arrays it cannot use; the message says what to pass."""


Dims = str | tuple[str, ...]


def as_dims(dims: Dims | Iterable[str]) -> tuple[str, ...]:
    """``"point"`` -> ``("point",)``; a tuple or list stays a tuple."""
    return (dims,) if isinstance(dims, str) else tuple(dims)


def require_dims(da: xr.DataArray | xr.Dataset, dims: Dims | Iterable[str], what: str) -> None:
    """Raise :class:`AnalysisError` naming the missing dims and the ones that exist."""
    missing = set(as_dims(dims)) - set(da.dims)
    if missing:
        raise AnalysisError(
            f"Dimensions {sorted(missing)} do not exist in {what}. "
            f"Expected one of {sorted(map(str, da.dims))}."
        )


def require_dataarray(obj: object, what: str) -> xr.DataArray:
    if not isinstance(obj, xr.DataArray):
        raise AnalysisError(
            f"The '{what}' parameter must be an xarray.DataArray; got {type(obj).__name__} "
            f"instead (select a variable, e.g. ds['{what}'])."
        )
    return obj


def widest(da: xr.DataArray, dim: str) -> object:
    """Label of the widest entry along ``dim`` (largest coordinate value, else the last)."""
    require_dims(da, dim, "the array")
    if dim in da.coords:
        values = da[dim].values
        return values[int(np.argmax(values))]
    return da.sizes[dim] - 1


def plain(x: object) -> object:
    """A numpy scalar as a plain Python value (for attrs)."""
    return x.item() if hasattr(x, "item") else x


def select_widest(da: xr.DataArray, dim: str) -> xr.DataArray:
    """The widest member along ``dim``, with ``dim`` dropped."""
    label = widest(da, dim)
    if dim in da.coords:
        return da.sel({dim: label}, drop=True)
    return da.isel({dim: label}, drop=True)


def sort_by(da: xr.DataArray, dim: str) -> xr.DataArray:
    """``da`` ordered by increasing coordinate along ``dim`` (unchanged without a coordinate)."""
    return da.sortby(dim) if dim in da.coords else da


def alive_members(da: xr.DataArray, sample_dims: tuple[str, ...]) -> xr.DataArray:
    """True where a member's whole sample is finite (diverged members are NaN after divergence)."""
    dims = [d for d in sample_dims if d in da.dims]
    ok = np.isfinite(da)
    return ok.all(dims) if dims else ok


def member_mean(da: xr.DataArray, seed_dim: str, sample_dims: tuple[str, ...]) -> xr.DataArray:
    """Mean over ``seed_dim`` of the members whose sample over ``sample_dims`` is all finite.

    A member with any NaN in its sample (a diverged one) is left out entirely; where no
    member is left the result is NaN. Without ``seed_dim`` the array is returned as is.
    """
    if seed_dim not in da.dims:
        return da
    alive = alive_members(da, sample_dims)
    return da.where(alive).mean(seed_dim, skipna=True)


def reference_of(
    da: xr.DataArray, *, dim: str, seed_dim: str, ensemble: bool, sample_dims: tuple[str, ...]
) -> tuple[xr.DataArray, xr.DataArray]:
    """(array, widest reference) for a comparison "each width vs the widest".

    ``ensemble=True``: both are seed means (of the finite members) first; otherwise each
    seed is compared with the same seed label of the widest width.
    """
    if ensemble:
        da = member_mean(da, seed_dim, sample_dims)
    return da, select_widest(da, dim)
