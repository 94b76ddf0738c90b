"""Stepping all seeds of one width: the ensemble trainer and its optimizer.

``EnsembleTrainer`` holds the state (stacked params, optimizer, alive mask) and
takes one step at a time without any I/O; :func:`widthwise.job.run_job` runs it over
a study's steps with probes, checkpoints and the store. Under ``mixed_precision:
bf16`` the training forward pass runs under ``torch.autocast(bfloat16)``; the loss,
the gradients and the optimizer state stay in the parameter dtype (docs/gpu.md).
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from torch import Tensor

from widthwise.device import check_precision, narrow_width_guard, resolve_device
from widthwise.ensemble import Ensemble
from widthwise.errors import UserError
from widthwise.families import build_network
from widthwise.losses import per_member_loss
from widthwise.member_optim import MemberAdam, MemberSGD, per_member
from widthwise.parameterization import ParamRule, RuleContext, network_rules_for, rules_for
from widthwise.spec import StudySpec
from widthwise.streams import training_loss
from widthwise.streams.base import Stream
from widthwise.sweep import (
    check_forward_rules,
    member_hyper,
    member_output_multipliers,
    member_rules,
)

DTYPES = {"float32": torch.float32, "float64": torch.float64}
AUTOCAST_DTYPES = {"bf16": torch.bfloat16}


def rule_context(spec: StudySpec, width: int) -> RuleContext:
    """What the parameterization's rules see at ``width``, its own options included."""
    p = spec.parameterization
    return RuleContext(
        width=width,
        base_width=spec.base_width or spec.widths[0],
        optimizer=spec.optimizer.kind,
        sigma=p.sigma,
        options=p.options(),
        depth=residual_blocks(spec.family_options()) if spec.depth_mup else None,
        base_depth=spec.depth_mup.base_depth if spec.depth_mup else None,
    )


def residual_blocks(options: Any) -> int:
    """L of depth-muP for a family's options: ``residual_blocks`` where the family says
    (``resnet18_ln``: the blocks of all stages), else its ``depth``."""
    return int(getattr(options, "residual_blocks", None) or options.depth)


def build_optimizer(
    params: dict[str, Tensor],
    rules: dict[str, ParamRule],
    spec: StudySpec,
    *,
    torch_decays: bool = True,
    member_scalars: dict[str, Tensor] | None = None,
) -> torch.optim.Optimizer:
    """A torch optimizer over the stacked tensors, one param group per tensor.

    Optimizers act elementwise, so a group over a (seed, ...) tensor keeps exactly
    the per-member state of E independent optimizers. ``torch_decays=False``: the
    groups' weight decay is 0 (the trainer applies each member's own: a sweep of it).
    ``member_scalars``: swept ``momentum`` / ``beta1`` / ``beta2`` / ``eps``, (member,)
    tensors; then the optimizer is :mod:`widthwise.member_optim`'s, which takes them per
    member (torch's takes one value per group).
    """
    o = spec.optimizer
    groups = []
    for name, p in params.items():
        r = rules[name]
        groups.append(
            {
                "params": [p],
                "name": name,
                "lr": o.lr * r.lr_scale,
                "base_lr": o.lr * r.lr_scale,
                "weight_decay": o.weight_decay * r.wd_scale if torch_decays else 0.0,
            }
        )
    if member_scalars:
        m = member_scalars
        if o.name == "sgd":
            return MemberSGD(groups, lr=o.lr, momentum=m["momentum"], nesterov=o.nesterov)
        return MemberAdam(
            groups,
            lr=o.lr,
            beta1=m.get("beta1", o.betas[0]),
            beta2=m.get("beta2", o.betas[1]),
            eps=m.get("eps", o.eps),
            decoupled=o.name == "adamw",
        )
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=o.lr, betas=o.betas, eps=o.eps)


def grads_finite(grad: Tensor) -> Tensor:
    """(seed,) bool: every entry of each member's gradient is finite.

    A per-member sum is finite in the common case, which settles it cheaply; only
    members whose sum is not (a NaN/inf entry, or an overflowing sum of large
    finite entries) are checked entry by entry.
    """
    flat = grad.reshape(grad.shape[0], -1)
    ok = torch.isfinite(flat.sum(1))
    if not bool(ok.all()):
        ok = torch.isfinite(flat).all(1)
    return ok


