"""What a parameterization is: per-tensor rules and what it asks of the network, as data.

Every trainable tensor of a family carries a :class:`Role`. A parameterization maps
(role, fan-in, width multiplier m = width / base_width, optimizer kind, its own
options) to a :class:`ParamRule`. The effective weight in the forward pass is
``W = multiplier · w`` with the stored (trained) ``w ~ N(0, init_std²)``; the
optimizer sees ``w`` with learning rate ``lr_scale · lr`` and weight decay
``wd_scale · weight_decay``. Rules are plain numbers, saved in every checkpoint.

What a parameterization changes beyond single tensors — the exponent of the
attention scale, whether the output is centred on the initial network — is a
:class:`NetworkRules`, read by the families (``network_rules`` trait) and the trainer.
Each parameterization is one :class:`Parameterization` registered in
:data:`PARAMETERIZATIONS` with its options model; the core never looks at its name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

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
class NetworkRules:
    """What a parameterization asks of the whole network, beyond its tensors' rules.

    ``attn_exponent``: attention scores are ``q·k / d_head**attn_exponent`` — 1 for
    muP-like limits (q and k become correlated in training, so q·k grows like
    d_head), 1/2 for the standard scale; families with attention read it (trait
    ``network_rules``). ``center``: the trainer subtracts the initial network's
    output, f_θ(x) − f_θ0(x).
    """

    attn_exponent: float = 1.0
    center: bool = False


@dataclass(frozen=True)
class RuleContext:
    """Everything a rule may depend on besides the tensor itself.

    ``options`` are the parameterization's own options: an instance of its options
    model (``PARAMETERIZATIONS.validate_options(name, {...})``), a plain mapping
    (validated by :func:`rules_for`), or None for its defaults.
    """

    width: int
    base_width: int
    optimizer: Literal["sgd", "adam"]
    sigma: float = 1.0
    options: Any = None
    depth: int | None = None
    """Residual blocks of the network under depth-muP (``depth_mup``), else None."""
    base_depth: int | None = None
    """The depth at which depth-muP equals the plain parameterization."""

    @property
    def m(self) -> float:
        """Width multiplier m = width / base_width."""
        return self.width / self.base_width


RuleFn = Callable[[ParamSpec, RuleContext], ParamRule]


@dataclass(frozen=True)
class Parameterization:
    """A parameterization as data: the rule of each tensor, and what it asks of the network.

    ``rule(p, ctx)`` gives one tensor's :class:`ParamRule` (``ctx.options`` holds the
    validated options); ``network`` is a :class:`NetworkRules` or a function of the
    context returning one; ``optimizers`` are the optimizer kinds (``sgd``, ``adam``
    for adam and adamw) the rules are defined for, and ``optimizer_note`` says why
    (shown when a spec asks for another). Calling it is calling ``rule``.
    """

    rule: RuleFn
    network: NetworkRules | Callable[[RuleContext], NetworkRules] = NetworkRules()
    optimizers: tuple[str, ...] = ("sgd", "adam")
    optimizer_note: str = ""

    def __post_init__(self) -> None:
        # the registry describes an entry by its docstring: the rule's, not this class's
        object.__setattr__(self, "__doc__", self.rule.__doc__)

    def __call__(self, p: ParamSpec, ctx: RuleContext) -> ParamRule:
        return self.rule(p, ctx)

    def network_rules(self, ctx: RuleContext) -> NetworkRules:
        """The network-level rules in context ``ctx``."""
        return self.network if isinstance(self.network, NetworkRules) else self.network(ctx)


PARAMETERIZATIONS: Registry[Parameterization] = Registry("parameterization")
"""Every parameterization by name; ``register(name, options=Model)(Parameterization(...))``."""


def with_options(name: str, ctx: RuleContext) -> RuleContext:
    """``ctx`` with ``options`` validated by parameterization ``name``'s options model.

    None stands for the defaults and a mapping is validated; a missing required
    option raises pydantic's ValidationError (a ValueError naming the option).
    """
    entry = PARAMETERIZATIONS.entry(name)
    if entry.options is None or isinstance(ctx.options, entry.options):
        return ctx
    given = dict(ctx.options) if ctx.options is not None else {}
    return dataclasses.replace(ctx, options=PARAMETERIZATIONS.validate_options(name, given))


BRANCH_OUT = "branch_out"
"""Tag of a residual branch's last linear map (weight and bias): depth-muP multiplies it."""
BRANCH = "branch"
"""Tag of every tensor inside a residual branch (the branch's norms and linear maps)."""


def rules_for(name: str, params: list[ParamSpec], ctx: RuleContext) -> dict[str, ParamRule]:
    """The rule of every parameter of a model under parameterization ``name``.

    With ``ctx.depth`` and ``ctx.base_depth`` set (``depth_mup``), every tensor tagged
    :data:`BRANCH_OUT` gets depth-muP's branch scaling (Yang, Yu, Zhu, Hayou 2023,
    Tensor Programs VI; Bordelon, Noci, Li, Hanin, Pehlevan 2023): forward multiplier
    × √(base_depth / depth), each residual branch scaled by 1/√L relative to the base
    depth; with Adam-type optimizers every tensor tagged :data:`BRANCH` (all of a
    branch's tensors: Adam's update size does not see the multiplier, and a branch of
    two layers changes its output through both) gets lr scale × √(base_depth / depth).
    With SGD the multiplier already scales each update's effect by 1/L per block. At
    depth = base_depth every factor is exactly 1: the plain parameterization.
    """
    fn = PARAMETERIZATIONS.get(name)
    ctx = with_options(name, ctx)
    rules = {p.name: fn(p, ctx) for p in params}
    if ctx.depth is None or ctx.base_depth is None or ctx.depth == ctx.base_depth:
        return rules
    f = math.sqrt(ctx.base_depth / ctx.depth)
    for p in params:
        r = rules[p.name]
        mult = r.multiplier * f if BRANCH_OUT in p.tags else r.multiplier
        adam = ctx.optimizer == "adam" and (BRANCH in p.tags or BRANCH_OUT in p.tags)
        lr = r.lr_scale * f if adam else r.lr_scale
        if (mult, lr) != (r.multiplier, r.lr_scale):
            rules[p.name] = dataclasses.replace(r, multiplier=mult, lr_scale=lr)
    return rules


def network_rules_for(name: str, ctx: RuleContext) -> NetworkRules:
    """What parameterization ``name`` asks of the network (attention exponent, centring).

    A plain rule function registered without a :class:`Parameterization` asks nothing
    (``NetworkRules()``).
    """
    fn = PARAMETERIZATIONS.get(name)
    if not isinstance(fn, Parameterization):
        return NetworkRules()
    return fn.network_rules(with_options(name, ctx))


def optimizer_problem(name: str, optimizer: str, kind: str) -> str | None:
    """Why parameterization ``name`` cannot train with ``optimizer`` (of ``kind`` sgd or
    adam), or None when it can."""
    fn = PARAMETERIZATIONS.get(name)
    if not isinstance(fn, Parameterization) or kind in fn.optimizers:
        return None
    note = f" ({fn.optimizer_note})" if fn.optimizer_note else ""
    return f"{name} is defined for {' and '.join(fn.optimizers)}{note}, got {optimizer!r}"
