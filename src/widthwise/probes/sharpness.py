"""Hessian sharpness of the training loss for every seed at once (paper Section 2, Fig. 6a).

What is measured
----------------
The loss is the training loss (``mse`` or ``cross_entropy``, as trained) of each
member on a fixed *sharpness batch*: the first ``batch_points`` points of the
study's probe set (a fixed sample of the same online distribution the batches
come from, so its Hessian estimates the population Hessian; it never changes
over training, so successive values are comparable). Derivatives are taken with
respect to the raw trained parameters ``w`` (what the optimizer sees; the forward
pass applies ``W = multiplier · w``), so every quantity below is in the
optimizer's coordinates. Three operators, each reported as its top-``k``
eigenvalues, largest algebraic first:

``sharpness``          eig(H), H = ∇²_w L. The edge-of-stability quantity of plain
                       gradient descent when every tensor has the same learning rate.
``sharpness_lr``       eig(Λ^{1/2} H Λ^{1/2}), Λ = diag(lr_scale of each tensor). SGD
                       with per-tensor learning rates ``lr · lr_scale`` (muP, mf, ntp)
                       is stable on a quadratic iff ``lr · λ_max < 2`` (``2 + 2β`` with
                       heavy-ball momentum β), so compare ``sharpness_lr`` with
                       ``2 / lr`` (paper Fig. 6a). Equal to ``sharpness`` under ``sp``.
``sharpness_precond``  eig(P^{-1/2} H P^{-1/2}) = eig(P^{-1} H) (similar matrices) for
                       Adam/AdamW (Cohen et al. 2022, "Adaptive gradient methods at
                       the edge of stability"), with P the diagonal preconditioner of
                       the optimizer's most recent update, learning rate included::

                           P = (1 − β1^t) · (sqrt(v_t / (1 − β2^t)) + ε) / η

                       t = updates taken (the optimizer's ``step``), v_t its
                       ``exp_avg_sq`` (``max_exp_avg_sq`` under amsgrad), η the
                       param group's current ``lr`` (``lr · lr_scale`` of the tensor),
                       so that update was exactly ``w ← w − P⁻¹ m_t`` (plus weight
                       decay). The stability threshold is then the dimensionless
                       (2 + 2β1)/(1 − β1) (= 38 for β1 = 0.9), for every tensor's
                       learning rate at once. NaN before the first update.

Algorithms
----------
Hessian-vector products differentiate the *sum* of member losses over the stacked
parameters ``(seed, *shape)``: the Hessian of that sum is block-diagonal over seeds,
so one HVP serves all members, and every vector operation below is batched per
member. Each probe call (and each batch of ``batches``) builds the gradient graph
once (``create_graph=True``) and every HVP backpropagates through it
(``implementation: graph``, default; 1.4-2× faster than ``jvp``, which is
``torch.func.jvp`` of ``torch.func.grad`` and redoes the forward and backward pass on
each HVP; :mod:`widthwise.probes.hessian`). The solvers are in
:mod:`widthwise.probes.eigen`.

``lanczos`` (default)  Lanczos with full reorthogonalization (classical Gram-Schmidt,
                       applied twice), random start vector from a fixed generator;
                       stops when every member's top-``k`` Ritz pairs have residual
                       estimate ``|β_{j+1} s_{j,i}| ≤ tol · |θ_i|`` (``stop:
                       eigenvalue``: the eigenvalue error estimate min(r, r²/gap) ≤
                       tol · |θ_i|, gap to the next Ritz value; fewer HVPs). Memory: one
                       ``seed × n_params`` vector per iteration taken (up to ``iters``).
                       One HVP per iteration.
``power``              subspace (block power) iteration with Rayleigh-Ritz on ``k``
                       vectors, converged when every Ritz residual ``≤ tol · |θ_i|``;
                       it finds the eigenvalues of largest *magnitude*, so when a
                       member's converged set holds a negative value (then it holds
                       λ_min) it reruns on ``H − λ_min I`` to get the largest algebraic
                       ones. ``k`` HVPs per iteration.

``trace``              Hutchinson (Rademacher probes, generator seeded ``seed``): at most
                       ``trace_samples`` HVPs, stopping once every member's standard
                       error ≤ ``trace_tol · |trace|``; ``*_trace_se`` is that error.
                       Probes go 8 at a time through one vmapped backward pass.
``density``            stochastic Lanczos quadrature: ``density_runs`` Rademacher starts ×
                       ``density_steps`` Lanczos steps (full reorthogonalization) give
                       Gauss nodes θ and weights τ; the density is
                       ``(1/R) Σ τ N(θ, σ²)`` averaged over the cells of a grid of
                       ``density_points`` values spanning the nodes (of every alive seed
                       and batch) with 4σ to spare, ``σ = density_sigma · (θ_max − θ_min)``.
                       It integrates to 1 and its mean is the Hutchinson estimate of
                       ``tr / n_params`` of the same vectors; σ adds σ² to its variance.
``blocks``             the diagonal blocks ``H_bb`` of groups of tensors (``tensor``: one
                       per tensor; ``layer``: by the name before the last ``.``; or a
                       mapping ``{group: [tensor names or prefixes]}``): top eigenvalue by
                       the same solver (``k = 1``, one full HVP per iteration and block)
                       and trace ``Σ_{i∈b} z_i (Hz)_i`` from the trace's probes (unbiased;
                       off-block terms add variance).
``batches``            k disjoint batches of ``batch_points`` probe points (fewer points
                       each when the probe set holds fewer than k · batch_points): every
                       value is the mean over batches, ``*_batch_sd`` the spread over them.

Reported per member: ``*_iters`` the iterations the member needed to converge
(``iters`` when it did not), and ``*_residual`` the true residual ``‖A v − θ v‖``
of each unit Ritz vector ``v`` (``k`` extra HVPs for Lanczos). Members ``alive``
is False for (diverged) are NaN. The probe reads the parameters and optimizer
state and never changes them (nor the global RNG).
"""

