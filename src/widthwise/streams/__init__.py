"""Data streams (registry :data:`STREAMS`); importing this module registers the built-ins.

A stream declares its loss on its registry entry (trait ``loss``: ``"mse"``,
``"cross_entropy"``, or a function of its validated options returning one), so a
spec's ``loss`` is checked without building the stream or reading any data.
"""

from __future__ import annotations

from typing import Any

from widthwise.errors import UserError
from widthwise.losses import LossName
from widthwise.streams import cifar as _cifar  # noqa: F401
from widthwise.streams import cifar5m as _cifar5m  # noqa: F401
from widthwise.streams import gegenbauer as _gegenbauer  # noqa: F401
from widthwise.streams import idx as _idx  # noqa: F401
from widthwise.streams import imagefolder as _imagefolder  # noqa: F401
from widthwise.streams import periodic as _periodic  # noqa: F401
from widthwise.streams import teacher as _teacher  # noqa: F401
from widthwise.streams import text as _text  # noqa: F401
from widthwise.streams import vision as _vision  # noqa: F401
from widthwise.streams.base import STREAMS, Stream, rng_for


def declared_loss(name: str, options: Any) -> LossName | None:
    """The loss stream ``name`` declares for its validated ``options``, without building
    it; None for a stream that declares none."""
    loss = STREAMS.entry(name).traits.get("loss")
    return loss(options) if callable(loss) else loss


def loss_problem(loss: LossName, stream_loss: LossName, stream: str) -> str | None:
    """Why ``loss`` cannot train on a stream whose own loss is ``stream_loss``, or None.

    mse on a classification stream trains on one-hot targets; cross_entropy needs
    class labels.
    """
    if loss == "cross_entropy" and stream_loss == "mse":
        return (
            f"stream {stream!r} has real-valued targets; "
            "cross_entropy needs a classification stream (allowed: mse)"
        )
    return None


def training_loss(loss: LossName | None, stream: Stream) -> LossName:
    """``loss``, or the stream's own when None; a UserError naming ``loss`` if it cannot
    train on the stream (checked here too for streams that declare no loss)."""
    if loss is None:
        return stream.loss
    problem = loss_problem(loss, stream.loss, type(stream).__name__)
    if problem:
        raise UserError(f"loss: {problem}")
    return loss


__all__ = ["STREAMS", "Stream", "declared_loss", "loss_problem", "rng_for", "training_loss"]
