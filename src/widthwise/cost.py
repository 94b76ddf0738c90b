"""What a study costs before it runs: FLOPs, kernel calls and memory traffic per
width, and an estimated time on this machine.

:func:`study_costs` counts, for every width of a spec, one training step of all its
seeds — the forward and backward pass of the family's network, run on torch's
``meta`` device under :class:`torch.utils.flop_counter.FlopCounterMode` and a
counting dispatch mode (so nothing is computed or allocated, any family works,
plug-ins included): matmul and attention FLOPs, convolution FLOPs, kernel calls and
bytes written by non-view ops — plus the optimizer's calls, the time to draw a batch
(measured), and every probe call of the run from the probe's schedule and options
(a forward pass over its points; Hessian-vector products for ``sharpness``; for
``entk`` its backward passes and the structured contraction of its linear layers). :func:`seconds` turns a
:class:`WidthCost` into seconds with this machine's
:class:`~widthwise.calibration.Calibration`::

    t = steps · ((matmul FLOPs / matmul rate + conv FLOPs / conv rate) / FLOP_EFFICIENCY
                 + calls · OP_OVERHEAD · seconds per call + bytes · seconds per byte)
        + the same for all probe calls

It is an **estimate**: fused or inefficient kernels, checkpoints, other processes on
the machine and the exact number of Lanczos iterations are not modelled.
``benchmarks/estimate.py`` records estimate against measurement for the bundled
examples (benchmarks/RESULTS.md, "Cost estimates").

``widthwise list`` prints estimates for the bundled examples without importing torch,
from ``examples/costs.json`` (written by ``python -m widthwise.cost --write``, read by
:mod:`widthwise.bundled`; an entry whose spec file changed since is not used).
Importing this module imports nothing heavy; :func:`study_costs` imports torch.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from widthwise.calibration import Calibration
    from widthwise.spec import StudySpec
    from widthwise.streams.base import Stream

COSTS_FILE = Path(__file__).parent / "examples" / "costs.json"
"""Costs of the bundled examples, for ``widthwise list`` (``python -m widthwise.cost --write``)."""

FLOP_EFFICIENCY = 0.65
"""Share of the calibrated matmul and conv rates that a run's kernels reach (other
shapes, transposed backward passes); fitted to single training steps of the bundled
examples (benchmarks/RESULTS.md, "Cost estimates")."""
OP_OVERHEAD = 4.0
"""Seconds of one counted kernel call, in units of the calibrated tiny op (autograd
bookkeeping and Python between calls); fitted as :data:`FLOP_EFFICIENCY`."""
STEP_FIXED_OPS = 40
"""Kernel calls of a training step besides the network's and the optimizer's (batch to
tensors, loss, finiteness checks, the recorded losses)."""
OPTIMIZER_OPS = {"sgd": 1, "adam": 8, "adamw": 9}
"""Kernel calls per parameter tensor of an optimizer step (sgd with momentum: +2)."""
PARAM_OPS = 4
"""Kernel calls per parameter tensor of every step: its forward multiplier and its
gradient's, and the finiteness check of its gradient."""
SHARPNESS_HVPS = 12
"""Hessian-vector products per eigenvalue and operator of one ``sharpness`` call
(Lanczos to tol 1e-2…1e-3 took 3-18: benchmarks/RESULTS.md, "Sharpness")."""
PROBE_FIXED_OPS = 30
"""Kernel calls of a probe call besides its passes (masking, copies, the write)."""


