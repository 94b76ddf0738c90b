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

    ``stackable`` declares that ``apply`` uses its weights only through ``F.linear``
    on ``(batch, features)`` inputs: an ensemble may then run it on the stacked
    ``(seed, ...)`` weights directly, each layer one batched matmul for all members,
    instead of through ``torch.func.vmap`` (:mod:`widthwise.ensemble`).
    """

    family: str
    width: int
    params: tuple[ParamSpec, ...]
    apply: ApplyFn
    layers: tuple[str, ...] = ()
    stackable: bool = False


FamilyBuilder = Callable[..., Network]
FAMILIES: Registry[FamilyBuilder] = Registry("family")
"""Every family by name. Trait ``network_rules=True``: the builder also takes the
parameterization's :class:`~widthwise.parameterization.NetworkRules` as the keyword
``network_rules`` (e.g. the transformer's attention exponent)."""
