"""Spectrum of the ensemble-averaged eNTK and the gradient-flow loss it predicts (Section 5, Fig. 10).

K = seed mean of the empirical NTK on M points; its eigenpairs (λ_k, v_k), sorted by
decreasing λ, split the task y into modes learned at rates ∝ λ_k. The cumulative task
power C(k) = Σ_{i≤k} (v_i·y)² / |y|² says how much of the task the top k modes carry;
the paper finds that finite width barely moves λ_k but moves y's power into slower
modes (a bias of narrower width).

Loss convention (one output; ``y`` is the target vector on the M points):

    L(t) = Σ_k (v_k·(y − f₀))² e^{−2ηλ_k t} / M                          (docs/analysis.md)

is the **mean squared error without ½**, L = |f − y|²/M (widthwise's ``mse``), of the
kernel gradient flow df/dt = −η K (f − y) started from f(0) = f₀ (default 0):
each mode's residual decays as e^{−ηλ_k t}, its square as e^{−2ηλ_k t}.
widthwise trains ``mse`` = mean over batch and outputs of (f − y)² with SGD at
learning rate lr; on M points and O outputs the flow of that loss is
df/dt = −(2·lr/(M·O)) K (f − y) per step (t in steps), i.e. η = 2·lr/(M·O)
(:func:`sgd_flow_rate`). That holds when K is the kernel of the trained dynamics
(each parameter's Jacobian weighted by its learning-rate scale: the eNTK probe's
``entk_lr``). It is exact for full-batch gradient flow on the M points; for online
SGD on fresh batches it is an M-point quadrature of the population flow, better the
more points the kernel has. For O outputs the
loss is divided by the number of target entries M·O (the mean over points and outputs).
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import numpy as np
import xarray as xr

from widthwise.analysis._checks import (
    AnalysisError,
    Dims,
    member_mean,
    require_dataarray,
    require_dims,
)
from widthwise.analysis._kernels import (
    as_matrix,
    check_kernel,
    split_sample_dims,
    targets_on_rows,
)

CONVENTION = (
    "L(t) = sum_k (v_k.(y - f0))^2 exp(-2 eta lambda_k t) / (M*O): mean squared error "
    "(no 1/2) of df/dt = -eta K (f - y); widthwise SGD on mse at lr: eta = 2 lr / (M*O)"
)


def _eigh_desc(k: np.ndarray, nr: int, nc: int, row_shape: tuple[int, ...]):
    mats = as_matrix(np.asarray(k, dtype=np.float64), nr, nc)
    mats = (mats + np.swapaxes(mats, -1, -2)) / 2
    bad = ~np.isfinite(mats).all(axis=(-2, -1))
    n = mats.shape[-1]
    mats = np.where(bad[..., None, None], np.eye(n), mats)
    lam, vec = np.linalg.eigh(mats)
    lam, vec = lam[..., ::-1], vec[..., ::-1]
    lam = np.where(bad[..., None], np.nan, lam)
    vec = np.where(bad[..., None, None], np.nan, vec)
    return lam, vec.reshape(*vec.shape[:-2], *row_shape, n)


def ntk_eigen(
    kernel: xr.DataArray,
    *,
    sample_dims: Sequence[Dims],
    seed_dim: str = "seed",
    mode_dim: str = "mode",
) -> xr.Dataset:
    """Eigenpairs of the seed-averaged kernel, in float64, sorted by decreasing eigenvalue.

    ``kernel`` e.g. ``ds.entk`` (width, seed, entk_step, i, j) with ``sample_dims`` =
    (rows, cols), each a dim or a tuple of dims. With ``seed_dim`` present the kernel
    is first averaged over the members whose kernel is all finite (diverged ones left
    out); the matrix is symmetrized, (K + Kᵀ)/2, and diagonalized with
    ``numpy.linalg.eigh``. Returns a Dataset: ``eigenvalue`` (..., mode) in the kernel's
    units, ``eigenvector`` (..., *rows, mode), unit norm (sign arbitrary), with
    ``mode`` = 1..M (rank k). Slices with a NaN give NaN.
    """
    rows, cols = split_sample_dims(sample_dims)
    kernel = require_dataarray(kernel, "kernel")
    check_kernel(kernel, rows, cols, "kernel")
    if mode_dim in kernel.dims:
        raise AnalysisError(f"mode_dim={mode_dim!r} is already a dim of the kernel; pick another.")
    k = member_mean(kernel, seed_dim, (*rows, *cols))
    row_shape = tuple(k.sizes[d] for d in rows)
    lam, vec = xr.apply_ufunc(
        _eigh_desc,
        k,
        input_core_dims=[[*rows, *cols]],
        output_core_dims=[[mode_dim], [*rows, mode_dim]],
        kwargs={"nr": len(rows), "nc": len(cols), "row_shape": row_shape},
    )
    n = lam.sizes[mode_dim]
    ds = xr.Dataset(
        {
            "eigenvalue": lam.assign_attrs(
                description="eigenvalues of the seed-mean kernel, descending",
                units=kernel.attrs.get("units", "kernel units"),
            ),
            "eigenvector": vec.assign_attrs(description="unit eigenvectors (columns)"),
        }
    ).assign_coords({mode_dim: np.arange(1, n + 1)})
    ds.attrs = {"rows": list(rows), "mode_dim": mode_dim}
    return ds


def _rows_of(eig: xr.Dataset, mode_dim: str) -> tuple[str, ...]:
    if not isinstance(eig, xr.Dataset) or not {"eigenvalue", "eigenvector"} <= set(eig):
        raise AnalysisError("Pass the Dataset returned by ntk_eigen (eigenvalue, eigenvector).")
    require_dims(eig["eigenvalue"], mode_dim, "eig")
    return tuple(d for d in eig["eigenvector"].dims if d not in eig["eigenvalue"].dims)


def _residual(eig, y, f0, target_dims, mode_dim):
    """(y − f0) on the eigenvectors' row dims, its output dims, and its entry count M·O."""
    rows = _rows_of(eig, mode_dim)
    vec = eig["eigenvector"]
    r, outputs = targets_on_rows(y, target_dims, vec, rows)
    if f0 is not None:
        f, f_out = targets_on_rows(f0, target_dims, vec, rows, what="f0")
        r = r - f
        outputs = tuple(dict.fromkeys(outputs + f_out))
    n_entries = prod(r.sizes[d] for d in (*rows, *outputs))
    return r, rows, outputs, n_entries


