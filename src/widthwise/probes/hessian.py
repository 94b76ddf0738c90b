"""Hessian-vector products on one reused gradient graph, Hutchinson traces, stochastic
Lanczos quadrature and diagonal blocks, all batched over the members of an ensemble.

Everything here acts on *block-diagonal* operators: a vector is ``(seed, n_params)``
and row e of ``A v`` depends on row e of ``v`` only (the Hessian of the sum of member
losses is block-diagonal over members), so one operator application serves every
member and every vector operation is batched per member.

HVP implementations (``implementation=`` of :func:`loss_hvp`; measured in
``benchmarks/hessian.py``, results in ``benchmarks/RESULTS.md``)
-------------------------------------------------------------------------------------
``"graph"`` (default)  ``g = ∇L`` is built once with ``create_graph=True`` (one forward
                       and one backward pass per probe call); each HVP is then one
                       backward pass through that retained graph,
                       ``∂(g · v)/∂w`` (double backward; Pearlmutter 1994), ≈ 2× the
                       cost of a gradient and no forward pass. Memory: the double
                       graph (activations and their gradients) for the whole call.
``"jvp"``              ``torch.func.jvp(torch.func.grad(L))`` (forward-over-reverse):
                       redoes the forward and the backward pass (with tangents) on
                       every HVP, 1.4-2× slower (MLP widths 1024-256, CPU); memory
                       one forward/backward at a time.
                       Kept as the reference the graph HVP is tested against.
``torch.func.linearize`` of ``grad`` was measured too: as fast per HVP as ``"graph"``
but 1.5 s of tracing per call (MLP width 256), so it is not offered.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from widthwise.errors import UserError

Operator = Callable[[Tensor], Tensor]  # (seed, n) -> (seed, n)
HVPImplementation = Literal["graph", "jvp"]


class FlatParams:
    """Maps stacked parameter dicts ``{name: (seed, *shape)}`` to ``(seed, n_params)`` and back."""

    def __init__(self, params: dict[str, Tensor]) -> None:
        self.names = list(params)
        self.shapes = [tuple(p.shape[1:]) for p in params.values()]
        self.sizes = [math.prod(s) for s in self.shapes]
        first = next(iter(params.values()))
        self.members = first.shape[0]
        self.numel = sum(self.sizes)

    def flatten(self, tree: dict[str, Tensor] | Sequence[Tensor]) -> Tensor:
        parts = tree if not isinstance(tree, dict) else [tree[k] for k in self.names]
        return torch.cat([t.reshape(self.members, -1) for t in parts], dim=1)

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

    def offsets(self) -> dict[str, slice]:
        """Each tensor's slice of the flat vector."""
        out, start = {}, 0
        for k, n in zip(self.names, self.sizes):
            out[k] = slice(start, start + n)
            start += n
        return out


