"""``mf``, mean field with richness γ0 (paper Appendix C.2, Section 5). SGD only.

Input and hidden layers NTK-style (multiplier σ/√fan_in, w ~ N(0, 1)), output
multiplier 1/(γ0·width), SGD lr scale γ0²·width on every tensor (so ``lr`` is η0);
the output bias gets multiplier 1/γ0 and lr scale γ0² so its effective step is
η0-sized too. Option ``center`` subtracts the initial network's output (lazy regime
at small γ0, paper Section 5): a :class:`NetworkRules` the trainer applies.
Attention scores q·k/d_head.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from widthwise.parameterization.base import (
    PARAMETERIZATIONS,
    NetworkRules,
    Parameterization,
    ParamRule,
    ParamSpec,
    Role,
    RuleContext,
)


class MFOptions(BaseModel):
    """Options of ``mf``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    gamma0: float = Field(gt=0, description="richness γ0 > 0, e.g. 1.0")
    center: bool = Field(False, description="subtract the initial network's output")


def mf_rule(p: ParamSpec, ctx: RuleContext) -> ParamRule:
    """Mean-field parameterization with richness γ0 (paper Appendix C.2, Section 5)."""
    g = ctx.options.gamma0
    lr = g * g * ctx.width
    if p.role is Role.FIXED:
        return ParamRule(1 / g, 0.0, g * g)
    if p.role is Role.VECTOR:
        return ParamRule(1.0, 0.0, lr)
    if p.role is Role.OUTPUT:
        return ParamRule(1 / (g * ctx.width), 1.0, lr)
    return ParamRule(ctx.sigma / math.sqrt(p.fan_in), 1.0, lr)


def mf_network(ctx: RuleContext) -> NetworkRules:
    """muP's attention exponent; centred on the initial network under ``center``."""
    return NetworkRules(attn_exponent=1.0, center=ctx.options.center)


PARAMETERIZATIONS.register(
    "mf", options=MFOptions, description="mean field with richness gamma0 (SGD)"
)(
    Parameterization(
        mf_rule,
        network=mf_network,
        optimizers=("sgd",),
        optimizer_note="paper Appendix C; use mup for adam",
    )
)
