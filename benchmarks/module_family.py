"""Training throughput of a module family against the same architecture as a built-in family.

    python benchmarks/module_family.py            # about 5 minutes on 2 CPU cores
    python benchmarks/module_family.py --quick    # about a minute
    python benchmarks/module_family.py --threads 1 --pair mlp --rounds 5 --steps 10

Two pairs, the same widths, E = 1, 4, 16 seeds:

* ``mlp``: the built-in ``mlp`` (depth 3, no bias) against the same network written as
  an ``nn.Module`` (three ``nn.Linear``) and registered with ``from_module``;
* ``transformer``: the built-in ``transformer`` (depth 2, 4 heads) against the
  nanoGPT-style module of ``examples/nanogpt.py`` (depth 2, 4 heads, untied; its
  query/key/value are one ``c_attn`` with biases, the built-in's three linears with no
  key bias: nearly the same FLOPs).

Each row times one ``EnsembleTrainer.train_step`` (batch, forward, loss, backward,
optimizer step; mup, Adam) for: the built-in with ``ensemble: auto`` (on a CPU the MLP
runs on the stacked weights, the transformer as a loop); the module family with
``auto`` (on a CPU: the loop) and with ``vmap``. Timings are interleaved (one block of
each, ``rounds`` times) and the best block counts. Printed as a markdown table:
steps per second and the module's best over the built-in's.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from widthwise.families import from_module
from widthwise.spec import validate_spec
from widthwise.streams import STREAMS
from widthwise.trainer import EnsembleTrainer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import nanogpt  # noqa: E402  (examples/nanogpt.py)


class MLP(torch.nn.Module):
    def __init__(self, width: int, d_in: int, out: int) -> None:
        super().__init__()
        self.l1 = torch.nn.Linear(d_in, width, bias=False)
        self.l2 = torch.nn.Linear(width, width, bias=False)
        self.out = torch.nn.Linear(width, out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.l2(torch.relu(self.l1(x)))))


def make_mlp(width: int, in_shape: tuple[int, ...], out_dim: int) -> MLP:
    return MLP(width, in_shape[0], out_dim)


def make_gpt(width: int, in_shape: tuple[int, ...], out_dim: int) -> torch.nn.Module:
    return nanogpt.make_gpt(width, in_shape, out_dim, depth=2, heads=4, tie=False)


from_module(make_mlp, "bench_module_mlp")
from_module(make_gpt, "bench_module_gpt")

PAIRS = {
    "mlp": (
        {"family": "mlp", "options": {"depth": 3, "bias": False}},
        {"family": "bench_module_mlp"},
        {"stream": "gegenbauer", "options": {"dim": 16}},
        128,
    ),
    "transformer": (
        {"family": "transformer", "options": {"depth": 2, "heads": 4}},
        {"family": "bench_module_gpt"},
        {"stream": "periodic_tokens", "options": {"seq_len": 32, "vocab": 64}},
        32,
    ),
}


def trainer(
    model: dict[str, Any], data: dict[str, Any], width: int, e: int, strategy: str, batch: int
) -> EnsembleTrainer:
    raw = {
        "name": "bench",
        "model": model,
        "widths": [width],
        "seeds": e,
        "parameterization": "mup",
        "optimizer": {"name": "adam", "lr": 1e-3},
        "steps": 1000,
        "batch_size": batch,
        "data": data,
        "device": "cpu",
        "ensemble": strategy,
    }
    spec = validate_spec(raw)
    stream = STREAMS.get(spec.data.stream)(0, spec.stream_options())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return EnsembleTrainer(spec, width, stream, torch.device("cpu"))


def block(tr: EnsembleTrainer, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.train_step()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--pair", choices=sorted(PAIRS), help="only this pair")
    ap.add_argument("--rounds", type=int, help="interleaved blocks per contender")
    ap.add_argument("--steps", type=int, help="steps per block")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds, steps = (2, 3) if args.quick else (4, 5)
    rounds, steps = args.rounds or rounds, args.steps or steps
    sizes = (1, 4, 16)
    widths = {"mlp": (256, 1024), "transformer": (64, 128)}
    if args.quick:
        widths = {"mlp": (256,), "transformer": (64,)}
    print(
        f"# module_family.py on {platform.node()} ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads), torch "
        f"{torch.__version__}, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC\n"
    )
    print(
        "| pair | width | E | built-in auto | module auto (loop) | module vmap | "
        "module best / built-in | vmap / loop |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for pair, (builtin, module, data, batch) in PAIRS.items():
        if args.pair and pair != args.pair:
            continue
        for width in widths[pair]:
            for e in sizes:
                trs = {
                    "builtin": trainer(builtin, data, width, e, "auto", batch),
                    "loop": trainer(module, data, width, e, "auto", batch),
                    "vmap": trainer(module, data, width, e, "vmap", batch),
                }
                for tr in trs.values():  # warm-up
                    block(tr, 1)
                best = {k: 0.0 for k in trs}
                for _ in range(rounds):
                    for k, tr in trs.items():
                        best[k] = max(best[k], block(tr, steps))
                mod = max(best["loop"], best["vmap"])
                print(
                    f"| {pair} | {width} | {e} | {best['builtin']:.1f} | {best['loop']:.1f} | "
                    f"{best['vmap']:.1f} | {mod / best['builtin']:.2f}× | "
                    f"{best['vmap'] / best['loop']:.2f}× |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
