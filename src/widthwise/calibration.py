"""How fast this machine is, measured once in about 0.2 s and cached per user.

:func:`calibrate` times four small kernels on the device and thread count a run
will use — a batched float32 matmul, a 3×3 convolution's forward and backward, a
tiny elementwise op (the fixed cost of one kernel call) and an 8 MB one (the cost
of memory traffic) — and caches the rates in ``calibration.json`` of the user cache (:mod:`widthwise.user_cache`), keyed by host,
CPU model, CPU count, torch version, device and threads. :mod:`widthwise.cost` turns
a spec's FLOPs, kernel calls and bytes into an estimated run time with them.

:func:`cached` reads the cache without importing torch (``widthwise list`` uses it);
only :func:`measure` imports torch.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from widthwise import user_cache

CACHE_FILE = "calibration.json"
FORMAT = 1
"""Bumped when what is measured changes: older entries are then measured again."""


@dataclass(frozen=True)
class Calibration:
    """Measured speed of one device at one thread count."""

    matmul_flops_per_s: float
    """float32 batched matmul rate (``torch.bmm``, 8 × 128×256 @ 256×256 on a CPU)."""
    conv_flops_per_s: float
    """3×3 convolution forward + backward rate (FLOPs counted as 3 × the forward's)."""
    op_seconds: float
    """Wall time of one tiny op (8×16 add): the fixed cost of a kernel call."""
    byte_seconds: float
    """Wall time per byte written by a large elementwise op (an 8 MB add, less the
    fixed cost of the call): the cost of memory traffic."""
    device: str
    """``cpu`` or ``cuda:N (name)``."""
    threads: int
    """torch intra-op threads during the measurement (CPU)."""
    measured: str
    """When (local time, ISO 8601)."""
    seconds: float
    """How long the measurement took."""

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: Any) -> Calibration | None:
        """The calibration in ``data``; None if it is of another format or malformed."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return None
        try:
            cal = cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (KeyError, TypeError):
            return None
        rates = (
            cal.matmul_flops_per_s,
            cal.conv_flops_per_s,
            cal.op_seconds,
            cal.byte_seconds,
        )
        if not all(isinstance(r, int | float) and r > 0 for r in rates):
            return None
        return cal


def torch_version() -> str:
    """The installed torch's version, read without importing it."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "none"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key() -> str:
    """This machine and its torch: host, CPU model, CPU count, torch version."""
    return (
        f"{socket.gethostname()} | {_cpu_model()} | {os.cpu_count()} CPUs | torch {torch_version()}"
    )


def cache_key(device: str, threads: int) -> str:
    """The cache key of a calibration of ``device`` (``cpu``, ``cuda:0 (name)``) at
    ``threads`` torch threads on this machine."""
    return f"{machine_key()} | {device} | {threads} threads"


def _machine_facts() -> dict[str, Any]:
    facts = user_cache.read_json(CACHE_FILE).get("machines", {})
    entry = facts.get(machine_key()) if isinstance(facts, dict) else None
    return entry if isinstance(entry, dict) else {}


def default_threads() -> int:
    """torch's default intra-op thread count here, as recorded by the last
    measurement (else the CPU count); read without importing torch."""
    threads = _machine_facts().get("default_threads")
    return threads if isinstance(threads, int) and threads > 0 else (os.cpu_count() or 1)


def auto_device() -> str:
    """What device ``auto`` resolved to at the last measurement (``cpu`` if none)."""
    device = _machine_facts().get("auto_device")
    return device if isinstance(device, str) else "cpu"


def cached(device: str = "cpu", threads: int | None = None) -> Calibration | None:
    """The cached calibration of ``device`` (a label as in :func:`cache_key`; ``auto``
    and ``cpu`` accepted) at ``threads`` (None: torch's default), or None; never
    imports torch."""
    if device == "auto":
        device = auto_device()
    if threads is None or not device.startswith("cpu"):
        threads = default_threads() if device.startswith("cpu") else 1
    entries = user_cache.read_json(CACHE_FILE).get("entries", {})
    if not isinstance(entries, dict):
        return None
    return Calibration.from_json(entries.get(cache_key(device, threads)))


