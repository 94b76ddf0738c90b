"""Training all seeds of one width: the loop reads top to bottom.

``EnsembleTrainer`` holds the state (stacked params, optimizer, alive mask) and
takes one step at a time without any I/O; ``train_width`` runs it over a study's
steps with probes, checkpoints and the store, resuming from the last checkpoint.

Precision and determinism (docs/gpu.md): ``mixed_precision: bf16`` runs the training
forward pass under ``torch.autocast(bfloat16)``; the loss, the gradients, the
optimizer state and every probe stay in the parameter dtype. ``deterministic: true``
switches ``torch.use_deterministic_algorithms`` on for the duration of
:func:`train_width` only (:func:`deterministic_mode` restores the process's settings).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
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
AUTOCAST_DTYPES = {"bf16": torch.bfloat16}
CUBLAS_DETERMINISTIC = ":4096:8"
"""``CUBLAS_WORKSPACE_CONFIG`` value that makes cuBLAS deterministic (CUDA >= 10.2)."""


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA device when there is one, else the CPU.

    An explicit ``cuda``/``cuda:N`` that this machine does not have, or a string that
    is not a device, is a one-line :class:`UserError`.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(
            f"device: {name!r} is not a device; allowed: auto, cpu, cuda, cuda:N"
        ) from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"device: {name!r} is not supported; allowed: auto, cpu, cuda, cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"device: {name!r} asked for, but no CUDA device is available; use cpu or auto"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise UserError(
                f"device: {name!r} asked for, but this machine has {count} CUDA device(s) "
                f"(allowed: cuda:0 … cuda:{count - 1})"
            )
    return dev


def check_precision(spec: StudySpec, device: torch.device) -> None:
    """One-line :class:`UserError` if ``mixed_precision`` cannot run on ``device``/``dtype``.

    bf16 autocast lowers float32 computations only, so it needs ``dtype: float32``;
    on CUDA the device must support bfloat16 (compute capability 8.0+).
    """
    if spec.mixed_precision == "none":
        return
    if spec.dtype != "float32":
        raise UserError(
            f"mixed_precision: {spec.mixed_precision!r} autocasts float32 parameters, but dtype "
            f"is {spec.dtype!r}; use dtype: float32 or mixed_precision: none"
        )
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(
            f"mixed_precision: {spec.mixed_precision!r} needs a GPU with bfloat16 support, "
            f"but {torch.cuda.get_device_name(device)} has none; use mixed_precision: none"
        )


@contextlib.contextmanager
def deterministic_mode(enabled: bool, device: torch.device) -> Iterator[None]:
    """Deterministic kernels only, for the duration of the block; the process's previous
    settings (``torch.use_deterministic_algorithms``, cuDNN flags and the
    ``CUBLAS_WORKSPACE_CONFIG`` environment variable) are restored on exit.

    A no-op when ``enabled`` is false. Process-global while active: do not run a
    deterministic and a non-deterministic width in threads of one process.
    """
    if not enabled:
        yield
        return
    algos = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    env = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        if device.type == "cuda" and env not in (":4096:8", ":16:8"):
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_DETERMINISTIC
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        yield
    finally:
        torch.use_deterministic_algorithms(algos, warn_only=warn_only)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        if env is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = env


def _nondeterministic_op(err: BaseException) -> bool:
    """Whether ``err`` is torch refusing an op that has no deterministic implementation."""
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "deterministic implementation" in text or "CUBLAS_WORKSPACE_CONFIG" in text
    )


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
        check_precision(spec, self.device)
        self.autocast_dtype = AUTOCAST_DTYPES.get(spec.mixed_precision)
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

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The training forward pass's precision context (a no-op without mixed precision)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # -- one step ------------------------------------------------------------
    def train_step(self) -> Tensor:
        """Take update ``self.step``; return each member's loss before it (seed,), NaN if frozen."""
        t = self.step
        x, y = self.to_tensors(*self.stream.batch(t, self.spec.batch_size))
        factor = self.lr_factor(t)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        with self.autocast():  # bf16 matmuls under mixed precision; parameters stay in dtype
            logits = self.ensemble.forward(self.params, x)  # (seed, batch, output)
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


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


