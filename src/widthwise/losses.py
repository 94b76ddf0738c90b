"""Losses per ensemble member."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

LossName = Literal["mse", "cross_entropy"]


def per_member_loss(name: LossName, logits: Tensor, y: Tensor) -> Tensor:
    """Mean loss of each member.

    logits: (seed, batch, output); y: (batch, output) targets for ``mse`` (mean of
    squared errors over batch and outputs, as ``F.mse_loss``) or (batch,) labels
    for ``cross_entropy``. Returns (seed,).
    """
    if name == "mse":
        return ((logits - y) ** 2).mean(dim=(1, 2))
    e, b, c = logits.shape
    flat = F.cross_entropy(logits.reshape(e * b, c), y.repeat(e), reduction="none")
    return flat.reshape(e, b).mean(dim=1)
