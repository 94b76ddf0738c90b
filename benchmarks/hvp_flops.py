"""How close one Hessian-vector product already is to the machine's matmul rate.

    python benchmarks/hvp_flops.py                 # widths 256 and 1024, 2 threads
    python benchmarks/hvp_flops.py --threads 1
    python benchmarks/hvp_flops.py --device cuda   # where batching should pay

Batching the seeds of an ensemble into one HVP (widthwise's sharpness probe) can only
pay where one member's HVP leaves the hardware idle. This script measures how idle:
the FLOPs of one graph HVP (``torch.utils.flop_counter.FlopCounterMode``, matmuls only)
divided by its wall time, against the rate of a plain ``torch.mm`` of the same shapes
(the largest the HVP's own layer sizes allow) and of a large square matmul. If one
member's HVP already runs at a fraction f of the achievable matmul rate, batching E
members can gain at most 1/f, whatever the implementation.

Setting as ``benchmarks/hessian.py``: MLP depth 3 (32 → width → width → 10), 256
points, float32, cross-entropy, weights at init (SP), the graph built once and timed
per HVP (best of 7 rounds of 5). Legs: one member (E = 1, the ensemble code path),
four members stacked (the training layout), four members member by member (``loop``,
what the probe uses on a CPU from width 256), and PyHessian's way (a plain
``nn.Module`` per seed, ``torch.autograd.grad`` twice).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from widthwise.ensemble import Ensemble
from widthwise.families import FAMILIES
from widthwise.families.mlp import MLPOptions
from widthwise.losses import per_member_loss
from widthwise.parameterization import RuleContext, rules_for
from widthwise.probes.hessian import loss_hvp

IN, OUT, POINTS = 32, 10, 256


def build(width: int, seeds: int, device: torch.device) -> Ensemble:
    net = FAMILIES.get("mlp")(width, (IN,), OUT, MLPOptions(depth=3))
    rules = rules_for(
        "sp", list(net.params), RuleContext(width=width, base_width=64, optimizer="sgd")
    )
    return Ensemble(net, rules, list(range(seeds)), loss="cross_entropy", device=device)


def best_time(fn, device: torch.device, rounds: int = 7, reps: int = 5) -> float:
    """Best mean wall time of ``reps`` calls over ``rounds`` (the device synchronized)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    best = float("inf")
    for _ in range(rounds):
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def flops_of(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_rate(m: int, k: int, n: int, device: torch.device) -> float:
    """GFLOP/s of ``torch.mm`` (m×k)·(k×n), float32."""
    a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
    return 2 * m * k * n / best_time(lambda: torch.mm(a, b), device, reps=20) / 1e9


def data(width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    gen = torch.Generator().manual_seed(width)
    x = torch.randn(POINTS, IN, generator=gen).to(device)
    y = torch.randint(0, OUT, (POINTS,), generator=gen).to(device)
    return x, y, gen


def ensemble_hvp_op(width: int, seeds: int, strategy: str, device: torch.device):
    """The sharpness probe's graph HVP of an E-member ensemble, forward by ``strategy``."""
    ens = build(width, seeds, device)
    params = ens.init_params()
    x, y, gen = data(width, device)

    def total_loss(raw):
        return per_member_loss(ens.loss, ens.forward(raw, x, strategy=strategy), y).sum()

    hvp, flat = loss_hvp(total_loss, params, "graph")
    v = torch.randn(seeds, flat.numel, generator=gen).to(device)
    return lambda: hvp(v)


def plain_hvp_op(width: int, device: torch.device):
    """PyHessian's HVP: one nn.Sequential, gradient graph kept, grad of (g · v)."""
    net = torch.nn.Sequential(
        torch.nn.Linear(IN, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, OUT),
    ).to(device)
    x, y, _ = data(width, device)
    ps = list(net.parameters())
    loss = torch.nn.functional.cross_entropy(net(x), y)
    grads = torch.autograd.grad(loss, ps, create_graph=True)
    vs = [torch.randn_like(p) for p in ps]

    def hvp():
        return torch.autograd.grad(grads, ps, grad_outputs=vs, retain_graph=True)

    return hvp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="256,1024")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"# {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC · "
        f"{platform.processor() or platform.machine()} · {os.cpu_count()} cores, "
        f"torch threads {torch.get_num_threads()} · torch {torch.__version__} · {device} · "
        f"load {os.getloadavg()[0]:.1f}"
    )
    big = matmul_rate(2048, 2048, 2048, device)
    print(f"torch.mm 2048³: {big:.0f} GFLOP/s")
    for width in [int(w) for w in args.widths.split(",")]:
        shaped = matmul_rate(POINTS, width, width, device)
        print(f"width {width}: torch.mm {POINTS}×{width}×{width}: {shaped:.0f} GFLOP/s")
        legs = {
            "one member (E=1)": (ensemble_hvp_op(width, 1, "stacked", device), 1),
            "4 members, stacked": (ensemble_hvp_op(width, 4, "stacked", device), 4),
            "4 members, loop": (ensemble_hvp_op(width, 4, "loop", device), 4),
            "plain nn.Module (PyHessian's HVP)": (plain_hvp_op(width, device), 1),
        }
        for name, (op, members) in legs.items():
            flops, t = flops_of(op), best_time(op, device)
            rate = flops / t / 1e9
            print(
                f"  {name:<36} {flops / members / 1e6:7.1f} MFLOP/member  "
                f"{t / members * 1e3:6.2f} ms/member  {rate:5.0f} GFLOP/s = "
                f"{rate / shaped:4.0%} of the shaped mm, {rate / big:4.0%} of mm 2048³"
            )


if __name__ == "__main__":
    main()
