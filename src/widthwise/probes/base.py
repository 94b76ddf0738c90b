"""What a probe is: a measurement of all seeds of one width at scheduled steps.

A probe is a registry entry whose options model extends :class:`Schedule`. At each
scheduled step the trainer calls it with a :class:`ProbeContext` and stores what it
returns: a mapping ``variable -> (dims, array)`` whose first dim is ``"seed"``.
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


@dataclass(frozen=True)
class ProbeDef:
    """A registered probe: its function and the name of its step coordinate.

    ``fn is None`` marks the built-in ``train_loss`` probe, which the training
    step itself fills in for free.
    """

    fn: Callable[[ProbeContext, Any], ProbeResult] | None
    step_dim: str
    coords: Callable[[Any], dict[str, tuple[tuple[str, ...], np.ndarray]]] | None = None
    """Optional: static coordinates of the probe's arrays from its options (e.g. bin
    edges), attached by ``open_study``: ``{name: (dims, values)}``."""


PROBES: Registry[ProbeDef] = Registry("probe")


def mask_diverged(values: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """NaN out the rows (leading seed dim) of diverged members."""
    out = np.array(values, dtype=np.float64 if values.dtype == np.float64 else np.float32)
    out[~alive] = np.nan
    return out


__all__ = ["PROBES", "ProbeContext", "ProbeDef", "ProbeResult", "Schedule", "mask_diverged"]
