"""Cost estimates against measurement: the bundled examples, estimated, then run.

For each example: the time estimate ``widthwise run`` prints (:mod:`widthwise.cost`,
with this machine's calibration measured afresh at the start of this script), then
``widthwise run NAME --quiet`` in a subprocess, timed; per width the estimate against
the width's ``wall_time`` from its ``status.json``, and the whole command's wall time
against the total estimate. ``--steps NAME=N`` shortens an example (its probe
schedules resolve against N steps, in the estimate as in the run); ``--set
NAME:KEY.PATH=VALUE`` sets any key of one example (both as ``widthwise run --set``).
The calibration is measured afresh right before each example (the machine's load
changes).

    python benchmarks/estimate.py [--only quickstart,cnn_teacher_images] [--steps offline_label_noise=600]

Prints a Markdown table for benchmarks/RESULTS.md; ratio = measured / estimated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from widthwise.calibration import calibrate
from widthwise.cost import calibration_phrase, format_seconds, makespan, seconds, study_costs
from widthwise.spec import bundled_specs, load_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="comma-separated example names (default: all)")
    ap.add_argument("--steps", action="append", default=[], metavar="NAME=N")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME:KEY=VALUE")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(bundled_specs())
    steps = {k: int(v) for k, v in (s.split("=", 1) for s in args.steps)}
    extra: dict[str, list[str]] = {}
    for item in args.sets:
        name, kv = item.split(":", 1)
        extra.setdefault(name, []).append(kv)
    rows, totals = [], []
    cals: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            sets = ([f"steps={steps[name]}"] if name in steps else []) + extra.get(name, [])
            spec = load_spec(name, out=str(Path(tmp) / name), sets=sets)
            threads = spec.executor.options.get("threads_per_run")
            cal = cals[name] = calibrate(spec.device, threads, refresh=True)
            costs = study_costs(spec, op_seconds=cal.op_seconds)
            estimates = [seconds(c, cal) for c in costs]
            cmd = [sys.executable, "-m", "widthwise", "run", name, "--out", spec.out, "--quiet"]
            cmd += [a for kv in sets for a in ("--set", kv)]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            if proc.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr}")
            wall = time.perf_counter() - t0
            for c, est in zip(costs, estimates):
                status = json.loads(
                    (Path(spec.out) / f"width_{c.width:05d}" / "status.json").read_text()
                )
                measured = float(status["wall_time"])
                rows.append((name, spec.steps, c.width, est, measured))
                print(
                    f"  width {c.width}: estimated {est:.1f} s, measured {measured:.1f} s",
                    file=sys.stderr,
                )
            totals.append((name, spec.steps, makespan(estimates), wall, cal))
            print(
                f"{name}: estimated {makespan(estimates):.1f} s, measured {wall:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    print(
        f"`python benchmarks/estimate.py {' '.join(sys.argv[1:])}` — {time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )
    for name, cal in cals.items():
        print(f"- {name}: {calibration_phrase(cal)}")
    print()
    print("| example | steps | estimated | measured (whole command) | ratio |")
    print("|---|---|---|---|---|")
    for name, n, est, wall, _ in totals:
        print(
            f"| {name} | {n} | {format_seconds(est)} ({est:.1f} s) | {wall:.1f} s | {wall / est:.2f} |"
        )
    print()
    print("| example | width | estimated | measured (wall_time) | ratio |")
    print("|---|---|---|---|---|")
    for name, _n, width, est, measured in rows:
        print(f"| {name} | {width} | {est:.1f} s | {measured:.1f} s | {measured / est:.2f} |")


if __name__ == "__main__":
    main()