@dataclass(frozen=True)
class Work:
    """Counted work: FLOPs by kind, kernel calls, bytes written."""

    matmul_flops: float = 0.0
    """Matmuls and attention."""
    conv_flops: float = 0.0
    calls: float = 0.0
    bytes: float = 0.0
    """Bytes written by non-view ops (memory traffic)."""

    @property
    def flops(self) -> float:
        return self.matmul_flops + self.conv_flops

    def __add__(self, other: Work) -> Work:
        return Work(
            self.matmul_flops + other.matmul_flops,
            self.conv_flops + other.conv_flops,
            self.calls + other.calls,
            self.bytes + other.bytes,
        )

    def scaled(self, flops: float = 1.0, calls: float | None = None) -> Work:
        """FLOPs and bytes times ``flops``, calls times ``calls`` (default the same)."""
        k = flops if calls is None else calls
        return Work(
            self.matmul_flops * flops, self.conv_flops * flops, self.calls * k, self.bytes * flops
        )

    def seconds(self, cal: Calibration) -> float:
        """Estimated wall time of this work with calibration ``cal``."""
        return (
            self.matmul_flops / (cal.matmul_flops_per_s * FLOP_EFFICIENCY)
            + self.conv_flops / (cal.conv_flops_per_s * FLOP_EFFICIENCY)
            + self.calls * cal.op_seconds * OP_OVERHEAD
            + self.bytes * cal.byte_seconds
        )


@dataclass(frozen=True)
class WidthCost:
    """The work of one width's run (all seeds), counted from the spec."""

    width: int
    steps: int
    """Training steps of the run."""
    seeds: int
    step: Work
    """One training step of all seeds (forward, backward, optimizer), without the batch."""
    data_calls: float
    """Drawing one batch, measured, in kernel-call equivalents (so it scales with the
    machine's calibrated speed)."""
    probes: Work
    """Every probe call of the run."""
    probe_calls: int
    memory_bytes: int
    """Peak memory estimate (:func:`widthwise.resources.estimate_bytes`, ``total``)."""

    @property
    def flops(self) -> float:
        """FLOPs of the whole run: every step and every probe call."""
        return self.steps * self.step.flops + self.probes.flops

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WidthCost:
        fields = {k: data[k] for k in cls.__dataclass_fields__}
        fields["step"], fields["probes"] = Work(**fields["step"]), Work(**fields["probes"])
        return cls(**fields)


def seconds(cost: WidthCost, cal: Calibration, *, fraction: float = 1.0) -> float:
    """Estimated wall time of ``cost`` (its last ``fraction`` of the steps: a resumed
    run) with calibration ``cal``."""
    step = cost.step.seconds(cal) + cost.data_calls * cal.op_seconds * OP_OVERHEAD
    return fraction * (cost.steps * step + cost.probes.seconds(cal))


def makespan(times: Sequence[float], parallel: int = 1) -> float:
    """Wall time of jobs of ``times`` on ``parallel`` slots, longest first."""
    if parallel <= 1:
        return float(sum(times))
    slots = [0.0] * min(parallel, max(len(times), 1))
    for t in sorted(times, reverse=True):
        heapq.heapreplace(slots, slots[0] + t)
    return max(slots)


def format_seconds(s: float) -> str:
    """``0.4 s``, ``40 s``, ``12 min``, ``3.2 h``, ``2.5 days``."""
    if not math.isfinite(s):
        return "?"
    if s < 1:
        return f"{s:.1f} s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        h = s / 3600
        return f"{h:.1f} h" if h < 10 else f"{h:.0f} h"
    d = s / 86400
    return f"{d:.1f} days" if d < 10 else f"{d:.0f} days"


def format_bytes(n: float) -> str:
    """``3.2 TB``, ``22 GB``, ``640 kB`` (powers of 1000)."""
    units = ("B", "kB", "MB", "GB", "TB", "PB", "EB")
    for unit in units:
        if n < 1000 or unit == units[-1]:
            break
        n /= 1000
    if unit == "B":
        return f"{int(n)} B"
    return f"{n:.2g} {unit}" if n < 10 else f"{n:.0f} {unit}"


def format_flops(f: float) -> str:
    """``204 MFLOP``, ``1.6 GFLOP``, ``3.2 PFLOP`` (powers of 1000)."""
    for unit in ("", "k", "M", "G", "T", "P", "E"):
        if f < 1000 or unit == "E":
            break
        f /= 1000
    return f"{f:.2g} {unit}FLOP" if f < 10 else f"{f:.0f} {unit}FLOP"


