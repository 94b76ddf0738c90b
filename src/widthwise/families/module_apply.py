"""How a module family runs the user's module: ``functional_call`` on the effective
weights, forward hooks for taps, the attention scale, and the vmap safety check.

:class:`ModuleApply` is a module family's ``Network.apply`` (docs/modules.md;
:mod:`widthwise.families.module` builds it). Every name of a tied tensor is bound to
the one stacked tensor explicitly (``functional_call(..., tie_weights=False)`` with
all aliases given): PyTorch's plain ensembling recipe gets a tied Hugging Face GPT-2's
logits wrong. Before an ensemble vmaps the module, :meth:`ModuleApply.check_vmap`
compares the vectorized forward and one gradient with a per-member loop.

**Per-member buffers.** Buffers that a training forward changes in place (BatchNorm's
``running_mean``, ``running_var``, ``num_batches_tracked``; any buffer found to change
during the check forward) are *mutable* (:attr:`ModuleApply.mutable`): every member
has its own copy, stacked ``(member, *shape)`` and kept by the ensemble
(``Ensemble.buffers``, saved in checkpoints). They are passed to the call in the
weights mapping under their names (vmapped with the weights under ``torch.func.vmap``,
so the in-place updates land in each member's slice), or bound for a block by
:func:`bound_buffers`. The modules owning them run in train mode during a training
forward (:func:`~widthwise.families.module_dropout.training_forward`: batch statistics,
running statistics updated) and in eval mode otherwise (running statistics used, no
buffer changed). Constant buffers (causal masks) stay the module's own, shared.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from widthwise.errors import UserError
from widthwise.families.module_dropout import (
    in_training_forward,
    install_dropout,
    member_index,
    training_forward,
)
from widthwise.families.module_roles import InferredParam
from widthwise.parameterization import ParamSpec, Role

# -- attention scale -------------------------------------------------------------------

_ATTN_EXPONENT: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "widthwise_attn_exponent", default=None
)
_SCALE_CALLS = [0]

_BOUND_BUFFERS: contextvars.ContextVar[Mapping[str, Tensor] | None] = contextvars.ContextVar(
    "widthwise_bound_buffers", default=None
)


@contextlib.contextmanager
def bound_buffers(buffers: Mapping[str, Tensor] | None):  # noqa: ANN201
    """Within the block a module family's call uses ``buffers`` (one member's mutable
    buffers: slices, or batched tensors inside ``torch.func.vmap``) where its weights
    mapping names none (probes that call ``network.apply`` member by member)."""
    token = _BOUND_BUFFERS.set(buffers)
    try:
        yield
    finally:
        _BOUND_BUFFERS.reset(token)


def stateful_buffers(model: nn.Module) -> list[str]:
    """The buffers of ``model`` that its training forward updates by construction: the
    running statistics of BatchNorm / InstanceNorm with ``track_running_stats``."""
    names = []
    for mname, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._NormBase) and mod.track_running_stats:
            for b, t in mod.named_buffers(recurse=False):
                if t is not None:
                    names.append(f"{mname}.{b}" if mname else b)
    return names


def attention_scale(d_head: int) -> float:
    """The attention-score scale ``1/d_head**e`` a module should use (``e`` = 1 under mup).

    Call it in the module's attention, e.g. ``F.scaled_dot_product_attention(q, k, v,
    scale=widthwise.attention_scale(d_head))``. Inside a widthwise family ``e`` is the
    parameterization's (``NetworkRules.attn_exponent``: 1 for mup, mf, umup; 1/2 for
    sp, ntp); anywhere else (the module on its own) it is 1/2, the standard
    1/√d_head. Paper Appendix A.3; Yang et al. 2022, Section 4.
    """
    _SCALE_CALLS[0] += 1
    e = _ATTN_EXPONENT.get()
    e = 0.5 if e is None else e
    if e == 1.0:
        return 1.0 / d_head
    return 1.0 / math.sqrt(d_head) if e == 0.5 else float(d_head) ** -e


class _CountAttention(TorchFunctionMode):
    """Counts fused attention calls (``F.scaled_dot_product_attention``)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func is F.scaled_dot_product_attention:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def logits_of(out: Any) -> Tensor:
    """The logits of a module's output: a tensor, ``.logits`` (Hugging Face), ``[0]``."""
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "logits") and isinstance(out.logits, Tensor):
        return out.logits
    if isinstance(out, Mapping) and isinstance(out.get("logits"), Tensor):
        return out["logits"]
    if isinstance(out, list | tuple) and out and isinstance(out[0], Tensor):
        return out[0]
    raise UserError(
        f"model.options.factory: the model returned a {type(out).__name__}; expected the "
        "logits as a tensor (or an object with .logits, or a tuple starting with them)"
    )