def loss_hvp(
    loss_fn: Callable[[dict[str, Tensor]], Tensor],
    params: dict[str, Tensor],
    implementation: HVPImplementation = "graph",
) -> tuple[Operator, FlatParams]:
    """``v ↦ ∇²L v`` for a scalar ``loss_fn(params)`` of stacked ``params`` ``(seed, *shape)``.

    ``loss_fn`` should be the *sum* of member losses, so that its Hessian is
    block-diagonal over members. ``implementation``: see the module docstring. The
    returned operator maps ``(seed, n_params)`` to ``(seed, n_params)``, and a stack
    ``(r, seed, n_params)`` of r vectors to their r products (``"graph"``: one vmapped
    backward pass, ``is_grads_batched``, falling back to r passes where an op has no
    batching rule); ``params`` are read (detached), never changed.
    """
    primal = {k: p.detach() for k, p in params.items()}
    flat = FlatParams(primal)
    if implementation == "jvp":
        grad_fn = torch.func.grad(loss_fn)

        def hvp_jvp(v: Tensor) -> Tensor:
            if v.dim() == 3:
                return torch.stack([hvp_jvp(row) for row in v])
            _, tangent_out = torch.func.jvp(grad_fn, (primal,), (flat.unflatten(v),))
            return flat.flatten(tangent_out)

        return hvp_jvp, flat
    if implementation != "graph":
        raise UserError(f"implementation: expected 'graph' or 'jvp', got {implementation!r}")
    leaves = [p.requires_grad_(True) for p in (t.detach() for t in primal.values())]
    tree = dict(zip(flat.names, leaves))
    with torch.enable_grad():
        grads = torch.autograd.grad(
            loss_fn(tree), leaves, create_graph=True, allow_unused=True, materialize_grads=True
        )
    live = [i for i, g in enumerate(grads) if g.requires_grad]  # others: H rows are zero
    outs = [grads[i] for i in live]

    def one(v: Tensor) -> Tensor:
        parts = torch.split(v, flat.sizes, dim=1)
        vs = [parts[i].reshape(grads[i].shape) for i in live]
        hv = torch.autograd.grad(
            outs, leaves, vs, retain_graph=True, allow_unused=True, materialize_grads=True
        )
        return flat.flatten(list(hv))

    batched_ok = [True]

    def many(v: Tensor) -> Tensor:  # (r, seed, n): r HVPs in one vmapped backward pass
        if batched_ok[0]:
            r = v.shape[0]
            parts = torch.split(v, flat.sizes, dim=2)
            vs = [parts[i].reshape(r, *grads[i].shape) for i in live]
            try:
                hv = torch.autograd.grad(
                    outs,
                    leaves,
                    vs,
                    retain_graph=True,
                    allow_unused=True,
                    materialize_grads=True,
                    is_grads_batched=True,
                )
                return torch.cat([h.reshape(r, flat.members, -1) for h in hv], dim=2)
            except RuntimeError:  # an op without a batching rule: one HVP at a time
                batched_ok[0] = False
        return torch.stack([one(row) for row in v])

    def hvp_graph(v: Tensor) -> Tensor:
        if not outs:
            return torch.zeros_like(v)
        return many(v) if v.dim() == 3 else one(v)

    return hvp_graph, flat


def scaled(op: Operator, scale: Tensor | None) -> Operator:
    """``v ↦ S A S v`` for the diagonal ``S = diag(scale)`` (``scale: (seed, n)``)."""
    if scale is None:
        return op
    return lambda v: scale * op(scale * v)


# -- diagonal blocks ------------------------------------------------------------------------


def block_groups(
    names: Sequence[str], blocks: str | dict[str, list[str]] | None
) -> dict[str, list[str]]:
    """Named groups of tensors: ``"tensor"`` (one per tensor), ``"layer"`` (tensors sharing
    the name before the last ``.``: ``l1.weight`` and ``l1.bias`` form ``l1``), or a
    mapping ``{group: [tensor name or prefix, ...]}`` (a prefix ``l1`` takes every
    ``l1.*``). A group that names no tensor is a :class:`UserError` naming the tensors."""
    if blocks is None:
        return {}
    if blocks == "tensor":
        return {n: [n] for n in names}
    if blocks == "layer":
        out: dict[str, list[str]] = {}
        for n in names:
            out.setdefault(n.rsplit(".", 1)[0] if "." in n else n, []).append(n)
        return out
    if not isinstance(blocks, dict):
        raise UserError(f"blocks: expected 'tensor', 'layer' or a mapping, got {blocks!r}")
    out = {}
    for group, entries in blocks.items():
        members = [n for n in names if any(n == e or n.startswith(e + ".") for e in entries)]
        if not members:
            raise UserError(
                f"blocks.{group}: {', '.join(map(repr, entries)) or '(nothing)'} names no "
                f"parameter tensor; the model's tensors: {', '.join(names)}"
            )
        out[group] = members
    return out


