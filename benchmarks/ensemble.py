"""Throughput of the ensemble trainer vs a plain Python loop over the same seeds.

    python benchmarks/ensemble.py            # full run, a few minutes on 2 CPU cores
    python benchmarks/ensemble.py --quick    # under a minute

For every width (64, 256, 1024) and ensemble size E (1, 4, 16) it times one
training step (batch, forward, loss, backward, optimizer step) of

* ``ensemble``: ``widthwise.trainer.EnsembleTrainer.train_step`` on the setup of
  the bundled quickstart study (muP MLP of depth 3, Gegenbauer stream in 16
  dimensions, SGD with momentum 0.9, batch 128) with ``ensemble: auto``; and
* ``loop``: E independent ``torch.nn.Module`` MLPs (``nn.Linear`` layers), each
  with its own ``torch.optim.SGD``, stepped one after the other in a Python loop
  on the same batch, from the same initial weights, with the same learning rates
  and multipliers: the same work (checked: both give the same losses to float32
  rounding, column "loss rel. diff").

The full run also times the ensemble with the strategy ``auto`` did not pick and,
for the MLP, the generic ``torch.func.vmap`` path that other families use.

Timings are interleaved (one block of each contender in turn, until the time
budget of the configuration is spent) and the best block counts, so load from
other processes hurts all contenders alike; only ratios measured in this run are
reported. The FLOP rate counts matmul FLOPs (6·B·Σ fan_in·fan_out per member per
step: the forward matmul and the two backward ones) and is given as a fraction
of this machine's fp32 matmul peak, measured in the same run as the best of many
``torch.mm`` of two 2048×2048 matrices.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from widthwise.ensemble import init_member
from widthwise.memory import keep_freed_memory
from widthwise.spec import validate_spec
from widthwise.streams import STREAMS
from widthwise.trainer import EnsembleTrainer

WIDTHS = (64, 256, 1024)
SIZES = (1, 4, 16)
BATCH = 128
BUSY = 0.10  # share of the CPU taken by other processes above which timings are suspect

# (width, E) -> (minimum speedup over the loop, minimum fraction of matmul peak)
TARGETS: dict[tuple[int, int], tuple[float, float | None]] = {
    (64, 16): (8.0, None),
    (256, 16): (2.0, None),
    **{(1024, e): (1.0, 0.6) for e in SIZES},
}


# -- the baseline: E plain torch models, each with its own optimizer -------------------
class PlainMLP(nn.Module):
    """One member as an ordinary nn.Module of nn.Linear layers, with the same multipliers."""

    def __init__(self, weights: dict[str, Tensor], multipliers: dict[str, float]) -> None:
        super().__init__()
        self.names = [k.removesuffix(".weight") for k in weights if k.endswith(".weight")]
        self.layers = nn.ModuleList()
        for n in self.names:
            w, b = weights[f"{n}.weight"], weights.get(f"{n}.bias")
            lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
            with torch.no_grad():
                lin.weight.copy_(w)
                if b is not None:
                    lin.bias.copy_(b)
            self.layers.append(lin)
        self.mult = [multipliers[f"{n}.weight"] for n in self.names]

    def forward(self, x: Tensor) -> Tensor:
        h = x.reshape(x.shape[0], -1)
        last = len(self.layers) - 1
        for i, (lin, m) in enumerate(zip(self.layers, self.mult)):
            h = lin(h) if m == 1.0 else F.linear(h, lin.weight * m, lin.bias)
            if i < last:
                h = F.relu(h)
        return h


class LoopBaseline:
    """E independent models and optimizers, stepped in a Python loop on one batch."""

    def __init__(self, trainer: EnsembleTrainer) -> None:
        self.trainer = trainer
        o = trainer.spec.optimizer
        mults = {k: r.multiplier for k, r in trainer.rules.items()}
        self.models: list[PlainMLP] = []
        self.optimizers: list[torch.optim.Optimizer] = []
        for seed in trainer.spec.seed_list:
            weights = init_member(trainer.network, trainer.rules, seed, trainer.dtype)
            model = PlainMLP(weights, mults)
            groups = []
            for name, lin in zip(model.names, model.layers):
                for p, key in ((lin.weight, f"{name}.weight"), (lin.bias, f"{name}.bias")):
                    if p is not None:
                        groups.append({"params": [p], "lr": o.lr * trainer.rules[key].lr_scale})
            self.models.append(model)
            self.optimizers.append(torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum))
        self.step = 0

    def train_step(self) -> Tensor:
        tr = self.trainer
        x, y = tr.to_tensors(*tr.stream.batch(self.step, tr.spec.batch_size))
        losses = []
        for model, opt in zip(self.models, self.optimizers):
            opt.zero_grad(set_to_none=True)
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        self.step += 1
        return torch.stack(losses)


# -- timing ----------------------------------------------------------------------------
class Peak:
    """This machine's fp32 matmul rate: the best GFLOP/s of a 2048² torch.mm in this run."""

    def __init__(self, n: int = 2048) -> None:
        g = torch.Generator().manual_seed(0)
        self.a = torch.randn(n, n, generator=g)
        self.b = torch.randn(n, n, generator=g)
        self.flops = 2 * n**3
        self.best = 0.0
        torch.mm(self.a, self.b)

    def sample(self, reps: int) -> float:
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.mm(self.a, self.b)
            self.best = max(self.best, self.flops / (time.perf_counter() - t0) / 1e9)
        return self.best