from __future__ import annotations

import math
import sys
import types
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor

from widthwise.dataset_schema import Dim, Schema, Var, declare
from widthwise.ensemble import Ensemble, Strategy
from widthwise.errors import UserError
from widthwise.losses import per_member_loss
from widthwise.probes.base import (
    PROBES,
    ModelFacts,
    ProbeContext,
    ProbeDef,
    ProbeResult,
    mask_diverged,
)
from widthwise.probes.eigen import SOLVERS, EigResult, lanczos, power_iteration  # noqa: F401 (re-exported)
from widthwise.probes.hessian import (
    FlatParams,
    HVPImplementation,
    Operator,
    Quadrature,
    TraceResult,
    block_groups,
    block_index,
    block_operator,
    broadened_density,
    check_k,
    density_grid,
    hutchinson,
    loss_hvp,
    scaled,
    slq,
)
from widthwise.schedule import Schedule

# -- Hessian-vector products -------------------------------------------------------------


def ensemble_hvp(
    ensemble: Ensemble,
    params: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    implementation: HVPImplementation = "graph",
) -> tuple[Operator, FlatParams]:
    """Hessian-vector product of every member's loss on ``(x, y)`` at once.

    ``params``: raw stacked parameters ``(seed, *shape)``; ``x: (batch, *in_shape)``;
    ``y`` as :func:`~widthwise.losses.per_member_loss`. Returns ``hvp`` mapping
    ``v: (seed, n_params)`` to ``H v`` (block-diagonal over seeds: row e is
    ``H_e v_e``, with H_e the Hessian of member e's mean loss w.r.t. its raw ``w``),
    and the flattener. ``implementation="graph"`` (default) builds the gradient graph
    of ``Σ_e L_e`` once and backpropagates through it per HVP; ``"jvp"`` is
    ``jvp(grad(Σ_e L_e))``, a forward and backward pass per HVP
    (:func:`widthwise.probes.hessian.loss_hvp`).
    """

    strategy = hvp_strategy(ensemble)

    def total_loss(raw: dict[str, Tensor]) -> Tensor:
        logits = ensemble.forward(raw, x, strategy=strategy)  # (seed, batch, output)
        return per_member_loss(ensemble.loss, logits, y).sum()

    return loss_hvp(total_loss, params, implementation)


