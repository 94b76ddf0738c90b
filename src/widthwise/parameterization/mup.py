"""``mup``, maximal update: microsoft/mup (MuReadout + set_base_shapes + MuSGD/MuAdam) exactly.

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
Attention scores q·k/d_head.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from widthwise.parameterization.base import (
    PARAMETERIZATIONS,
    Parameterization,
    ParamRule,
    ParamSpec,
    Role,
    RuleContext,
)


class MupOptions(BaseModel):
    """Options of ``mup``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    readout_zero_init: bool = Field(False, description="the readout starts at zero")
    query_zero_init: bool = Field(False, description="attention query weights start at zero")


def mup_rule(p: ParamSpec, ctx: RuleContext) -> ParamRule:
    """muP exactly as microsoft/mup's MuReadout, set_base_shapes and MuSGD/MuAdam."""
    o: MupOptions = ctx.options
    m = ctx.m
    sgd = ctx.optimizer == "sgd"
    std = ctx.sigma / math.sqrt(p.fan_in)
    if p.role is Role.FIXED:
        return ParamRule(1.0, 0.0, 1.0)
    if p.role is Role.VECTOR:
        return ParamRule(1.0, 0.0, m, 1 / m) if sgd else ParamRule(1.0, 0.0, 1.0)
    if p.role is Role.HIDDEN:
        std = 0.0 if (o.query_zero_init and "query" in p.tags) else std
        return ParamRule(1.0, std, 1.0) if sgd else ParamRule(1.0, std, 1 / m, m)
    if p.role is Role.OUTPUT:
        std = 0.0 if o.readout_zero_init else std * math.sqrt(m)
        return ParamRule(1 / m, std, m, 1 / m) if sgd else ParamRule(1 / m, std, 1.0)
    # input weights: vector-like for mup (one infinite dim)
    return ParamRule(1.0, std, m, 1 / m) if sgd else ParamRule(1.0, std, 1.0)


PARAMETERIZATIONS.register(
    "mup", options=MupOptions, description="maximal update, identical to microsoft/mup"
)(Parameterization(mup_rule))