def _time_per_call(fn: Callable[[], object], budget: float, sync: Callable[[], None]) -> float:
    """Median seconds of one call of ``fn`` over about ``budget`` seconds (3 calls or
    more, unless those would take 3 × ``budget``)."""
    fn()  # warm-up: allocations, kernel selection
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        spent = time.perf_counter() - start
        if (spent >= budget and len(times) >= 3) or spent >= 3 * budget or len(times) >= 10_000:
            return statistics.median(times)


def device_label(device: Any) -> str:
    """``cpu`` or ``cuda:N (name)`` for a torch device."""
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return "cpu"


def measure(device: str = "cpu", threads: int | None = None, budget: float = 0.2) -> Calibration:
    """Time the four kernels on ``device`` at ``threads`` torch threads (None: as set);
    about ``budget`` seconds in all."""
    import torch
    import torch.nn.functional as F

    from widthwise.device import resolve_device, torch_threads

    dev = resolve_device(device)
    gpu = dev.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(dev)) if gpu else (lambda: None)
    each = budget / 4
    began = time.perf_counter()
    with torch_threads(threads if not gpu else None):
        used = torch.get_num_threads()
        g = torch.Generator(device=dev).manual_seed(0)
        e, m, k, n = (8, 1024, 1024, 1024) if gpu else (8, 128, 256, 256)
        a = torch.randn(e, m, k, device=dev, generator=g)
        b = torch.randn(e, k, n, device=dev, generator=g)
        mm = 2 * e * m * k * n / _time_per_call(lambda: torch.bmm(a, b), each, sync)
        batch, cin, cout, size = (64, 64, 128, 32) if gpu else (16, 16, 32, 16)
        x = torch.randn(batch, cin, size, size, device=dev, generator=g, requires_grad=True)
        w = torch.randn(cout, cin, 3, 3, device=dev, generator=g, requires_grad=True)

        def conv() -> None:
            F.conv2d(x, w, padding=1).sum().backward()

        conv_flops = 3 * 2 * batch * cout * cin * 9 * size * size
        cv = conv_flops / _time_per_call(conv, each, sync)
        small = torch.randn(8, 16, device=dev, generator=g)
        calls = 200

        def ops() -> None:
            for _ in range(calls):
                small.add(1.0)

        op = _time_per_call(ops, each, sync) / calls
        big = torch.randn(2**21 * (16 if gpu else 1), device=dev, generator=g)
        out = torch.empty_like(big)
        written = big.numel() * big.element_size()
        per_call = _time_per_call(lambda: torch.add(big, 1.0, out=out), each, sync)
        byte = max(per_call - op, per_call / 2) / written
    return Calibration(
        matmul_flops_per_s=mm,
        conv_flops_per_s=cv,
        op_seconds=op,
        byte_seconds=byte,
        device=device_label(dev),
        threads=used,
        measured=time.strftime("%Y-%m-%dT%H:%M:%S"),
        seconds=time.perf_counter() - began,
    )


def calibrate(
    device: str = "cpu", threads: int | None = None, *, refresh: bool = False
) -> Calibration:
    """This machine's calibration for ``device`` at ``threads`` torch threads (None:
    this process's setting, recorded as torch's default): the cached one, else measured
    now (≈ 0.2 s) and cached. Imports torch."""
    import torch

    from widthwise.device import resolve_device

    dev = resolve_device(device)
    label = device_label(dev)
    used = (threads or torch.get_num_threads()) if dev.type == "cpu" else 1
    hit = None if refresh else cached(label, used)
    if hit is not None and (threads is not None or "default_threads" in _machine_facts()):
        return hit
    cal = hit or measure(device, used if dev.type == "cpu" else None)
    data = user_cache.read_json(CACHE_FILE)
    entries = data.get("entries") if isinstance(data.get("entries"), dict) else {}
    entries[cache_key(label, cal.threads)] = cal.to_json()
    machines = data.get("machines") if isinstance(data.get("machines"), dict) else {}
    facts = dict(_machine_facts())
    facts["auto_device"] = device_label(resolve_device("auto"))
    if threads is None:
        facts["default_threads"] = used
    machines[machine_key()] = facts
    user_cache.write_json(CACHE_FILE, {"entries": entries, "machines": machines})
    return cal
