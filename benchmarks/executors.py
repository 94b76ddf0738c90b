"""Executors: one 4-width study under local, processes (2 workers) and Ray, same run.

    python benchmarks/executors.py [--repeat 1] [--steps 300] [--skip-ray]

For each executor it prints the wall time of ``widthwise.run`` (executor start-up
and shutdown included) and its ratio to ``local`` timed in the same run; the sum of
the widths' own training wall times (``wall_time`` in the store); and the
executor's fixed costs, measured with jobs on an already finished width (which
rebuild the spec, stream and probe set in the worker and return at once):

- start-up: the first such job's round trip minus a steady one (spawning worker
  processes or starting Ray, importing torch and widthwise there);
- per-run overhead: a steady job's round trip minus the same job body called in
  this process (pickling the spec, dispatch, result transfer);
- shutdown: ``Executor.shutdown()``.

The last column says whether the study's numbers equal ``local`` with one torch
thread bit for bit (every remote worker runs one thread here).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import xarray as xr

import widthwise
from widthwise.job import WidthJob, run_job
from widthwise.spec import validate_spec
from widthwise.study import make_executor, with_executor

WIDTHS = [128, 256, 512, 1024]


def study_spec(steps: int) -> Any:
    """The quickstart's muP MLP at four widths, loss probes only."""
    return validate_spec(
        {
            "name": "executors",
            "model": {"family": "mlp", "options": {"depth": 3, "activation": "relu"}},
            "widths": WIDTHS,
            "seeds": 4,
            "parameterization": {"name": "mup", "sigma": 1.4142, "readout_zero_init": True},
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
            "steps": steps,
            "batch_size": 128,
            "data": {"stream": "gegenbauer", "options": {"dim": 16, "degree": 2}},
            "probes": {"train_loss": {"every": 1}, "test": {"every": 50}},
            "checkpoint_every": max(steps // 3, 1),
            "device": "cpu",
        },
        "benchmark",
    )


CONTENDERS: dict[str, dict[str, Any]] = {
    "local": {"name": "local"},
    "local, 1 thread": {"name": "local", "options": {"threads_per_run": 1}},
    "processes": {"name": "processes", "options": {"workers": 2, "threads_per_run": 1}},
    "ray": {"name": "ray", "options": {"num_cpus": 2, "cpus_per_run": 1}},
}


def comparable(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.drop_vars("wall_time")
    ds.attrs = {k: v for k, v in ds.attrs.items() if k != "spec"}
    return ds


def time_study(spec: Any, executor: dict[str, Any], out: Path) -> tuple[float, float, xr.Dataset]:
    """Wall time of the whole run, the sum of the widths' training times, the dataset."""
    t0 = time.perf_counter()
    widthwise.run(spec, out=out, executor=executor)
    wall = time.perf_counter() - t0
    ds = widthwise.open_study(out)
    return wall, float(ds.wall_time.sum()), ds


def fixed_costs(spec: Any, executor: dict[str, Any], done: Path, calls: int) -> dict[str, float]:
    """Start-up, per-run overhead and shutdown of an executor, from jobs on a finished width."""
    spec = with_executor(spec.model_copy(update={"out": str(done)}), executor)
    spec_json = spec.model_dump(mode="json")
    args = (WidthJob(spec_json, WIDTHS[0], str(done.absolute()), "cpu", None),)
    body = []
    for _ in range(calls):
        t0 = time.perf_counter()
        assert run_job(*args)["state"] == "done"
        body.append(time.perf_counter() - t0)
    pool = make_executor(spec, runs=len(WIDTHS))
    t0 = time.perf_counter()
    assert pool.submit(run_job, *args).result()["state"] == "done"
    first = time.perf_counter() - t0
    steady = []
    for _ in range(calls):
        t0 = time.perf_counter()
        assert pool.submit(run_job, *args).result()["state"] == "done"
        steady.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    pool.shutdown()
    shutdown = time.perf_counter() - t0
    trip = statistics.median(steady)
    return {
        "startup": max(first - trip, 0.0),
        "per_run": max(trip - statistics.median(body), 0.0),
        "shutdown": shutdown,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=1, help="interleaved repeats (best counts)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--calls", type=int, default=5, help="jobs timed for the per-run overhead")
    ap.add_argument("--skip-ray", action="store_true")
    args = ap.parse_args()
    threads = torch.get_num_threads()
    names = [n for n in CONTENDERS if not (args.skip_ray and n == "ray")]
    spec = study_spec(args.steps)
    walls: dict[str, list[float]] = {n: [] for n in names}
    trains: dict[str, list[float]] = {n: [] for n in names}
    data: dict[str, xr.Dataset] = {}
    costs: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            for name in names:
                out = Path(tmp) / f"{name.replace(', ', '-').replace(' ', '_')}-{r}"
                wall, train, ds = time_study(spec, CONTENDERS[name], out)
                walls[name].append(wall)
                trains[name].append(train)
                data[name] = ds
                print(f"# {name} run {r}: {wall:.1f} s wall, {train:.1f} s training", flush=True)
        done = Path(tmp) / "local-0"
        for name in names:
            costs[name] = fixed_costs(spec, CONTENDERS[name], done, args.calls)
    ref = comparable(data["local, 1 thread"])
    base = min(walls["local"])
    base1 = min(walls["local, 1 thread"])
    print(
        f"\n# executors — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({threads} threads in this process)"
    )
    print(
        f"study: muP MLP depth 3, widths {WIDTHS}, 4 seeds, {args.steps} steps, batch 128, "
        f"train_loss every step, test every 50; best of {args.repeat}"
    )
    print(
        "| executor | runs at once × torch threads | wall (s) | wall / local | wall / local 1 thread "
        "| Σ width training (s) "
        "| start-up (s) | per-run overhead (ms) | shutdown (s) | equal to local, 1 thread |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    layout = {
        "local": f"1 × {threads}",
        "local, 1 thread": "1 × 1",
        "processes": "2 × 1",
        "ray": "2 × 1",
    }
    for name in names:
        wall = min(walls[name])
        c = costs[name]
        same = comparable(data[name]).identical(ref)
        print(
            f"| {name} | {layout[name]} | {wall:.1f} | {wall / base:.2f}× | {wall / base1:.2f}× | "
            f"{min(trains[name]):.1f} | {c['startup']:.2f} | {1000 * c['per_run']:.1f} | "
            f"{c['shutdown']:.2f} | {'yes' if same else 'no'} |"
        )


if __name__ == "__main__":
    main()