HVP_LOOP_WIDTH = 256
"""From this width on a CPU the Hessian graph is built member by member (the ensemble's
``loop`` strategy), not through the stacked batched matmuls the training step uses:
an HVP through the stacked graph's double backward spends its time in the transposed
layouts' copies and gradient sums. Measured (benchmarks/RESULTS.md, Hessian: MLP
depth 3, 4 seeds, batch 256, float32), stacked / loop time per HVP: 0.96 (width 64),
1.26 (256), 1.78 (1024) with 1 thread; 0.66, 1.08, 1.71 with 2. A fixed rule, never
timed at run time, as the ensemble's own strategy choice."""


def hvp_strategy(ensemble: Ensemble) -> Strategy:
    """The forward strategy of the sharpness probe's Hessian graph (:data:`HVP_LOOP_WIDTH`):
    ``loop`` on a CPU from width 256, else the ensemble's own."""
    if ensemble.device.type == "cpu" and ensemble.network.width >= HVP_LOOP_WIDTH:
        return "loop"
    return ensemble.strategy


def adam_preconditioner(
    optimizer: torch.optim.Optimizer | None, params: dict[str, Tensor]
) -> dict[str, Tensor] | None:
    """Adam's diagonal preconditioner P of its most recent update, per stacked tensor.

    ``P = (1 − β1^t) (sqrt(v_t / (1 − β2^t)) + ε) / η`` elementwise (shapes as
    ``params``), with t the update count, v_t ``exp_avg_sq`` (``max_exp_avg_sq``
    under amsgrad) and η the param group's ``lr``: the last update was
    ``w ← w − P⁻¹ m_t`` (Cohen et al. 2022). ``None`` when the optimizer keeps no
    second moments (SGD, no optimizer); all-NaN tensors before the first update.
    """
    if optimizer is None:
        return None
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    member_scalars = getattr(optimizer, "member_scalars", None)  # a beta/eps sweep
    if member_scalars is None and not all(
        ("betas" in groups.get(id(p), {}) and "eps" in groups[id(p)]) for p in params.values()
    ):
        return None
    out = {}
    for name, p in params.items():
        g = groups[id(p)]
        state = optimizer.state.get(p, {})
        sq = state.get("max_exp_avg_sq") if g.get("amsgrad") else state.get("exp_avg_sq")
        t = float(state["step"]) if "step" in state else 0.0
        if sq is None or t < 1:
            out[name] = torch.full_like(p.detach(), float("nan"))
            continue
        if member_scalars is not None:  # (member, 1, ...) tensors or floats
            m = member_scalars(p)
            b1, b2, eps = m["beta1"], m["beta2"], m["eps"]
        else:
            (b1, b2), eps = g["betas"], g["eps"]
        lr = float(g["lr"])
        denom = (sq.detach() / (1 - b2**t)).sqrt() + eps
        out[name] = (1 - b1**t) * denom / lr
    return out


# -- the probe ---------------------------------------------------------------------------


