"""The ``train_eval`` probe: loss on a fixed sample of the training set (paper Section 3.2).

In offline training (finite training set, many epochs) the loss on the training
set and the loss on held-out data separate; Fig. 8 shows both to expose
over-fitting and double descent. ``train_loss`` is the minibatch loss (augmented,
before each update); this probe evaluates every member, at its schedule's steps,
on ``stream.train_eval_set(points)``: a fixed sample of the training subset with
the labels it is trained on (noisy labels included), never augmented. Streams
with a finite training set provide that method (``fashion_mnist``, ``cifar10``,
``cifar5m``, ``image_folder``); online streams have no training *set*.

``train_eval`` (step dim ``train_eval_step``)
    ``train_eval_loss (seed,)``: mean loss (cross-entropy in nats, or MSE).
    ``train_eval_error (seed,)``: classification error in [0, 1] (cross-entropy only).
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from widthwise.errors import UserError
from widthwise.losses import IGNORE_INDEX, per_member_error, per_member_loss
from widthwise.probes.base import PROBES, ProbeContext, ProbeDef, ProbeResult, mask_diverged
from widthwise.schedule import Schedule


class TrainEvalOptions(Schedule):
    """Options of the ``train_eval`` probe (a schedule key is required, as for ``test``)."""

    points: int = Field(
        1024, gt=0, le=10**7, description="training examples evaluated (all of them if fewer)"
    )
    chunk: int = Field(512, gt=0, le=2**20, description="examples per forward pass (bounds memory)")


def _tensors(ctx: ProbeContext, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """As the trainer converts batches: int inputs stay int64, targets by the loss."""
    ens = ctx.ensemble
    if np.issubdtype(x.dtype, np.integer):
        xt = torch.as_tensor(x, device=ens.device, dtype=torch.long)
    else:
        xt = torch.as_tensor(x, device=ens.device, dtype=ens.dtype)
    if ens.loss == "cross_entropy":
        return xt, torch.as_tensor(y, device=ens.device, dtype=torch.long)
    if y.ndim == 1:  # mse on a classification stream: one-hot targets
        y = np.eye(ctx.stream.out_dim, dtype=np.float32)[y]
    return xt, torch.as_tensor(y, device=ens.device, dtype=ens.dtype)


def train_eval_probe(ctx: ProbeContext, options: TrainEvalOptions) -> ProbeResult:
    """train_eval_loss (seed); train_eval_error (seed) for classification."""
    get = getattr(ctx.stream, "train_eval_set", None)
    if get is None:
        name = getattr(ctx.stream, "name", type(ctx.stream).__name__)
        raise UserError(
            f"probe train_eval: stream {name!r} has no finite training set to evaluate; "
            "use it with fashion_mnist, cifar10, cifar5m or image_folder (e.g. with train_size)"
        )
    x_all, y_all = get(options.points)
    if len(x_all) == 0:
        raise UserError("probe train_eval: the stream's training set is empty")
    ens = ctx.ensemble
    classify = ens.loss == "cross_entropy"
    losses, errors, weights = [], [], []
    with torch.no_grad():
        for start in range(0, len(x_all), options.chunk):
            end = start + options.chunk
            x, y = _tensors(ctx, x_all[start:end], y_all[start:end])
            logits = ens.forward(ctx.params, x)  # (seed, chunk, [position,] output)
            # per_member_* average over labelled positions (CE) or examples (MSE)
            weights.append(int((y != IGNORE_INDEX).sum()) if classify else len(x))
            losses.append(per_member_loss(ens.loss, logits, y).cpu().numpy())
            if classify:
                errors.append(per_member_error(logits, y).cpu().numpy())
    w = np.asarray(weights, dtype=np.float64)[:, None] / max(sum(weights), 1)  # (chunk, 1)
    alive = ctx.alive.cpu().numpy()
    loss = (np.stack(losses) * w).sum(axis=0)  # (seed,)
    out: ProbeResult = {"train_eval_loss": (("seed",), mask_diverged(loss, alive))}
    if classify:
        error = (np.stack(errors) * w).sum(axis=0)
        out["train_eval_error"] = (("seed",), mask_diverged(error, alive))
    return out


PROBES.register(
    "train_eval",
    options=TrainEvalOptions,
    description="loss and error on a fixed sample of the training set (offline mode)",
)(ProbeDef(fn=train_eval_probe, step_dim="train_eval_step"))
