"""Probe overhead: the quickstart study with its default probes vs only loss probes.

Runs the bundled quickstart twice in this process, interleaved ``--repeat`` times —
once as bundled (kernels, preactivations, sharpness, eNTK at init and end) and
once with only ``train_loss`` and ``test`` — and prints the ratio of training wall
times (the sum of the widths' ``wall_time``, which includes probe time). Target
(issue 3): ≤ 1.15×.

    python benchmarks/overhead.py [--repeat 2] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

import widthwise
from widthwise.spec import load_spec

LOSS_ONLY = ("train_loss", "test")


def study_time(spec, out: Path) -> float:
    widthwise.run(spec, out=out)
    return float(widthwise.open_study(out).wall_time.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    full = load_spec("quickstart")
    bare = full.model_copy(
        update={"probes": {k: v for k, v in full.probes.items() if k in LOSS_ONLY}}
    )
    times: dict[str, list[float]] = {"probes": [], "loss only": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            for name, spec in (("loss only", bare), ("probes", full)):
                times[name].append(study_time(spec, Path(tmp) / f"{name}-{r}".replace(" ", "_")))
    best = {k: min(v) for k, v in times.items()}
    print(
        f"# quickstart probe overhead — {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )
    print(f"probes in the bundled spec: {', '.join(full.probes)}")
    print(f"| study | wall time (best of {args.repeat}) | ratio |")
    print("|---|---|---|")
    for k in ("loss only", "probes"):
        print(f"| {k} | {best[k]:.1f} s | {best[k] / best['loss only']:.3f}× |")
    print(f"all runs: {times}")


if __name__ == "__main__":
    main()
