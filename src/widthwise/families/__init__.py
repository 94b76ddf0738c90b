"""Model families (registry :data:`FAMILIES`); importing this module registers the built-ins."""

from __future__ import annotations

import inspect
from typing import Any

from widthwise.families import cnn as _cnn  # noqa: F401  (registers "cnn")
from widthwise.families import mlp as _mlp  # noqa: F401  (registers "mlp")
from widthwise.families import resnet as _resnet  # noqa: F401  (registers "resnet18_ln")
from widthwise.families import transformer as _transformer  # noqa: F401  (registers "transformer")
from widthwise.families.base import FAMILIES, Network


def build_network(
    family: str,
    width: int,
    in_shape: tuple[int, ...],
    out_dim: int,
    options: Any,
    *,
    parameterization: str | None = None,
) -> Network:
    """Build ``family`` at ``width``: ``builder(width, in_shape, out_dim, options)``.

    A builder that declares a keyword parameter ``parameterization`` also receives
    the parameterization's name (the transformer resolves ``attn_scale: auto`` with
    it); builders that do not declare it are called exactly as before.
    """
    builder = FAMILIES.get(family)
    kwargs = {}
    if parameterization is not None and "parameterization" in inspect.signature(builder).parameters:
        kwargs["parameterization"] = parameterization
    return builder(width, in_shape, out_dim, options, **kwargs)


__all__ = ["FAMILIES", "Network", "build_network"]
