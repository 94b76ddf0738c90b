"""One-line Hessian measurements on any ``nn.Module`` (the PyHessian questions, with the
probe's batched, residual-checked solvers behind them)::

    import widthwise.probes as wp
    top = wp.sharpness(model, torch.nn.functional.cross_entropy, (x, y), k=3)
    top.eigenvalues                       # (3,) largest algebraic first
    tr = wp.trace(model, loss_fn, (x, y))  # tr.value ± tr.se (Hutchinson)
    d = wp.density(model, loss_fn, (x, y)) # d.grid, d.density (SLQ, integral 1)

The Hessian is that of ``loss_fn(model(x), y)`` with respect to every parameter with
``requires_grad`` (buffers, e.g. batch-norm statistics, are held fixed; the module is
called as it is, so put it in ``eval()`` mode first if it has dropout or batch norm).
The module's parameters are read and never changed; ``batch`` may also be a list of
``(x, y)`` batches, whose Hessians are then averaged (``H = mean_b H_b``). Units: the
loss's per unit of parameter squared. HVPs reuse one gradient graph per call
(:func:`widthwise.probes.hessian.loss_hvp`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from widthwise.errors import UserError
from widthwise.probes.eigen import SOLVERS, lanczos
from widthwise.probes.hessian import (
    HVPImplementation,
    Operator,
    block_groups,
    block_index,
    block_operator,
    broadened_density,
    check_k,
    density_grid,
    hutchinson,
    loss_hvp,
    slq,
)

Batch = tuple[Any, Any]


def _batches(batch: Batch | Sequence[Batch]) -> list[Batch]:
    if isinstance(batch, tuple) and len(batch) == 2 and not isinstance(batch[0], tuple):
        return [batch]
    items = list(batch)
    if not items or not all(isinstance(b, (tuple, list)) and len(b) == 2 for b in items):
        raise UserError("batch: expected (inputs, targets) or a non-empty list of such pairs")
    return [tuple(b) for b in items]  # type: ignore[misc]


def module_hvp(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    batch: Batch | Sequence[Batch],
    implementation: HVPImplementation = "graph",
) -> tuple[Operator, Tensor, list[str], Any]:
    """``(hvp, like, names, flat)`` for the mean Hessian over ``batch``: vectors are
    ``(1, n_params)``; ``names`` the parameters in flat order."""
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not named:
        raise UserError("model: it has no parameter with requires_grad")
    buffers = dict(model.named_buffers())
    stacked = {n: p.detach()[None] for n, p in named.items()}
    items = _batches(batch)
    ops = []
    flat = None
    for x, y in items:

        def loss(raw: dict[str, Tensor], x: Any = x, y: Any = y) -> Tensor:
            tree = {n: t[0] for n, t in raw.items()}
            out = torch.func.functional_call(model, {**buffers, **tree}, (x,))
            return loss_fn(out, y)

        op, flat = loss_hvp(loss, stacked, implementation)
        ops.append(op)
    assert flat is not None

    def hvp(v: Tensor) -> Tensor:
        total = ops[0](v)
        for op in ops[1:]:
            total = total + op(v)
        return total / len(ops)

    return hvp, flat.flatten(stacked), list(named), flat


@dataclass
class Sharpness:
    """Top-k eigenvalues of the Hessian (largest algebraic first), the true residual
    ``‖Hv − θv‖`` of each, the Lanczos (or power) iterations and HVPs taken, and with
    ``blocks`` the top eigenvalue of each diagonal block."""

    eigenvalues: np.ndarray
    residuals: np.ndarray
    iters: int
    hvps: int
    blocks: dict[str, float] = field(default_factory=dict)


@dataclass
class Trace:
    """Hutchinson trace ``value`` with its standard error ``se`` after ``samples``
    Rademacher probes; with ``blocks``, ``{group: (trace, se)}`` of each diagonal block."""

    value: float
    se: float
    samples: int
    blocks: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass
class Density:
    """SLQ spectral density ``density`` on ``grid`` (Gaussian broadening ``sigma``,
    integral 1), and the quadrature ``nodes``, ``weights`` ``(run, step)`` behind it."""

    grid: np.ndarray
    density: np.ndarray
    sigma: float
    nodes: np.ndarray
    weights: np.ndarray


def sharpness(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    batch: Batch | Sequence[Batch],
    *,
    k: int = 1,
    method: Literal["lanczos", "power"] = "lanczos",
    iters: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    blocks: str | dict[str, list[str]] | None = None,
    implementation: HVPImplementation = "graph",
    stop: Literal["residual", "eigenvalue"] = "residual",
) -> Sharpness:
    """Top-``k`` Hessian eigenvalues of ``loss_fn(model(x), y)`` (see the module doc);
    Lanczos with full reorthogonalization stopped at residual ≤ ``tol·|θ|`` (``stop=
    "eigenvalue"``: at the eigenvalue error estimate min(r, r²/gap) ≤ ``tol·|θ|``)."""
    if method not in SOLVERS:
        raise UserError(f"method: expected one of {', '.join(SOLVERS)}, got {method!r}")
    if stop not in ("residual", "eigenvalue") or (stop != "residual" and method != "lanczos"):
        raise UserError(f"stop: expected 'residual' or, with lanczos, 'eigenvalue'; got {stop!r}")
    kw: dict[str, Any] = {"stop": stop} if method == "lanczos" else {}
    hvp, like, names, flat = module_hvp(model, loss_fn, batch, implementation)
    check_k(k, like.shape[1])
    solver = SOLVERS[method]
    r = solver(hvp, like, k=k, iters=iters, tol=tol, seed=seed, **kw)
    out = Sharpness(
        r.values[0].detach().double().numpy(),
        r.residuals[0].detach().double().numpy(),
        int(r.iters[0]),
        r.hvps,
    )
    for group, tensors in block_groups(names, blocks).items():
        sub, sub_like = block_operator(hvp, block_index(flat, tensors, like.device), like)
        b = solver(sub, sub_like, k=1, iters=iters, tol=tol, seed=seed, **kw)
        out.blocks[group] = float(b.values[0, 0])
        out.hvps += b.hvps
    return out


def trace(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    batch: Batch | Sequence[Batch],
    *,
    samples: int = 100,
    tol: float = 0.01,
    seed: int = 0,
    blocks: str | dict[str, list[str]] | None = None,
    deflate: int = 0,
    implementation: HVPImplementation = "graph",
) -> Trace:
    """Hutchinson trace of the Hessian: at most ``samples`` probes, stopping once the
    standard error is ≤ ``tol·|trace|`` (``tol=0``: all of them). ``deflate=k``: the top
    k eigenpairs (Lanczos, tol 1e-3) are added exactly and only the rest is sampled
    (:func:`~widthwise.probes.hessian.hutchinson`), far less noisy when a few outliers
    dominate the spectrum."""
    hvp, like, names, flat = module_hvp(model, loss_fn, batch, implementation)
    groups = block_groups(names, blocks)
    idx = [block_index(flat, t, like.device) for t in groups.values()]
    pairs = None
    if deflate:
        check_k(deflate, like.shape[1], "deflate")
        r0 = lanczos(hvp, like, k=deflate, iters=max(100, 3 * deflate), tol=1e-3, seed=seed)
        pairs = (r0.values, r0.vectors)
    r = hutchinson(hvp, like, samples, tol, seed, idx, deflate=pairs, batch=8)
    out = Trace(float(r.trace[0]), float(r.se[0]), r.samples)
    if groups:
        assert r.blocks is not None and r.blocks_se is not None
        for i, g in enumerate(groups):
            out.blocks[g] = (float(r.blocks[0, i]), float(r.blocks_se[0, i]))
    return out


def density(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    batch: Batch | Sequence[Batch],
    *,
    steps: int = 50,
    runs: int = 4,
    points: int = 200,
    sigma: float = 0.01,
    seed: int = 0,
    implementation: HVPImplementation = "graph",
) -> Density:
    """SLQ spectral density: ``runs`` × ``steps`` HVPs, broadened by ``σ = sigma ·``
    (spectral range) on a grid of ``points`` values (4σ beyond the extreme nodes)."""
    if points < 2:
        raise UserError(f"points: a density grid needs at least 2 points, got {points}")
    hvp, like, _, _ = module_hvp(model, loss_fn, batch, implementation)
    q = slq(hvp, like, steps, runs, seed)
    grid, s = density_grid(q.nodes, points, sigma)
    dens = broadened_density(q.nodes, q.weights, grid, s)[0]
    return Density(grid.numpy(), dens.double().numpy(), s, q.nodes[0].numpy(), q.weights[0].numpy())
