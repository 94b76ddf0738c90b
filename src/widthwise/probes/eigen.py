"""Eigensolvers for symmetric block-diagonal operators, batched over ensemble members:
Lanczos with full reorthogonalization and a residual stopping rule, and block power
iteration (the sharpness probe's solvers; see :mod:`widthwise.probes.sharpness`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from widthwise.probes.hessian import Operator

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


def _project_out(basis: Tensor, w: Tensor) -> Tensor:
    """``w`` (seed, n) made orthogonal to the rows of ``basis`` (j, seed, n, orthonormal
    per member): classical Gram-Schmidt, repeated once when it cancelled most of ``w``
    (the Kahan-Parlett "twice is enough" test, ‖w'‖ < ‖w‖/√2, as in DGKS). Batched matrix products on the stored layout (no copy of the
    basis): at a million parameters this memory-bound step costs as much as a
    Hessian-vector product, and the second pass is only paid for when needed."""
    b = basis.transpose(0, 1)  # (seed, j, n), a view
    before = w.norm(dim=1)
    for _ in range(2):
        w = w - torch.bmm(torch.bmm(b, w[:, :, None]).transpose(1, 2), b)[:, 0]
        after = w.norm(dim=1)
        if not bool((after < 0.7071 * before).any()):
            break
        before = after
    return w


def _start(shape: tuple[int, ...], like: Tensor, seed: int) -> Tensor:
    """A random start vector from a fixed CPU generator: float32 draws for a float32 (or
    lower) operator (3× faster than float64 ones at a million parameters), else float64."""
    gen = torch.Generator().manual_seed(seed)
    draw = torch.float64 if like.dtype == torch.float64 else torch.float32
    v = torch.randn(shape, generator=gen, dtype=draw)
    return v.to(device=like.device, dtype=like.dtype)


def lanczos(
    op: Operator,
    like: Tensor,
    k: int = 1,
    iters: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    history: list[Tensor] | None = None,
    stop: str = "residual",
) -> EigResult:
    """Top-k (largest algebraic) eigenpairs of a symmetric block-diagonal operator.

    ``op`` maps ``(seed, n)`` to ``(seed, n)``, row e only depending on row e;
    ``like``: a ``(seed, n)`` tensor giving shape, dtype and device. Lanczos with full
    reorthogonalization, batched over members; stops after ``iters`` iterations
    (capped at n) or when every member's top-k Ritz values pass ``stop``:

    ``"residual"``    (default) the residual estimate r_i = |β_{j+1} s_{j,i}| ≤ tol·|θ_i|:
                      the eigenvector too is accurate.
    ``"eigenvalue"``  the eigenvalue error estimate min(r_i, r_i²/gap_i) ≤ tol·|θ_i|, with
                      gap_i the distance from θ_i to the next Ritz value below it (the
                      Kato–Temple / Saad bound |θ − λ| ≤ r²/gap, with the Ritz gap for the
                      unknown true one; Saad 2011, *Numerical methods for large eigenvalue
                      problems*, Thm 3.8): the eigenvalue to about tol, in fewer steps,
                      the vector less so.

    ``history``, if given, receives each iteration's top Ritz value ``(seed,)``.
    """
    if stop not in ("residual", "eigenvalue"):
        raise ValueError(f"stop must be 'residual' or 'eigenvalue', got {stop!r}")
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
        stacked = buf[: j + 1]  # (j+1, seed, n), a view
        # the three-term recurrence first (two elementwise passes), then one Gram-Schmidt
        # pass against the whole basis for what rounding left along the older vectors:
        # it cancels little, so the second pass (_project_out's DGKS test) is rarely paid
        w = torch.addcmul(w, a[:, None], buf[j], value=-1)
        if j > 0:
            w.addcmul_(betas[-1][:, None], buf[j - 1], value=-1)
        w = _project_out(stacked, w)
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
        if stop == "eigenvalue" and j + 1 > kk:  # the gap to the next Ritz value below
            gap = (theta[:, -kk:] - theta[:, -kk - 1 : -1]).clamp_min(tiny)
            est = torch.minimum(est, est * est / gap)
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
            r = _project_out(stacked, r)
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
    vecs = torch.bmm(coeffs.transpose(1, 2).to(buf.dtype), buf[:steps].transpose(0, 1))
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
