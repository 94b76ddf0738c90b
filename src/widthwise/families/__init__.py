"""Model families (registry :data:`FAMILIES`); importing this module registers the built-ins."""

from __future__ import annotations

from typing import Any

from widthwise.families import cnn as _cnn  # noqa: F401  (registers "cnn")
from widthwise.families import mlp as _mlp  # noqa: F401  (registers "mlp")
from widthwise.families import module as _module  # noqa: F401  (registers "module")
from widthwise.families import resnet as _resnet  # noqa: F401  (registers "resnet18_ln")
from widthwise.families import transformer as _transformer  # noqa: F401  (registers "transformer")
from widthwise.families.base import FAMILIES, Network
from widthwise.families.module import from_module
from widthwise.parameterization import NetworkRules


def build_network(
    family: str,
    width: int,
    in_shape: tuple[int, ...],
    out_dim: int,
    options: Any,
    *,
    network_rules: NetworkRules | None = None,
) -> Network:
    """Build ``family`` at ``width``: ``builder(width, in_shape, out_dim, options)``.

    A family registered with the trait ``network_rules=True`` also receives
    ``network_rules`` (what the parameterization asks of the network, e.g. the
    attention exponent; :func:`~widthwise.parameterization.network_rules_for`); the
    others are called exactly as above. Without ``network_rules`` every family
    builds with its defaults.
    """
    entry = FAMILIES.entry(family)
    if network_rules is not None and entry.traits.get("network_rules"):
        return entry.obj(width, in_shape, out_dim, options, network_rules=network_rules)
    return entry.obj(width, in_shape, out_dim, options)


__all__ = ["FAMILIES", "Network", "build_network", "from_module"]
