"""Per-width step time and peak memory of the paper-scale GPU profiles; their GPU-hours.

    python benchmarks/gpu.py                          # on a GPU: every profile, every width
    python benchmarks/gpu.py --data cifar5m=DIR --data wikitext=DIR   # on the real data
    python benchmarks/gpu.py --device cpu --smoke     # plumbing only, tiny, on a CPU (~10 s)

For every profile of ``examples/paper/gpu_profiles.py`` (``--profiles`` for some) and
every width of its spec, at the spec's seeds, batch, precision and sequence length:
build the width's :class:`~widthwise.trainer.EnsembleTrainer`, take ``--warmup``
training steps (not timed), then time ``--steps`` steps (``torch.cuda.synchronize``
before and after; data drawing and augmentation included, as in a run), then time one
call of every scheduled probe (a second call when the first took under a second:
the first may carry one-off set-up). The extrapolated wall time of the full profile
is ``steps · step time + Σ_probes calls · call time`` per width (checkpoints and the
store's writes are not included).

Baseline measured in the same run: each profile's ESTIMATE (:func:`gpu_profiles.estimate`,
widthwise's FLOP/call/byte count at an assumed 25 % of the H200 peak) is computed for
the same spec, and the table gives measured / estimated per width; the achieved rate
is the cost model's FLOPs of the run over the extrapolated time, as a fraction of the
H200 datasheet peak of the profile's precision.

Data: without ``--data STREAM=DIR`` the profiles that read local files (``cifar5m``,
``wikitext``) run on a tiny fake data set in the real layout
(:func:`gpu_profiles.write_fake_data`: random images, random text) — the same input
shapes, vocabulary, augmentation and masking, so the step times hold for the real
data; ``mlp_lazy_entk`` needs none.

``--smoke`` (for ``--device cpu``): one narrow width of a shallower network per
profile (ResNet-10 at width 8, a 1-block transformer at width 32 on 16 tokens), 2
seeds, batch 8, 16 probe points, one warm-up and one timed step: it checks the
plumbing (tests/test_gpu_profiles.py runs it); its numbers extrapolate nothing. On a GPU a ``--budget`` (default 200 s) stops measuring further
widths once spent, so the whole script stays under 4 minutes on an H200.

Writes ``gpu_benchmark.json`` to ``$OUT`` (or ``--json PATH``). widthwise itself is
taken from ``src/`` when it is not installed. On a lent H200 (its image has torch,
numpy, scipy, xarray, PyYAML, rich and matplotlib but not pydantic), carry the wheels
in ``.whl`` (pydantic, pydantic-core, annotated-types, typing-inspection,
typing-extensions, for CPython 3.12 x86-64; ``.whl/`` is git-ignored) and run::

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 benchmarks/gpu.py
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "paper"))
if not (ROOT / "src" / "widthwise").is_dir():  # pragma: no cover - layout guard
    raise SystemExit(f"benchmarks/gpu.py: run it from a widthwise checkout ({ROOT})")

try:
    import widthwise  # noqa: F401
except ImportError:  # a checkout without `pip install -e .` (e.g. a lent GPU machine)
    sys.path.insert(0, str(ROOT / "src"))

import gpu_profiles  # noqa: E402  (examples/paper/gpu_profiles.py)
import torch  # noqa: E402

from widthwise.job import probe_context  # noqa: E402
from widthwise.probes import PROBES  # noqa: E402
from widthwise.spec import StudySpec  # noqa: E402
from widthwise.trainer import EnsembleTrainer  # noqa: E402

SMOKE_SETS: dict[str, tuple[str, ...]] = {
    "resnet18_cifar5m": (
        "widths=[8]",
        "base_width=8",
        "model.options.blocks=[1, 1, 1, 1]",
        "probes.kernels.points=8",
    ),
    "transformer_wikitext": (
        "widths=[32]",
        "base_width=32",
        "model.options.depth=1",
        "batch_size=4",
        "data.options.seq_len=16",
    ),
    "mlp_lazy_entk": ("widths=[64]", "probes.entk.points=8"),
}
"""``--set`` overrides of ``--smoke`` per profile: one narrow, shallow width, tiny
batches (with seeds 2, batch 8 and 16 probe points for all)."""
SMOKE_COMMON = ("seeds=2", "batch_size=8", "data.probe_points=16")


@dataclass
class WidthResult:
    """One width of one profile, measured."""

    width: int
    seeds: int
    batch: int
    step_s: float = math.nan
    """Seconds per training step (mean of the timed steps)."""
    build_s: float = math.nan
    """Seconds to build the trainer (init of every seed's parameters)."""
    probe_s: dict[str, float] = field(default_factory=dict)
    """Seconds of one call of each probe."""
    probe_calls: dict[str, int] = field(default_factory=dict)
    """Calls of each probe in the full run (its schedule)."""
    peak_bytes: int | None = None
    """torch.cuda.max_memory_allocated over build, steps and probes (None on a CPU)."""
    full_s: float = math.nan
    """Extrapolated seconds of the width's full run."""
    estimated_s: float = math.nan
    """The cost model's ESTIMATE of the same run (gpu_profiles.estimate)."""
    flops: float = math.nan
    """The cost model's FLOPs of the full run."""
    error: str | None = None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    """Release the previous width's memory (GPU) and reset the peak counter."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def probe_calls(spec: StudySpec) -> dict[str, int]:
    """Calls of every probe that runs before an update (train_loss is part of the step)."""
    out = {}
    for name, options in spec.probe_options().items():
        pdef = PROBES.get(name)
        if not pdef.after_update:
            out[name] = len(options.resolve(spec.steps, include_end=pdef.include_end))
    return out


def measure_width(
    spec: StudySpec, width: int, stream: Any, device: torch.device, warmup: int, steps: int
) -> WidthResult:
    """Step time, probe call times and peak memory of ``width`` of ``spec``."""
    res = WidthResult(width=width, seeds=len(spec.seed_list), batch=spec.batch_size)
    free(device)
    trainer = None
    try:
        t0 = time.perf_counter()
        trainer = EnsembleTrainer(spec, width, stream, device)
        sync(device)
        res.build_s = time.perf_counter() - t0
        for _ in range(warmup):
            trainer.train_step()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        sync(device)
        res.step_s = (time.perf_counter() - t0) / steps
        probe_x, probe_y = trainer.to_tensors(*stream.probe_set(spec.data.probe_points))
        options = spec.probe_options()
        res.probe_calls = probe_calls(spec)
        for name in res.probe_calls:
            fn = PROBES.get(name).fn
            elapsed = math.inf
            for attempt in range(2):
                ctx = probe_context(trainer, trainer.step, probe_x, probe_y)
                sync(device)
                t0 = time.perf_counter()
                fn(ctx, options[name])
                sync(device)
                elapsed = time.perf_counter() - t0
                if attempt == 0 and elapsed >= 1.0:
                    break
            res.probe_s[name] = elapsed
        res.full_s = spec.steps * res.step_s + sum(
            res.probe_calls[k] * res.probe_s[k] for k in res.probe_calls
        )
        if device.type == "cuda":
            res.peak_bytes = int(torch.cuda.max_memory_allocated(device))
    except torch.cuda.OutOfMemoryError:
        res.error = "out of memory"
    except RuntimeError as err:  # e.g. a kernel without a bf16 implementation
        res.error = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
    finally:
        del trainer
        free(device)
    return res


@dataclass
class ProfileResult:
    name: str
    spec_name: str
    steps: int
    precision: tuple[str, str]
    header_gpu_hours: float
    widths: list[WidthResult]
    reduced_s: float = math.nan
    """Extrapolated seconds of the reduced profile (its widths, steps and schedules)."""
    reduced_complete: bool = False

    @property
    def full_s(self) -> float:
        return sum(w.full_s for w in self.widths)

    @property
    def estimated_s(self) -> float:
        return sum(w.estimated_s for w in self.widths)


def reduced_seconds(
    name: str, sets: Sequence[str], by_width: dict[int, WidthResult]
) -> tuple[float, bool]:
    """Extrapolated seconds of the reduced profile from the widths measured (the
    reduction keeps seeds and batch, so their step and probe times apply)."""
    spec = gpu_profiles.load_profile(name, reduced=True, sets=sets)
    calls = probe_calls(spec)
    total, complete = 0.0, True
    for w in spec.widths:
        r = by_width.get(w)
        if r is None or not math.isfinite(r.step_s):
            complete = False
            continue
        total += spec.steps * r.step_s + sum(calls[k] * r.probe_s.get(k, 0.0) for k in calls)
    return (total if total > 0 else math.nan), complete


def parse_data(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise SystemExit(
                f"--data: expected STREAM=DIR (cifar5m=..., wikitext=...), got {item!r}"
            )
        out[key.strip()] = value.strip()
    return out


def fmt(x: float, spec: str) -> str:
    return format(x, spec) if math.isfinite(x) else "-"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--device", default="auto", help="auto (cuda when present), cuda, cuda:N or cpu"
    )
    ap.add_argument(
        "--profiles", nargs="+", choices=list(gpu_profiles.PROFILES), help="default: all"
    )
    ap.add_argument("--data", action="append", default=[], metavar="STREAM=DIR", help="real data")
    ap.add_argument("--smoke", action="store_true", help="tiny plumbing run (CPU tests)")
    ap.add_argument("--warmup", type=int, help="untimed steps per width (default 2; smoke 1)")
    ap.add_argument("--steps", type=int, help="timed steps per width (default 3; smoke 1)")
    ap.add_argument("--budget", type=float, default=200.0, help="seconds; later widths skipped")
    ap.add_argument("--no-estimate", action="store_true", help="skip the cost-model baseline")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (CPU)")
    ap.add_argument("--json", help="write the results here (default: $OUT/gpu_benchmark.json)")
    args = ap.parse_args(argv)
    began = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py: --device cuda, but torch sees no CUDA device")
    warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 2)
    steps = args.steps if args.steps is not None else (1 if args.smoke else 3)
    data_dirs = parse_data(args.data)
    dev_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu"
    )
    print(
        f"widthwise GPU-profile benchmark, {datetime.date.today()}: torch {torch.__version__}, "
        f"{device} ({dev_name}), {warmup} warm-up + {steps} timed steps per width"
        + (", SMOKE (plumbing only: these numbers extrapolate nothing)" if args.smoke else ""),
        flush=True,
    )
    results: list[ProfileResult] = []
    with tempfile.TemporaryDirectory() as tmp:
        names = args.profiles or list(gpu_profiles.PROFILES)
        # cheapest first: the budget then cuts the most expensive widths, not whole profiles
        names = sorted(names, key=lambda n: gpu_profiles.PROFILES[n].gpu_hours)
        for pname in names:
            prof = gpu_profiles.PROFILES[pname]
            dirs = dict(data_dirs)
            if prof.data is not None and gpu_profiles.missing_data(pname, dirs) is not None:
                dirs[prof.data] = str(gpu_profiles.write_fake_data(prof.data, tmp))
                print(f"{pname}: no {prof.data} data given: a fake data set in the real layout")
            sets: list[str] = []
            if args.smoke:
                sets = [*SMOKE_COMMON, *SMOKE_SETS[pname]]
            spec = gpu_profiles.load_profile(pname, data_dirs=dirs, device=str(device), sets=sets)
            from widthwise.job import build_stream

            stream = build_stream(spec)
            estimate = None
            if not args.no_estimate:
                estimate = gpu_profiles.estimate(
                    pname, sets=gpu_profiles.profile_sets(pname, data_dirs=dirs, sets=sets)
                )
            widths = []
            for i, w in enumerate(spec.widths):
                if device.type == "cuda" and time.perf_counter() - began > args.budget:
                    widths.append(
                        WidthResult(
                            w, len(spec.seed_list), spec.batch_size, error="skipped: budget"
                        )
                    )
                    continue
                r = measure_width(spec, w, stream, device, warmup, steps)
                if estimate is not None:
                    r.estimated_s, r.flops = estimate.seconds[i], estimate.flops[i]
                widths.append(r)
                peak = f"{r.peak_bytes / 2**30:.1f} GiB" if r.peak_bytes is not None else "-"
                print(
                    f"  {pname} width {w}: step {fmt(r.step_s * 1e3, '.1f')} ms, probes "
                    f"{', '.join(f'{k} {v:.3f} s' for k, v in r.probe_s.items()) or '-'}, peak {peak}"
                    + (f", {r.error}" if r.error else ""),
                    flush=True,
                )
            pr = ProfileResult(pname, spec.name, spec.steps, prof.precision, prof.gpu_hours, widths)
            pr.reduced_s, pr.reduced_complete = reduced_seconds(
                pname,
                [s for s in sets if not s.startswith(("widths=", "base_width="))],
                {r.width: r for r in widths},
            )
            results.append(pr)
    print_table(results, args.smoke, device)
    wall = time.perf_counter() - began
    print(f"\ntotal {wall:.0f} s")
    out = args.json or (
        str(Path(os.environ["OUT"]) / "gpu_benchmark.json") if os.environ.get("OUT") else None
    )
    if out:
        doc = {
            "date": str(datetime.datetime.now().isoformat(timespec="seconds")),
            "torch": torch.__version__,
            "device": f"{device} ({dev_name})",
            "smoke": args.smoke,
            "warmup": warmup,
            "timed_steps": steps,
            "wall_s": wall,
            "assumptions": {
                "fraction_of_peak": gpu_profiles.ASSUMED_FRACTION,
                "h200_peak_flops": gpu_profiles.H200_PEAK,
                "call_s": gpu_profiles.ASSUMED_CALL_S,
            },
            "profiles": [
                {
                    **{k: v for k, v in asdict(p).items() if k != "widths"},
                    "full_gpu_hours": p.full_s / 3600,
                    "estimated_gpu_hours": p.estimated_s / 3600,
                    "widths": [asdict(w) for w in p.widths],
                }
                for p in results
            ],
        }
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(doc, indent=1, default=str))
        print(f"wrote {out}")
    return (
        0
        if all(w.error is None or w.error.startswith("skipped") for p in results for w in p.widths)
        else 1
    )


def print_table(results: list[ProfileResult], smoke: bool, device: torch.device) -> None:
    """Markdown table per width, then one line per profile."""
    unit = "GPU-hours" if device.type == "cuda" else f"hours on {device.type}"
    print()
    print(
        "| profile | width | seeds × batch | step ms | probes s (all calls) | peak GiB | "
        "full run h (measured) | estimate h | measured / estimate | of peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in results:
        peak = max(gpu_profiles.H200_PEAK[k] for k in p.precision)
        for w in p.widths:
            probes = sum(w.probe_calls[k] * w.probe_s[k] for k in w.probe_s)
            mem = f"{w.peak_bytes / 2**30:.1f}" if w.peak_bytes is not None else "-"
            rate = w.flops / w.full_s / peak if w.full_s > 0 else math.nan
            note = f" ({w.error})" if w.error else ""
            print(
                f"| {p.name} | {w.width}{note} | {w.seeds} × {w.batch} | {fmt(w.step_s * 1e3, '.1f')} | "
                f"{fmt(probes if w.probe_s else math.nan, '.1f')} | {mem} | {fmt(w.full_s / 3600, '.3g')} | "
                f"{fmt(w.estimated_s / 3600, '.3g')} | {fmt(w.full_s / w.estimated_s, '.2f')} | "
                f"{fmt(rate * 100, '.1f')} % |"
            )
    print()
    label = "SMOKE, not an extrapolation: " if smoke else ""
    for p in results:
        measured = [w for w in p.widths if math.isfinite(w.full_s)]
        complete = len(measured) == len(p.widths)
        print(
            f"{label}{p.name}: full profile {p.full_s / 3600 if complete else math.nan:.3g} "
            f"{unit} extrapolated from the measured step times"
            + (
                ""
                if complete
                else f" (only {len(measured)}/{len(p.widths)} widths measured: "
                f"{sum(w.full_s for w in measured) / 3600:.3g} h for those)"
            )
            + f"; header estimate {p.header_gpu_hours:g} h; reduced profile "
            f"{fmt(p.reduced_s / 60, '.2g')} min" + ("" if p.reduced_complete else " (partial)")
        )


if __name__ == "__main__":
    raise SystemExit(main())