def block_index(flat: FlatParams, tensors: list[str], device: torch.device) -> Tensor:
    """Flat indices (long) of the entries of ``tensors``, in flat order."""
    offs = flat.offsets()
    return torch.cat(
        [
            torch.arange(offs[n].start, offs[n].stop, device=device)
            for n in flat.names
            if n in tensors
        ]
    )


def block_operator(op: Operator, index: Tensor, like: Tensor) -> tuple[Operator, Tensor]:
    """The diagonal block ``A_bb`` of ``op`` on the entries ``index``: an operator on
    ``(seed, len(index))`` vectors (one full application per call), and its ``like``."""

    def sub(v: Tensor) -> Tensor:
        full = like.new_zeros(like.shape)
        full[:, index] = v
        return op(full)[:, index]

    return sub, like[:, index]


# -- Hutchinson trace -----------------------------------------------------------------------


@dataclass
class TraceResult:
    """Hutchinson estimates per member: ``trace``, ``se`` (its standard error) ``(seed,)``;
    per block ``blocks``, ``blocks_se`` ``(seed, block)``; ``samples`` probes used
    (equal for all members); ``hvps`` operator applications."""

    trace: Tensor
    se: Tensor
    samples: int
    hvps: int
    blocks: Tensor | None = None
    blocks_se: Tensor | None = None


def rademacher(shape: tuple[int, ...], like: Tensor, gen: torch.Generator) -> Tensor:
    z = torch.randint(0, 2, shape, generator=gen, dtype=torch.int8)
    return (2 * z - 1).to(device=like.device, dtype=like.dtype)


def hutchinson(
    op: Operator,
    like: Tensor,
    samples: int = 100,
    tol: float = 0.0,
    seed: int = 0,
    blocks: Sequence[Tensor] = (),
    min_samples: int = 8,
    deflate: tuple[Tensor, Tensor] | None = None,
    batch: int = 1,
) -> TraceResult:
    """tr(A) ≈ mean of ``zᵀAz`` over Rademacher ``z`` (Hutchinson 1990), per member.

    Stops after ``samples`` probes, or earlier (never before ``min_samples``) once every
    member's standard error ``std(zᵀAz)/√s`` is ≤ ``tol · |trace|``. ``blocks``: flat
    index tensors; each block's trace ``tr(A_bb)`` is estimated from the same probes as
    ``Σ_{i∈b} z_i (Az)_i`` (unbiased: the off-block terms have mean zero, and add
    variance ``Σ_{i∈b, j∉b} 2 A_ij²/s``). The variance of the full estimate is
    ``2 Σ_{i≠j} A_ij² / s``. The probes come from a generator seeded ``seed``.

    ``deflate=(values, vectors)`` (``(seed, k)``, ``(seed, k, n)``: top eigenpairs, e.g.
    Lanczos Ritz pairs) splits ``tr A = tr(QᵀAQ) + tr(PAP)`` with ``Q`` the orthonormalized
    vectors and ``P = I − QQᵀ`` (exact for any orthonormal Q); ``tr(QᵀAQ) = Σ values``
    for Ritz pairs, and only ``tr(PAP)`` is sampled, as ``(Pz)ᵀA(Pz)``. When a few
    outlying eigenvalues carry most of ``‖A‖_F`` (cross-entropy Hessians: about one
    per class) this removes most of the variance (the idea of Hutch++, Meyer et al.
    2021, with the sharpness solver's eigenvectors). Blocks then add
    ``Σ_j θ_j ‖q_j,b‖²`` to ``Σ_{i∈b} z_i (APz)_i`` (exact up to the Ritz residuals).

    ``batch``: probes applied at once, as an ``(r, seed, n)`` stack (one vmapped backward
    pass on a graph HVP from :func:`loss_hvp`, 1.5-4× faster than r passes for an MLP of
    width 256 on a CPU, at r times the memory of one HVP); ``op`` must then accept such
    stacks (scaled graph HVPs do; 1, the default: one probe at a time, for any
    operator). The stopping rule is checked after each batch.
    """
    e, n = like.shape
    if samples < 2:
        raise UserError(f"trace samples: need at least 2 probes for an error bar, got {samples}")
    gen = torch.Generator().manual_seed(seed)
    rows: list[Tensor] = []
    brows: list[Tensor] = []
    base = like.new_zeros(e)
    bbase = like.new_zeros((e, len(blocks)))
    q = None
    if deflate is not None and deflate[1].shape[1] > 0:
        vals, vecs = deflate
        kk = vecs.shape[1]
        vals = torch.nan_to_num(vals[:, :kk].to(like))
        q = torch.linalg.qr(vecs.to(like).transpose(1, 2)).Q.transpose(1, 2)  # (seed, k, n)
        base = vals.sum(-1)
        if blocks:
            bbase = torch.stack(
                [(vals * (vecs[:, :, b].to(like) ** 2).sum(-1)).sum(-1) for b in blocks], dim=-1
            )
    s = 0
    while s < samples:
        r = min(max(batch, 1), samples - s)
        z = rademacher((r, e, n), like, gen)
        u = z
        if q is not None:
            u = z - torch.einsum("ekn,rek->ren", q, torch.einsum("ekn,ren->rek", q, z))
        au = op(u) if r > 1 and batch > 1 else op(u[0])[None]
        rows.extend(base + (u * au).sum(-1))
        if blocks:
            p = z * au
            brows.extend(bbase + torch.stack([p[..., b].sum(-1) for b in blocks], dim=-1))
        s += r
        if tol > 0 and s >= max(min_samples, 2):
            est = torch.stack(rows)
            se = est.std(0) / math.sqrt(s)
            ok = torch.isfinite(se) & (se <= tol * est.mean(0).abs())
            if bool(ok.all()):
                break
    est = torch.stack(rows)  # (sample, seed)
    s = est.shape[0]
    out = TraceResult(
        est.mean(0), est.std(0) / math.sqrt(s), s, s + (0 if q is None else q.shape[1])
    )
    if blocks:
        b = torch.stack(brows)  # (sample, seed, block)
        out.blocks, out.blocks_se = b.mean(0), b.std(0) / math.sqrt(s)
    return out


