"""``umup``, the unit-scaled maximal update parametrization (Blake et al. 2024, u-μP).

u-μP is μP rewritten so that every weight starts with unit variance and the width
scaling lives in the multipliers and learning rates, with no base shapes: the rules
depend on absolute fan-ins, not on m, and ``base_width`` is not used. Per role
(σ = ``parameterization.sigma``, 1 is the paper's unit init; ``n`` = fan-in):

======== ============== ======== ======================== ====================
role     multiplier     init std Adam lr (wd)             SGD lr (wd)
======== ============== ======== ======================== ====================
input    1/√n           σ        1/√n (√n); embeddings    n·width (1/(n·width))
                                 1/√width (√width)
hidden   1/√n           σ        1/√n (√n)                n (1/n)
output   α_output/n     σ        1 (1)                    n (1/n)
vector   1              0 / 1    1 (1)                    its size (1/size)
fixed    1              0        1 (1)                    1 (1)
======== ============== ======== ======================== ====================

Adam is the paper's Table 3 and ``unit_scaling.optim.lr_scale_func_adam``: hidden
(and dense input) weights 1/√fan_in, the readout and vectors constant, and the
paper's *embedding LR rule* (Section 4.4) 1/√width for lookups (tensors tagged
``embedding``; option ``embedding_lr_rule``, else μP's constant). Adam ignores the
gradient's scale, so these rules hold with plain autodiff. SGD is not in the paper
(and ``unit_scaling``'s SGD rules assume its unit-scaled backward ops); here it is
μP's SGD (Tensor Programs V, Table 3) moved into unit-scaled form by the
abc-symmetry A←Aθ, B←B/θ, C←C/θ², so the effective weights follow μP exactly.
Weight decay scales as 1/lr_scale (the decay per step does not depend on a tensor's
lr scale, as u-μP's independent weight decay, but stays proportional to ``lr``).
Attention scores q·k/d_head, as μP.

Left out of the paper: the unit-scaled ops themselves (scaled backward passes,
unit-scaled GELU/softmax/cross-entropy, the τ-weighted residual split and add), so
activations are O(1) in width but not exactly of unit scale; depth-μP's residual
scaling; the α hyperparameters other than α_output (attention's is the transformer
family's ``attn_mult``); low-precision (FP8) training.
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


class UmupOptions(BaseModel):
    """Options of ``umup``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    output_mult: float = Field(
        1.0, gt=0, description="α_output: the readout's multiplier is α_output/fan_in"
    )
    embedding_lr_rule: bool = Field(
        True, description="Adam: embedding lr 1/√width (u-μP Sec. 4.4); false: μP's constant"
    )


def umup_rule(p: ParamSpec, ctx: RuleContext) -> ParamRule:
    """u-μP: unit init, the width scaling in multipliers and per-role lr (Blake et al. 2024)."""
    o: UmupOptions = ctx.options
    adam = ctx.optimizer == "adam"
    n = p.fan_in
    if p.role is Role.FIXED:
        return ParamRule(1.0, 0.0, 1.0)
    if p.role is Role.VECTOR:
        lr = 1.0 if adam else float(math.prod(p.shape))
        return ParamRule(1.0, 0.0, lr, 1 / lr)
    if p.role is Role.OUTPUT:
        lr = 1.0 if adam else float(n)
        return ParamRule(o.output_mult / n, ctx.sigma, lr, 1 / lr)
    if p.role is Role.HIDDEN:
        lr = n**-0.5 if adam else float(n)
        return ParamRule(n**-0.5, ctx.sigma, lr, 1 / lr)
    # input weights: a unit-scaled matmul of a fixed fan-in (a lookup has fan-in 1)
    if not adam:
        lr = float(n * ctx.width)
    elif o.embedding_lr_rule and "embedding" in p.tags:
        lr = ctx.width**-0.5
    else:
        lr = n**-0.5
    return ParamRule(n**-0.5, ctx.sigma, lr, 1 / lr)


PARAMETERIZATIONS.register(
    "umup", options=UmupOptions, description="unit-scaled maximal update (u-μP, Blake et al. 2024)"
)(Parameterization(umup_rule, network=NetworkRules(attn_exponent=1.0)))
