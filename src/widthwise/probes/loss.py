"""Loss probes: the training loss of every step and the test loss / logits on the probe set."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field

from widthwise.losses import per_member_error, per_member_loss
from widthwise.probes.base import PROBES, ProbeContext, ProbeDef, ProbeResult, mask_diverged
from widthwise.schedule import Schedule


class TrainLossOptions(Schedule):
    """Record the minibatch loss of update t (computed before it changes the parameters);
    default schedule: every step."""

    default_schedule: ClassVar[dict[str, Any] | None] = {"every": 1}


class TestOptions(Schedule):
    """Evaluate on the fixed probe set: loss per seed, and logits unless ``logits: false``."""

    logits: bool = Field(True, description="also store the logits (seed, point, output)")


def train_loss_probe(ctx: ProbeContext, options: TrainLossOptions) -> ProbeResult:
    """train_loss (seed): each member's loss on update t's minibatch, the loss the update
    descended (NaN for members frozen earlier). Free: the training step computed it."""
    assert ctx.losses is not None, "train_loss runs after the update"
    return {"train_loss": (("seed",), ctx.losses.cpu().numpy())}


PROBES.register("train_loss", options=TrainLossOptions, description="minibatch training loss")(
    ProbeDef(fn=train_loss_probe, step_dim="step", after_update=True, include_end=False)
)


def test_probe(ctx: ProbeContext, options: TestOptions) -> ProbeResult:
    """test_loss (seed); test_error (seed) for classification; test_logits (seed, point, output).

    Sequence models get test_logits (seed, point, position, output).
    """
    with torch.no_grad():
        logits = ctx.ensemble.forward(ctx.params, ctx.probe_x)  # (seed, point, output)
        loss = per_member_loss(ctx.ensemble.loss, logits, ctx.probe_y)
    alive = ctx.alive.cpu().numpy()
    out: ProbeResult = {"test_loss": (("seed",), mask_diverged(loss.cpu().numpy(), alive))}
    if ctx.ensemble.loss == "cross_entropy":
        wrong = per_member_error(logits, ctx.probe_y)
        out["test_error"] = (("seed",), mask_diverged(wrong.cpu().numpy(), alive))
    if options.logits:
        # (seed, point, output), or (seed, point, position, output) for sequence models
        dims = ("seed", "point", *("position",) * (logits.ndim - 3), "output")
        out["test_logits"] = (dims, mask_diverged(logits.cpu().numpy(), alive))
    return out


PROBES.register("test", options=TestOptions, description="test loss and logits on the probe set")(
    ProbeDef(fn=test_probe, step_dim="test_step")
)
