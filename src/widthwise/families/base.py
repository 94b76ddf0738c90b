"""What a model family is: a functional network of a given width whose tensors carry roles."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor

from widthwise.parameterization import ParamSpec
from widthwise.registry import Registry

ApplyFn = Callable[[Mapping[str, Tensor], Tensor, bool], tuple[Tensor, dict[str, Tensor]]]


@dataclass(frozen=True)
class Network:
    """One family member at one width, as data plus a pure function.

    ``params`` lists every trainable tensor with its role; ``apply(weights, x, taps)``
    maps *effective* weights (multipliers already applied) and a batch
    ``x: (batch, *in_shape)`` to logits ``(batch, out_dim)``. With ``taps=True`` it
    also returns intermediate arrays keyed ``"preact/<layer>"`` and
    ``"act/<layer>"`` (each ``(batch, width)``), used by coordinate checks and probes.
    ``apply`` must be vmap-able over a leading seed dim of the weights.
    """

    family: str
    width: int
    params: tuple[ParamSpec, ...]
    apply: ApplyFn
    layers: tuple[str, ...] = ()


FamilyBuilder = Callable[..., Network]
FAMILIES: Registry[FamilyBuilder] = Registry("family")