class SharpnessOptions(Schedule):
    """Top-k Hessian eigenvalues on the sharpness batch (see module docstring); optionally
    the Hutchinson trace, the SLQ spectral density, per-block curvature and the spread
    over several batches, of every operator asked for.

    Default schedule (when none of every/steps/log_spaced/at is given): ``log_spaced: 20``.
    """

    default_schedule: ClassVar[dict[str, Any] | None] = {"log_spaced": 20}

    k: int = Field(
        1, ge=1, le=1000, description="eigenvalues per operator, largest algebraic first"
    )
    method: Literal["lanczos", "power"] = "lanczos"
    iters: int = Field(
        100, ge=1, le=10**5, description="maximum iterations (power: k HVPs each; ≤ 10⁵)"
    )
    tol: float = Field(1e-3, gt=0, description="stop at residual ≤ tol·|eigenvalue|")
    stop: Literal["residual", "eigenvalue"] = Field(
        "residual",
        description="lanczos: stop on the residual (eigenvector accurate too) or on the "
        "eigenvalue error estimate min(r, r²/gap) ≤ tol·|eigenvalue| (fewer HVPs)",
    )
    batch_points: int = Field(256, ge=1, le=10**6, description="first points of the probe set used")
    plain: bool = Field(True, description="eig(H) itself (false: only the operators below)")
    lr_weighted: bool = Field(True, description="also eig(Λ^½ H Λ^½), Λ = lr scales")
    preconditioned: bool = Field(False, description="also Adam's eig(P⁻¹H), if Adam")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the random start vectors")
    trace: bool = Field(False, description="also the Hutchinson trace and its standard error")
    trace_samples: int = Field(
        100, ge=2, le=10**5, description="most Rademacher probes per trace (≥ 2)"
    )
    trace_tol: float = Field(
        0.01, ge=0, description="stop once standard error ≤ trace_tol·|trace| (0: all samples)"
    )
    trace_deflate: int = Field(
        0, ge=0, le=1000, description="sample the trace without the top eigenpairs (0: plain)"
    )
    density: bool = Field(False, description="also the SLQ spectral density on a grid")
    density_steps: int = Field(50, ge=2, le=10**4, description="Lanczos steps per SLQ run")
    density_runs: int = Field(4, ge=1, le=1000, description="SLQ random start vectors")
    density_points: int = Field(200, ge=2, le=10**5, description="grid points of the density")
    density_sigma: float = Field(
        0.01, gt=0, le=1, description="Gaussian broadening σ as a fraction of the spectral range"
    )
    blocks: Literal["tensor", "layer"] | dict[str, list[str]] | None = Field(
        None,
        description="per-block top eigenvalue and trace: 'tensor', 'layer' or "
        "{group: [tensor names or prefixes]}",
    )
    batches: int = Field(
        1, ge=1, le=1000, description="average over this many disjoint batches of batch_points"
    )
    implementation: HVPImplementation = Field(
        "graph", description="HVP: 'graph' (one gradient graph per call) or 'jvp'"
    )

    @model_validator(mode="after")
    def _some_operator(self) -> SharpnessOptions:
        if not (self.plain or self.lr_weighted or self.preconditioned):
            raise ValueError("plain, lr_weighted and preconditioned are all false: nothing to do")
        if self.stop != "residual" and self.method != "lanczos":
            raise ValueError(
                f"stop: {self.stop!r} needs method 'lanczos' (power stops on residuals)"
            )
        if isinstance(self.blocks, dict):
            if not self.blocks:
                raise ValueError("blocks: an empty mapping names no group")
            empty = [g for g, names in self.blocks.items() if not names]
            if empty:
                raise ValueError(f"blocks.{empty[0]}: the group names no tensor")
        return self


_SHARP = ("width", "seed", "sharpness_step")
_EIG = (*_SHARP, "sharpness_eig")
_BIN = (*_SHARP, "sharpness_bin")
_LAYER = (*_SHARP, "sharpness_layer")


