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
Hessian-vector products are forward-over-reverse (``torch.func.jvp`` of
``torch.func.grad``) of the *sum* of member losses over the stacked parameters
``(seed, *shape)``: the Hessian of that sum is block-diagonal over seeds, so one
HVP serves all members, and every vector operation below is batched per member.

``lanczos`` (default)  Lanczos with full reorthogonalization (classical Gram-Schmidt,
                       applied twice), random start vector from a fixed generator;
                       stops when every member's top-``k`` Ritz pairs have residual
                       estimate ``|β_{j+1} s_{j,i}| ≤ tol · |θ_i|``. Memory: one
                       ``seed × n_params`` vector per iteration taken (up to ``iters``).
                       One HVP per iteration.
``power``              subspace (block power) iteration with Rayleigh-Ritz on ``k``
                       vectors, converged when every Ritz residual ``≤ tol · |θ_i|``;
                       it finds the eigenvalues of largest *magnitude*, so when a
                       member's converged set holds a negative value (then it holds
                       λ_min) it reruns on ``H − λ_min I`` to get the largest algebraic
                       ones. ``k`` HVPs per iteration.

Reported per member: ``*_iters`` the iterations the member needed to converge
(``iters`` when it did not), and ``*_residual`` the true residual ``‖A v − θ v‖``
of each unit Ritz vector ``v`` (``k`` extra HVPs for Lanczos). Members ``alive``
is False for (diverged) are NaN. The probe reads the parameters and optimizer
state and never changes them (nor the global RNG).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor

from widthwise.dataset_schema import Dim, Schema, Var, declare
from widthwise.ensemble import Ensemble
from widthwise.losses import per_member_loss
from widthwise.probes.base import PROBES, ProbeContext, ProbeDef, ProbeResult, mask_diverged
from widthwise.schedule import Schedule

Operator = Callable[[Tensor], Tensor]  # (seed, n_params) -> (seed, n_params)


# -- flat per-member vectors ---------------------------------------------------------------


class FlatParams:
    """Maps stacked parameter dicts ``{name: (seed, *shape)}`` to ``(seed, n_params)`` and back."""

    def __init__(self, params: dict[str, Tensor]) -> None:
        self.names = list(params)
        self.shapes = [tuple(p.shape[1:]) for p in params.values()]
        self.sizes = [math.prod(s) for s in self.shapes]
        first = next(iter(params.values()))
        self.members = first.shape[0]
        self.numel = sum(self.sizes)

    def flatten(self, tree: dict[str, Tensor]) -> Tensor:
        return torch.cat([tree[k].reshape(self.members, -1) for k in self.names], dim=1)

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        parts = torch.split(flat, self.sizes, dim=1)
        return {
            k: part.reshape(self.members, *shape)
            for k, part, shape in zip(self.names, parts, self.shapes)
        }

    def per_tensor(self, values: dict[str, float | Tensor], like: Tensor) -> Tensor:
        """A (seed, n_params) vector holding ``values[name]`` on every entry of that tensor."""
        parts = []
        for k, n in zip(self.names, self.sizes):
            v = values[k]
            if isinstance(v, Tensor):
                parts.append(v.reshape(self.members, -1).to(like))
            else:
                parts.append(
                    torch.full((self.members, n), float(v), dtype=like.dtype, device=like.device)
                )
        return torch.cat(parts, dim=1)


def ensemble_hvp(
    ensemble: Ensemble, params: dict[str, Tensor], x: Tensor, y: Tensor
) -> tuple[Operator, FlatParams]:
    """Hessian-vector product of every member's loss on ``(x, y)`` at once.

    ``params``: raw stacked parameters ``(seed, *shape)``; ``x: (batch, *in_shape)``;
    ``y`` as :func:`~widthwise.losses.per_member_loss`. Returns ``hvp`` mapping
    ``v: (seed, n_params)`` to ``H v`` (block-diagonal over seeds: row e is
    ``H_e v_e``, with H_e the Hessian of member e's mean loss w.r.t. its raw ``w``),
    computed as ``jvp(grad(Σ_e L_e))`` (forward-over-reverse), and the flattener.
    """
    primal = {k: p.detach() for k, p in params.items()}
    flat = FlatParams(primal)

    def total_loss(raw: dict[str, Tensor]) -> Tensor:
        logits = ensemble.forward(raw, x)  # (seed, batch, output)
        return per_member_loss(ensemble.loss, logits, y).sum()

    grad_fn = torch.func.grad(total_loss)

    def hvp(v: Tensor) -> Tensor:
        _, tangent_out = torch.func.jvp(grad_fn, (primal,), (flat.unflatten(v),))
        return flat.flatten(tangent_out)

    return hvp, flat


