"""``ntp``, the NTK parameterization, lr matched to sp/mup at the base width (paper App. D).

multiplier σ/√fan_in, w ~ N(0, 1); SGD lr scale base_fan_in/σ² and Adam lr scale
√base_fan_in/σ (wd scale the inverse), so that at the base width the dynamics
coincide with ``sp``/``mup`` while wider networks move their features less (lazy,
NTK limit). Attention scores q·k/√d_head, as ``sp``. No options.
"""

from __future__ import annotations

import math

from widthwise.parameterization.base import (
    PARAMETERIZATIONS,
    NetworkRules,
    Parameterization,
    ParamRule,
    ParamSpec,
    Role,
    RuleContext,
)


def ntp_rule(p: ParamSpec, ctx: RuleContext) -> ParamRule:
    """NTK parameterization, lr matched to sp/mup at the base width (paper Appendix D)."""
    if p.role in (Role.VECTOR, Role.FIXED):
        return ParamRule(1.0, 0.0, 1.0)
    mult = ctx.sigma / math.sqrt(p.fan_in)
    base_mult = ctx.sigma / math.sqrt(p.base_fan_in(ctx.m))
    lr = 1 / base_mult**2 if ctx.optimizer == "sgd" else 1 / base_mult
    return ParamRule(mult, 1.0, lr, 1 / lr)


PARAMETERIZATIONS.register("ntp", description="NTK: multiplier σ/√fan_in, w ~ N(0,1)")(
    Parameterization(ntp_rule, network=NetworkRules(attn_exponent=0.5))
)
