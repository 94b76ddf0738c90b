"""Empirical neural tangent kernel on probe points, per seed (paper Section 5, Fig. 10).

Definitions
-----------
For member e with raw trained parameters ``w`` (the forward pass uses
``W = multiplier · w``) and outputs ``f(x) ∈ R^C``, the eNTK on points
``x_1..x_M`` is::

    K[i, c, j, d] = Σ_t  ∂f_c(x_i)/∂w_t · ∂f_d(x_j)/∂w_t          (M·C × M·C)

with ``t`` over parameter tensors. Derivatives are w.r.t. the raw ``w`` (what the
optimizer updates), so a tensor with multiplier ``m_t`` contributes
``m_t² J_{W_t} J_{W_t}ᵀ``. Variants:

* traced: ``Σ_c K[i, c, j, c]`` (M × M);
* blocks: the same sum restricted to one parameter tensor (``blocks="tensor"``)
  or one layer (``blocks="layer"``: tensors sharing the name before the last
  dot, ``l1.weight`` + ``l1.bias`` → ``l1``), in the order of ``network.params``;
* learning-rate weighted: ``Σ_t lr_scale_t K_t``, the kernel of the actual
  training dynamics: under gradient flow with per-tensor rates ``lr · lr_scale_t``,
  ``df/dt = −lr · K_lr ∇_f L`` (paper Section 5, Appendix G), so ``K_lr`` is what
  differs between parameterizations (muP, ntp, mf) at equal widths.

Implementations (``implementation=``)
-------------------------------------
``structured``  Never forms a Jacobian. Every ``F.linear(X, W, b)`` call of the
                family's ``apply`` is intercepted (a ``TorchFunctionMode``; no change
                to the family needed) to record its per-example input ``X: (M, fan_in)``
                and output; one forward pass and ``C`` backward passes give
                ``G = ∂f/∂(X Wᵀ + b): (M, C, fan_out)``. Then
                ``K_W = (X Xᵀ) ⊙ (G Gᵀ)`` and ``K_b = G Gᵀ`` (Hadamard over the point
                axes). Cost per member: O(M·C·forward) + Σ_layers M²·(fan_in + C²·fan_out)
                flops (traced: C instead of C²); memory O(M·C·width + (M·C)²).
                Raises ``ValueError`` if some tensor is not such a linear weight/bias.
``jacobian``    The ``vmap(jacrev)`` contraction of the PyTorch NTK tutorial:
                per-example Jacobians ``J: (M, C, n_t)`` of each tensor, chunked over
                points so that one chunk holds at most ``max_jacobian_bytes``, contracted
                chunk pair by chunk pair. Works for any family. Cost per member:
                O(M·C) reverse passes + M²·C²·P flops (traced M²·C·P), P = parameters;
                memory ≈ 2·max_jacobian_bytes + (M·C)².
``auto``        ``structured`` for the tensors it covers (each used once, only as the
                weight or bias of an ``F.linear`` on 2-D per-example inputs), and
                ``jacobian`` for the rest (norm gains, embeddings, tied or reused
                weights).

Both assume the network treats examples independently (no batch statistics),
which holds for every built-in family. Outputs with more than one dim per example
(sequence models: position × class) are flattened into the output axis ``C``. ``dtype="float64"`` casts parameters and
inputs before differentiating. :func:`ntk_vector_product` gives ``K v`` (or
``K_lr v``) for all seeds with one vjp and one jvp, without forming ``K``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from widthwise.dataset_schema import Dim, Schema, Var, declare
from widthwise.ensemble import Ensemble
from widthwise.families.module_apply import bound_buffers
from widthwise.probes.base import PROBES, ProbeContext, ProbeDef, ProbeResult, mask_diverged
from widthwise.schedule import Schedule
from widthwise.torch_compat import is_functorch_wrapped

Implementation = Literal["structured", "jacobian", "auto"]
Blocks = Literal["tensor", "layer"]
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def block_names(ensemble: Ensemble, blocks: Blocks) -> list[str]:
    """Labels of the ``entk_layer`` axis: tensor names, or layer prefixes in order."""
    names = [p.name for p in ensemble.network.params]
    if blocks == "tensor":
        return names
    return list(dict.fromkeys(_layer_of(n) for n in names))


def _layer_of(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


@dataclass
class NTKResult:
    """eNTKs of all seeds. Shapes: full ``(seed, M, C, M, C)``, traced ``(seed, M, M)``.

    ``kernel`` Σ_t K_t; ``lr`` Σ_t lr_scale_t K_t (if asked); ``blocks`` /
    ``blocks_lr`` ``(seed, block, ...)`` per tensor or layer (if asked), labelled by
    ``block_names``; ``structured``: tensors computed without Jacobians.
    """

    kernel: Tensor
    lr: Tensor | None
    blocks: Tensor | None
    blocks_lr: Tensor | None
    block_names: list[str]
    structured: list[str]


class _Accumulator:
    """Adds per-tensor kernel pieces into the requested sums for one member."""

    def __init__(
        self,
        shape: tuple[int, ...],
        names: list[str],
        lr_scale: dict[str, float],
        group: dict[str, int] | None,
        n_groups: int,
        lr_weighted: bool,
        like: Tensor,
    ) -> None:
        opts = {"dtype": like.dtype, "device": like.device}
        self.kernel = torch.zeros(shape, **opts)
        self.lr = torch.zeros(shape, **opts) if lr_weighted else None
        self.blocks = torch.zeros((n_groups, *shape), **opts) if group is not None else None
        self.blocks_lr = (
            torch.zeros((n_groups, *shape), **opts) if group is not None and lr_weighted else None
        )
        self.lr_scale = lr_scale
        self.group = group

    def add(self, name: str, piece: Tensor, index: tuple[slice, ...] = ()) -> None:
        self.kernel[index] += piece
        s = self.lr_scale[name]
        if self.lr is not None:
            self.lr[index] += s * piece
        if self.blocks is not None:
            assert self.group is not None
            g = self.group[name]
            self.blocks[(g, *index)] += piece
            if self.blocks_lr is not None:
                self.blocks_lr[(g, *index)] += s * piece


# -- structured path: intercept F.linear -------------------------------------------------

_METADATA = frozenset(
    {
        "shape",
        "dtype",
        "device",
        "ndim",
        "requires_grad",
        "is_cuda",
        "layout",
        "size",
        "dim",
        "numel",
        "__len__",
        "stride",
        "is_floating_point",
        "is_complex",
        "is_leaf",
        "grad_fn",
    }
)


def _is_metadata(func: Callable) -> bool:
    name = getattr(func, "__name__", "")
    if name == "__get__":
        name = getattr(getattr(func, "__self__", None), "__name__", "")
    return name in _METADATA


def _wrapped(t: Tensor) -> bool:
    return is_functorch_wrapped(t)


@dataclass
class _LinearCall:
    inp: Tensor
    out: Tensor
    weight: str | None
    bias: str | None


class _LinearRecorder(TorchFunctionMode):
    """Records each ``F.linear`` whose weight/bias is one of ``tracked`` (by identity).

    Any other use of a tracked tensor (besides reading metadata) marks it ``other``.
    """

    def __init__(self, tracked: dict[int, str]) -> None:
        super().__init__()
        self.tracked = tracked
        self.calls: list[_LinearCall] = []
        self.uses: dict[str, int] = {}
        self.other: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            names = ("input", "weight", "bias")
            bound = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
            out = func(*args, **kwargs)
            w = self.tracked.get(id(bound.get("weight")))
            b = self.tracked.get(id(bound.get("bias"))) if bound.get("bias") is not None else None
            inp = bound["input"]
            if id(inp) in self.tracked:
                self.other.add(self.tracked[id(inp)])
            if _wrapped(inp) or _wrapped(out):  # inside a transform of the family: no
                self.other.update(n for n in (w, b) if n is not None)
            elif w is not None or b is not None:
                self.calls.append(_LinearCall(inp.detach(), out, w, b))
                for n in (w, b):
                    if n is not None:
                        self.uses[n] = self.uses.get(n, 0) + 1
            return out
        if not _is_metadata(func):
            for leaf in tree_leaves((args, kwargs)):
                if isinstance(leaf, Tensor) and id(leaf) in self.tracked:
                    self.other.add(self.tracked[id(leaf)])
        return func(*args, **kwargs)


def _member_fn(ensemble: Ensemble) -> Callable[[dict[str, Tensor], Tensor], Tensor]:
    """``(raw member params, x: (B, *in)) -> f: (B, C)`` (uncentered: centering is a constant).

    Outputs with more dims (sequence models: (B, position, class)) are flattened to C.
    """

    def f(raw: dict[str, Tensor], x: Tensor) -> Tensor:
        out = ensemble.network.apply(ensemble.effective(raw), x, False)[0]
        return out.reshape(out.shape[0], -1)

    return f


def _structured_member(
    ensemble: Ensemble, raw: dict[str, Tensor], x: Tensor, trace: bool, acc: _Accumulator
) -> list[str]:
    """Add the kernels of the tensors the structured path covers; returns their names."""
    raw = {k: v.detach().requires_grad_() for k, v in raw.items()}
    eff = ensemble.effective(raw)
    tracked = {id(t): k for k, t in eff.items()}
    rec = _LinearRecorder(tracked)
    with rec:
        f = ensemble.network.apply(eff, x, False)[0]
    m = x.shape[0]
    f = f.reshape(m, -1)  # (M, C)

    def usable(call: _LinearCall, name: str | None) -> bool:
        return (
            name is not None
            and rec.uses.get(name) == 1
            and name not in rec.other
            and call.out.dim() == 2
            and call.out.shape[0] == m
            and (name == call.bias or (call.inp.dim() == 2 and call.inp.shape[0] == m))
        )

    calls = [c for c in rec.calls if usable(c, c.weight) or usable(c, c.bias)]
    covered: list[str] = []
    if not calls:
        return covered
    c_out = f.shape[1]
    grads: list[list[Tensor]] = [[] for _ in calls]
    outs = [c.out for c in calls]
    for c in range(c_out):
        gs = torch.autograd.grad(f[:, c].sum(), outs, retain_graph=c < c_out - 1, allow_unused=True)
        for i, g in enumerate(gs):
            grads[i].append(torch.zeros_like(outs[i]) if g is None else g)
    for call, gl in zip(calls, grads):
        g = torch.stack(gl, dim=1).detach()  # (M, C, fan_out)
        if trace:
            gg = torch.einsum("icf,jcf->ij", g, g)  # (M, M)
        else:
            flat = g.reshape(m * c_out, -1)
            gg = (flat @ flat.T).reshape(m, c_out, m, c_out)
        if usable(call, call.weight):
            assert call.weight is not None
            xx = call.inp @ call.inp.T  # (M, M)
            mult2 = ensemble.rules[call.weight].multiplier ** 2
            piece = xx * gg if trace else xx[:, None, :, None] * gg
            acc.add(call.weight, mult2 * piece)
            covered.append(call.weight)
        if usable(call, call.bias):
            assert call.bias is not None
            acc.add(call.bias, ensemble.rules[call.bias].multiplier ** 2 * gg)
            covered.append(call.bias)
    return covered


# -- jacobian path: vmap(jacrev), chunked over points ------------------------------------


def _jacobian_member(
    ensemble: Ensemble,
    raw: dict[str, Tensor],
    x: Tensor,
    names: list[str],
    trace: bool,
    acc: _Accumulator,
    c_out: int,
    max_bytes: int,
) -> None:
    """Add ``J_t J_tᵀ`` of the tensors ``names`` from explicit per-example Jacobians."""
    if not names:
        return
    fixed = {k: v.detach() for k, v in raw.items() if k not in names}
    apply = _member_fn(ensemble)

    def single(sub: dict[str, Tensor], xi: Tensor) -> Tensor:
        return apply({**fixed, **sub}, xi[None])[0]  # (C,)

    jac = torch.func.vmap(torch.func.jacrev(single), in_dims=(None, 0))
    sub = {k: raw[k].detach() for k in names}
    itemsize = next(iter(sub.values())).element_size()
    per_point = c_out * sum(v.numel() for v in sub.values()) * itemsize
    m = x.shape[0]
    chunk = int(max(1, min(m, max_bytes // max(per_point, 1))))
    bounds = [(a, min(a + chunk, m)) for a in range(0, m, chunk)]

    def jacobians(a: int, b: int) -> dict[str, Tensor]:
        return {k: v.reshape(b - a, c_out, -1) for k, v in jac(sub, x[a:b]).items()}

    for ia, (a0, a1) in enumerate(bounds):
        ja = jacobians(a0, a1)
        for b0, b1 in bounds[ia:]:
            jb = ja if b0 == a0 else jacobians(b0, b1)
            for k in names:
                p, q = ja[k], jb[k]
                if trace:
                    piece = torch.einsum("icp,jcp->ij", p, q)
                    idx: tuple[slice, ...] = (slice(a0, a1), slice(b0, b1))
                    idx_t: tuple[slice, ...] = (slice(b0, b1), slice(a0, a1))
                    piece_t = piece.T
                else:
                    piece = (p.reshape(-1, p.shape[-1]) @ q.reshape(-1, q.shape[-1]).T).reshape(
                        a1 - a0, c_out, b1 - b0, c_out
                    )
                    idx = (slice(a0, a1), slice(None), slice(b0, b1), slice(None))
                    idx_t = (slice(b0, b1), slice(None), slice(a0, a1), slice(None))
                    piece_t = piece.permute(2, 3, 0, 1)
                acc.add(k, piece, idx)
                if b0 != a0:
                    acc.add(k, piece_t, idx_t)


# -- public functions --------------------------------------------------------------------


def empirical_ntk(
    ensemble: Ensemble,
    params: dict[str, Tensor],
    x: Tensor,
    *,
    trace_outputs: bool = False,
    blocks: Blocks | None = None,
    lr_weighted: bool = False,
    implementation: Implementation = "auto",
    dtype: torch.dtype | None = None,
    members: Tensor | None = None,
    max_jacobian_bytes: int = 2**30,
) -> NTKResult:
    """eNTK of every member on the points ``x: (M, *in_shape)``.

    ``params``: raw stacked parameters ``(seed, *shape)``. Returns an
    :class:`NTKResult` (shapes there; module docstring for the definitions and the
    costs of each ``implementation``). ``members``: optional ``(seed,)`` bool mask of
    the members to compute (the others are NaN). ``dtype`` casts parameters and a
    floating ``x`` (default: the parameters' dtype).
    """
    if implementation not in ("structured", "jacobian", "auto"):
        raise ValueError(
            f"implementation must be structured, jacobian or auto, got {implementation!r}"
        )
    dtype = dtype or next(iter(params.values())).dtype
    x = x.to(dtype) if x.is_floating_point() else x  # token ids stay integers
    names = list(params)
    e = next(iter(params.values())).shape[0]
    m = x.shape[0]
    with torch.no_grad(), ensemble.as_member(0):
        c_out = _member_fn(ensemble)({k: v[0].detach().to(dtype) for k, v in params.items()}, x[:1])
    c = c_out.shape[1]
    shape = (m, m) if trace_outputs else (m, c, m, c)
    labels = block_names(ensemble, blocks) if blocks else []
    group = None
    if blocks:
        key = (lambda n: n) if blocks == "tensor" else _layer_of
        group = {n: labels.index(key(n)) for n in names}
    lr_scale = {n: ensemble.rules[n].lr_scale for n in names}
    like = torch.empty(0, dtype=dtype, device=x.device)  # accumulators: float, even for token ids
    outs: list[_Accumulator] = []
    structured: list[str] = []
    for i in range(e):
        acc = _Accumulator(shape, names, lr_scale, group, len(labels), lr_weighted, like)
        if members is not None and not bool(members[i]):
            for t in (acc.kernel, acc.lr, acc.blocks, acc.blocks_lr):
                if t is not None:
                    t.fill_(float("nan"))
            outs.append(acc)
            continue
        raw = {k: v[i].detach().to(dtype) for k, v in params.items()}
        covered: list[str] = []
        with ensemble.as_member(i):  # member i's buffers (BatchNorm running statistics)
            if implementation != "jacobian":
                covered = _structured_member(ensemble, raw, x, trace_outputs, acc)
                missing = [n for n in names if n not in covered]
                if implementation == "structured" and missing:
                    raise ValueError(
                        "implementation 'structured' covers only F.linear weights and biases "
                        f"used once on per-example inputs; not covered: {missing}. Use 'auto'."
                    )
                structured = covered
            rest = [n for n in names if n not in covered]
            _jacobian_member(ensemble, raw, x, rest, trace_outputs, acc, c, max_jacobian_bytes)
        alpha = ensemble.output_multiplier[i]  # f = α·f_family: K = α² K_family
        if alpha != 1.0:
            for t in (acc.kernel, acc.lr, acc.blocks, acc.blocks_lr):
                if t is not None:
                    t.mul_(alpha * alpha)
        outs.append(acc)

    def stack(attr: str) -> Tensor | None:
        vals = [getattr(a, attr) for a in outs]
        return None if vals[0] is None else torch.stack(vals)

    kernel = stack("kernel")
    assert kernel is not None
    return NTKResult(kernel, stack("lr"), stack("blocks"), stack("blocks_lr"), labels, structured)


def ntk_vector_product(
    ensemble: Ensemble,
    params: dict[str, Tensor],
    x: Tensor,
    v: Tensor,
    *,
    lr_weighted: bool = False,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """``K v`` for every member without forming K: ``J (Λ Jᵀ v)`` by one vjp and one jvp.

    ``params``: raw stacked ``(seed, *shape)``; ``x: (M, *in_shape)``;
    ``v: (seed, M, C)``. Returns ``(seed, M, C)`` with
    ``out[e, i, c] = Σ_{j,d} K_e[i, c, j, d] v[e, j, d]``; with ``lr_weighted`` the
    kernel is ``K_lr`` (Λ = lr_scale per tensor), else Λ = I.
    """
    dtype = dtype or next(iter(params.values())).dtype
    raw = {k: p.detach().to(dtype) for k, p in params.items()}
    x = x.to(dtype) if x.is_floating_point() else x
    v = v.to(dtype)
    member = _member_fn(ensemble)

    def one(r: dict[str, Tensor], b: dict[str, Tensor]) -> Tensor:
        with bound_buffers(b if b else None):  # the member's buffers (BatchNorm statistics)
            return member(r, x)

    stacked = torch.func.vmap(one, in_dims=(0, 0))

    def f(r: dict[str, Tensor]) -> Tensor:
        return ensemble.scale_output(stacked(r, ensemble.buffers))  # (seed, M, C), times α_e

    _, vjp_fn = torch.func.vjp(f, raw)
    (u,) = vjp_fn(v)
    if lr_weighted:
        u = {k: t * ensemble.rules[k].lr_scale for k, t in u.items()}
    _, kv = torch.func.jvp(f, (raw,), (u,))
    return kv


# -- the probe ---------------------------------------------------------------------------


class EntkOptions(Schedule):
    """eNTK on the first ``points`` probe points (default schedule ``at: [init, end]``)."""

    default_schedule: ClassVar[dict[str, Any] | None] = {"at": ["init", "end"]}

    points: int = Field(
        64, ge=1, le=2**14, description="M: the first M points of the probe set (≤ 2¹⁴)"
    )
    trace_outputs: bool = Field(False, description="M×M kernel summed over outputs")
    per_layer: bool = Field(False, description="also the blocks of each layer (or tensor)")
    blocks: Blocks = Field("layer", description="per_layer granularity: layer or tensor")
    lr_weighted: bool = Field(True, description="also Σ_t lr_scale_t K_t")
    implementation: Implementation = "auto"
    dtype: Literal["float32", "float64"] = "float32"


_ENTK_FULL = ("entk_point_i", "entk_output_i", "entk_point_j", "entk_output_j")
_ENTK_TRACED = ("entk_point_i", "entk_point_j")
_ENTK = ("width", "seed", "entk_step")


def _entk_var(name: str, meaning: str, when: str, layer: bool = False) -> Var:
    lead = (*_ENTK, "entk_layer") if layer else _ENTK
    return Var(
        name,
        (*lead, *_ENTK_FULL),
        "output²",
        meaning,
        when=when,
        alt_dims=(*lead, *_ENTK_TRACED),
        alt_when="`trace_outputs: true`",
    )


ENTK = declare(
    Schema(
        "entk",
        "entk_step",
        (
            Dim("entk_step", "steps of the `entk` probe", "steps"),
            Dim("entk_layer", "layer (or tensor, `blocks: tensor`) of a block", "block names"),
            Dim(
                "entk_point_i",
                "kernel row: one of the first M probe points",
                "index into `point`",
                index_of="point",
            ),
            Dim("entk_output_i", "kernel row: output unit (sequence models: position × output)"),
            Dim(
                "entk_point_j",
                "kernel column: one of the first M probe points",
                "index into `point`",
                index_of="point",
            ),
            Dim("entk_output_j", "kernel column: output unit"),
        ),
        (
            _entk_var("entk", "empirical NTK Σ_t J_t J_tᵀ w.r.t. the raw parameters", ""),
            _entk_var(
                "entk_lr",
                "learning-rate weighted eNTK Σ_t lr_scale_t J_t J_tᵀ",
                "`lr_weighted: true` (default)",
            ),
            _entk_var("entk_per_layer", "eNTK of each block", "`per_layer: true`", layer=True),
            _entk_var(
                "entk_per_layer_lr",
                "lr-weighted eNTK of each block",
                "`per_layer: true`, `lr_weighted: true`",
                layer=True,
            ),
        ),
    )
)


def entk_probe(ctx: ProbeContext, options: EntkOptions) -> ProbeResult:
    """eNTK probe (paper Section 5). Variables and dims (``P`` = point dims below):

    ``entk`` (seed, P); ``entk_lr`` (seed, P) if ``lr_weighted``; ``entk_per_layer`` and
    ``entk_per_layer_lr`` (seed, entk_layer, P) if ``per_layer``, where P is
    ``entk_point_i, entk_output_i, entk_point_j, entk_output_j`` (full) or
    ``entk_point_i, entk_point_j`` (``trace_outputs``). The coordinates of
    ``entk_point_i`` / ``_j`` are indices into ``point``; the ``entk_layer``
    coordinate holds :func:`block_names` (MLP, layers: l1, ..., l{depth-1}, out).
    Declared in :data:`ENTK`.
    """
    m = min(options.points, ctx.probe_x.shape[0])
    res = empirical_ntk(
        ctx.ensemble,
        ctx.params,
        ctx.probe_x[:m],
        trace_outputs=options.trace_outputs,
        blocks=options.blocks if options.per_layer else None,
        lr_weighted=options.lr_weighted,
        implementation=options.implementation,
        dtype=DTYPES[options.dtype],
        members=ctx.alive,
    )
    alive = ctx.alive.detach().cpu().numpy().astype(bool)

    def arr(name: str, t: Tensor) -> tuple[tuple[str, ...], np.ndarray]:
        dims = ENTK.result_dims(name, alt=options.trace_outputs)
        return dims, mask_diverged(t.detach().cpu().numpy(), alive)

    out: ProbeResult = {"entk": arr("entk", res.kernel)}
    if res.lr is not None:
        out["entk_lr"] = arr("entk_lr", res.lr)
    if res.blocks is not None:
        out["entk_per_layer"] = arr("entk_per_layer", res.blocks)
        out["entk_layer"] = (("entk_layer",), np.array(res.block_names))  # coordinate
    if res.blocks_lr is not None:
        out["entk_per_layer_lr"] = arr("entk_per_layer_lr", res.blocks_lr)
    return out


PROBES.register(
    "entk",
    options=EntkOptions,
    description="empirical NTK on probe points (full/traced, per layer, lr-weighted)",
)(ProbeDef(fn=entk_probe, step_dim="entk_step"))