# -- eigensolvers (batched over members) ---------------------------------------------------


@dataclass
class EigResult:
    """Top-k eigenpairs of a block-diagonal operator, per member.

    values ``(seed, k)`` largest algebraic first; residuals ``(seed, k)`` true
    ``‖A v − θ v‖`` for unit v; iters ``(seed,)`` iterations to convergence (the
    maximum when not converged); hvps: operator applications in total (one
    application serves all members); vectors ``(seed, k, n_params)``.
    """

    values: Tensor
    residuals: Tensor
    iters: Tensor
    hvps: int
    vectors: Tensor


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1)


def _start(shape: tuple[int, ...], like: Tensor, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(shape, generator=gen, dtype=torch.float64)
    return v.to(device=like.device, dtype=like.dtype)


def lanczos(
    op: Operator,
    like: Tensor,
    k: int = 1,
    iters: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    history: list[Tensor] | None = None,
) -> EigResult:
    """Top-k (largest algebraic) eigenpairs of a symmetric block-diagonal operator.

    ``op`` maps ``(seed, n)`` to ``(seed, n)``, row e only depending on row e;
    ``like``: a ``(seed, n)`` tensor giving shape, dtype and device. Lanczos with full
    reorthogonalization, batched over members; stops when every member's top-k
    residual estimate is ≤ ``tol · |θ|`` or after ``iters`` iterations (capped at n).
    ``history``, if given, receives each iteration's top Ritz value ``(seed,)``.
    """
    e, n = like.shape
    m = max(1, min(max(iters, k), n))
    tiny = torch.finfo(like.dtype).eps
    q = _start((e, n), like, seed)
    buf = like.new_empty((min(16, m + 1), e, n))  # Lanczos vectors; grows by doubling
    buf[0] = q / q.norm(dim=1, keepdim=True)
    alphas: list[Tensor] = []
    betas: list[Tensor] = []  # betas[j] couples basis[j] and basis[j+1]
    done_at = torch.full((e,), -1, dtype=torch.long)
    theta = s = beta = None
    for j in range(m):
        w = op(buf[j])
        a = _dot(w, buf[j])
        w = w - a[:, None] * buf[j]
        if j > 0:
            w = w - betas[j - 1][:, None] * buf[j - 1]
        stacked = buf[: j + 1]  # (j+1, seed, n), a view
        for _ in range(2):  # "twice is enough"
            w = w - torch.einsum("jen,je->en", stacked, torch.einsum("jen,en->je", stacked, w))
        beta = w.norm(dim=1)
        alphas.append(a)
        t = torch.diag_embed(torch.stack(alphas, dim=1))  # (seed, j+1, j+1)
        if j > 0:
            off = torch.stack(betas, dim=1)
            t = t + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
        theta, s = torch.linalg.eigh(torch.nan_to_num(t))
        if history is not None:
            history.append(theta[:, -1].clone())
        kk = min(k, j + 1)
        top = theta[:, -kk:].abs()
        est = (beta[:, None] * s[:, -1, -kk:]).abs()
        if j + 1 >= k:
            ok = (est <= tol * top.clamp_min(tiny)).all(dim=1).cpu() & (done_at < 0)
            done_at[ok] = j + 1
        if bool((done_at >= 0).all()) or j == m - 1:
            break
        scale = theta.abs().amax(dim=1)
        broke = beta <= 100 * tiny * scale.clamp_min(tiny)
        nxt = w / beta.clamp_min(tiny)[:, None]
        if bool(broke.any()):  # invariant subspace: continue with a fresh orthogonal direction
            r = _start((e, n), like, seed + j + 1)
            for _ in range(2):
                r = r - torch.einsum("jen,je->en", stacked, torch.einsum("jen,en->je", stacked, r))
            r = r / r.norm(dim=1, keepdim=True).clamp_min(tiny)
            nxt = torch.where(broke[:, None], r, nxt)
            beta = torch.where(broke, torch.zeros_like(beta), beta)
        betas.append(beta)
        if j + 1 == buf.shape[0]:
            grown = like.new_empty((min(2 * buf.shape[0], m + 1), e, n))
            grown[: j + 1] = buf
            buf = grown
        buf[j + 1] = nxt
    assert theta is not None and s is not None
    steps = len(alphas)
    done_at[done_at < 0] = steps
    kk = min(k, steps)
    vals = theta[:, -kk:].flip(-1)  # (seed, kk)
    coeffs = s[:, :, -kk:].flip(-1)  # (seed, steps, kk)
    vecs = torch.einsum("jen,eji->ein", buf[:steps], coeffs)
    vecs = vecs / vecs.norm(dim=-1, keepdim=True).clamp_min(tiny)
    res = torch.stack(
        [(op(vecs[:, i]) - vals[:, i, None] * vecs[:, i]).norm(dim=1) for i in range(kk)], dim=1
    )
    return EigResult(_pad(vals, k), _pad(res, k), done_at, steps + kk, vecs)


def _pad(x: Tensor, k: int) -> Tensor:
    if x.shape[1] == k:
        return x
    fill = torch.full((x.shape[0], k - x.shape[1]), float("nan"), dtype=x.dtype, device=x.device)
    return torch.cat([x, fill], dim=1)


def _subspace(
    op: Operator,
    v: Tensor,
    shift: Tensor,
    iters: int,
    tol: float,
    history: list[Tensor] | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """Block power iteration on ``op − shift·I`` from ``v: (seed, n, k)``; values unshifted."""
    e, _, k = v.shape
    tiny = torch.finfo(v.dtype).eps
    done_at = torch.full((e,), -1, dtype=torch.long)
    v, _ = torch.linalg.qr(v)
    it = 0
    for it in range(1, iters + 1):
        w = torch.stack([op(v[:, :, i]) for i in range(k)], dim=2) - shift[:, None, None] * v
        t = v.transpose(1, 2) @ w
        theta, s = torch.linalg.eigh(torch.nan_to_num(0.5 * (t + t.transpose(1, 2))))
        theta, s = theta.flip(-1), s.flip(-1)  # descending
        y, ay = v @ s, w @ s
        res = (ay - y * theta[:, None, :]).norm(dim=1)  # (seed, k)
        if history is not None:
            history.append((theta[:, 0] + shift).clone())
        ok = (res <= tol * theta.abs().clamp_min(tiny)).all(dim=1).cpu() & (done_at < 0)
        done_at[ok] = it
        if bool((done_at >= 0).all()) or it == iters:
            return theta + shift[:, None], res, y, done_at, it
        v, _ = torch.linalg.qr(ay)
    raise AssertionError("unreachable")


def power_iteration(
    op: Operator,
    like: Tensor,
    k: int = 1,
    iters: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    history: list[Tensor] | None = None,
) -> EigResult:
    """Top-k (largest algebraic) eigenpairs by block power iteration, batched over members.

    Same contract as :func:`lanczos`; ``k`` operator applications per iteration,
    ``iters`` iterations at most in total.
    Finds the largest-magnitude eigenvalues first; a member whose converged set
    contains a negative value (λ_min, then) is refined by a second run on
    ``A − λ_min I``, whose top-k are the largest algebraic eigenvalues of ``A``.
    """
    e, n = like.shape
    k = min(k, n)
    v0 = _start((e, k, n), like, seed).transpose(1, 2)
    zero = torch.zeros(e, dtype=like.dtype, device=like.device)
    vals, res, vecs, done, used = _subspace(op, v0, zero, iters, tol, history)
    done[done < 0] = used
    hvps = used * k
    lam_min = vals.amin(dim=1)
    neg = torch.isfinite(lam_min) & (lam_min < 0)
    if bool(neg.any()) and used < iters:
        shift = torch.where(neg, lam_min, zero)
        vals2, res2, vecs2, done2, used2 = _subspace(op, vecs, shift, iters - used, tol, history)
        done2[done2 < 0] = used2
        hvps += used2 * k
        vals = torch.where(neg[:, None], vals2, vals)
        res = torch.where(neg[:, None], res2, res)
        vecs = torch.where(neg[:, None, None], vecs2, vecs)
        done = torch.where(neg.cpu(), used + done2, done)
    return EigResult(vals, res, done, hvps, vecs.transpose(1, 2))


SOLVERS = {"lanczos": lanczos, "power": power_iteration}


def scaled(op: Operator, scale: Tensor | None) -> Operator:
    """``v ↦ S A S v`` for the diagonal ``S = diag(scale)`` (``scale: (seed, n)``)."""
    if scale is None:
        return op
    return lambda v: scale * op(scale * v)


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
    if not all(
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
        b1, b2 = g["betas"]
        lr = float(g["lr"])
        denom = (sq.detach() / (1 - b2**t)).sqrt() + g["eps"]
        out[name] = (1 - b1**t) * denom / lr
    return out


# -- the probe ---------------------------------------------------------------------------


class SharpnessOptions(Schedule):
    """Top-k Hessian eigenvalues on the sharpness batch (see module docstring).

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
    batch_points: int = Field(256, ge=1, le=10**6, description="first points of the probe set used")
    plain: bool = Field(True, description="eig(H) itself (false: only the operators below)")
    lr_weighted: bool = Field(True, description="also eig(Λ^½ H Λ^½), Λ = lr scales")
    preconditioned: bool = Field(False, description="also Adam's eig(P⁻¹H), if Adam")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the random start vectors")

    @model_validator(mode="after")
    def _some_operator(self) -> SharpnessOptions:
        if not (self.plain or self.lr_weighted or self.preconditioned):
            raise ValueError("plain, lr_weighted and preconditioned are all false: nothing to do")
        return self


_SHARP = ("width", "seed", "sharpness_step")
_EIG = (*_SHARP, "sharpness_eig")


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
    )


SHARPNESS = declare(
    Schema(
        "sharpness",
        "sharpness_step",
        (
            Dim("sharpness_step", "steps of the `sharpness` probe", "steps"),
            Dim("sharpness_eig", "eigenvalue index, 0 = the largest (`k` entries)", "0 … k−1"),
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


def sharpness_probe(ctx: ProbeContext, options: SharpnessOptions) -> ProbeResult:
    """Sharpness probe (paper Fig. 6a); variables and dims:

    ``sharpness``, ``sharpness_residual`` (seed, sharpness_eig); ``sharpness_iters``
    (seed,); likewise ``sharpness_lr*`` (``lr_weighted``) and ``sharpness_precond*``
    (``preconditioned`` with an Adam-type ``ctx.optimizer``; omitted otherwise).
    Declared in :data:`SHARPNESS`.
    """
    alive = ctx.alive.detach().cpu().numpy().astype(bool)
    e, k = ctx.ensemble.size, options.k
    n = min(options.batch_points, ctx.probe_x.shape[0])
    x, y = ctx.probe_x[:n], ctx.probe_y[:n]
    lr_scales = {name: ctx.ensemble.rules[name].lr_scale for name in ctx.params}
    precond = adam_preconditioner(ctx.optimizer, ctx.params) if options.preconditioned else None
    ops: dict[str, str] = {"sharpness": "plain"} if options.plain else {}
    if options.lr_weighted:
        ops["sharpness_lr"] = "lr"
    if precond is not None:
        ops["sharpness_precond"] = "precond"
    out: ProbeResult = {}

    def put(var: str, values: np.ndarray, residuals: np.ndarray, iters: np.ndarray) -> None:
        for name, v in ((var, values), (f"{var}_residual", residuals), (f"{var}_iters", iters)):
            out[name] = (SHARPNESS.result_dims(name), v)

    def put_nan(var: str) -> None:
        put(var, np.full((e, k), np.nan), np.full((e, k), np.nan), np.full(e, np.nan))

    if not alive.any():
        for var in ops:
            put_nan(var)
        return out
    params = _healthy_params(ctx.params, ctx.alive)
    hvp, flat = ensemble_hvp(ctx.ensemble, params, x, y)
    like = flat.flatten(params)
    solver = SOLVERS[options.method]
    results: dict[str, EigResult] = {}
    unusable: dict[str, np.ndarray] = {}
    for var, kind in ops.items():
        scale = None
        if kind == "lr":
            if all(s == 1.0 for s in lr_scales.values()):
                if "sharpness" in results:  # Λ = I: the plain operator again
                    results[var] = results["sharpness"]
                    continue
            else:
                scale = flat.per_tensor({k_: math.sqrt(s) for k_, s in lr_scales.items()}, like)
        elif kind == "precond":
            assert precond is not None
            scale = flat.flatten(precond).to(like).rsqrt()
            bad = ~torch.isfinite(scale).all(dim=1)  # before the first update, or dead
            if bool(bad.any()):
                scale = torch.where(bad[:, None], torch.ones_like(scale), scale)
                unusable[var] = bad.cpu().numpy()
                if not (alive & ~unusable[var]).any():  # e.g. step 0: nothing to compute
                    put_nan(var)
                    continue
        results[var] = solver(
            scaled(hvp, scale), like, k=k, iters=options.iters, tol=options.tol, seed=options.seed
        )
    for var, r in results.items():
        ok = alive & ~unusable.get(var, np.zeros(e, dtype=bool))
        iters = mask_diverged(r.iters.numpy().astype(np.float64), ok)
        put(var, _masked(r.values, ok), _masked(r.residuals, ok), iters)
    return {key: out[key] for key in sorted(out)}


def _masked(t: Tensor, alive: np.ndarray) -> np.ndarray:
    return mask_diverged(t.detach().cpu().to(torch.float64).numpy(), alive)


def _coords(options: SharpnessOptions) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    return {"sharpness_eig": (("sharpness_eig",), np.arange(options.k))}


PROBES.register(
    "sharpness",
    options=SharpnessOptions,
    description="top-k Hessian eigenvalues of the training loss (Lanczos), all seeds at once",
)(ProbeDef(fn=sharpness_probe, step_dim="sharpness_step", coords=_coords))
