"""Training throughput of the cnn, resnet18_ln and transformer families, vectorized vs loop.

    python benchmarks/families.py            # full run (about 3 minutes on 2 CPU cores)
    python benchmarks/families.py --quick    # under a minute

For every family at two widths and ensemble sizes E = 1 and 4 it times one
``EnsembleTrainer.train_step`` (batch, forward, loss, backward, optimizer step;
muP, SGD with momentum) with the forward strategy forced to ``vmap`` (one
``torch.func.vmap`` over seeds) and to ``loop`` (a Python loop over members).
Timings are interleaved (vmap block, loop block, ... ``rounds`` times) and the
best block counts, so load from other processes hurts both alike.

FLOPs per step are counted with ``torch.utils.flop_counter.FlopCounterMode`` over
one forward and backward of the *loop* strategy: the useful work, the same for
both strategies (the counter's convolution formula over-counts the grouped
convolutions that vmap lowers a batched conv to, so vmap's own count is not
used). The rate is given as a fraction of this machine's fp32 matmul peak,
measured in the same run as the best of many ``torch.mm`` of two 2048² matrices.

Inputs are synthetic (the data streams are not what is measured): 3×32×32 images
with 10 classes for the vision families, token sequences of length 64 over a
vocabulary of 256 for the transformer. On a CUDA device (picked automatically)
the configurations are larger (``GPU_CONFIGS``).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch.utils.flop_counter import FlopCounterMode

from widthwise.losses import per_member_loss
from widthwise.spec import StudySpec, validate_spec
from widthwise.streams import STREAMS, Stream
from widthwise.trainer import EnsembleTrainer

SIZES = (1, 4)
STRATEGIES = ("vmap", "loop")


# -- synthetic inputs ------------------------------------------------------------------
class _NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BenchImages(Stream):
    """x ~ N(0, 1) of shape (3, 32, 32); uniform labels over 10 classes."""

    loss = "cross_entropy"
    in_shape = (3, 32, 32)
    out_dim = 10

    def __init__(self, seed: int, options: _NoOptions) -> None:
        super().__init__(seed)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.standard_normal((n, *self.in_shape), dtype=np.float32)
        return x, rng.integers(0, self.out_dim, n)


class BenchTokens(Stream):
    """Uniform token ids (64,) over 256; next-token targets."""

    loss = "cross_entropy"
    in_shape = (64,)
    out_dim = 256

    def __init__(self, seed: int, options: _NoOptions) -> None:
        super().__init__(seed)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        toks = rng.integers(0, self.out_dim, (n, self.in_shape[0] + 1))
        return toks[:, :-1], toks[:, 1:]


for _name, _cls in (("bench_images", BenchImages), ("bench_tokens", BenchTokens)):
    if _name not in STREAMS:
        STREAMS.register(_name, options=_NoOptions)(_cls)


# -- configurations --------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    family: str
    options: dict[str, Any]
    stream: str
    widths: tuple[int, int]
    batch: int
    note: str


CPU_CONFIGS = (
    Config(
        "cnn",
        {"depth": 4, "downsample_layers": [2, 3]},
        "bench_images",
        (32, 128),
        64,
        "depth 4, 32×32 → 8×8",
    ),
    Config("resnet18_ln", {}, "bench_images", (8, 32), 32, "32×32 (64 = standard)"),
    Config(
        "transformer",
        {"depth": 2, "heads": 4},
        "bench_tokens",
        (64, 256),
        16,
        "depth 2, 4 heads, T 64, vocab 256",
    ),
)
GPU_CONFIGS = (
    Config(
        "cnn",
        {"depth": 4, "downsample_layers": [2, 3]},
        "bench_images",
        (128, 512),
        256,
        "depth 4, 32×32 → 8×8",
    ),
    Config("resnet18_ln", {}, "bench_images", (32, 64), 128, "32×32 (64 = standard)"),
    Config(
        "transformer",
        {"depth": 4, "heads": 8},
        "bench_tokens",
        (256, 1024),
        64,
        "depth 4, 8 heads, T 64, vocab 256",
    ),
)


def make_trainer(
    cfg: Config, width: int, size: int, strategy: str, device: torch.device
) -> EnsembleTrainer:
    spec: StudySpec = validate_spec(
        {
            "name": "bench",
            "model": {"family": cfg.family, "options": cfg.options},
            "widths": [width],
            "base_width": cfg.widths[0],
            "seeds": size,
            "parameterization": "mup",
            "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
            "steps": 1_000_000,
            "batch_size": cfg.batch,
            "data": {"stream": cfg.stream, "seed": 0},
            "device": device.type,
            "ensemble": strategy,
        }
    )
    stream = STREAMS.get(cfg.stream)(0, spec.stream_options())
    return EnsembleTrainer(spec, width, stream, device)


def step_flops(trainer: EnsembleTrainer) -> float:
    """FLOPs of one forward + backward of all members (counted on the loop strategy)."""
    assert trainer.ensemble.strategy == "loop"
    x, y = trainer.to_tensors(*trainer.stream.batch(0, trainer.spec.batch_size))
    with FlopCounterMode(display=False) as counter:
        logits = trainer.ensemble.forward(trainer.params, x)
        per_member_loss(trainer.loss_name, logits, y).sum().backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


# -- timing ----------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_best(
    fns: dict[str, Callable[[], object]], rounds: int, inner: dict[str, int], device: torch.device
) -> dict[str, float]:
    """Seconds per call of each fn: best of ``rounds`` blocks of ``inner[k]`` calls, interleaved."""
    best = {k: math.inf for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(inner[k]):
                fn()
            sync(device)
            best[k] = min(best[k], (time.perf_counter() - t0) / inner[k])
    return best


class Peak:
    """This machine's fp32 matmul rate: best GFLOP/s of n² torch.mm seen in the run."""

    def __init__(self, device: torch.device, n: int = 2048) -> None:
        g = torch.Generator().manual_seed(0)
        self.a = torch.randn(n, n, generator=g).to(device)
        self.b = torch.randn(n, n, generator=g).to(device)
        self.device = device
        self.flops = 2 * n**3
        self.best = 0.0
        torch.mm(self.a, self.b)

    def sample(self, reps: int) -> float:
        for _ in range(reps):
            sync(self.device)
            t0 = time.perf_counter()
            torch.mm(self.a, self.b)
            sync(self.device)
            self.best = max(self.best, self.flops / (time.perf_counter() - t0) / 1e9)
        return self.best


