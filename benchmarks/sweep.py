"""A learning-rate sweep as ensemble members vs one study per learning rate.

    python benchmarks/sweep.py            # widths 64 and 256, ~2 minutes on 2 CPU cores
    python benchmarks/sweep.py --quick    # width 64 only, under a minute

For each width it times one training step of every member of an 8-point lr grid × 4
seeds (32 members), two ways:

* ``sweep``: one ``EnsembleTrainer`` of a spec with ``sweep: {lr: [8 values]}``,
  32 members stacked (docs/sweeps.md);
* ``separate``: 8 trainers, one per lr, each with the 4 seeds stacked (what a user
  without sweeps runs: 8 studies), stepped one after the other on the same batch.

Both do the same arithmetic (checked here: the sweep's member losses equal the
separate trainers' to float32 rounding after the timed steps, column "loss rel.
diff"). Timings are interleaved, blocks of each contender in turn until the budget
is spent, and the best block counts, so load from other processes hurts both alike.
Only the ratio measured in this run is reported. Target (issue 15): the sweep ≥ 3×
faster than the separate studies at width 64.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from collections.abc import Callable

import torch

from widthwise.spec import validate_spec
from widthwise.streams import STREAMS
from widthwise.trainer import EnsembleTrainer

LRS = [0.0125 * 2**k for k in range(8)]  # 0.0125 … 1.6
SEEDS = 4
BATCH = 128
TARGET = {64: 3.0}


def make_trainer(width: int, sweep: dict[str, list[float]] | None, lr: float) -> EnsembleTrainer:
    spec = validate_spec(
        {
            "name": "bench",
            "model": {"family": "mlp", "options": {"depth": 3, "activation": "relu"}},
            "widths": [width],
            "base_width": 64,
            "seeds": SEEDS,
            "parameterization": {"name": "mup", "sigma": 1.4142},
            "optimizer": {"name": "sgd", "lr": lr, "momentum": 0.9},
            "steps": 1_000_000,
            "batch_size": BATCH,
            "data": {"stream": "gegenbauer", "seed": 0, "options": {"dim": 16, "degree": 2}},
            "probes": {"train_loss": {"every": 1}},
            "device": "cpu",
            **({"sweep": sweep} if sweep else {}),
        },
        "benchmarks/sweep.py",
    )
    stream = STREAMS.get(spec.data.stream)(spec.data.seed, spec.stream_options())
    return EnsembleTrainer(spec, width, stream, torch.device("cpu"))


def best_block(fns: dict[str, Callable[[], None]], budget: float, steps: int) -> dict[str, float]:
    """Seconds per step of each contender: best of interleaved blocks of ``steps``."""
    best = {k: float("inf") for k in fns}
    end = time.perf_counter() + budget
    while time.perf_counter() < end or any(v == float("inf") for v in best.values()):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            best[k] = min(best[k], (time.perf_counter() - t0) / steps)
    return best


def one_width(width: int, budget: float) -> dict[str, float]:
    sweep = make_trainer(width, {"lr": LRS}, LRS[0])
    separate = [make_trainer(width, None, lr) for lr in LRS]
    losses: dict[str, list[torch.Tensor]] = {"sweep": [], "separate": []}

    def step_sweep() -> None:
        losses["sweep"].append(sweep.train_step())

    def step_separate() -> None:
        losses["separate"].append(torch.cat([t.train_step() for t in separate]))

    # same number of steps for both before the check: run them in lockstep first
    for _ in range(3):
        step_sweep()
        step_separate()
    t = best_block({"sweep": step_sweep, "separate": step_separate}, budget, steps=5)
    n = min(len(losses["sweep"]), len(losses["separate"]))
    a = torch.stack(losses["sweep"][:n])[:3]
    b = torch.stack(losses["separate"][:n])[:3]
    rel = float(((a - b).abs() / b.abs().clamp_min(1e-12)).max())
    return {"sweep": t["sweep"], "separate": t["separate"], "rel": rel}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="width 64 only, shorter budget")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    widths = (64,) if args.quick else (64, 256)
    budget = 8.0 if args.quick else 25.0
    print(
        f"# sweep.py · {datetime.date.today()} · {platform.processor() or platform.machine()} · "
        f"{os.cpu_count()} CPUs · torch {torch.__version__} · {torch.get_num_threads()} threads"
    )
    print(
        f"# {len(LRS)} lr × {SEEDS} seeds = {len(LRS) * SEEDS} members, muP MLP depth 3, "
        f"batch {BATCH}, SGD momentum 0.9"
    )
    print("| width | sweep ms/step | 8 separate ms/step | speedup | target | loss rel. diff |")
    print("|---|---|---|---|---|---|")
    for w in widths:
        r = one_width(w, budget)
        speed = r["separate"] / r["sweep"]
        tgt = TARGET.get(w)
        mark = (
            "—" if tgt is None else (f"≥ {tgt:g}× met" if speed >= tgt else f"≥ {tgt:g}× NOT met")
        )
        print(
            f"| {w} | {1e3 * r['sweep']:.2f} | {1e3 * r['separate']:.2f} | {speed:.2f}× | "
            f"{mark} | {r['rel']:.1e} |"
        )


if __name__ == "__main__":
    main()