def _operator_vars(var: str, what: str, units: str, when: str) -> tuple[Var, ...]:
    return (
        Var(var, _EIG, units, f"top-k eigenvalues of {what}", when=when),
        Var(
            f"{var}_residual",
            _EIG,
            "as the eigenvalue",
            "true residual ‖Av − θv‖ of each unit Ritz vector",
            when=when,
        ),
        Var(f"{var}_iters", _SHARP, "iterations", "iterations the member needed", when=when),
        Var(
            f"{var}_batch_sd",
            _EIG,
            units,
            "standard deviation of the eigenvalues over the batches (values: their mean)",
            when=f"{when}, `batches` > 1",
        ),
        Var(f"{var}_trace", _SHARP, units, f"Hutchinson trace of {what}", when=f"{when}, `trace`"),
        Var(
            f"{var}_trace_se",
            _SHARP,
            units,
            "standard error of the trace estimate",
            when=f"{when}, `trace`",
        ),
        Var(
            f"{var}_trace_batch_sd",
            _SHARP,
            units,
            "standard deviation of the trace over the batches",
            when=f"{when}, `trace`, `batches` > 1",
        ),
        Var(
            f"{var}_density",
            _BIN,
            f"1/({units})" if units != "dimensionless" else "dimensionless",
            "SLQ spectral density (Gaussian-broadened, integral 1) on the grid",
            when=f"{when}, `density`",
        ),
        Var(
            f"{var}_density_grid",
            _BIN,
            units,
            "eigenvalue grid of the density (the same for every seed of a step)",
            when=f"{when}, `density`",
        ),
        Var(
            f"{var}_block_top",
            _LAYER,
            units,
            "top eigenvalue of each diagonal block (layer group)",
            when=f"{when}, `blocks`",
        ),
        Var(
            f"{var}_block_trace",
            _LAYER,
            units,
            "Hutchinson trace of each diagonal block",
            when=f"{when}, `blocks`",
        ),
        Var(
            f"{var}_block_trace_se",
            _LAYER,
            units,
            "standard error of the block trace",
            when=f"{when}, `blocks`",
        ),
    )


SHARPNESS = declare(
    Schema(
        "sharpness",
        "sharpness_step",
        (
            Dim("sharpness_step", "steps of the `sharpness` probe", "steps"),
            Dim("sharpness_eig", "eigenvalue index, 0 = the largest (`k` entries)", "0 … k−1"),
            Dim(
                "sharpness_bin",
                "grid point of the spectral density (`density_points` entries)",
                "0 … density_points−1 (values: `*_density_grid`)",
            ),
            Dim("sharpness_layer", "diagonal block (layer group) of `blocks`", "group names"),
        ),
        (
            *_operator_vars(
                "sharpness", "H = ∇²L w.r.t. the raw w", "loss/w²", "`plain: true` (default)"
            ),
            *_operator_vars(
                "sharpness_lr",
                "Λ^½HΛ^½ (Λ: per-tensor lr scales)",
                "loss/w²",
                "`lr_weighted: true` (default)",
            ),
            *_operator_vars(
                "sharpness_precond",
                "P⁻¹H (P: Adam's preconditioner; NaN before the first update)",
                "dimensionless",
                "`preconditioned: true`, with Adam",
            ),
        ),
    )
)


def _healthy_params(params: dict[str, Tensor], alive: Tensor) -> dict[str, Tensor]:
    """Detached params with dead members replaced by the first alive one (NaN'd later)."""
    if bool(alive.all()):
        return {k: p.detach() for k, p in params.items()}
    src = int(torch.nonzero(alive)[0])
    mask = alive.to(next(iter(params.values())).device)
    out = {}
    for k, p in params.items():
        m = mask.reshape(-1, *([1] * (p.dim() - 1)))
        out[k] = torch.where(m, p.detach(), p.detach()[src : src + 1])
    return out


@dataclass
class OperatorMeasure:
    """What :func:`measure_operator` found for one operator on one batch (per member)."""

    eig: EigResult | None = None
    trace: TraceResult | None = None
    quad: Quadrature | None = None
    block_top: Tensor | None = None  # (seed, block)


TRACE_BATCH = 8
"""Hutchinson probes per vmapped HVP (:func:`~widthwise.probes.hessian.hutchinson`)."""