def mode_power(
    eig: xr.Dataset,
    y: xr.DataArray,
    *,
    target_dims: Dims = "point",
    mode_dim: str = "mode",
    f0: xr.DataArray | None = None,
) -> xr.DataArray:
    """Task power of every mode, |v_kᵀ (Y − F₀)|² summed over outputs; dims (..., mode).

    ``y`` (and ``f0``) dims: ``target_dims`` matching the kernel rows one to one;
    dims shared with ``eig`` (width, step, ...) broadcast; the rest are outputs.
    """
    r, rows, outputs, _ = _residual(eig, y, f0, target_dims, mode_dim)
    proj = xr.dot(eig["eigenvector"], r, dim=list(rows))
    return (proj**2).sum(list(outputs)).rename("mode_power")


def cumulative_task_power(
    eig: xr.Dataset, y: xr.DataArray, *, target_dims: Dims = "point", mode_dim: str = "mode"
) -> xr.DataArray:
    """C(k) = Σ_{i≤k} (v_i·y)² / |y|² over eigenvectors sorted by decreasing eigenvalue.

    ``eig`` from :func:`ntk_eigen`; ``y`` the targets of the kernel's points (e.g.
    ``ds.test_target`` selected to them) with ``target_dims`` matching the kernel rows;
    for several outputs (v_i·y)² is |v_iᵀY|² and |y|² is ‖Y‖_F². Dims (..., mode) with
    mode = k = 1..M; C(M) = 1. Dimensionless (paper Fig. 10 c/f).
    """
    power = mode_power(eig, y, target_dims=target_dims, mode_dim=mode_dim)
    total = power.sum(mode_dim, skipna=False)
    out = (power.cumsum(mode_dim) / total).rename("cumulative_task_power")
    out.attrs = {"description": "fraction of |y|^2 in the top-k eigenvectors", "units": "fraction"}
    return out