class OthersCpu:
    """Share of the machine's CPU time that other processes used (Linux /proc/stat).

    ``share()`` is over the time since the last call: busy CPU time of the whole
    machine minus this process's own, divided by wall time × cores. None off Linux.
    """

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.last = self._read()

    def _read(self) -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        busy = (sum(fields) - idle) / self.tick
        own = sum(os.times()[:2])
        return time.perf_counter(), busy, own

    def share(self) -> float | None:
        now, then = self._read(), self.last
        self.last = now
        if now is None or then is None or now[0] <= then[0]:
            return None
        others = (now[1] - then[1]) - (now[2] - then[2])
        return max(0.0, others / ((now[0] - then[0]) * (os.cpu_count() or 1)))

    def wait_quiet(self, max_s: float, below: float = 0.1, window_s: float = 5.0) -> float:
        """Wait (at most ``max_s``) until others use < ``below`` of the CPU over a window."""
        deadline = time.perf_counter() + max_s
        self.share()
        while True:
            time.sleep(window_s)
            got = self.share()
            if got is None or got < below or time.perf_counter() > deadline:
                return got or 0.0


def interleaved_best(
    fns: dict[str, Callable[[], object]],
    budget_s: float,
    block_s: float,
    min_rounds: int,
    peak: Peak,
) -> dict[str, float]:
    """Seconds per call of each fn: the best block, blocks of each fn taken in turn.

    Each round also samples the matmul peak, so that it sees the same load.
    """
    inner = {}
    for k, fn in fns.items():
        fn()  # warm up: the first call allocates and fills caches
        t0 = time.perf_counter()
        fn()
        inner[k] = max(1, round(block_s / max(time.perf_counter() - t0, 1e-6)))
    best = {k: math.inf for k in fns}
    start, rounds = time.perf_counter(), 0
    while rounds < min_rounds or time.perf_counter() - start < budget_s:
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner[k]):
                fn()
            best[k] = min(best[k], (time.perf_counter() - t0) / inner[k])
        peak.sample(1)
        rounds += 1
    return best


# -- one configuration -------------------------------------------------------------------
def make_trainer(width: int, size: int, strategy: str = "auto") -> EnsembleTrainer:
    """The trainer of one width: the quickstart study's model, data and optimizer."""
    spec = validate_spec(
        {
            "name": "bench",
            "model": {"family": "mlp", "options": {"depth": 3, "activation": "relu"}},
            "widths": [width],
            "base_width": min(width, 64),
            "seeds": size,
            "parameterization": {"name": "mup", "sigma": 1.4142},
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
            "steps": 1_000_000,
            "batch_size": BATCH,
            "data": {"stream": "gegenbauer", "seed": 0, "options": {"dim": 16, "degree": 2}},
            "probes": {"train_loss": {"every": 1}},
            "ensemble": strategy,
            "device": "cpu",
        },
        "benchmarks/ensemble.py",
    )
    stream = STREAMS.get(spec.data.stream)(spec.data.seed, spec.stream_options())
    return EnsembleTrainer(spec, width, stream, torch.device("cpu"))