def _first_tensor(out: Any) -> Tensor | None:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, list | tuple):
        return next((o for o in out if isinstance(o, Tensor)), None)
    return getattr(out, "last_hidden_state", None)


def _features(t: Tensor, channels_first: bool) -> Tensor:
    """(batch, features): positions / pixels averaged, as the built-in families tap."""
    if t.dim() <= 2:
        return t
    if channels_first:
        return t.mean(dim=tuple(range(2, t.dim())))
    return t.mean(dim=tuple(range(1, t.dim() - 1)))


# -- apply -----------------------------------------------------------------------------


class ModuleApply:
    """The family's ``apply(weights, x, taps)``: the user's module, called functionally.

    Holds the module at its width (its buffers are used as they are; its own
    parameters never), the tensors and their aliases, the forward hooks that record
    taps, and the tied readouts' multipliers (set by :meth:`bind_parameterization`).
    ``dropout`` names its dropout modules with p > 0: in eval mode, their masks drawn
    per member during a training forward (:mod:`widthwise.families.module_dropout`).
    """

    def __init__(
        self,
        model: nn.Module,
        params: list[InferredParam],
        taps: dict[str, bool],
        readout_inputs: list[str],
        attention: list[str],
        tied_readouts: Mapping[str, str],
        exponent: float,
        tokens: bool,
        in_shape: tuple[int, ...],
        out_dim: int,
        label: str,
    ) -> None:
        self.model = model.train()
        self.dropout = install_dropout(model)  # dropout modules: eval mode, masks per member
        self.params = params
        self.buffers = dict(model.named_buffers(remove_duplicate=False))
        # every name of a buffer (a buffer shared by two modules has two), by its first
        first: dict[int, str] = {}
        self.buffer_aliases: dict[str, tuple[str, ...]] = {}
        for k, b in self.buffers.items():
            canon = first.setdefault(id(b), k)
            self.buffer_aliases[canon] = (*self.buffer_aliases.get(canon, ()), k)
        self._canonical = {a: c for c, names in self.buffer_aliases.items() for a in names}
        self.mutable: tuple[str, ...] = ()
        self._mode_modules: list[nn.Module] = []
        self._mode = True  # the training flag of the modules holding mutable buffers
        self.set_mutable(stateful_buffers(model))
        self.tied_readouts = dict(tied_readouts)
        self.readout_mult = {m: 1.0 for m in tied_readouts}
        self.exponent = exponent
        self.tokens = tokens
        self.in_shape, self.out_dim, self.label = tuple(in_shape), out_dim, label
        self._rec: dict[str, Tensor] | None = None
        self._vmap_checked: tuple[bool, str] | None = None
        self._buffer_cache: dict[Any, dict[str, Tensor]] = {}
        modules = dict(model.named_modules())
        for name, channels_first in taps.items():
            modules[name].register_forward_hook(self._tap_hook(name, channels_first))
        for name in readout_inputs:
            modules[name].register_forward_pre_hook(self._input_hook(name))
        for name in attention:
            modules[name].register_forward_hook(self._attn_hook(name))
        for name in tied_readouts:
            modules[name].register_forward_pre_hook(self._mult_hook(name))

    # hooks: record only while a tapped forward runs
    def _tap_hook(self, name: str, channels_first: bool) -> Callable[..., None]:
        def hook(_mod: nn.Module, _args: Any, out: Any) -> None:
            t = _first_tensor(out)
            if self._rec is not None and t is not None:
                f = _features(t, channels_first)
                self._rec[f"preact/{name}"] = f
                self._rec[f"act/{name}"] = f

        return hook

    def _input_hook(self, name: str) -> Callable[..., None]:
        def hook(_mod: nn.Module, args: Any) -> None:
            if self._rec is not None and args and isinstance(args[0], Tensor):
                f = _features(args[0], False)
                self._rec[f"preact/{name}.in"] = f
                self._rec[f"act/{name}.in"] = f

        return hook

    def _attn_hook(self, name: str) -> Callable[..., None]:
        def hook(_mod: nn.Module, _args: Any, out: Any) -> None:
            t = _first_tensor(out)
            if self._rec is not None and t is not None:
                self._rec[f"attn/{name}"] = t

        return hook

    def _mult_hook(self, name: str) -> Callable[..., Any]:
        def hook(_mod: nn.Module, args: Any) -> Any:
            mult = self.readout_mult[name]
            if mult != 1.0 and args and isinstance(args[0], Tensor):
                return (args[0] * mult, *args[1:])
            return None

        return hook

    def bind_parameterization(
        self, rules_of: Callable[[list[ParamSpec]], Mapping[str, Any]]
    ) -> None:
        """Set each tied readout's multiplier: the rule of an ``output`` tensor of its shape
        (mup: 1/m, as ``MuSharedReadout`` divides its input by the width multiplier)."""
        by_name = {p.name: p for p in self.params}
        specs = []
        for mod, pname in self.tied_readouts.items():
            p = by_name[pname]
            specs.append(ParamSpec(f"{mod}.readout", p.shape, Role.OUTPUT, p.shape[-1]))
        rules = rules_of(specs)
        for mod, spec in zip(self.tied_readouts, specs):
            self.readout_mult[mod] = float(rules[spec.name].multiplier)

    def set_mutable(self, names: list[str] | tuple[str, ...]) -> None:
        """Declare the buffers (any of their names) that a training forward changes: each
        member gets its own copy (:meth:`stacked_buffers`), and the modules holding
        them switch between train mode (training forward) and eval mode (every other)."""
        canon = {self._canonical[n] for n in names if n in self._canonical}
        self.mutable = tuple(c for c in self.buffer_aliases if c in canon)
        owners = {a.rpartition(".")[0] for c in self.mutable for a in self.buffer_aliases[c]}
        modules = dict(self.model.named_modules())
        self._mode_modules = [modules[o] for o in modules if o in owners]
        self._mode = True
        for m in self._mode_modules:
            m.training = True  # not m.train(): that would switch its dropout children on

    def stacked_buffers(
        self, members: int, device: torch.device | str, dtype: torch.dtype
    ) -> dict[str, Tensor]:
        """Every member's copy of the mutable buffers, ``(member, *shape)``, from the
        module's initial values (floating ones in ``dtype``)."""
        out = {}
        for k in self.mutable:
            b = self.buffers[k].detach()
            b = b.to(device=device, dtype=dtype if b.is_floating_point() else b.dtype)
            out[k] = b.unsqueeze(0).repeat(members, *([1] * b.dim())).contiguous()
        return out

    def _set_mode(self, training: bool) -> None:
        if training != self._mode:
            for m in self._mode_modules:
                m.training = training
            self._mode = training

    def _buffers_like(self, t: Tensor) -> dict[str, Tensor]:
        """The module's buffers on ``t``'s device, floating ones in its dtype (cached)."""
        key = (t.device, t.dtype)
        if key not in self._buffer_cache:
            self._buffer_cache[key] = {
                k: b.to(device=t.device, dtype=t.dtype if b.is_floating_point() else b.dtype)
                for k, b in self.buffers.items()
            }
        return self._buffer_cache[key]

    def bound(self, w: Mapping[str, Tensor], training: bool = False) -> dict[str, Tensor]:
        """Every name of every tensor (aliases too) bound to ``w``'s tensor, plus buffers:
        the mutable ones from ``w`` (by name) or :func:`bound_buffers`, the rest the
        module's own. A training forward without the mutable buffers is an error (its
        updates would land in the shared module); an eval forward without them (cost
        counting on meta tensors) uses the module's initial values, unchanged."""
        like = w[self.params[0].name]
        full: dict[str, Tensor] = dict(self._buffers_like(like))
        for p in self.params:
            t = w[p.name]
            full[p.name] = t
            for a in p.aliases:
                full[a] = t
        given = {k: w[k] for k in w if k in self._canonical}
        if self.mutable and not all(k in given for k in self.mutable):
            ctx = _BOUND_BUFFERS.get()
            if ctx is not None:
                given = {**ctx, **given}
            missing = [k for k in self.mutable if k not in given]
            if missing and training:
                raise RuntimeError(
                    f"{self.label}: a training forward without the members' buffers {missing}"
                )
        for k, t in given.items():
            if not training and t.is_floating_point() and t.dtype != like.dtype:
                t = t.to(like.dtype)  # an eval forward in another dtype (a probe's option)
            for a in self.buffer_aliases.get(self._canonical[k], (k,)):
                full[a] = t
        return full

    def __call__(self, w: Mapping[str, Tensor], x: Tensor, taps: bool = False):
        if self.tokens and x.is_floating_point():
            x = x.long()  # token ids: a float probe set holds integer values
        rec: dict[str, Tensor] = {}
        training = in_training_forward()
        full = self.bound(w, training)
        self._set_mode(training)  # BatchNorm: batch statistics only in a training forward
        self._rec = rec if taps else None
        token = _ATTN_EXPONENT.set(self.exponent)
        try:
            out = torch.func.functional_call(
                self.model, full, (x,), tie_weights=False, strict=False
            )
        finally:
            _ATTN_EXPONENT.reset(token)
            self._rec = None
        return logits_of(out), rec

    # -- vmap safety ---------------------------------------------------------------
    @property
    def vmappable(self) -> bool:
        """Whether ``torch.func.vmap`` runs this module correctly (checked once)."""
        return self.check_vmap()[0]

    @property
    def vmap_notice(self) -> str:
        return self.check_vmap()[1]

    def check_vmap(self, members: int = 2, batch: int = 2) -> tuple[bool, str]:
        """Compare the vmapped forward and one gradient with a per-member loop.

        Random weights for ``members`` members on ``batch`` inputs; agreement within
        float rounding (``rtol=1e-4``, ``atol=1e-5`` of the largest entry) passes. A
        module with dropout or per-member buffers (:attr:`mutable`) is also compared in
        a training forward: logits, gradients and every member's updated buffers; the
        eval forward then runs on those (different) buffers. Returns (ok, notice); the
        notice says why the loop is used instead.
        """
        if self._vmap_checked is not None:
            return self._vmap_checked
        gen = torch.Generator().manual_seed(0)
        dev = torch.device("cpu")
        w = {}
        for p in self.params:
            t = torch.randn((members, *p.shape), generator=gen) * (
                1.0 / math.sqrt(max(p.fan_in, 1))
            )
            if p.init == "ones":
                t = t + 1
            w[p.name] = t.to(dev).requires_grad_()
        x = example_input(self.tokens, self.in_shape, self.out_dim, max(batch, 2), gen).to(dev)
        names = list(w)
        index = torch.arange(members)
        bufs = self.stacked_buffers(members, dev, torch.float32)
        training = bool(self.mutable or self.dropout)

        def loss_of(out: Tensor) -> Tensor:
            return out.float().square().mean()

        def eval_member(ww: Mapping[str, Tensor], bb: Mapping[str, Tensor]) -> Tensor:
            return self({**ww, **bb}, x)[0]

        def train_member(
            ww: Mapping[str, Tensor], bb: Mapping[str, Tensor], e: int | Tensor
        ) -> Tensor:
            with member_index(e):
                return self({**ww, **bb}, x)[0]

        def grads(out: Tensor, ws: list[Tensor], scale: float = 1.0) -> tuple[Any, ...]:
            return torch.autograd.grad(loss_of(out) * scale, ws, allow_unused=True)

        buf_v = {k: v.clone() for k, v in bufs.items()}
        try:
            if training:
                with training_forward(0, range(members), 0):
                    tr_v = torch.func.vmap(train_member, randomness="same")(w, buf_v, index)
                tg_v = grads(tr_v, list(w.values()), members)
            out_v = torch.func.vmap(eval_member, randomness="error")(w, buf_v)
            g_v = grads(out_v, list(w.values()), members)
        except Exception as err:  # noqa: BLE001  (vmap cannot run this module: use the loop)
            why = " ".join(str(err).split())[:160]
            self._vmap_checked = (
                False,
                f"torch.func.vmap cannot run it ({type(err).__name__}: {why})",
            )
            return self._vmap_checked
        buf_l = {k: v.clone() for k, v in bufs.items()}
        problem = ""
        if training:
            outs, tgs = [], []
            for e in range(members):
                we = {k: w[k][e] for k in names}
                with training_forward(0, range(members), 0):
                    o = train_member(we, {k: v[e] for k, v in buf_l.items()}, e)
                outs.append(o)
                tgs.append(grads(o, [we[k] for k in names]))
            problem = _differs("training forward", tr_v, torch.stack(outs)) or _grads_differ(
                "training gradient", names, tg_v, tgs
            )
            for k in self.mutable:
                problem = problem or _differs(f"updated buffer {k!r}", buf_v[k], buf_l[k])
        outs, gs = [], []
        for e in range(members):
            we = {k: w[k][e] for k in names}
            o = eval_member(we, {k: v[e] for k, v in buf_l.items()})
            outs.append(o)
            gs.append(grads(o, [we[k] for k in names]))
        problem = (
            problem
            or _differs("forward", out_v, torch.stack(outs))
            or _grads_differ("gradient", names, g_v, gs)
        )
        if problem:
            self._vmap_checked = (False, f"vectorized and per-member results differ ({problem})")
        else:
            self._vmap_checked = (True, "")
        return self._vmap_checked


