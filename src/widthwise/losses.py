"""Losses per ensemble member."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

LossName = Literal["mse", "cross_entropy"]
IGNORE_INDEX = -100  # label of positions that carry no loss (masked-LM, padding)


def per_member_loss(name: LossName, logits: Tensor, y: Tensor) -> Tensor:
    """Mean loss of each member.

    ``mse``: logits (seed, batch, ...) and targets y (batch, ...) of the same trailing
    shape; the mean of squared errors over every non-seed dim (as ``F.mse_loss``).
    ``cross_entropy``: logits (seed, batch, [position,] class) and integer labels y
    (batch, [position]); the mean over labelled positions (labels equal to
    ``IGNORE_INDEX`` carry no loss, e.g. unmasked tokens of a masked-LM batch).
    Returns (seed,).
    """
    e = logits.shape[0]
    if name == "mse":
        return ((logits - y) ** 2).reshape(e, -1).mean(dim=1)
    c = logits.shape[-1]
    labels = y.reshape(-1)  # (batch·positions,)
    flat = F.cross_entropy(
        logits.reshape(-1, c), labels.repeat(e), reduction="none", ignore_index=IGNORE_INDEX
    ).reshape(e, -1)
    counted = (labels != IGNORE_INDEX).sum().clamp_min(1)
    return flat.sum(dim=1) / counted


def per_member_error(logits: Tensor, y: Tensor) -> Tensor:
    """Classification error of each member over labelled positions; (seed,)."""
    labels = y.reshape(-1)
    keep = labels != IGNORE_INDEX
    pred = logits.reshape(logits.shape[0], -1, logits.shape[-1]).argmax(-1)  # (seed, n)
    wrong = (pred != labels) & keep
    return wrong.float().sum(dim=1) / keep.sum().clamp_min(1)


__all__ = ["IGNORE_INDEX", "LossName", "per_member_error", "per_member_loss"]
