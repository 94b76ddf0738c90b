"""Parameterizations as data: role → (forward multiplier, init std, lr scale, wd scale).

Every trainable tensor of a family carries a :class:`Role`; a parameterization maps
it, with the width multiplier m = width / base_width, the optimizer kind and the
parameterization's own options, to a :class:`ParamRule` (``W = multiplier · w``,
``w ~ N(0, init_std²)``, lr ``lr_scale · lr``, weight decay ``wd_scale ·
weight_decay``), and asks the network for :class:`NetworkRules` (attention exponent,
centring). Rules are plain numbers, saved in every checkpoint.

Each parameterization is one module of this package, registered in
:data:`PARAMETERIZATIONS` with its options model, and every module here except
``base`` is imported below, so a new built-in is one new file. The built-ins
(docs/parameterizations.md, paper Appendix C and D): ``sp``, ``mup`` (identical to
microsoft/mup), ``ntp``, ``mf`` (mean field with richness γ0) and ``umup`` (u-μP,
Blake et al. 2024).
"""

from __future__ import annotations

import importlib
import pkgutil

from widthwise.parameterization.base import (
    PARAMETERIZATIONS,
    NetworkRules,
    Parameterization,
    ParamRule,
    ParamSpec,
    Role,
    RuleContext,
    RuleFn,
    network_rules_for,
    optimizer_problem,
    rules_for,
    with_options,
)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "base" and not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "PARAMETERIZATIONS",
    "NetworkRules",
    "ParamRule",
    "ParamSpec",
    "Parameterization",
    "Role",
    "RuleContext",
    "RuleFn",
    "network_rules_for",
    "optimizer_problem",
    "rules_for",
    "with_options",
]