def _grads_differ(
    what: str, names: list[str], g_v: tuple[Any, ...], g_l: list[tuple[Any, ...]]
) -> str:
    for i, k in enumerate(names):
        gl = [g[i] for g in g_l]
        if g_v[i] is None or any(g is None for g in gl):
            continue
        problem = _differs(f"{what} of {k!r}", g_v[i], torch.stack(gl))
        if problem:
            return problem
    return ""


def _differs(what: str, a: Tensor, b: Tensor) -> str:
    a, b = a.detach().double(), b.detach().double()
    if a.shape != b.shape:
        return f"{what}: shapes {tuple(a.shape)} and {tuple(b.shape)}"
    if not bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all()):
        return f"{what}: not finite when vectorized"
    scale = float(b.abs().max()) if b.numel() else 0.0
    err = float((a - b).abs().max()) if b.numel() else 0.0
    if not math.isfinite(err) or err > 1e-5 * max(scale, 1e-6) + 1e-4 * scale:
        return f"{what}: max difference {err:.3g} for entries up to {scale:.3g}"
    return ""


def example_input(
    tokens: bool, in_shape: tuple[int, ...], out_dim: int, batch: int, gen: torch.Generator
) -> Tensor:
    """A small batch of inputs of the stream's shape (token ids below ``out_dim``)."""
    if tokens:
        return torch.randint(0, max(out_dim, 1), (batch, *in_shape), generator=gen)
    return torch.randn((batch, *in_shape), generator=gen)