@dataclass
class Row:
    cfg: Config
    width: int
    size: int
    n_params: int  # per member
    gflop: float  # per step, all members
    ms: dict[str, float]  # strategy -> ms per step

    def gflops(self, strategy: str) -> float:
        return self.gflop / (self.ms[strategy] / 1e3)


def run_config(
    cfg: Config,
    width: int,
    size: int,
    *,
    rounds: int,
    block_s: float,
    device: torch.device,
    peak: Peak,
) -> Row:
    gc.collect()
    trainers = {s: make_trainer(cfg, width, size, s, device) for s in STRATEGIES}
    flops = step_flops(make_trainer(cfg, width, size, "loop", device))
    fns = {s: t.train_step for s, t in trainers.items()}
    inner = {}
    for k, fn in fns.items():  # warm up, then size the blocks to about block_s
        fn()
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        inner[k] = max(1, int(block_s / max(time.perf_counter() - t0, 1e-6)))
    best = interleaved_best(fns, rounds, inner, device)
    peak.sample(3)
    n_params = sum(math.prod(p.shape) for p in trainers["loop"].network.params)
    row = Row(cfg, width, size, n_params, flops / 1e9, {k: v * 1e3 for k, v in best.items()})
    del trainers, fns
    return row


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        names = [ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, nproc {os.cpu_count()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer and shorter rounds (<1 min)")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    ap.add_argument("--families", nargs="+", help="subset of cnn, resnet18_ln, transformer")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 2 quick, 3 full)")
    ap.add_argument(
        "--threads", type=int, help="torch intra-op threads (default: torch's; 1 on a busy machine)"
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    rounds = args.rounds or (2 if args.quick else 3)
    block_s = 0.1 if args.quick else 0.4
    configs = GPU_CONFIGS if device.type == "cuda" else CPU_CONFIGS
    if args.families:
        configs = tuple(c for c in configs if c.family in args.families)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else machine()

    print(
        f"widthwise families benchmark, {datetime.date.today()}: torch {torch.__version__}, "
        f"{device.type} ({dev_name}), {torch.get_num_threads()} threads, "
        f"python {sys.version.split()[0]}; muP, SGD momentum, {rounds} interleaved rounds"
    )
    peak = Peak(device)
    peak.sample(10 if args.quick else 20)
    t_start = time.perf_counter()
    rows = []
    for cfg in configs:
        for w in cfg.widths:
            for e in SIZES:
                row = run_config(
                    cfg, w, e, rounds=rounds, block_s=block_s, device=device, peak=peak
                )
                rows.append(row)
                print(
                    f"  {cfg.family:12s} width {w:5d} E {e}: vmap {row.ms['vmap']:8.2f} ms  "
                    f"loop {row.ms['loop']:8.2f} ms  ({row.gflop:.3f} GFLOP/step)",
                    flush=True,
                )
    peak.sample(10 if args.quick else 20)
    print(f"fp32 matmul peak (best 2048² torch.mm): {peak.best:.1f} GFLOP/s")
    print()
    print(
        "| family | setting | width | params/member | E | batch | GFLOP/step | "
        "vmap ms | loop ms | vmap/loop speedup | best samples·seeds/s | best GFLOP/s | "
        "of peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fast = min(STRATEGIES, key=lambda s: r.ms[s])
        print(
            f"| {r.cfg.family} | {r.cfg.note} | {r.width} | {r.n_params / 1e6:.2f}M | {r.size} | "
            f"{r.cfg.batch} | {r.gflop:.3f} | {r.ms['vmap']:.1f} | {r.ms['loop']:.1f} | "
            f"{r.ms['loop'] / r.ms['vmap']:.2f}× | "
            f"{r.cfg.batch * r.size / (r.ms[fast] / 1e3):,.0f} ({fast}) | "
            f"{r.gflops(fast):.1f} | {r.gflops(fast) / peak.best:.2f} |"
        )
    print()
    print(f"peak {peak.best:.1f} GFLOP/s; total {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
