"""How a module family runs the user's module: ``functional_call`` on the effective
weights, forward hooks for taps, the attention scale, and the vmap safety check.

:class:`ModuleApply` is a module family's ``Network.apply`` (docs/modules.md;
:mod:`widthwise.families.module` builds it). Every name of a tied tensor is bound to
the one stacked tensor explicitly (``functional_call(..., tie_weights=False)`` with
all aliases given): PyTorch's plain ensembling recipe gets a tied Hugging Face GPT-2's
logits wrong. Before an ensemble vmaps the module, :meth:`ModuleApply.check_vmap`
compares the vectorized forward and one gradient with a per-member loop.
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
from widthwise.families.module_dropout import install_dropout, member_index, training_forward
from widthwise.families.module_roles import InferredParam
from widthwise.parameterization import ParamSpec, Role

# -- attention scale -------------------------------------------------------------------

_ATTN_EXPONENT: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "widthwise_attn_exponent", default=None
)
_SCALE_CALLS = [0]


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

    def _buffers_like(self, t: Tensor) -> dict[str, Tensor]:
        """The module's buffers on ``t``'s device, floating ones in its dtype (cached)."""
        key = (t.device, t.dtype)
        if key not in self._buffer_cache:
            self._buffer_cache[key] = {
                k: b.to(device=t.device, dtype=t.dtype if b.is_floating_point() else b.dtype)
                for k, b in self.buffers.items()
            }
        return self._buffer_cache[key]

    def bound(self, w: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Every name of every tensor (aliases too) bound to ``w``'s tensor, plus buffers."""
        full: dict[str, Tensor] = dict(self._buffers_like(w[self.params[0].name]))
        for p in self.params:
            t = w[p.name]
            full[p.name] = t
            for a in p.aliases:
                full[a] = t
        return full

    def __call__(self, w: Mapping[str, Tensor], x: Tensor, taps: bool = False):
        if self.tokens and x.is_floating_point():
            x = x.long()  # token ids: a float probe set holds integer values
        rec: dict[str, Tensor] = {}
        self._rec = rec if taps else None
        token = _ATTN_EXPONENT.set(self.exponent)
        try:
            out = torch.func.functional_call(
                self.model, self.bound(w), (x,), tie_weights=False, strict=False
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
        float rounding (``rtol=1e-4``, ``atol=1e-5`` of the largest entry) passes.
        Returns (ok, notice); the notice says why the loop is used instead.
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
        x = example_input(self.tokens, self.in_shape, self.out_dim, batch, gen).to(dev)

        def loss_of(out: Tensor) -> Tensor:
            return out.float().square().mean()

        try:
            out_v = torch.func.vmap(lambda ww: self(ww, x)[0], randomness="error")(w)
            g_v = torch.autograd.grad(loss_of(out_v) * members, list(w.values()), allow_unused=True)
        except Exception as err:  # noqa: BLE001  (vmap cannot run this module: use the loop)
            why = " ".join(str(err).split())[:160]
            self._vmap_checked = (
                False,
                f"torch.func.vmap cannot run it ({type(err).__name__}: {why})",
            )
            return self._vmap_checked
        names = list(w)
        outs, grads = [], []
        for e in range(members):
            we = {k: w[k][e] for k in names}
            o = self(we, x)[0]
            outs.append(o)
            grads.append(torch.autograd.grad(loss_of(o), [we[k] for k in names], allow_unused=True))
        problem = _differs("forward", out_v, torch.stack(outs))
        for i, k in enumerate(names):
            if problem:
                break
            gv = g_v[i]
            gl = [g[i] for g in grads]
            if gv is None or any(g is None for g in gl):
                continue
            problem = _differs(f"gradient of {k!r}", gv, torch.stack(gl))
        if not problem and self.dropout:
            problem = self._check_dropout_vmap(w, x)
        if problem:
            self._vmap_checked = (False, f"vectorized and per-member results differ ({problem})")
        else:
            self._vmap_checked = (True, "")
        return self._vmap_checked

    def _check_dropout_vmap(self, w: Mapping[str, Tensor], x: Tensor) -> str:
        """A training forward with dropout on, vectorized and member by member: the same
        masks and the same logits (or what differs)."""
        members = next(iter(w.values())).shape[0]

        def member(ww: Mapping[str, Tensor], index: int | Tensor) -> Tensor:
            with member_index(index):
                return self(ww, x)[0]

        with torch.no_grad():
            with training_forward(0, range(members), 0):
                out_v = torch.func.vmap(member, randomness="same")(w, torch.arange(members))
            with training_forward(0, range(members), 0):
                outs = [member({k: v[e] for k, v in w.items()}, e) for e in range(members)]
        return _differs("forward with dropout", out_v, torch.stack(outs))


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
