"""SGD and Adam(W) whose state-shaping scalars differ per ensemble member (a sweep).

A sweep of ``momentum`` (sgd) or ``beta1``, ``beta2``, ``eps`` (adam, adamw) gives
every member of a width's stacked tensors its own value (docs/sweeps.md). Torch's
optimizers take one value per param group, and a group holds whole stacked
tensors, so these two optimizers take the swept scalars as (member,) tensors and
broadcast them over each stacked (member, ...) tensor. Everything else is torch's
single-tensor algorithm line for line (``torch.optim.sgd._single_tensor_sgd``,
``torch.optim.adam._single_tensor_adam``, torch 2.13: no dampening, maximize,
amsgrad or capturable): the state has torch's keys and dtypes (``momentum_buffer``;
``step``, ``exp_avg``, ``exp_avg_sq``), so checkpoints, resume and the sharpness
probe's reading of Adam's state work unchanged. A member's update equals torch's at
its own value to float rounding (tests/test_sweep_optim.py).

Where a scalar is not swept, the group's own value (``optimizer.momentum``,
``optimizer.betas``, ``optimizer.eps``) is used, as a Python float, like torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["MemberAdam", "MemberSGD", "per_member"]


def per_member(values: Tensor | float, like: Tensor) -> Tensor | float:
    """(member,) ``values`` shaped to broadcast over a stacked (member, ...) tensor
    (a float stays a float)."""
    if not isinstance(values, Tensor):
        return values
    return values.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.dim() - 1)))


class MemberSGD(torch.optim.Optimizer):
    """``torch.optim.SGD`` (dampening 0) with a per-member ``momentum``.

    ``momentum``: a (member,) tensor (every stacked tensor's leading dim is the
    member) or a float. A member with momentum 0 steps as plain SGD: its buffer is
    its gradient each step, exactly as torch's first step sets it.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: Tensor | float,
        nesterov: bool = False,
    ) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": 0.0, "nesterov": nesterov})
        self.momentum = momentum

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # noqa: D102
        if closure is not None:
            raise ValueError("MemberSGD.step takes no closure")
        for group in self.param_groups:
            lr, wd, nesterov = group["lr"], group["weight_decay"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if wd != 0:
                    grad = grad.add(p, alpha=wd)
                m = per_member(self.momentum, p)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = grad.detach().clone()
                else:
                    buf.mul_(m).add_(grad)
                grad = grad.add(buf * m) if nesterov else buf
                p.add_(grad, alpha=-lr)


class MemberAdam(torch.optim.Optimizer):
    """``torch.optim.Adam`` (``decoupled=True``: ``AdamW``) with per-member ``beta1``,
    ``beta2`` and ``eps``: each a (member,) tensor or a float."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        beta1: Tensor | float,
        beta2: Tensor | float,
        eps: Tensor | float,
        decoupled: bool = False,
    ) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": 0.0})
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.decoupled = decoupled

    def member_scalars(self, p: Tensor) -> Mapping[str, Tensor | float]:
        """``beta1``, ``beta2``, ``eps`` shaped to broadcast over ``p`` (floats where shared)."""
        return {
            "beta1": per_member(self.beta1, p),
            "beta2": per_member(self.beta2, p),
            "eps": per_member(self.eps, p),
        }

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # noqa: D102
        if closure is not None:
            raise ValueError("MemberAdam.step takes no closure")
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    scalar = torch.float64 if p.dtype == torch.float64 else torch.float32
                    state["step"] = torch.tensor(0.0, dtype=scalar)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                s = self.member_scalars(p)
                b1, b2, eps = s["beta1"], s["beta2"], s["eps"]
                state["step"] += 1
                if wd != 0:
                    if self.decoupled:
                        p.mul_(1 - lr * wd)
                    else:
                        grad = grad.add(p, alpha=wd)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1 - b1)
                if isinstance(b2, Tensor):
                    exp_avg_sq.mul_(b2).add_(grad * grad * (1 - b2))
                else:
                    exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                t = float(state["step"])
                step_size = lr / (1 - b1**t)
                bc2_sqrt = (1 - b2**t) ** 0.5
                denom = (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps)
                if isinstance(step_size, Tensor):
                    p.sub_(exp_avg / denom * step_size)
                else:
                    p.addcdiv_(exp_avg, denom, value=-step_size)