def sgd_flow_rate(lr: float, n_points: int, n_outputs: int = 1) -> float:
    """η of df/dt = −η K (f − y) for widthwise's ``mse`` trained by SGD at ``lr``: 2·lr/(M·O)."""
    return 2.0 * lr / (n_points * n_outputs)


def gradient_flow_loss(
    eig: xr.Dataset,
    y: xr.DataArray,
    *,
    eta: float,
    times,
    time_dim: str = "step",
    target_dims: Dims = "point",
    f0: xr.DataArray | None = None,
    mode_dim: str = "mode",
) -> xr.DataArray:
    """Loss predicted by kernel gradient flow: Σ_k (v_k·(y − f₀))² e^{−2ηλ_k t} / (M·O).

    The mean squared error (no ½) of df/dt = −η K (f − y) from f(0) = f₀ (default 0);
    see the module docstring for the convention and :func:`sgd_flow_rate` for η of a
    widthwise SGD run. ``times``: 1-d sequence (or DataArray along ``time_dim``) in the
    units η is per (steps for :func:`sgd_flow_rate`). Eigenvalues below 0 (round-off)
    are taken as 0. Returns dims (..., time_dim); units of y².
    """
    if eta < 0 or not np.isfinite(eta):
        raise AnalysisError(f"The 'eta' parameter must be a finite number >= 0. Got {eta}.")
    power = mode_power(eig, y, target_dims=target_dims, mode_dim=mode_dim, f0=f0)
    n_entries = _residual(eig, y, f0, target_dims, mode_dim)[3]
    if not isinstance(times, xr.DataArray):
        t = np.asarray(times, dtype=np.float64)
        times = xr.DataArray(t, dims=time_dim, coords={time_dim: np.asarray(times)})
    lam = eig["eigenvalue"].clip(min=0)
    decay = np.exp(-2.0 * eta * lam * times)
    out = (power * decay).sum(mode_dim, skipna=False) / n_entries
    out = out.transpose(..., time_dim).rename("gradient_flow_loss")
    out.attrs = {
        "description": "kernel gradient-flow prediction of the loss",
        "units": "loss",
        "convention": CONVENTION,
        "eta": float(eta),
    }
    return out


def compare_loss_curves(
    predicted: xr.DataArray,
    measured: xr.DataArray,
    *,
    time_dim: str = "step",
    measured_time_dim: str | None = None,
) -> xr.Dataset:
    """Compare a predicted loss curve with a measured one on their common steps.

    ``measured`` may use another step dim (``measured_time_dim``, e.g. ``"test_step"``);
    it is renamed to ``time_dim`` and the two are aligned on the step values they share
    (pass the measured steps as ``times`` to :func:`gradient_flow_loss`). Returns
    ``ratio`` = measured / predicted per step and ``log10_rmse`` = RMS over steps of
    log10(measured / predicted) (steps where either is not positive are skipped).
    """
    predicted = require_dataarray(predicted, "predicted")
    measured = require_dataarray(measured, "measured")
    if measured_time_dim and measured_time_dim != time_dim:
        require_dims(measured, measured_time_dim, "measured")
        measured = measured.rename({measured_time_dim: time_dim})
    require_dims(predicted, time_dim, "predicted")
    require_dims(measured, time_dim, "measured")
    p, m = xr.align(predicted, measured, join="inner")
    if p.sizes[time_dim] == 0:
        raise AnalysisError(f"predicted and measured share no {time_dim} values.")
    ratio = m / p
    logr = np.log10(ratio.where((m > 0) & (p > 0)))
    rmse = np.sqrt((logr**2).mean(time_dim, skipna=True))
    return xr.Dataset(
        {
            "ratio": ratio.assign_attrs(description="measured / predicted", units="ratio"),
            "log10_rmse": rmse.assign_attrs(
                description="RMS over steps of log10(measured / predicted)", units="decades"
            ),
        }
    )
