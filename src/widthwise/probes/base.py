"""What a probe is: a measurement of all seeds of one width at scheduled steps.

A probe is a registry entry whose options model extends :class:`Schedule`. At each
scheduled step the width's run (``widthwise.job``) calls it with a
:class:`ProbeContext` and stores what it returns: a mapping ``variable -> (dims, array)`` whose first dim is ``"seed"``.
Arrays with only the seed dim go to the width's line-oriented scalar log, the
rest to one atomic ``.npz`` per step; ``open_study`` puts each variable on the
probe's own step coordinate (``step_dim``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from widthwise.registry import Registry
from widthwise.schedule import Schedule

if TYPE_CHECKING:
    import torch

    from widthwise.ensemble import Ensemble
    from widthwise.streams.base import Stream

ProbeResult = dict[str, tuple[tuple[str, ...], np.ndarray]]


@dataclass
class ProbeContext:
    """What a probe may look at; it must not modify ``params`` (probes never change training)."""

    step: int
    ensemble: Ensemble
    params: dict[str, Tensor]  # raw stacked parameters, (seed, *shape)
    probe_x: Tensor  # (point, *in_shape)
    probe_y: Tensor  # (point, output) for mse, (point,) for cross_entropy
    alive: Tensor  # (seed,) bool; diverged members are reported as NaN
    stream: Stream
    lr: float  # base learning rate at this step (after the schedule)
    optimizer: torch.optim.Optimizer | None = None  # read-only; e.g. Adam state for sharpness
    losses: Tensor | None = None
    """(seed,) each member's minibatch loss of update ``step`` (NaN for frozen members);
    set only for probes that run after the update (``ProbeDef.after_update``)."""


@dataclass(frozen=True)
class ModelFacts:
    """What a probe's options are checked against before a run: the parameter tensor
    names and the parameter count of one member at the narrowest width (built on the
    ``meta`` device), and the study's probe points."""

    names: tuple[str, ...]
    n_params: int
    probe_points: int


@dataclass(frozen=True)
class ProbeDef:
    """A registered probe: its function, its step coordinate and when it runs.

    A probe scheduled at step t normally measures the network after t updates,
    before update t is taken (t = 0 is the initial network, t = ``steps`` the final
    one). ``after_update`` probes instead measure update t itself, right after it
    (``ProbeContext.losses`` holds that update's minibatch losses): ``train_loss`` is
    one. ``include_end``: whether the schedule's end (step ``steps``, where no update
    is taken) is one of its steps.
    """

    fn: Callable[[ProbeContext, Any], ProbeResult]
    step_dim: str
    coords: Callable[[Any], dict[str, tuple[tuple[str, ...], np.ndarray]]] | None = None
    """Optional: static coordinates of the probe's arrays from its options (e.g. bin
    edges), attached by ``open_study``: ``{name: (dims, values)}``."""
    after_update: bool = False
    include_end: bool = True
    model_problems: Callable[[Any, ModelFacts], list[str]] | None = None
    """Optional: what in the options cannot work with this model (e.g. more eigenvalues
    than parameters, a layer group naming no tensor), one line each; checked by
    :func:`widthwise.probes.preflight.probe_problems` before a run writes anything."""


PROBES: Registry[ProbeDef] = Registry("probe")


def mask_diverged(values: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """NaN out the rows (leading seed dim) of diverged members."""
    out = np.array(values, dtype=np.float64 if values.dtype == np.float64 else np.float32)
    out[~alive] = np.nan
    return out


__all__ = [
    "PROBES",
    "ModelFacts",
    "ProbeContext",
    "ProbeDef",
    "ProbeResult",
    "Schedule",
    "mask_diverged",
]
