"""eNTK spectrum, cumulative task power C(k) and the gradient-flow loss (Section 5, Fig. 10)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy.integrate import solve_ivp
from scipy.linalg import expm

from widthwise.analysis import (
    AnalysisError,
    compare_loss_curves,
    cumulative_task_power,
    gradient_flow_loss,
    ntk_eigen,
    sgd_flow_rate,
)

pytestmark = pytest.mark.quick

DIMS = ("i", "j")
M = 6
LAM = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])


def _kernel(seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(M, M)))
    return q, q @ np.diag(LAM) @ q.T


def _y(values, dims=("point", "output")):
    return xr.DataArray(np.asarray(values, dtype=float).reshape(M, -1), dims=dims)


def test_eigenpairs_of_the_seed_mean_kernel():
    q, k = _kernel()
    e = np.random.default_rng(1).normal(size=(M, M))
    e = e + e.T  # the two seeds are K ± E: their mean is K
    seeds = np.stack([k + e, k - e, np.full((M, M), np.nan)])  # third member diverged
    da = xr.DataArray(seeds, dims=("seed", *DIMS))
    eig = ntk_eigen(da, sample_dims=DIMS)
    np.testing.assert_allclose(eig.eigenvalue.values, LAM)
    assert list(eig.mode.values) == list(range(1, M + 1))
    overlap = np.abs(q.T @ eig.eigenvector.transpose("i", "mode").values)
    np.testing.assert_allclose(overlap, np.eye(M), atol=1e-10)


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_cumulative_power_jumps_to_one_at_the_rank_of_y(rank):
    q, k = _kernel()
    eig = ntk_eigen(xr.DataArray(k, dims=DIMS), sample_dims=DIMS)
    c = cumulative_task_power(eig, _y(-2.5 * q[:, rank - 1]))
    expected = (np.arange(1, M + 1) >= rank).astype(float)
    np.testing.assert_allclose(c.values, expected, atol=1e-12)


def test_cumulative_power_of_a_mixture_and_several_outputs():
    q, k = _kernel()
    eig = ntk_eigen(xr.DataArray(k, dims=DIMS), sample_dims=DIMS)
    y = np.stack([q[:, 0] + 2 * q[:, 2], 2 * q[:, 4]], axis=1)  # |Y|² = 1 + 4 + 4
    c = cumulative_task_power(eig, _y(y))
    np.testing.assert_allclose(c.values, [1, 1, 5, 5, 9, 9] / np.float64(9), atol=1e-12)


def test_gradient_flow_equals_closed_form_and_the_integrated_ode():
    q, k = _kernel()
    y = np.random.default_rng(2).normal(size=M)
    eta, times = 0.3, np.array([0.0, 0.5, 1.0, 2.0, 4.0])
    eig = ntk_eigen(xr.DataArray(k, dims=DIMS), sample_dims=DIMS)
    pred = gradient_flow_loss(eig, _y(y), eta=eta, times=times)
    assert pred.dims == ("step",) and "convention" in pred.attrs
    closed = [np.sum((q.T @ y) ** 2 * np.exp(-2 * eta * LAM * t)) / M for t in times]
    np.testing.assert_allclose(pred.values, closed, rtol=1e-12)
    # df/dt = −η K (f − y) from f = 0; loss = mean (f − y)², no ½
    sol = solve_ivp(
        lambda t, f: -eta * k @ (f - y),
        (0, times[-1]),
        np.zeros(M),
        t_eval=times,
        rtol=1e-10,
        atol=1e-12,
    )
    ode = ((sol.y.T - y) ** 2).mean(1)
    np.testing.assert_allclose(pred.values, ode, rtol=1e-6)
    f_exact = [y - expm(-eta * k * t) @ y for t in times]
    np.testing.assert_allclose(pred.values, [((f - y) ** 2).mean() for f in f_exact], rtol=1e-10)


def test_widthwise_sgd_on_mse_follows_the_flow_at_the_stated_rate():
    """A linear model f = Jθ trained by gradient descent on mean (f − y)² at a small lr:
    its loss follows gradient_flow_loss with η = sgd_flow_rate(lr, M), K = J Jᵀ."""
    rng = np.random.default_rng(3)
    jac = rng.normal(size=(M, 20)) / np.sqrt(20)
    y = rng.normal(size=M)
    lr, steps = 1e-3, 400
    theta, losses = np.zeros(20), []
    for _ in range(steps + 1):
        r = jac @ theta - y
        losses.append((r**2).mean())
        theta -= lr * 2 * jac.T @ r / M
    eig = ntk_eigen(xr.DataArray(jac @ jac.T, dims=DIMS), sample_dims=DIMS)
    t = np.arange(0, steps + 1, 50)
    pred = gradient_flow_loss(eig, _y(y), eta=sgd_flow_rate(lr, M), times=t)
    np.testing.assert_allclose(pred.values, np.array(losses)[t], rtol=1e-3)
    measured = xr.DataArray(
        np.array(losses), dims="test_step", coords={"test_step": np.arange(steps + 1)}
    )
    cmp = compare_loss_curves(pred, measured, measured_time_dim="test_step")
    assert float(cmp.log10_rmse) < 1e-3
    assert cmp.ratio.sizes["step"] == len(t)


def test_compare_loss_curves_on_known_ratio_and_per_width_spectra():
    _, k = _kernel()
    da = xr.DataArray(np.stack([k, 2 * k]), dims=("width", *DIMS), coords={"width": [8, 16]})
    eig = ntk_eigen(da, sample_dims=DIMS)
    np.testing.assert_allclose(eig.eigenvalue.sel(width=16), 2 * LAM)
    pred = gradient_flow_loss(eig, _y(np.ones(M)), eta=0.1, times=[0, 1, 2])
    assert pred.dims == ("width", "step")
    cmp = compare_loss_curves(pred, 2 * pred.isel(step=[1, 2]))
    np.testing.assert_allclose(cmp.ratio, 2.0)
    np.testing.assert_allclose(cmp.log10_rmse, np.log10(2.0))


def test_errors_teach():
    _, k = _kernel()
    eig = ntk_eigen(xr.DataArray(k, dims=DIMS), sample_dims=DIMS)
    with pytest.raises(AnalysisError, match="kernel's points"):
        cumulative_task_power(eig, xr.DataArray(np.ones((4, 1)), dims=("point", "output")))
    with pytest.raises(AnalysisError, match="square"):
        ntk_eigen(xr.DataArray(np.ones((3, 4)), dims=DIMS), sample_dims=DIMS)
    with pytest.raises(AnalysisError, match="eta"):
        gradient_flow_loss(eig, _y(np.ones(M)), eta=-1.0, times=[0])


def test_initial_outputs_per_width_broadcast_by_name():
    """f0 varies with width (each width's initial ensemble output): matched by dim name."""
    _, k = _kernel()
    da = xr.DataArray(np.stack([k, k]), dims=("width", *DIMS), coords={"width": [8, 16]})
    eig = ntk_eigen(da, sample_dims=DIMS)
    rng = np.random.default_rng(4)
    y = _y(rng.normal(size=M))
    f0 = xr.DataArray(rng.normal(size=(2, M, 1)), dims=("width", "point", "output"))
    pred = gradient_flow_loss(eig, y, eta=0.1, times=[0.0], f0=f0)
    expected = ((y.values[None] - f0.values) ** 2).mean(axis=(1, 2))
    np.testing.assert_allclose(pred.isel(step=0).values, expected)
