"""What a width's run needs in memory, estimated before anything is written or allocated.

:func:`estimate_bytes` counts, from the family's parameter list (its
:class:`~widthwise.parameterization.ParamSpec` shapes, built on torch's ``meta``
device so nothing is allocated), the bytes one width's ensemble holds: parameters,
gradients and optimizer state of every seed, the activations of one training step
and the probe arrays of one probe step. It is a lower bound (no allocator slack,
no temporary buffers, the first layer's activations only per layer), so a run it
refuses could never have fit; :func:`check_resources` compares it with the memory
this machine (or its GPU) has available before :func:`widthwise.run` writes
anything, and ``widthwise run --dry-run`` prints it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from widthwise.cost import format_bytes
from widthwise.errors import UserError

if TYPE_CHECKING:
    from widthwise.spec import StudySpec
    from widthwise.streams.base import Stream

BYTES_PER_VALUE = {"float32": 4, "float64": 8}
OPTIMIZER_BUFFERS = {"adam": 2, "adamw": 2}
"""Per-parameter state tensors of each optimizer (sgd: one momentum buffer when momentum > 0)."""


def _shape_of(stream: Stream | None, spec: StudySpec) -> tuple[tuple[int, ...], int]:
    if stream is None:
        from widthwise.job import build_stream

        stream = build_stream(spec)
    return tuple(int(s) for s in stream.in_shape), int(stream.out_dim)


def count_parameters(
    spec: StudySpec, width: int, in_shape: tuple[int, ...], out_dim: int
) -> tuple[int, int]:
    """(trainable values of one member, tapped layers) of the spec's family at ``width``.

    The network is built on the ``meta`` device: only the parameter list is made.
    """
    from widthwise.families import build_network

    with torch.device("meta"):
        net = build_network(spec.model.family, width, in_shape, out_dim, spec.family_options())
    return sum(math.prod(p.shape) for p in net.params), len(net.layers)


def estimate_bytes(spec: StudySpec, width: int, *, stream: Stream | None = None) -> dict[str, int]:
    """Bytes one ``width`` of ``spec`` holds at its peak (a lower bound), by part.

    Keys: ``parameters`` (values of one member), ``members``, ``weights``,
    ``gradients``, ``optimizer`` (state of every member), ``activations`` (one training
    step: preactivations and activations of every layer, ``batch × width`` each),
    ``probes`` (the probe set, the test logits and ``points × points`` of every probe
    with ``points``), ``state`` (weights + gradients + optimizer) and ``total``.
    ``stream`` gives the input shape and output size (default: built from the spec).
    """
    in_shape, out_dim = _shape_of(stream, spec)
    n, layers = count_parameters(spec, width, in_shape, out_dim)
    e = len(spec.member_ids)
    b = BYTES_PER_VALUE.get(spec.dtype, 4)
    o = spec.optimizer
    buffers = OPTIMIZER_BUFFERS.get(o.name, 1 if o.momentum > 0 else 0)
    weights = e * n * b
    optimizer = buffers * weights
    activations = 2 * e * spec.batch_size * width * max(layers, 1) * b
    points = spec.data.probe_points
    probes = points * math.prod(in_shape) * 4 + e * points * out_dim * b
    for options in spec.probe_options().values():
        m = getattr(options, "points", None)
        if isinstance(m, int) and not isinstance(m, bool):
            probes += e * min(m, points) ** 2 * b
    state = 2 * weights + optimizer
    return {
        "parameters": n,
        "members": e,
        "weights": weights,
        "gradients": weights,
        "optimizer": optimizer,
        "activations": activations,
        "probes": probes,
        "state": state,
        "total": state + activations + probes,
    }


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_bytes(device: str) -> tuple[int | None, str]:
    """(bytes available for a run on ``device``, what that memory is); None when unknown.

    CUDA: the device's free memory (``torch.cuda.mem_get_info``); CPU: ``psutil``'s
    available memory if psutil is installed, else ``MemAvailable`` of /proc/meminfo.
    """
    from widthwise.device import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free), f"{torch.cuda.get_device_name(dev)} has"
    try:
        import psutil  # type: ignore[import-untyped]

        return int(psutil.virtual_memory().available), "this machine has"
    except ImportError:
        return _meminfo_available(), "this machine has"


def _largest(
    spec: StudySpec, stream: Stream | None, parallel: int
) -> list[tuple[int, dict[str, int]]]:
    widths = sorted(spec.widths, reverse=True)[: max(parallel, 1)]
    return [(w, estimate_bytes(spec, w, stream=stream)) for w in widths]


def check_resources(
    spec: StudySpec,
    stream: Stream | None = None,
    *,
    parallel: int = 1,
    available: tuple[int | None, str] | None = None,
) -> None:
    """A one-line :class:`~widthwise.errors.UserError` when the widest width (the
    ``parallel`` widest, run at once) cannot fit in the memory available; nothing when
    it fits or the available memory is unknown. ``available`` overrides the measured
    (bytes, "what has") pair."""
    avail, where = available if available is not None else available_bytes(spec.device)
    if avail is None:
        return
    estimates = _largest(spec, stream, parallel)
    need = sum(est["total"] for _, est in estimates)
    if need <= avail:
        return
    width, est = estimates[0]
    at_once = f" ({len(estimates)} widths at once: ≈ {format_bytes(need)})" if parallel > 1 else ""
    raise UserError(
        f"widths: width {width}: ≈ {format_bytes(est['state'])} of parameters, gradients and "
        f"optimizer state for {est['members']} seeds, ≈ {format_bytes(est['total'])} in all"
        f"{at_once}; {where} {format_bytes(avail)} available; use narrower widths, fewer "
        "seeds or a smaller batch_size"
    )


def describe_resources(spec: StudySpec, stream: Stream | None = None) -> list[str]:
    """Lines for ``--dry-run``: the estimate of every width, and what is available."""
    lines = []
    for w in spec.widths:
        est = estimate_bytes(spec, w, stream=stream)
        lines.append(
            f"width {w:>5}: ≈ {format_bytes(est['total'])} of memory "
            f"({est['parameters']:,} parameters × {est['members']} "
            f"{'members' if spec.sweep else 'seeds'}: "
            f"{format_bytes(est['state'])} with gradients and optimizer state; "
            f"{format_bytes(est['activations'] + est['probes'])} of activations and probes)"
        )
    try:
        avail, where = available_bytes(spec.device)
    except UserError:
        avail, where = None, ""
    if avail is not None:
        lines.append(f"memory: {where} {format_bytes(avail)} available")
    return lines
