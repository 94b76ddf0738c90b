"""Kernel matrices as xarray: sample dims by name, numpy linear algebra inside (private).

A kernel's rows and columns are each one dim (``"kernels_point_i"``,
``"kernels_point_j"``) or a tuple of dims (``("entk_point_i", "entk_output_i")``)
flattened in the given order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import prod

import numpy as np
import xarray as xr

from widthwise.analysis._checks import (
    AnalysisError,
    Dims,
    as_dims,
    require_dataarray,
    require_dims,
)


def split_sample_dims(sample_dims: Sequence[Dims]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``("i", "j")`` or ``(("p_i", "o_i"), ("p_j", "o_j"))`` -> (row dims, column dims)."""
    if isinstance(sample_dims, str) or len(sample_dims) != 2:
        raise AnalysisError(
            "The 'sample_dims' parameter names a kernel's row and column dims, e.g. "
            f"('kernels_point_i', 'kernels_point_j'). Got {sample_dims!r} instead."
        )
    rows, cols = as_dims(sample_dims[0]), as_dims(sample_dims[1])
    if set(rows) & set(cols):
        raise AnalysisError(f"Row dims {rows} and column dims {cols} of a kernel must differ.")
    return rows, cols


def check_kernel(k: xr.DataArray, rows: tuple[str, ...], cols: tuple[str, ...], what: str) -> None:
    require_dims(k, (*rows, *cols), what)
    nr = prod(k.sizes[d] for d in rows)
    nc = prod(k.sizes[d] for d in cols)
    if nr != nc:
        raise AnalysisError(
            f"{what} must be square over rows {rows} and columns {cols}; got {nr} x {nc}."
        )


def as_matrix(x: np.ndarray, nr: int, nc: int) -> np.ndarray:
    """(..., *row_sizes, *col_sizes) -> (..., R, C): the last nr + nc axes flattened."""
    lead = x.shape[: x.ndim - nr - nc]
    return x.reshape(
        *lead, prod(x.shape[x.ndim - nr - nc : x.ndim - nc]), prod(x.shape[x.ndim - nc :])
    )


def apply_on_matrices(
    fn: Callable[..., np.ndarray],
    *kernels: xr.DataArray,
    rows: tuple[str, ...],
    cols: tuple[str, ...],
    **kwargs,
) -> xr.DataArray:
    """``fn(*matrices)`` on (..., R, C) float64 arrays, broadcast by name; fn returns (...)."""

    def wrapped(*arrays):
        mats = [as_matrix(np.asarray(a, dtype=np.float64), len(rows), len(cols)) for a in arrays]
        return fn(*mats, **kwargs)

    core = [*rows, *cols]
    return xr.apply_ufunc(wrapped, *kernels, input_core_dims=[core] * len(kernels))


def center(k: np.ndarray) -> np.ndarray:
    """H K H with H = I − 11ᵀ/n, over the last two axes."""
    return (
        k
        - k.mean(-1, keepdims=True)
        - k.mean(-2, keepdims=True)
        + k.mean(axis=(-2, -1), keepdims=True)
    )


def targets_on_rows(
    y: xr.DataArray,
    target_dims: Dims,
    kernel: xr.DataArray,
    rows: tuple[str, ...],
    what: str = "y",
) -> tuple[xr.DataArray, tuple[str, ...]]:
    """Targets laid out on a kernel's row dims: (y renamed, float64; its output dims).

    ``target_dims`` are y's dims matching the kernel's ``rows`` one to one, in order and
    with equal sizes, e.g. ``("point", "output")`` for rows ``("entk_point_i",
    "entk_output_i")``; row dims of size 1 may be left out (``"point"`` for rows
    ``("entk_point_i", "entk_output_i")`` with one output). y's dims that are also other dims of ``kernel`` (width, step,
    ...) broadcast by name; its remaining dims are outputs (columns of Y). Integer
    labels with no other dim become one-hot over classes 0..max (output dim ``class``).
    """
    y = require_dataarray(y, what)
    tdims = as_dims(target_dims)
    require_dims(y, tdims, what)
    matched = rows
    if len(tdims) != len(rows):
        matched = tuple(r for r in rows if kernel.sizes[r] != 1)  # size-1 rows may be omitted
        if len(tdims) != len(matched):
            raise AnalysisError(
                f"target_dims {tdims} of {what} must match the kernel's row dims {rows} "
                "one to one (row dims of size 1 may be left out)."
            )
    for t, r in zip(tdims, matched):
        if y.sizes[t] != kernel.sizes[r]:
            raise AnalysisError(
                f"{what} has {y.sizes[t]} entries along {t!r} but the kernel has "
                f"{kernel.sizes[r]} along {r!r}; select the kernel's points from {what} "
                f"(e.g. {what}.isel({t}=slice(0, {kernel.sizes[r]})))."
            )
    if np.issubdtype(y.dtype, np.integer) and set(y.dims) <= set(tdims):
        if int(y.min()) < 0:
            raise AnalysisError("Integer class labels must be >= 0.")
        classes = xr.DataArray(np.arange(int(y.max()) + 1), dims="class")
        y = y == classes
    y = y.astype(np.float64).rename({t: r for t, r in zip(tdims, matched) if t != r})
    y = y.expand_dims([r for r in rows if r not in matched])
    y = y.drop_vars([r for r in rows if r in y.coords])  # positions, not labels, match
    outputs = tuple(d for d in y.dims if d not in rows and d not in kernel.dims)
    return y, outputs