# -- stochastic Lanczos quadrature ----------------------------------------------------------


@dataclass
class Quadrature:
    """Gauss quadrature of the spectral measure, per member: ``nodes`` and ``weights``
    ``(seed, run, step)``; each run's weights sum to 1. ``hvps``: applications."""

    nodes: Tensor
    weights: Tensor
    hvps: int


def _orth(w: Tensor, basis: Tensor) -> Tensor:
    for _ in range(2):  # classical Gram-Schmidt, twice
        w = w - torch.einsum("jen,je->en", basis, torch.einsum("jen,en->je", basis, w))
    return w


def slq(op: Operator, like: Tensor, steps: int = 50, runs: int = 4, seed: int = 0) -> Quadrature:
    """Stochastic Lanczos quadrature (Lin, Saad, Yang 2016; Ghorbani, Krishnan, Xiao 2019).

    For each of ``runs`` Rademacher start vectors ``v`` (unit norm), ``m = min(steps, n)``
    Lanczos steps with full reorthogonalization give the tridiagonal ``T_m = S Θ Sᵀ``;
    its eigenvalues ``θ_i`` (nodes) with weights ``τ_i = S_{0i}²`` form the m-point Gauss
    quadrature of the measure ``μ_v = Σ_j (vᵀu_j)² δ_{λ_j}``, exact for polynomials of
    degree ≤ 2m − 1; ``E[μ_v] = (1/n) Σ_j δ_{λ_j}``, the spectral density. A member
    whose Krylov space is invariant before m steps continues on a fresh orthogonal
    direction with coupling 0: those nodes get weight exactly 0.
    """
    e, n = like.shape
    m = max(1, min(steps, n))
    gen = torch.Generator().manual_seed(seed)
    tiny = torch.finfo(like.dtype).eps
    nodes, weights = [], []
    for _ in range(runs):
        q = rademacher((e, n), like, gen)
        basis = like.new_empty((m, e, n))
        basis[0] = q / q.norm(dim=1, keepdim=True)
        alphas: list[Tensor] = []
        betas: list[Tensor] = []
        for j in range(m):
            w = op(basis[j])
            a = (w * basis[j]).sum(-1)
            alphas.append(a)
            if j == m - 1:
                break
            w = _orth(w, basis[: j + 1])
            beta = w.norm(dim=1)
            scale = torch.stack(alphas).abs().amax(0)
            broke = beta <= 100 * tiny * scale.clamp_min(tiny)
            nxt = w / beta.clamp_min(tiny)[:, None]
            if bool(broke.any()):
                r = _orth(
                    torch.randn(e, n, generator=gen, dtype=torch.float64).to(like), basis[: j + 1]
                )
                r = r / r.norm(dim=1, keepdim=True).clamp_min(tiny)
                nxt = torch.where(broke[:, None], r, nxt)
                beta = torch.where(broke, torch.zeros_like(beta), beta)
            betas.append(beta)
            basis[j + 1] = nxt
        t = torch.diag_embed(torch.stack(alphas, dim=1))
        if betas:
            off = torch.stack(betas, dim=1)
            t = t + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
        theta, s = torch.linalg.eigh(torch.nan_to_num(t.to(torch.float64)))
        nodes.append(theta)
        weights.append(s[:, 0, :] ** 2)
    return Quadrature(torch.stack(nodes, 1), torch.stack(weights, 1), runs * m)


