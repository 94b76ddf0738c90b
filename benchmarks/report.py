"""Cost of ``widthwise report`` against the study it reports on (target: ≤ 20 %).

    python benchmarks/report.py                 # trains the quickstart study, then reports
    python benchmarks/report.py --repeats 3     # best of 3 report builds

In one process: train the bundled ``quickstart`` study (muP MLP, widths 64-1024,
4 seeds, 400 steps) into a fresh temporary directory and time it (wall clock, the
whole ``widthwise.run``), then build its report with ``build_report`` exactly as
``widthwise report DIR`` does (default options: every section the study has data
for, no coordinate check (off by default); PNG + SVG of every figure, CSV, HTML)
and time that. Both are measured in the same run on the same machine, so load from
other processes affects both; the ratio report / study is printed with the machine
(CPU model, core count) and the date, as a Markdown row for RESULTS_report.md.
Also printed: the CPU time of each (process time), which load affects less.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

TARGET = 0.20


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--spec", default="quickstart", help="bundled name or YAML (default quickstart)")
    p.add_argument("--repeats", type=int, default=1, help="report builds; the best counts")
    p.add_argument("--device", default=None, help="device for the study (default: the spec's)")
    args = p.parse_args()

    import widthwise
    from widthwise.report import build_report

    with tempfile.TemporaryDirectory(prefix="ww-bench-report-") as tmp:
        study_dir = Path(tmp) / "study"
        spec = widthwise.load_spec(args.spec, out=str(study_dir), device=args.device)
        w0, c0 = time.perf_counter(), time.process_time()
        widthwise.run(spec, progress=False)
        study_wall, study_cpu = time.perf_counter() - w0, time.process_time() - c0

        walls, cpus = [], []
        for i in range(args.repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            page = build_report(study_dir, Path(tmp) / f"report{i}")
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
        report_wall, report_cpu = min(walls), min(cpus)
        out = page.parent
        n_fig = len(list((out / "figures").glob("*.png")))
        n_csv = len(list((out / "csv").glob("*.csv")))
        sections = page.read_text().count("<section ")
        size_kb = page.stat().st_size / 1024

    ratio = report_wall / study_wall
    machine = f"{cpu_model()}, {os.cpu_count()} CPUs (nproc), {platform.system()}"
    date = datetime.date.today().isoformat()
    print(f"machine: {machine}; date {date}; widthwise {widthwise.__version__}")
    print(f"study  {args.spec}: {study_wall:8.1f} s wall, {study_cpu:8.1f} s CPU")
    print(
        f"report: {report_wall:8.1f} s wall, {report_cpu:8.1f} s CPU "
        f"({sections} sections, {n_fig} figures as PNG+SVG, {n_csv} CSV, "
        f"report.html {size_kb:.0f} KB)"
    )
    verdict = "OK" if ratio <= TARGET else "ABOVE TARGET"
    print(f"ratio report/study: {ratio:.3f} (target ≤ {TARGET:.2f}: {verdict})")
    print(
        "\n| date | machine | study wall (s) | report wall (s) | ratio | study CPU (s) "
        "| report CPU (s) |\n|---|---|---|---|---|---|---|\n"
        f"| {date} | {machine} | {study_wall:.1f} | {report_wall:.2f} | {ratio:.3f} "
        f"| {study_cpu:.1f} | {report_cpu:.2f} |"
    )
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