@contextlib.contextmanager
def writer_lock(width_dir: WidthDir) -> Iterator[None]:
    """Hold the width's writer lock (``store/lock.py``) for the block.

    Another live writer is a one-line :class:`StoreError` naming it; a directory where
    the lock cannot even be created (read-only, full) is one too.
    """
    from widthwise.store.lock import WidthLock

    lock = WidthLock(width_dir.path)
    try:
        lock.acquire()
    except OSError as err:
        raise StoreError(f"out: cannot write {width_dir.path}: {err.strerror or err}") from None
    try:
        yield
    finally:
        lock.release()


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
    """Train (or resume, or skip if done) one width of a study; returns its final status.

    Holds the width's writer lock while it writes, and runs under
    :func:`deterministic_mode` when the spec asks for it. A failed write (disk full,
    read-only directory) ends the width with status ``failed`` and its reason, where
    the status can still be written, and raises a one-line :class:`StoreError`; what
    was written before stays readable.
    """
    status = width_dir.read_status()
    if status.get("state") == "done":  # before locking: a finished width is not touched
        return status
    dev = device or resolve_device(spec.device)
    with writer_lock(width_dir), deterministic_mode(spec.deterministic, dev):
        status = width_dir.read_status()
        if status.get("state") == "done":  # finished by another writer meanwhile
            return status
        return _train_width(spec, width, width_dir, stream, probe_set, on_step, dev)


def _load_checkpoint(trainer: EnsembleTrainer, width_dir: WidthDir) -> float:
    """Restore the trainer from the width's checkpoint; returns its wall time (0 if none)."""
    state = width_dir.load_checkpoint()
    if state is None:
        return 0.0
    try:
        trainer.load_state_dict(state)
        step_ok = 0 <= trainer.step <= trainer.spec.steps
        wall = float(state.get("wall_time", 0.0))
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as err:
        raise StoreError(
            f"{width_dir.checkpoint_path}: not a checkpoint of width {trainer.width} of this "
            f"study ({type(err).__name__}: {_one_line(err, 80)}); delete it to restart this width"
        ) from None
    if not step_ok:
        raise StoreError(
            f"{width_dir.checkpoint_path}: step {trainer.step} is outside this study's "
            f"0..{trainer.spec.steps}; delete it to restart this width"
        )
    return wall


def _train_width(
    spec: StudySpec,
    width: int,
    width_dir: WidthDir,
    stream: Stream,
    probe_set: tuple[np.ndarray, np.ndarray],
    on_step: ProgressFn | None,
    device: torch.device,
) -> dict[str, Any]:
    trainer = EnsembleTrainer(spec, width, stream, device)
    schedules = spec.probe_options()
    probe_steps = {
        name: set(sched.resolve(spec.steps, include_end=name != "train_loss"))
        for name, sched in schedules.items()
    }
    probe_x, probe_y = trainer.to_tensors(*probe_set)
    wall_before = _load_checkpoint(trainer, width_dir)  # read-only: nothing written yet
    try:
        width_dir.open_for_writing()
        width_dir.truncate_from(trainer.step)  # drop what was logged after the checkpoint
        width_dir.open_for_writing()
    except OSError as err:
        width_dir.close()
        raise StoreError(f"out: cannot write {width_dir.path}: {err.strerror or err}") from None
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

    def fail(reason: str) -> None:
        """Record ``failed`` and its reason if the status can still be written."""
        with contextlib.suppress(OSError):
            width_dir.write_status(**common_status("failed"), error=_one_line(reason))

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
        where = err.filename or width_dir.path
        what = err.strerror or str(err)
        fail(f"write failed: {what} ({where})")
        raise StoreError(
            f"out: writing {where} failed: {what}; what was written before is kept "
            "(widthwise show lists it) and `widthwise run` resumes from the last checkpoint"
        ) from None
    except RuntimeError as err:
        if not _nondeterministic_op(err):
            fail(f"{type(err).__name__}: {err}")
            raise
        reason = _one_line(str(err).split(". ")[0], 200)
        fail(f"deterministic: {reason}")
        raise UserError(
            f"deterministic: {reason}; this run needs an operation without a deterministic "
            f"implementation on {trainer.device.type} (allowed: deterministic: false)"
        ) from None
    except KeyboardInterrupt:
        fail("interrupted (Ctrl-C or a stop request); run the study again to resume")
        raise
    except BaseException as err:
        fail(f"{type(err).__name__}: {err}")
        raise
    finally:
        width_dir.close()
