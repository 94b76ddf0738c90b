"""Training all seeds of one width: the loop reads top to bottom.

``EnsembleTrainer`` holds the state (stacked params, optimizer, alive mask) and
takes one step at a time without any I/O; ``train_width`` runs it over a study's
steps with probes, checkpoints and the store, resuming from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from widthwise.ensemble import Ensemble
from widthwise.errors import StoreError, UserError
from widthwise.families import build_network
from widthwise.losses import per_member_loss
from widthwise.parameterization import ParamRule, RuleContext, rules_for
from widthwise.probes import PROBES, ProbeContext
from widthwise.spec import StudySpec
from widthwise.store.width_dir import WidthDir
from widthwise.streams.base import Stream

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"device: {name!r} asked for, but no CUDA device is available; use cpu or auto"
        )
    return dev


def rule_context(spec: StudySpec, width: int) -> RuleContext:
    p = spec.parameterization
    return RuleContext(
        width=width,
        base_width=spec.base_width or spec.widths[0],
        optimizer=spec.optimizer.kind,
        sigma=p.sigma,
        gamma0=p.gamma0,
        readout_zero_init=p.readout_zero_init,
        query_zero_init=p.query_zero_init,
    )


def build_optimizer(
    params: dict[str, Tensor], rules: dict[str, ParamRule], spec: StudySpec
) -> torch.optim.Optimizer:
    """A torch optimizer over the stacked tensors, one param group per tensor.

    Optimizers act elementwise, so a group over a (seed, ...) tensor keeps exactly
    the per-member state of E independent optimizers.
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
                "weight_decay": o.weight_decay * r.wd_scale,
            }
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
        options = spec.family_options()
        self.network = build_network(
            spec.model.family,
            width,
            stream.in_shape,
            stream.out_dim,
            options,
            parameterization=spec.parameterization.name,
        )
        self.rules = rules_for(
            spec.parameterization.name, list(self.network.params), rule_context(spec, width)
        )
        self.loss_name = spec.loss or stream.loss
        self.ensemble = Ensemble(
            self.network,
            self.rules,
            spec.seed_list,
            loss=self.loss_name,
            device=self.device,
            dtype=self.dtype,
            strategy=spec.ensemble,
            center=spec.parameterization.center,
        )
        self.params = self.ensemble.init_params()
        self.optimizer = build_optimizer(self.params, self.rules, spec)
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
        if y.ndim == 1:  # mse on a classification stream: one-hot targets
            y = np.eye(self.stream.out_dim, dtype=np.float32)[y]
        return xt, torch.as_tensor(y, device=self.device, dtype=self.dtype)

    def lr_factor(self, step: int) -> float:
        return self.spec.schedule.factor(step, self.spec.steps)

    # -- one step ------------------------------------------------------------
    def train_step(self) -> Tensor:
        """Take update ``self.step``; return each member's loss before it (seed,), NaN if frozen."""
        t = self.step
        x, y = self.to_tensors(*self.stream.batch(t, self.spec.batch_size))
        factor = self.lr_factor(t)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        logits = self.ensemble.forward(self.params, x)  # (seed, batch, output)
        losses = per_member_loss(self.loss_name, logits, y)  # (seed,)
        ok = torch.isfinite(losses) & self.alive
        self.optimizer.zero_grad(set_to_none=True)
        torch.where(ok, losses, torch.zeros_like(losses)).sum().backward()
        for p in self.params.values():
            ok &= grads_finite(p.grad)
        newly_dead = self.alive & ~ok
        if bool(newly_dead.any()):
            self._freeze(newly_dead, t)
        self.optimizer.step()
        if self.frozen is not None:
            self._restore_frozen()
        self.step = t + 1
        recorded = losses.detach().clone()
        recorded[~self.alive & ~newly_dead] = float("nan")
        return recorded

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
        self.step = int(state["step"])


ProgressFn = Callable[[int, int, float], None]


def train_width(
    spec: StudySpec,
    width: int,
    width_dir: WidthDir,
    stream: Stream,
    probe_set: tuple[np.ndarray, np.ndarray],
    *,
    on_step: ProgressFn | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Train (or resume, or skip if done) one width of a study; returns its final status."""
    status = width_dir.read_status()
    if status.get("state") == "done":
        return status
    trainer = EnsembleTrainer(spec, width, stream, device)
    schedules = spec.probe_options()
    probe_steps = {
        name: set(sched.resolve(spec.steps, include_end=name != "train_loss"))
        for name, sched in schedules.items()
    }
    probe_x, probe_y = trainer.to_tensors(*probe_set)
    wall_before = 0.0
    try:
        width_dir.open_for_writing()
    except OSError as err:
        raise StoreError(f"out: cannot write {width_dir.path}: {err.strerror}") from None
    state = width_dir.load_checkpoint()
    if state is not None:
        trainer.load_state_dict(state)
        wall_before = float(state.get("wall_time", 0.0))
        width_dir.truncate_from(trainer.step)
        width_dir.open_for_writing()
    else:
        width_dir.truncate_from(0)
        width_dir.open_for_writing()
    start = time.perf_counter()

    def wall() -> float:
        return wall_before + time.perf_counter() - start

    def common_status(state_name: str) -> dict[str, Any]:
        return {
            "state": state_name,
            "step": trainer.step,
            "steps": spec.steps,
            "wall_time": wall(),
            "diverged_step": trainer.diverged_step.tolist(),
            "strategy": trainer.ensemble.strategy,
            "device": str(trainer.device),
        }

    def checkpoint() -> None:
        width_dir.save_checkpoint({**trainer.state_dict(), "wall_time": wall()})
        width_dir.write_status(**common_status("running"))

    def run_probes(step: int) -> None:
        for name, steps in probe_steps.items():
            pdef = PROBES.get(name)
            if pdef.fn is None or step not in steps:
                continue
            ctx = ProbeContext(
                step=step,
                ensemble=trainer.ensemble,
                params=trainer.params,
                probe_x=probe_x,
                probe_y=probe_y,
                alive=trainer.alive,
                stream=stream,
                lr=spec.optimizer.lr * trainer.lr_factor(min(step, spec.steps - 1)),
                optimizer=trainer.optimizer,
            )
            width_dir.write_probe(name, step, pdef.fn(ctx, schedules[name]))

    try:
        width_dir.write_status(**common_status("running"))
        resumed_at = trainer.step
        train_loss_steps = probe_steps.get("train_loss", set())
        while trainer.step < spec.steps:
            t = trainer.step
            if t != resumed_at and t % spec.checkpoint_every == 0:
                checkpoint()
            run_probes(t)
            losses = trainer.train_step()
            if t in train_loss_steps:
                width_dir.write_probe(
                    "train_loss", t, {"train_loss": (("seed",), losses.cpu().numpy())}
                )
            if on_step is not None:
                alive = losses[torch.isfinite(losses)]
                on_step(t + 1, spec.steps, float(alive.mean()) if alive.numel() else float("nan"))
        run_probes(spec.steps)
        width_dir.save_checkpoint({**trainer.state_dict(), "wall_time": wall()})
        final = common_status("done")
        width_dir.write_status(**final)
        return final
    except OSError as err:
        width_dir.write_status(**common_status("failed"), error=str(err))
        raise StoreError(f"out: writing {width_dir.path} failed: {err.strerror or err}") from None
    except BaseException as err:
        with contextlib.suppress(OSError):
            width_dir.write_status(**common_status("failed"), error=f"{type(err).__name__}: {err}")
        raise
    finally:
        width_dir.close()
