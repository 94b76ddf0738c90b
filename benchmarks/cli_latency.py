"""Start-up cost of the quick commands: ``--help``, ``--version``, ``list``, ``show``.

Each command runs in a fresh subprocess (``python -m widthwise ...``), interleaved
with ``python -c pass`` (the interpreter's own start-up) measured in the same run;
CPU time (user + system, from ``os.wait4``) and wall time, best of ``--repeat``.
``show`` reads a small study made first (2 widths, 20 steps) whose horizon sentence
is already cached, as after ``widthwise run``. Also lists which of torch, xarray,
matplotlib and scipy each command imported (none should).

    python benchmarks/cli_latency.py [--repeat 5]

Prints a Markdown table for benchmarks/RESULTS.md: CPU seconds, and the ratio to
``python -c pass``. Target (docs/cli.md): under 0.5 s of CPU time each. To time
another version's commands, put its ``src`` first: ``PYTHONPATH=old/src python
benchmarks/cli_latency.py`` (a command it does not have shows ``nan``).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "xarray", "matplotlib", "scipy")


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one run of ``cmd``; NaN if it fails (e.g. a flag an
    older version does not have, when timing it with ``PYTHONPATH=old/src``)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        return float("nan"), float("nan")
    return usage.ru_utime + usage.ru_stime, wall


def heavy_imports(args: list[str], env: dict[str, str]) -> list[str]:
    probe = (
        "import sys, contextlib, io\n"
        "from widthwise.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main({args!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return ["?"]
    return [m for m in out.stdout.strip().split(",") if m]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "WIDTHWISE_CACHE_DIR": str(Path(tmp) / "cache"),
            "OMP_NUM_THREADS": "1",
        }
        study = Path(tmp) / "study"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "widthwise",
                "run",
                "quickstart",
                "--steps",
                "20",
                "--widths",
                "32,64",
                "--seeds",
                "2",
                "--out",
                str(study),
                "--quiet",
            ],
            check=True,
            capture_output=True,
            env=env,
        )
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "widthwise --help": [sys.executable, "-m", "widthwise", "--help"],
            "widthwise --version": [sys.executable, "-m", "widthwise", "--version"],
            "widthwise list": [sys.executable, "-m", "widthwise", "list"],
            "widthwise list --json": [sys.executable, "-m", "widthwise", "list", "--json"],
            "widthwise show DIR": [sys.executable, "-m", "widthwise", "show", str(study)],
            "widthwise show DIR --json": [
                sys.executable,
                "-m",
                "widthwise",
                "show",
                str(study),
                "--json",
            ],
        }
        best = {k: (float("inf"), float("inf")) for k in commands}
        for _ in range(args.repeat):
            for name, cmd in commands.items():
                cpu, wall = timed(cmd, env)
                best[name] = (min(best[name][0], cpu), min(best[name][1], wall))
                if cpu != cpu:  # failed: NaN stays
                    best[name] = (cpu, wall)
        imported = {
            name: heavy_imports(cmd[3:], env) for name, cmd in commands.items() if cmd[1] == "-m"
        }
    base = best["python -c pass"][0]
    print(
        f"`python benchmarks/cli_latency.py --repeat {args.repeat}` — {time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print()
    print(
        "| command | CPU time (best) | wall time (best) | CPU / `python -c pass` | heavy imports |"
    )
    print("|---|---|---|---|---|")
    for name, (cpu, wall) in best.items():
        heavy = ", ".join(imported.get(name, [])) or ("—" if name in imported else "")
        heavy = "n/a" if cpu != cpu else heavy  # the command failed (an older version)
        print(f"| `{name}` | {cpu:.3f} s | {wall:.3f} s | {cpu / base:.1f}× | {heavy} |")


if __name__ == "__main__":
    main()