@contextlib.contextmanager
def attention_exponent(exponent: float):  # noqa: ANN201
    """Within the block :func:`attention_scale` returns ``1/d_head**exponent``."""
    token = _ATTN_EXPONENT.set(exponent)
    try:
        yield
    finally:
        _ATTN_EXPONENT.reset(token)


def attention_hooks(model: nn.Module, exponent: float, readout_mult: Mapping[str, float]) -> None:
    """Hooks that make ``model`` on its own compute as the family does: the attention
    exponent while its forward runs, and each tied readout's multiplier on its input."""
    tokens: list[contextvars.Token[float | None]] = []

    def enter(_mod: nn.Module, _args: Any) -> None:
        tokens.append(_ATTN_EXPONENT.set(exponent))

    def leave(_mod: nn.Module, _args: Any, _out: Any) -> None:
        if tokens:
            _ATTN_EXPONENT.reset(tokens.pop())

    model.register_forward_pre_hook(enter)
    model.register_forward_hook(leave)
    modules = dict(model.named_modules())
    for name, mult in readout_mult.items():
        if mult != 1.0:

            def scale(_mod: nn.Module, args: Any, mult: float = mult) -> Any:
                return (args[0] * mult, *args[1:])

            modules[name].register_forward_pre_hook(scale)