def generic_vmap(trainer: EnsembleTrainer) -> EnsembleTrainer:
    """The trainer, its forward on torch.func.vmap as for families that are not stackable."""
    ens = trainer.ensemble
    ens.strategy = "vmap"
    ens._stacked = ens._vmapped  # type: ignore[method-assign]
    return trainer


def matmul_flops(trainer: EnsembleTrainer) -> float:
    """6·B·Σ fan_in·fan_out over the weight matrices, per member per step."""
    n = sum(p.shape[0] * p.shape[1] for p in trainer.network.params if len(p.shape) == 2)
    return 6.0 * trainer.spec.batch_size * n


def agreement(width: int, size: int, steps: int = 3) -> float:
    """Max relative difference of the ensemble's and the loop's losses over a few steps."""
    ens = make_trainer(width, size)
    base = LoopBaseline(ens)
    worst = 0.0
    for _ in range(steps):
        a, b = ens.train_step(), base.train_step()
        worst = max(worst, float(((a - b).abs() / b.abs()).max()))
    return worst


@dataclass
class Row:
    width: int
    size: int
    auto: str
    ms: dict[str, float]  # ms per step: loop, ensemble, and in the full run the others
    gflop: float  # matmul GFLOP per step, all members
    agree: float
    others: float | None = field(default=None)  # CPU share other processes took meanwhile

    def speedup(self, key: str = "ensemble") -> float:
        return self.ms["loop"] / self.ms[key]

    def gflops(self, key: str = "ensemble") -> float:
        return self.gflop / (self.ms[key] / 1e3)


def run_config(
    width: int,
    size: int,
    *,
    budget_s: float,
    block_s: float,
    full: bool,
    rounds: int,
    peak: Peak,
    cpu: OthersCpu,
) -> Row:
    gc.collect()
    ens = make_trainer(width, size)
    fns: dict[str, Callable[[], object]] = {
        "ensemble": ens.train_step,
        "loop": LoopBaseline(ens).train_step,
    }
    if full:
        other = "loop" if ens.ensemble.strategy == "vmap" else "vmap"
        fns[f"{other} strategy"] = make_trainer(width, size, other).train_step
        if ens.network.stackable:
            fns["func.vmap"] = generic_vmap(make_trainer(width, size, "vmap")).train_step
    cpu.share()
    best = interleaved_best(fns, budget_s, block_s, min_rounds=rounds, peak=peak)
    others = cpu.share()
    return Row(
        width=width,
        size=size,
        auto=ens.ensemble.strategy,
        ms={k: v * 1e3 for k, v in best.items()},
        gflop=matmul_flops(ens) * size / 1e9,
        agree=agreement(width, size, steps=rounds),
        others=others,
    )


