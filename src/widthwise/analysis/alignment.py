"""Centered kernel-target alignment (Cortes et al. 2012; paper Appendix D, Fig. 14).

A(K, y) = ⟨K_c, (yyᵀ)_c⟩_F / (‖K_c‖_F ‖(yyᵀ)_c‖_F) with K_c = H K H, H = I − 11ᵀ/n:
how much of the kernel's (centered) structure points along the task. For several
outputs Y (n × O), yyᵀ becomes YYᵀ. Applied to the eNTK or a feature kernel at every
width and step it shows feature learning aligning the kernel with the target.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from widthwise.analysis._checks import Dims, require_dataarray
from widthwise.analysis._kernels import (
    apply_on_matrices,
    center,
    check_kernel,
    split_sample_dims,
    targets_on_rows,
)


def _alignment(k: np.ndarray, t: np.ndarray) -> np.ndarray:
    kc, tc = center(k), center(t)
    num = (kc * tc).sum(axis=(-2, -1))
    den = np.sqrt((kc * kc).sum(axis=(-2, -1)) * (tc * tc).sum(axis=(-2, -1)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def kernel_target_alignment(
    kernel: xr.DataArray,
    y: xr.DataArray,
    *,
    sample_dims: Sequence[Dims],
    target_dims: Dims = "point",
) -> xr.DataArray:
    """Centered kernel-target alignment of every kernel in ``kernel`` with the target ``y``.

    ``kernel`` e.g. ``ds.entk`` (width, seed, entk_step, i, j) with ``sample_dims`` =
    (row dims, column dims); ``y`` e.g. ``ds.test_target`` (point, output) restricted to
    the kernel's points, in the same order, with ``target_dims`` the dims of ``y``
    matching the kernel rows (``("point", "output")`` for a kernel over point × output
    pairs; same sizes, matched by position). y's dims shared with the kernel's other
    dims broadcast by name; its remaining dims are outputs (YYᵀ sums over them);
    integer labels are one-hot encoded.
    Returns the kernel's dims minus ``sample_dims``; values in [−1, 1], dimensionless.
    Average over seeds afterwards for a per-width curve, or pass a seed-mean kernel.
    """
    rows, cols = split_sample_dims(sample_dims)
    check_kernel(require_dataarray(kernel, "kernel"), rows, cols, "kernel")
    yr, outputs = targets_on_rows(y, target_dims, kernel, rows)
    yc = yr.rename(dict(zip(rows, cols)))
    target = xr.dot(yr, yc, dim=list(outputs)) if outputs else yr * yc  # YYᵀ
    out = apply_on_matrices(_alignment, kernel, target, rows=rows, cols=cols)
    out.name = "kernel_target_alignment"
    out.attrs = {
        "description": "centered kernel-target alignment <Kc, YYt_c>/(|Kc||YYt_c|)",
        "units": "dimensionless",
    }
    return out