def estimate_phrase(
    costs: Sequence[WidthCost],
    cal: Calibration,
    *,
    parallel: int = 1,
    fractions: Sequence[float] | None = None,
    where: str = "on this machine",
) -> str:
    """``≈ 40 s on this machine (width 512: 61 %)``: the estimated wall time of the runs
    (``parallel`` at once) and the share of the width that costs most."""
    if not costs:
        return "nothing to run"
    fractions = fractions if fractions is not None else [1.0] * len(costs)
    times = [seconds(c, cal, fraction=f) for c, f in zip(costs, fractions)]
    total = makespan(times, parallel)
    biggest = max(range(len(costs)), key=lambda i: times[i])
    share = times[biggest] / max(sum(times), 1e-12)
    text = f"≈ {format_seconds(total)}" + (f" {where}" if where else "")
    if len(costs) > 1:
        text += f" (width {costs[biggest].width}: {share * 100:.0f} %)"
    return text


def calibration_phrase(cal: Calibration) -> str:
    """What an estimate rests on, e.g. ``matmul 54 GFLOP/s, conv 35 GFLOP/s, 8 µs per
    kernel call, 2.1 GB/s written; cpu, 1 thread, measured 2026-12-01``."""
    threads = f", {cal.threads} thread{'s' if cal.threads != 1 else ''}"
    return (
        f"matmul {cal.matmul_flops_per_s / 1e9:.3g} GFLOP/s, conv "
        f"{cal.conv_flops_per_s / 1e9:.3g} GFLOP/s, {cal.op_seconds * 1e6:.2g} µs per "
        f"kernel call, {1e-9 / cal.byte_seconds:.2g} GB/s written; "
        f"{cal.device}{threads if cal.device == 'cpu' else ''}, measured {cal.measured[:10]}"
    )


# -- counting (imports torch) ------------------------------------------------------