# -- report --------------------------------------------------------------------------------
def loadavg() -> str:
    """The 1/5/15-minute load averages (other processes competing for the cores)."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def table(rows: list[Row], peak: float) -> list[str]:
    extra = list(dict.fromkeys(k for r in rows for k in r.ms if k not in ("ensemble", "loop")))
    head = [
        "width",
        "E",
        "auto picks",
        "loop ms/step",
        "ensemble ms/step",
        "speedup vs loop",
        "samples·seeds/s",
        "GFLOP/s",
        "of peak",
        "loop of peak",
        *[f"{k} vs loop" for k in extra],
        "loss rel. diff",
        "others' CPU",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in rows:
        cells = [
            str(r.width),
            str(r.size),
            r.auto,
            f"{r.ms['loop']:.2f}",
            f"{r.ms['ensemble']:.2f}",
            f"**{r.speedup():.2f}×**",
            f"{BATCH * r.size / (r.ms['ensemble'] / 1e3):,.0f}",
            f"{r.gflops():.1f}",
            f"{r.gflops() / peak:.2f}",
            f"{r.gflops('loop') / peak:.2f}",
            *[f"{r.speedup(k):.2f}×" if k in r.ms else "–" for k in extra],
            f"{r.agree:.0e}",
            "n/a" if r.others is None else f"{r.others:.0%}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="short budgets, auto vs loop only")
    ap.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS))
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--budget", type=float, help="seconds per configuration (2 quick, 20 full)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    ap.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="keep glibc's default malloc settings (ablation of keep_freed_memory)",
    )
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each configuration wait up to S seconds for other processes to\n"
        "use < 10%% of the CPU, and measure it again (up to 3 times) if they\n"
        "took more meanwhile (shared machines; default 0: do not wait)",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    full = not args.quick
    budget = args.budget or (20.0 if full else 2.0)
    block = 0.02 if args.quick else 0.03
    # what the command line and widthwise's workers do; the loop shares the process
    tuned = False if args.no_malloc_tuning else keep_freed_memory()

    print(f"widthwise ensemble benchmark, {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.machine()}, python {platform.python_version()}, "
        f"glibc keeps freed memory: {tuned}, load average {loadavg()}"
    )
    print(
        f"quickstart setup: muP MLP depth 3, gegenbauer dim 16, SGD momentum 0.9, "
        f"batch {BATCH}; {budget:g} s interleaved per configuration\n"
    )
    cpu = OthersCpu()
    peak = Peak()
    peak.sample(10)
    t_start = time.perf_counter()
    rows = []
    for w in args.widths:
        for e in args.sizes:
            for _attempt in range(3 if args.wait_quiet else 1):
                if args.wait_quiet:
                    cpu.wait_quiet(args.wait_quiet)
                row = run_config(
                    w,
                    e,
                    budget_s=budget,
                    block_s=block,
                    full=full,
                    rounds=3 if full else 2,
                    peak=peak,
                    cpu=cpu,
                )
                if row.others is None or row.others < BUSY:
                    break
            rows.append(row)
            others = "".join(
                f"  {k} {row.speedup(k):.2f}×" for k in row.ms if k not in ("ensemble", "loop")
            )
            print(
                f"width {w:5d} E {e:2d}: auto={row.auto}  ensemble {row.ms['ensemble']:8.2f} ms"
                f"  loop {row.ms['loop']:8.2f} ms  -> {row.speedup():5.2f}×{others}"
                f"  (others' CPU {'n/a' if row.others is None else f'{row.others:.0%}'})",
                flush=True,
            )
    peak.sample(10)
    print(f"\nfp32 matmul peak (best 2048² torch.mm): {peak.best:.1f} GFLOP/s")
    print(f"total {time.perf_counter() - t_start:.0f} s, load average now {loadavg()}\n")
    print("\n".join(table(rows, peak.best)))
    print(f"\ntargets (a row counts only if other processes took < {BUSY:.0%} of the CPU):")
    verdicts = []
    for r in rows:
        target = TARGETS.get((r.width, r.size))
        if target is None:
            continue
        min_speed, min_frac = target
        frac = r.gflops() / peak.best
        met = r.speedup() >= min_speed and (min_frac is None or frac >= min_frac)
        busy = r.others is not None and r.others >= BUSY
        verdict = "inconclusive, machine busy" if busy else "met" if met else "NOT met"
        verdicts.append(verdict)
        need = f">= {min_speed:g}x loop" + ("" if min_frac is None else f", >= {min_frac:g} peak")
        print(
            f"  width {r.width:5d} E {r.size:2d}: {need:26s} got {r.speedup():5.2f}x, "
            f"{frac:.2f} of peak: {verdict}"
        )
    print(
        "no target configuration measured"
        if not verdicts
        else "all targets met"
        if all(v == "met" for v in verdicts)
        else f"targets: {verdicts.count('met')} met, {verdicts.count('NOT met')} not met, "
        f"{len(verdicts) - verdicts.count('met') - verdicts.count('NOT met')} inconclusive"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
