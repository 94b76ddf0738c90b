"""``sp``, the standard parameterization (paper Appendix C.1, as libraries implement it).

multiplier 1, std σ/√fan_in, lr and wd scale 1 for every tensor; attention scores
q·k/√d_head. No options.
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


def sp_rule(p: ParamSpec, ctx: RuleContext) -> ParamRule:
    """Standard parameterization (paper Appendix C.1 as libraries implement it)."""
    if p.role in (Role.VECTOR, Role.FIXED):
        return ParamRule(1.0, 0.0, 1.0)
    return ParamRule(1.0, ctx.sigma / math.sqrt(p.fan_in), 1.0)


PARAMETERIZATIONS.register("sp", description="standard: multiplier 1, std σ/√fan_in, lr ×1")(
    Parameterization(sp_rule, network=NetworkRules(attn_exponent=0.5))
)