def _count(apply: Any, weights: dict[str, Any], x: Any, backward: bool) -> tuple[Work, int]:
    """(work, outputs per example) of ``apply(weights, x, False)`` on meta tensors (and
    of its backward)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves
    from torch.utils.flop_counter import FlopCounterMode

    tally = {"calls": 0, "bytes": 0}

    class Calls(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            tally["calls"] += 1
            if not func.is_view:
                for t in tree_leaves(out):
                    if hasattr(t, "numel") and hasattr(t, "element_size"):
                        tally["bytes"] += t.numel() * t.element_size()
            return out

    counter = FlopCounterMode(display=False)
    with counter, Calls():
        out, _ = apply(weights, x, False)
        if backward:
            out.float().sum().backward()
    conv = mm = 0.0
    for op, n in counter.get_flop_counts().get("Global", {}).items():
        if "convolution" in str(op):
            conv += n
        else:
            mm += n
    return Work(mm, conv, tally["calls"], tally["bytes"]), math.prod(out.shape[1:])


def _input(stream: Stream, batch: int) -> Any:
    import numpy as np
    import torch

    sample = stream.batch(0, 1)[0]
    dtype = torch.long if np.issubdtype(sample.dtype, np.integer) else torch.float32
    return torch.zeros((batch, *stream.in_shape), dtype=dtype, device="meta")


@dataclass(frozen=True)
class _Member:
    """Counts of one member at one width."""

    fwd: Work  # one forward pass: FLOPs and bytes per example, calls per pass
    train: Work  # forward + backward, the same
    outputs: int  # per example: out_dim, or positions × out_dim for sequences
    tensors: int
    values: int
    layers: int
    stackable: bool = field(default=False)
    linear: tuple[tuple[int, int], ...] = ()  # (fan_in, fan_out) of every 2-D weight
    other_values: int = 0  # values of tensors that are neither 2-D weights nor biases


def _per_example(work: Work, batch: int) -> Work:
    return Work(work.matmul_flops / batch, work.conv_flops / batch, work.calls, work.bytes / batch)


def _member(spec: StudySpec, width: int, stream: Stream, batch: int) -> _Member:
    import torch

    from widthwise.families import build_network

    with torch.device("meta"):
        net = build_network(
            spec.model.family, width, stream.in_shape, stream.out_dim, spec.family_options()
        )
        weights = {p.name: torch.empty(p.shape, requires_grad=True) for p in net.params}
    x = _input(stream, batch)
    fwd, outputs = _count(net.apply, weights, x, backward=False)
    train, _ = _count(net.apply, weights, x, backward=True)
    return _Member(
        fwd=_per_example(fwd, batch),
        train=_per_example(train, batch),
        outputs=outputs,
        tensors=len(net.params),
        values=sum(math.prod(p.shape) for p in net.params),
        layers=max(len(net.layers), 1),
        stackable=bool(net.stackable),
        linear=tuple((p.shape[1], p.shape[0]) for p in net.params if len(p.shape) == 2),
        other_values=sum(math.prod(p.shape) for p in net.params if len(p.shape) > 2),
    )


def _device(spec: StudySpec) -> Any:
    import torch

    from widthwise.device import resolve_device
    from widthwise.errors import UserError

    try:
        return resolve_device(spec.device)
    except UserError:  # e.g. cuda asked for on a machine without one: count as there
        return torch.device("cuda" if spec.device.startswith("cuda") else "cpu")


def _calls_per_pass(spec: StudySpec, width: int, stackable: bool) -> int:
    """How many times each kernel call of one member's pass is made in an ensemble pass:
    once (vmap, or a stackable network on its stacked weights) or once per seed (loop)."""
    from widthwise.ensemble import choose_strategy

    strategy = choose_strategy(spec.ensemble, width, _device(spec), stackable)
    return 1 if strategy == "vmap" else len(spec.member_ids)


def _probe_work(
    name: str, options: Any, m: _Member, spec: StudySpec, width: int, loop: int
) -> Work:
    """The work of one call of probe ``name`` (all seeds)."""
    e = len(spec.member_ids)
    points = spec.data.probe_points

    def opt(key: str, default: Any) -> Any:
        value = getattr(options, key, None)
        return default if value is None else value

    # float64 runs at about half the float32 rate: its FLOPs count twice
    slow = 2.0 if str(opt("dtype", spec.dtype)).endswith("64") else 1.0

    def passes(n_points: float, train: bool = False, times: float = 1.0) -> Work:
        """``times`` passes over ``n_points`` points of every seed."""
        w = m.train if train else m.fwd
        return Work(
            slow * times * e * n_points * w.matmul_flops,
            slow * times * e * n_points * w.conv_flops,
            times * w.calls * loop + PROBE_FIXED_OPS,
            slow * times * e * n_points * w.bytes,
        )

    if name == "train_loss":  # the training step's own losses
        return Work()
    if name == "train_eval":
        n = int(opt("points", 1024))
        chunks = math.ceil(n / max(int(opt("chunk", 512)), 1))
        w = passes(n)
        return Work(
            w.matmul_flops, w.conv_flops, chunks * m.fwd.calls * loop + PROBE_FIXED_OPS, w.bytes
        )
    if name == "kernels":
        n = min(int(opt("points", points)), points)
        gram = Work(matmul_flops=e * m.layers * 2.0 * n * n * width, calls=5 * m.layers)
        return passes(n) + gram
    if name == "sharpness":
        n = min(int(opt("batch_points", points)), points)
        operators = sum(bool(opt(k, False)) for k in ("plain", "lr_weighted", "preconditioned"))
        hvps = max(operators, 1) * min(int(opt("iters", 100)), SHARPNESS_HVPS * int(opt("k", 1)))
        return passes(n, train=True, times=2.0 * hvps)  # an HVP: about two gradients
    if name == "entk":
        # the structured path (docs of widthwise.probes.ntk): per linear layer
        # M²·(fan_in + C'·fan_out), C' = C traced, C² full; other tensors through their
        # Jacobian, M²·C'·values; one forward and C backward passes over the M points
        n = min(int(opt("points", points)), points)
        c = m.outputs
        c2 = c if opt("trace_outputs", False) else c * c
        per_member = sum(n * n * (fan_in + c2 * fan_out) for fan_in, fan_out in m.linear)
        per_member += n * n * c2 * m.other_values
        contract = slow * 2.0 * e * per_member
        jac = passes(n * c, train=True)
        return Work(
            jac.matmul_flops + contract, jac.conv_flops, m.outputs * m.train.calls * loop, jac.bytes
        )
    n = min(int(opt("points", points) or points), points)  # test, preacts, attention, plug-ins
    return passes(n)


def _calls_of(name: str, options: Any, steps: int) -> int:
    from widthwise.probes import PROBES

    resolve = getattr(options, "resolve", None)
    if resolve is None:
        return 0
    include_end = PROBES.get(name).include_end if name in PROBES else True
    return len(resolve(steps, include_end=include_end))


def _batch_seconds(stream: Stream, batch: int) -> float:
    """Median wall time of drawing a training batch (3 draws after a first one)."""
    stream.batch(0, batch)
    times = []
    for step in (1, 2, 3):
        t0 = time.perf_counter()
        stream.batch(step, batch)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def study_costs(
    spec: StudySpec,
    stream: Stream | None = None,
    widths: Sequence[int] | None = None,
    *,
    op_seconds: float | None = None,
) -> list[WidthCost]:
    """The :class:`WidthCost` of every width of ``spec`` (or of ``widths``); ``stream``
    gives the input shape and draws the batches timed (default: built from the spec);
    ``op_seconds`` converts that time into kernel-call equivalents (default: this
    machine's calibration). Imports torch."""
    from widthwise.resources import estimate_bytes

    if stream is None:
        from widthwise.job import build_stream

        stream = build_stream(spec)
    if op_seconds is None:
        from widthwise.calibration import calibrate

        op_seconds = calibrate(spec.device, None).op_seconds
    e = len(spec.member_ids)
    b = spec.batch_size
    probes = spec.probe_options()
    o = spec.optimizer
    optimizer_ops = OPTIMIZER_OPS.get(o.name, 1) + (2 if o.name == "sgd" and o.momentum > 0 else 0)
    slow = 2.0 if spec.dtype == "float64" else 1.0  # float64: about half the float32 rate
    data_calls = _batch_seconds(stream, b) / (op_seconds * OP_OVERHEAD)
    out = []
    for width in widths if widths is not None else spec.widths:
        m = _member(spec, width, stream, b)
        loop = _calls_per_pass(spec, width, m.stackable)
        value_bytes = 8 if spec.dtype == "float64" else 4
        step = Work(
            slow * e * b * m.train.matmul_flops,
            slow * e * b * m.train.conv_flops,
            m.train.calls * loop + m.tensors * (PARAM_OPS + optimizer_ops) + STEP_FIXED_OPS,
            slow * e * b * m.train.bytes + e * m.values * value_bytes * (optimizer_ops + 2),
        )
        work, calls = Work(), 0
        for name, options in probes.items():
            n = _calls_of(name, options, spec.steps)
            one = _probe_work(name, options, m, spec, width, loop) if n else Work()
            if one.calls:
                work, calls = work + one.scaled(n), calls + n
        out.append(
            WidthCost(
                width=width,
                steps=spec.steps,
                seeds=e,
                step=step,
                data_calls=round(data_calls, 1),
                probes=work,
                probe_calls=calls,
                memory_bytes=estimate_bytes(spec, width, stream=stream)["total"],
            )
        )
    return out


@dataclass(frozen=True)
class Estimate:
    """The estimated time of a study's remaining work on this machine."""

    costs: list[WidthCost]
    fractions: list[float]
    """Share of each width's steps still to run (1 for a new width)."""
    calibration: Calibration
    parallel: int
    same_host: bool

    @property
    def seconds(self) -> float:
        times = [
            seconds(c, self.calibration, fraction=f) for c, f in zip(self.costs, self.fractions)
        ]
        return makespan(times, self.parallel)

    def phrase(self) -> str:
        """``≈ 40 s on this machine (width 512: 61 %)``."""
        where = "on this machine" if self.same_host else "at this machine's speed"
        return estimate_phrase(
            self.costs,
            self.calibration,
            parallel=self.parallel,
            fractions=self.fractions,
            where=where,
        )

    def line(self) -> str:
        """The line printed before a run and by ``--dry-run``."""
        at_once = f", {self.parallel} widths at once" if self.parallel > 1 else ""
        elsewhere = "; the runs execute elsewhere" if not self.same_host else ""
        return (
            f"time: {self.phrase()}{at_once} — an estimate from FLOPs, kernel calls and "
            f"memory traffic ({calibration_phrase(self.calibration)}{elsewhere})"
        )

    def width_lines(self) -> list[str]:
        """One line per width: FLOPs in all and per step, and the estimated time."""
        out = []
        for c, f in zip(self.costs, self.fractions):
            left = f" ({f * 100:.0f} % left)" if f < 1 else ""
            out.append(
                f"width {c.width:>5}: {format_flops(c.flops)} ({format_flops(c.step.flops)} "
                f"per step for {c.seeds} seeds, probes {format_flops(c.probes.flops)}), "
                f"≈ {format_seconds(seconds(c, self.calibration, fraction=f))}{left}"
            )
        return out


def estimate(
    spec: StudySpec,
    *,
    threads: int | None = None,
    parallel: int = 1,
    same_host: bool = True,
    stream: Stream | None = None,
    left: dict[int, float] | None = None,
) -> Estimate:
    """The :class:`Estimate` of running ``spec`` (``left``: {width: share of its steps
    still to run}, default every width in full) with ``threads`` torch threads per run
    (None: this process's setting) and ``parallel`` widths at once, calibrating this
    machine first if it is not yet (≈ 0.2 s, cached). Imports torch."""
    from widthwise.calibration import calibrate

    widths = [w for w in spec.widths if left is None or left.get(w, 0) > 0]
    cal = calibrate(spec.device, threads)
    if threads is not None and spec.device in ("cpu", "auto"):
        calibrate(spec.device, None)  # torch's default too, for ``widthwise list``
    costs = study_costs(spec, stream, widths, op_seconds=cal.op_seconds)
    fractions = [1.0 if left is None else float(left[w]) for w in widths]
    return Estimate(costs, fractions, cal, max(parallel, 1), same_host)


# -- the bundled examples' index (for ``widthwise list``) ---------------------------


def spec_file_hash(path: Path) -> str:
    """SHA-256 of a spec file's bytes (what an index entry was counted from)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bundled_index() -> dict[str, Any]:
    """The costs of every bundled example, counted now (imports torch; builds streams;
    an example whose stream cannot be built here, e.g. without its data files, is left
    out). ``data_calls`` is measured (the rest is counted)."""
    from widthwise.errors import UserError
    from widthwise.spec import bundled_specs, load_spec

    index: dict[str, Any] = {}
    for name, path in bundled_specs().items():
        spec = load_spec(path)
        try:
            costs = study_costs(spec)
        except UserError as err:  # e.g. its data files are not on this machine
            print(f"{name}: not counted ({err})", file=sys.stderr)
            continue
        index[name] = {"spec_sha256": spec_file_hash(path), "widths": [c.to_json() for c in costs]}
    return index


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m widthwise.cost [--write]``: print (or write) the bundled examples' index."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in ([], ["--write"]):
        print("usage: python -m widthwise.cost [--write]", file=sys.stderr)
        return 2
    text = json.dumps(bundled_index(), indent=1) + "\n"
    if args == ["--write"]:
        COSTS_FILE.write_text(text)
        print(f"wrote {COSTS_FILE}")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
