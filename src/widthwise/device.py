"""Where and how precisely a width runs: its device, mixed precision and determinism.

Each job (``widthwise.job``) resolves its device exactly once, on the machine that runs
it, with :func:`resolve_device`; the study checks the same settings before anything
is written (:func:`check_device`) when its jobs run on this machine.

Precision and determinism (docs/gpu.md): ``mixed_precision: bf16`` runs the training
forward pass under ``torch.autocast(bfloat16)``; the loss, the gradients, the
optimizer state and every probe stay in the parameter dtype. ``deterministic: true``
switches ``torch.use_deterministic_algorithms`` on for one width's run only
(:func:`deterministic_mode` restores the process's settings).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from widthwise.errors import UserError

if TYPE_CHECKING:
    from widthwise.spec import StudySpec

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


def check_device(spec: StudySpec, device: str | None = None) -> torch.device:
    """The device a job on this machine would use, with its precision checked.

    For the study's checks before anything is written; raises a one-line
    :class:`UserError` for a device this machine lacks or a precision it cannot run.
    """
    dev = resolve_device(device or spec.device)
    check_precision(spec, dev)
    return dev


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


def nondeterministic_op(err: BaseException) -> bool:
    """Whether ``err`` is torch refusing an op that has no deterministic implementation."""
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "deterministic implementation" in text or "CUBLAS_WORKSPACE_CONFIG" in text
    )


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` for the block (None: unchanged)."""
    if not threads or threads == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


ONEDNN_MIN_WIDTH = 8
"""Narrower CPU runs keep oneDNN (mkldnn) off: with torch 2.13.0+cpu, ResNet-18-LN
training at first-stage widths 2-6 corrupted the heap inside oneDNN kernels on an
AVX2 AMD EPYC (glibc "corrupted double-linked list"), and ran correctly with oneDNN
off; widths 8-16 were fine either way (measured 2026-12-02)."""


@contextlib.contextmanager
def narrow_width_guard(width: int, device: torch.device) -> Iterator[None]:
    """oneDNN off for the block when a CPU run is narrower than :data:`ONEDNN_MIN_WIDTH`
    (the previous setting is restored; a no-op otherwise). Wrap the forward *and* the
    backward pass: the backward kernels are chosen when they run."""
    if device.type != "cpu" or width >= ONEDNN_MIN_WIDTH:
        yield
        return
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before