class EnsembleTrainer:
    """All seeds of one width, trained in one vectorized computation on a shared stream.

    A member whose loss or gradient is not finite at step t is marked diverged at t
    and frozen (its parameters no longer change); the others go on unchanged,
    because members share no arithmetic.
    """

    def __init__(
        self,
        spec: StudySpec,
        width: int,
        stream: Stream,
        device: torch.device | None = None,
    ) -> None:
        self.spec = spec
        self.width = width
        self.stream = stream
        self.device = device or resolve_device(spec.device)
        self.dtype = DTYPES[spec.dtype]
        check_precision(spec, self.device)
        self.autocast_dtype = AUTOCAST_DTYPES.get(spec.mixed_precision)
        options = spec.family_options()
        param, ctx = spec.parameterization.name, rule_context(spec, width)
        self.network_rules = network_rules_for(param, ctx)  # attention exponent, centring
        self.network = build_network(
            spec.model.family,
            width,
            stream.in_shape,
            stream.out_dim,
            options,
            network_rules=self.network_rules,
        )
        self.rules = rules_for(param, list(self.network.params), ctx)
        members_rules = None  # a sweep: each member's rules (its sigma), point-major
        if spec.sweep:
            try:
                members_rules = member_rules(
                    param, list(self.network.params), ctx, spec.sweep_points, len(spec.seed_list)
                )
                check_forward_rules(self.rules, members_rules)
            except ValueError as err:
                raise UserError(str(err)) from None
        bind = getattr(self.network.apply, "bind_parameterization", None)
        if bind is not None:  # a module family's tied readout takes an output rule's multiplier
            bind(lambda specs: rules_for(param, specs, ctx))
        self.loss_name = training_loss(spec.loss, stream)
        self.ensemble = Ensemble(
            self.network,
            self.rules,
            spec.member_seeds,
            loss=self.loss_name,
            device=self.device,
            dtype=self.dtype,
            strategy=spec.ensemble,
            center=self.network_rules.center,
            member_rules=members_rules,
            output_multiplier=member_output_multipliers(
                spec.sweep_points, len(spec.seed_list), spec.parameterization.output_multiplier
            ),
        )
        self.params = self.ensemble.init_params()
        o = spec.optimizer
        self.hyper = member_hyper(
            self.rules,
            members_rules or [self.rules] * self.ensemble.size,
            spec.sweep_points,
            len(spec.seed_list),
            o.lr,
            o.weight_decay,
            device=self.device,
            dtype=self.dtype,
        )
        self.decoupled_decay = o.name == "adamw"
        self.optimizer = build_optimizer(
            self.params,
            self.rules,
            spec,
            torch_decays=self.hyper.weight_decay is None,
            member_scalars=self.hyper.optimizer_scalars,
        )
        e = self.ensemble.size
        self.alive = torch.ones(e, dtype=torch.bool, device=self.device)
        self.diverged_step = torch.full((e,), -1, dtype=torch.long)
        self.frozen: dict[str, Tensor] | None = None
        self.step = 0

    # -- data ----------------------------------------------------------------
    def to_tensors(self, x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
        if np.issubdtype(x.dtype, np.integer):  # token ids stay integers
            xt = torch.as_tensor(x, device=self.device, dtype=torch.long)
        else:
            xt = torch.as_tensor(x, device=self.device, dtype=self.dtype)
        if self.loss_name == "cross_entropy":
            return xt, torch.as_tensor(y, device=self.device)
        if np.issubdtype(y.dtype, np.integer):
            # mse on class labels (batch,) or token labels (batch, position): one-hot targets
            # (batch, [position,] out_dim); the analysis encodes the stored labels the same way
            if bool((y < 0).any()):
                raise UserError(
                    f"loss: mse needs a target for every position, but stream "
                    f"{type(self.stream).__name__!r} labels some positions {int(y.min())} "
                    "(no loss, e.g. the masked objective); allowed there: cross_entropy"
                )
            y = np.eye(self.stream.out_dim, dtype=np.float32)[y]
        return xt, torch.as_tensor(y, device=self.device, dtype=self.dtype)

    def lr_factor(self, step: int) -> float:
        return self.spec.schedule.factor(step, self.spec.steps)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The training forward pass's precision context (a no-op without mixed precision)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # -- one step ------------------------------------------------------------
    def train_step(self) -> Tensor:
        """Take update ``self.step``; return each member's loss before it (seed,), NaN if frozen."""
        with narrow_width_guard(self.width, self.device):  # a oneDNN bug at widths < 8
            return self._train_step()

    def _train_step(self) -> Tensor:
        t = self.step
        x, y = self.to_tensors(*self.stream.batch(t, self.spec.batch_size))
        factor = self.lr_factor(t)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        with self.autocast():  # bf16 matmuls under mixed precision; parameters stay in dtype
            logits = self.ensemble.forward(self.params, x, step=t)  # (seed, batch, output)
        # the loss (and so every gradient) in the parameter dtype
        losses = per_member_loss(self.loss_name, logits.to(self.dtype), y)  # (seed,)
        ok = torch.isfinite(losses) & self.alive
        self.optimizer.zero_grad(set_to_none=True)
        torch.where(ok, losses, torch.zeros_like(losses)).sum().backward()
        for p in self.params.values():
            ok &= grads_finite(p.grad)
        newly_dead = self.alive & ~ok
        if bool(newly_dead.any()):
            self._freeze(newly_dead, t)
        if self.hyper.lr_factor or self.hyper.weight_decay:
            self._member_step()
        else:
            self.optimizer.step()
        if self.frozen is not None:
            self._restore_frozen()
        self.step = t + 1
        recorded = losses.detach().clone()
        recorded[~self.alive & ~newly_dead] = float("nan")
        return recorded

    def _member_step(self) -> None:
        """The optimizer step with each member's own learning rate and weight decay
        (widthwise.sweep): torch's update Δ at the group's rate, scaled per member by
        ``lr_factor``, and weight decay as torch applies it, per member."""
        factor = self.hyper.lr_factor or {}
        decay = self.hyper.weight_decay or {}
        if decay and not self.decoupled_decay:  # L2: added to the gradient (sgd, adam)
            with torch.no_grad():
                for k, p in self.params.items():
                    p.grad.add_(p.detach() * per_member(decay[k], p))
        touched = set(factor) | (set(decay) if self.decoupled_decay else set())
        before = {k: self.params[k].detach().clone() for k in touched}
        self.optimizer.step()
        if not touched:
            return
        group_lr = {g["name"]: g["lr"] for g in self.optimizer.param_groups}
        with torch.no_grad():
            for k in touched:
                p, b = self.params[k], before[k]
                c = per_member(factor[k], p) if k in factor else None
                if c is not None:
                    p.copy_(torch.lerp(b, p, c))  # b + c·(p − b): the update at lr_m
                if k in decay and self.decoupled_decay:  # w ← w − lr_m·wd_m·w (adamw)
                    rate = group_lr[k] * per_member(decay[k], p)
                    p.sub_(b * (rate if c is None else rate * c))

    def _freeze(self, members: Tensor, step: int) -> None:
        with torch.no_grad():
            if self.frozen is None:
                self.frozen = {k: p.detach().clone() for k, p in self.params.items()}
            for k, p in self.params.items():
                self.frozen[k][members] = p.detach()[members]
        self.alive &= ~members
        self.diverged_step[members.cpu()] = step

    def _restore_frozen(self) -> None:
        assert self.frozen is not None
        dead = ~self.alive
        with torch.no_grad():
            for k, p in self.params.items():
                p[dead] = self.frozen[k][dead]

    # -- state ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "params": {k: p.detach().cpu() for k, p in self.params.items()},
            "optimizer": self.optimizer.state_dict(),
            "alive": self.alive.cpu(),
            "diverged_step": self.diverged_step.clone(),
            "frozen": None if self.frozen is None else {k: v.cpu() for k, v in self.frozen.items()},
            "params0": None
            if self.ensemble.params0 is None
            else {k: v.cpu() for k, v in self.ensemble.params0.items()},
            "rules": {k: r.as_dict() for k, r in self.rules.items()},
            "strategy": self.ensemble.strategy,
            # a module family's per-member buffers (BatchNorm running statistics)
            "buffers": {k: v.cpu().clone() for k, v in self.ensemble.buffers.items()},
            "buffers0": None
            if self.ensemble.buffers0 is None
            else {k: v.cpu().clone() for k, v in self.ensemble.buffers0.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(state["params"][k].to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.alive = state["alive"].to(self.device)
        self.diverged_step = state["diverged_step"].clone()
        self.frozen = (
            None
            if state["frozen"] is None
            else {k: v.to(self.device) for k, v in state["frozen"].items()}
        )
        if state.get("params0") is not None:
            self.ensemble.params0 = {k: v.to(self.device) for k, v in state["params0"].items()}
        self.ensemble.strategy = state.get("strategy", self.ensemble.strategy)
        _load_buffers(self.ensemble.buffers, state.get("buffers"), "buffers")
        if self.ensemble.buffers0 is not None:
            _load_buffers(self.ensemble.buffers0, state.get("buffers0"), "buffers0")
        self.step = int(state["step"])


def _load_buffers(into: dict[str, Tensor], saved: dict[str, Tensor] | None, what: str) -> None:
    """Copy a checkpoint's stacked buffers into ``into`` in place (a checkpoint from before
    per-member buffers, or of a network without them, has none: nothing to copy)."""
    if not into or saved is None:
        return
    if set(saved) != set(into):
        raise UserError(
            f"checkpoint {what}: {sorted(saved)} do not match the network's {sorted(into)}"
        )
    with torch.no_grad():
        for k, v in into.items():
            v.copy_(saved[k].to(device=v.device, dtype=v.dtype))