def measure_operator(
    op: Operator, like: Tensor, options: SharpnessOptions, blocks: list[Tensor], eig: bool = True
) -> OperatorMeasure:
    """Top-k eigenpairs, trace, SLQ quadrature and block curvature of ``op`` as
    ``options`` ask (``blocks``: flat index tensors of the groups)."""
    out = OperatorMeasure()
    solver = SOLVERS[options.method]
    kw: dict[str, Any] = {"iters": options.iters, "tol": options.tol, "seed": options.seed}
    if options.method == "lanczos":
        kw["stop"] = options.stop
    if eig:
        out.eig = solver(op, like, k=options.k, **kw)
    if options.trace or blocks:
        deflate = None
        if options.trace_deflate:
            pairs = out.eig
            if pairs is None or pairs.vectors.shape[1] < options.trace_deflate:
                pairs = solver(op, like, k=options.trace_deflate, **kw)
            d = options.trace_deflate
            deflate = (pairs.values[:, :d], pairs.vectors[:, :d])
        out.trace = hutchinson(
            op,
            like,
            options.trace_samples,
            options.trace_tol,
            options.seed,
            blocks,
            deflate=deflate,
            batch=TRACE_BATCH,
        )
    if options.density:
        out.quad = slq(op, like, options.density_steps, options.density_runs, options.seed)
    if blocks:
        tops = []
        for index in blocks:
            sub, sub_like = block_operator(op, index, like)
            tops.append(solver(sub, sub_like, k=1, **kw).values[:, 0])
        out.block_top = torch.stack(tops, dim=1)
    return out


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float64).numpy()