def density_grid(nodes: Tensor, points: int = 200, sigma: float = 0.01) -> tuple[Tensor, float]:
    """A grid of ``points`` values covering ``nodes`` (any shape, NaN ignored) with 4σ to
    spare on each side, and the broadening ``σ = sigma · (max − min)`` (``sigma ·
    max(|max|, 1)`` for a single node value)."""
    finite = nodes[torch.isfinite(nodes)]
    if finite.numel() == 0:
        return torch.full((points,), float("nan"), dtype=torch.float64), float("nan")
    lo, hi = float(finite.min()), float(finite.max())
    width = hi - lo if hi > lo else max(abs(hi), 1.0)
    s = sigma * width
    return torch.linspace(lo - 4 * s, hi + 4 * s, points, dtype=torch.float64), s


def broadened_density(nodes: Tensor, weights: Tensor, grid: Tensor, sigma: float) -> Tensor:
    """``φ(t) = (1/R) Σ_r Σ_i τ_ri N(t; θ_ri, σ²)`` averaged over each grid cell, per
    member: ``nodes``, ``weights`` ``(seed, run, step)`` → ``(seed, point)`` on the
    evenly spaced ``grid`` (cell i: ``t_i ± h/2``; its value is the broadened mass in
    the cell divided by h, from differences of the normal CDF). So the density sums to
    its mass on the grid, ``Σ φ_i h = 1`` up to the tails beyond the grid (≈ 6·10⁻⁵ on
    a :func:`density_grid`), however coarse the grid is against σ; the broadening
    keeps the mean ``Σ τθ / R`` and adds σ² to the variance."""
    h = float(grid[1] - grid[0]) if grid.numel() > 1 else 1.0
    lo = (grid - h / 2)[None, None, None, :]
    hi = (grid + h / 2)[None, None, None, :]
    th = nodes[..., None].to(grid)
    rt2 = math.sqrt(2.0) * sigma
    mass = 0.5 * (torch.special.erf((hi - th) / rt2) - torch.special.erf((lo - th) / rt2))
    return (weights[..., None].to(grid) * mass).sum(dim=2).mean(dim=1) / h


def check_k(k: int, n: int, what: str = "k") -> None:
    """k eigenvalues of an n×n operator: a one-line :class:`UserError` when k > n."""
    if k > n:
        raise UserError(f"{what}: {k} eigenvalues asked, but the model has only {n} parameters")
