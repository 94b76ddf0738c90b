"""A sweep of an optimizer scalar vs an lr sweep, same ensemble (benchmarks/RESULTS.md).

An 8-point Adam β₂ sweep × 4 seeds trains with ``widthwise.member_optim.MemberAdam``
(per-member β₂); an 8-point lr sweep of the same 32 members with torch's Adam. Prints
ms per training step (best of 3 blocks of 20 steps) and their ratio, measured in the
same run. ``python benchmarks/sweep_optimizer_scalars.py [--width 64] [--threads 2]``
"""

from __future__ import annotations

import argparse
import time

import torch

from widthwise.spec import StudySpec, validate_spec
from widthwise.streams import STREAMS
from widthwise.trainer import EnsembleTrainer

SWEEPS = {
    "lr (torch Adam)": {"lr": [0.001 * 2**i for i in range(8)]},
    "beta2 (MemberAdam)": {"beta2": [0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995]},
}


def spec_for(width: int, sweep: dict[str, list[float]]) -> StudySpec:
    return validate_spec(
        {
            "name": "bench",
            "model": {"family": "mlp", "options": {"depth": 3}},
            "widths": [width],
            "seeds": 4,
            "parameterization": "mup",
            "optimizer": {"name": "adam", "lr": 0.01},
            "steps": 100,
            "batch_size": 128,
            "data": {"stream": "gegenbauer", "options": {"dim": 16}},
            "device": "cpu",
            "sweep": sweep,
        }
    )


def ms_per_step(spec: StudySpec, width: int, blocks: int = 3, steps: int = 20) -> float:
    stream = STREAMS.get(spec.data.stream)(spec.data.seed, spec.stream_options())
    trainer = EnsembleTrainer(spec, width, stream, torch.device("cpu"))
    for _ in range(5):  # warm-up
        trainer.train_step()
    best = float("inf")
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        best = min(best, (time.perf_counter() - t0) / steps)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    times = {name: ms_per_step(spec_for(args.width, sw), args.width) for name, sw in SWEEPS.items()}
    for name, t in times.items():
        print(f"{name}: {t:.2f} ms/step")
    a, b = times.values()
    print(f"MemberAdam / torch Adam: {b / a:.2f}")


if __name__ == "__main__":
    main()