def _combine(
    var: str, found: list[OperatorMeasure], options: SharpnessOptions, ok: np.ndarray
) -> dict[str, np.ndarray]:
    """The stored arrays of one operator from its measures on each batch (mean over
    batches; spread over batches when there are several)."""
    out: dict[str, np.ndarray] = {}
    nb = len(found)

    def mean_sd(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        a = np.stack(arrays)
        return a.mean(0), (a.std(0, ddof=1) if nb > 1 else np.zeros_like(a[0]))

    first = found[0]
    if first.eig is not None:
        vals, sd = mean_sd([_np(f.eig.values) for f in found])  # type: ignore[union-attr]
        out[var] = vals
        out[f"{var}_residual"] = np.stack([_np(f.eig.residuals) for f in found]).max(0)  # type: ignore[union-attr]
        out[f"{var}_iters"] = np.stack([f.eig.iters.numpy() for f in found]).max(0).astype(float)  # type: ignore[union-attr]
        if nb > 1:
            out[f"{var}_batch_sd"] = sd
    if first.trace is not None and options.trace:
        tr, sd = mean_sd([_np(f.trace.trace) for f in found])  # type: ignore[union-attr]
        se = np.sqrt(np.stack([_np(f.trace.se) ** 2 for f in found]).sum(0)) / nb  # type: ignore[union-attr]
        out[f"{var}_trace"], out[f"{var}_trace_se"] = tr, se
        if nb > 1:
            out[f"{var}_trace_batch_sd"] = sd
    if first.quad is not None:
        nodes = torch.cat([f.quad.nodes for f in found], dim=1)  # type: ignore[union-attr]
        weights = torch.cat([f.quad.weights for f in found], dim=1)  # type: ignore[union-attr]
        alive_nodes = nodes[torch.as_tensor(ok)]
        grid, sigma = density_grid(alive_nodes, options.density_points, options.density_sigma)
        dens = broadened_density(nodes, weights, grid, sigma) if math.isfinite(sigma) else None
        e = nodes.shape[0]
        out[f"{var}_density"] = (
            _np(dens) if dens is not None else np.full((e, options.density_points), np.nan)
        )
        out[f"{var}_density_grid"] = np.repeat(_np(grid)[None], e, axis=0)
    if first.block_top is not None:
        out[f"{var}_block_top"] = np.stack([_np(f.block_top) for f in found]).mean(0)  # type: ignore[arg-type]
        bt = [_np(f.trace.blocks) for f in found]  # type: ignore[union-attr, arg-type]
        bse = [_np(f.trace.blocks_se) ** 2 for f in found]  # type: ignore[union-attr, operator]
        out[f"{var}_block_trace"] = np.stack(bt).mean(0)
        out[f"{var}_block_trace_se"] = np.sqrt(np.stack(bse).sum(0)) / nb
    return out


def sharpness_probe(ctx: ProbeContext, options: SharpnessOptions) -> ProbeResult:
    """Sharpness probe (paper Fig. 6a); variables and dims:

    ``sharpness``, ``sharpness_residual`` (seed, sharpness_eig); ``sharpness_iters``
    (seed,); likewise ``sharpness_lr*`` (``lr_weighted``) and ``sharpness_precond*``
    (``preconditioned`` with an Adam-type ``ctx.optimizer``; omitted otherwise).
    With ``trace``: ``<op>_trace``, ``<op>_trace_se`` (seed,); ``density``:
    ``<op>_density``, ``<op>_density_grid`` (seed, sharpness_bin); ``blocks``:
    ``<op>_block_top``, ``<op>_block_trace``, ``<op>_block_trace_se`` (seed,
    sharpness_layer) and the coordinate ``sharpness_layer``; ``batches`` > 1:
    ``<op>_batch_sd`` (seed, sharpness_eig), ``<op>_trace_batch_sd`` (seed,).
    Declared in :data:`SHARPNESS`.
    """
    alive = ctx.alive.detach().cpu().numpy().astype(bool)
    e, k = ctx.ensemble.size, options.k
    n_all = ctx.probe_x.shape[0]
    n = min(options.batch_points, n_all // options.batches)
    if n < 1:
        raise UserError(
            f"probes.sharpness.batches: {options.batches} batches need at least "
            f"{options.batches} probe points, the study has {n_all}"
        )
    lr_scales = {name: ctx.ensemble.rules[name].lr_scale for name in ctx.params}
    precond = adam_preconditioner(ctx.optimizer, ctx.params) if options.preconditioned else None
    ops: dict[str, str] = {"sharpness": "plain"} if options.plain else {}
    if options.lr_weighted:
        ops["sharpness_lr"] = "lr"
    if precond is not None:
        ops["sharpness_precond"] = "precond"
    n_params = sum(math.prod(p.shape[1:]) for p in ctx.params.values())
    check_k(k, n_params, "probes.sharpness.k")
    check_k(options.trace_deflate, n_params, "probes.sharpness.trace_deflate")
    groups = block_groups(list(ctx.params), options.blocks)
    out: ProbeResult = {}
    if groups:
        out["sharpness_layer"] = (("sharpness_layer",), np.array(list(groups)))
    if not alive.any():
        dummy = _nan_measures(e, options, len(groups))
        for var in ops:
            for name, v in _combine(var, [dummy], options, alive).items():
                out[name] = (SHARPNESS.result_dims(name), np.full_like(v, np.nan))
        return {key: out[key] for key in sorted(out)}
    params = _healthy_params(ctx.params, ctx.alive)
    scales: dict[str, Tensor | None] = {}
    unusable: dict[str, np.ndarray] = {}
    same_as_plain = all(s == 1.0 for s in lr_scales.values()) and "sharpness" in ops
    found: dict[str, list[OperatorMeasure]] = {var: [] for var in ops}
    for b in range(options.batches):
        x = ctx.probe_x[b * n : (b + 1) * n]
        y = ctx.probe_y[b * n : (b + 1) * n]
        hvp, flat = ensemble_hvp(ctx.ensemble, params, x, y, options.implementation)
        like = flat.flatten(params)
        blocks = [block_index(flat, names, like.device) for names in groups.values()]
        for var, kind in ops.items():
            if kind == "lr" and same_as_plain:  # Λ = I: the plain operator again
                continue
            if var not in scales:
                scales[var] = _scale(kind, flat, like, lr_scales, precond, var, unusable)
            if var in unusable and not (alive & ~unusable[var]).any():
                continue  # e.g. step 0 under Adam: nothing to compute
            found[var].append(measure_operator(scaled(hvp, scales[var]), like, options, blocks))
    if same_as_plain and "sharpness_lr" in ops:
        found["sharpness_lr"] = found["sharpness"]
    for var in ops:
        ok = alive & ~unusable.get(var, np.zeros(e, dtype=bool))
        if not found[var]:
            found[var] = [_nan_measures(e, options, len(groups))]
        for name, v in _combine(var, found[var], options, ok).items():
            out[name] = (SHARPNESS.result_dims(name), mask_diverged(v, ok))
    return {key: out[key] for key in sorted(out)}


def _scale(
    kind: str,
    flat: FlatParams,
    like: Tensor,
    lr_scales: dict[str, float],
    precond: dict[str, Tensor] | None,
    var: str,
    unusable: dict[str, np.ndarray],
) -> Tensor | None:
    """The diagonal S of the operator S H S (None: H itself)."""
    if kind == "lr":
        if all(s == 1.0 for s in lr_scales.values()):
            return None
        return flat.per_tensor({k_: math.sqrt(s) for k_, s in lr_scales.items()}, like)
    if kind == "precond":
        assert precond is not None
        scale = flat.flatten(precond).to(like).rsqrt()
        bad = ~torch.isfinite(scale).all(dim=1)  # before the first update, or dead
        if bool(bad.any()):
            scale = torch.where(bad[:, None], torch.ones_like(scale), scale)
            unusable[var] = bad.cpu().numpy()
        return scale
    return None


def _nan_measures(e: int, options: SharpnessOptions, n_blocks: int) -> OperatorMeasure:
    """A measure of the right shapes holding NaN (no member could be measured)."""
    k = options.k
    nan = lambda *shape: torch.full(shape, float("nan"), dtype=torch.float64)  # noqa: E731
    m = OperatorMeasure(
        eig=EigResult(nan(e, k), nan(e, k), torch.zeros(e, dtype=torch.long), 0, nan(e, k, 1))
    )
    if options.trace or n_blocks:
        m.trace = TraceResult(nan(e), nan(e), 0, 0, nan(e, n_blocks), nan(e, n_blocks))
    if options.density:
        m.quad = Quadrature(nan(e, 1, 1), nan(e, 1, 1), 0)
    if n_blocks:
        m.block_top = nan(e, n_blocks)
    return m


def _coords(options: SharpnessOptions) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    out = {"sharpness_eig": (("sharpness_eig",), np.arange(options.k))}
    if options.density:
        out["sharpness_bin"] = (("sharpness_bin",), np.arange(options.density_points))
    return out


def _model_problems(options: SharpnessOptions, facts: ModelFacts) -> list[str]:
    """What ``options`` ask that this model cannot give (checked before a run)."""
    problems = []
    for key, k in (("k", options.k), ("trace_deflate", options.trace_deflate)):
        if k > facts.n_params:
            problems.append(
                f"{key}: {k} eigenvalues asked, but the model has only {facts.n_params} parameters"
            )
    try:
        block_groups(list(facts.names), options.blocks)
    except UserError as err:
        problems.append(str(err))
    if options.batches > facts.probe_points:
        problems.append(
            f"batches: {options.batches} batches need at least {options.batches} probe "
            f"points, the study has {facts.probe_points} (data.probe_points)"
        )
    return problems


PROBES.register(
    "sharpness",
    options=SharpnessOptions,
    description="top-k Hessian eigenvalues, trace, spectral density and per-layer curvature "
    "of the training loss, all seeds at once",
)(
    ProbeDef(
        fn=sharpness_probe,
        step_dim="sharpness_step",
        coords=_coords,
        model_problems=_model_problems,
    )
)


class _CallableModule(types.ModuleType):
    """``widthwise.probes.sharpness(model, loss_fn, batch, ...)`` is the standalone
    measurement on a plain ``nn.Module`` (:func:`widthwise.probes.standalone.sharpness`);
    the module's contents stay reachable as before."""

    def __call__(self, model: Any, loss_fn: Any, batch: Any, **options: Any) -> Any:
        from widthwise.probes.standalone import sharpness

        return sharpness(model, loss_fn, batch, **options)


sys.modules[__name__].__class__ = _CallableModule
