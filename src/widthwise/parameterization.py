"""Parameterizations as data: role → (forward multiplier, init std, lr scale, wd scale).

Every trainable tensor of a family carries a :class:`Role`. A parameterization maps
(role, fan-in, width multiplier m = width / base_width, optimizer kind) to a
:class:`ParamRule`. The effective weight in the forward pass is
``W = multiplier · w`` with the stored (trained) ``w ~ N(0, init_std²)``; the
optimizer sees ``w`` with learning rate ``lr_scale · lr`` and weight decay
``wd_scale · weight_decay``. Rules are plain numbers, saved in every checkpoint.

The four built-in rules (docs/parameterizations.md, paper Appendix C and D):

``sp``  multiplier 1, std σ/√fan_in, lr and wd scale 1.

``mup`` microsoft/mup (MuReadout + set_base_shapes + MuSGD/MuAdam) exactly:

    ======== ============ ================ ============ =============
    role     multiplier   init std         SGD lr (wd)  Adam lr (wd)
    ======== ============ ================ ============ =============
    input    1            σ/√fan_in        ×m  (÷m)     ×1  (×1)
    hidden   1            σ/√fan_in        ×1  (×1)     ÷m  (×m)
    output   1/m          σ·√m/√fan_in     ×m  (÷m)     ×1  (×1)
    vector   1            0 (bias) / 1     ×m  (÷m)     ×1  (×1)
    fixed    1            0                ×1  (×1)     ×1  (×1)
    ======== ============ ================ ============ =============

    ("output std σ·√m/√fan_in" is mup's ``MuReadout._rescale_parameters``; with
    ``readout_zero_init`` it is 0; with ``query_zero_init`` query weights are 0.)

``ntp`` multiplier σ/√fan_in, w ~ N(0, 1); SGD lr scale base_fan_in/σ² and Adam lr
    scale √base_fan_in/σ (wd scale the inverse), so that at the base width the
    dynamics coincide with ``sp``/``mup`` (paper Appendix D) while wider networks
    move their features less (lazy, NTK limit).

``mf``  mean field with richness γ0 (paper Appendix C.2): input and hidden layers
    NTK-style (multiplier σ/√fan_in, w ~ N(0, 1)), output multiplier 1/(γ0·width),
    SGD lr scale γ0²·width on every tensor (so ``lr`` is η0); the output bias gets
    multiplier 1/γ0 and lr scale γ0² so its effective step is η0-sized too.
    ``center`` subtracts the initial network's output (lazy regime at small γ0,
    paper Section 5); the trainer applies it. SGD only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from widthwise.registry import Registry


class Role(str, Enum):
    """What a parameter does with respect to width (docs/parameterizations.md)."""

    INPUT = "input"  # fixed fan-in -> width
    HIDDEN = "hidden"  # width -> width
    OUTPUT = "output"  # width -> fixed (the readout)
    VECTOR = "vector"  # one width dim: biases and norm gains of hidden layers
    FIXED = "fixed"  # no width dim (e.g. the readout bias)


@dataclass(frozen=True)
class ParamSpec:
    """A trainable tensor of a family at one width.

    ``fan_in`` is at this width; ``init`` says how the raw tensor starts
    (``normal`` uses the rule's std; ``zeros``/``ones`` for biases and gains);
    ``tags`` mark special tensors (``"query"`` for mup's query_zero_init).
    """

    name: str
    shape: tuple[int, ...]
    role: Role
    fan_in: int = 1
    init: Literal["normal", "zeros", "ones"] = "normal"
    tags: frozenset[str] = field(default_factory=frozenset)

    def base_fan_in(self, m: float) -> float:
        """Fan-in at the base width: width fan-ins shrink by m, fixed ones do not."""
        return self.fan_in / m if self.role in (Role.HIDDEN, Role.OUTPUT) else self.fan_in


@dataclass(frozen=True)
class ParamRule:
    """How one tensor is scaled: W = multiplier·w, w ~ N(0, init_std²), lr·lr_scale."""

    multiplier: float
    init_std: float
    lr_scale: float
    wd_scale: float = 1.0

    def as_dict(self) -> dict[str, float]:
        """The rule as plain numbers (stored in checkpoints and shown in docs)."""
        return {
            "multiplier": self.multiplier,
            "init_std": self.init_std,
            "lr_scale": self.lr_scale,
            "wd_scale": self.wd_scale,
        }


@dataclass(frozen=True)
class RuleContext:
    """Everything a rule may depend on besides the tensor itself."""

    width: int
    base_width: int
    optimizer: Literal["sgd", "adam"]
    sigma: float = 1.0
    gamma0: float | None = None
    readout_zero_init: bool = False
    query_zero_init: bool = False

    @property
    def m(self) -> float:
        """Width multiplier m = width / base_width."""
        return self.width / self.base_width


RuleFn = Callable[[ParamSpec, RuleContext], ParamRule]
PARAMETERIZATIONS: Registry[RuleFn] = Registry("parameterization")


def _std(p: ParamSpec, ctx: RuleContext) -> float:
    return ctx.sigma / math.sqrt(p.fan_in)


@PARAMETERIZATIONS.register("sp", description="standard: multiplier 1, std σ/√fan_in, lr ×1")
def sp_rule(p: ParamSpec, ctx: RuleContext) -> ParamRule:
    """Standard parameterization (paper Appendix C.1 as libraries implement it)."""
    if p.role in (Role.VECTOR, Role.FIXED):
        return ParamRule(1.0, 0.0, 1.0)
    return ParamRule(1.0, _std(p, ctx), 1.0)


@PARAMETERIZATIONS.register("mup", description="maximal update, identical to microsoft/mup")
def mup_rule(p: ParamSpec, ctx: RuleContext) -> ParamRule:
    """muP exactly as microsoft/mup's MuReadout, set_base_shapes and MuSGD/MuAdam."""
    m = ctx.m
    sgd = ctx.optimizer == "sgd"
    if p.role is Role.FIXED:
        return ParamRule(1.0, 0.0, 1.0)
    if p.role is Role.VECTOR:
        return ParamRule(1.0, 0.0, m, 1 / m) if sgd else ParamRule(1.0, 0.0, 1.0)
    if p.role is Role.HIDDEN:
        std = 0.0 if (ctx.query_zero_init and "query" in p.tags) else _std(p, ctx)
        return ParamRule(1.0, std, 1.0) if sgd else ParamRule(1.0, std, 1 / m, m)
    if p.role is Role.OUTPUT:
        std = 0.0 if ctx.readout_zero_init else _std(p, ctx) * math.sqrt(m)
        return ParamRule(1 / m, std, m, 1 / m) if sgd else ParamRule(1 / m, std, 1.0)
    # input weights: vector-like for mup (one infinite dim)
    return ParamRule(1.0, _std(p, ctx), m, 1 / m) if sgd else ParamRule(1.0, _std(p, ctx), 1.0)


@PARAMETERIZATIONS.register("ntp", description="NTK: multiplier σ/√fan_in, w ~ N(0,1)")
def ntp_rule(p: ParamSpec, ctx: RuleContext) -> ParamRule:
    """NTK parameterization, lr matched to sp/mup at the base width (paper Appendix D)."""
    if p.role in (Role.VECTOR, Role.FIXED):
        return ParamRule(1.0, 0.0, 1.0)
    mult = ctx.sigma / math.sqrt(p.fan_in)
    base_mult = ctx.sigma / math.sqrt(p.base_fan_in(ctx.m))
    lr = 1 / base_mult**2 if ctx.optimizer == "sgd" else 1 / base_mult
    return ParamRule(mult, 1.0, lr, 1 / lr)


@PARAMETERIZATIONS.register("mf", description="mean field with richness gamma0 (SGD)")
def mf_rule(p: ParamSpec, ctx: RuleContext) -> ParamRule:
    """Mean-field parameterization with richness γ0 (paper Appendix C.2, Section 5)."""
    g = ctx.gamma0
    if g is None:
        raise ValueError("mf needs gamma0")
    lr = g * g * ctx.width
    if p.role is Role.FIXED:
        return ParamRule(1 / g, 0.0, g * g)
    if p.role is Role.VECTOR:
        return ParamRule(1.0, 0.0, lr)
    if p.role is Role.OUTPUT:
        return ParamRule(1 / (g * ctx.width), 1.0, lr)
    return ParamRule(ctx.sigma / math.sqrt(p.fan_in), 1.0, lr)


def rules_for(name: str, params: list[ParamSpec], ctx: RuleContext) -> dict[str, ParamRule]:
    """The rule of every parameter of a model under parameterization ``name``."""
    fn = PARAMETERIZATIONS.get(name)
    return {p.name: fn(p, ctx) for p in params}
