"""Paper-scale GPU profiles: the studies of ``examples/paper/gpu/`` and how to run them.

Three setups of the paper fit one GPU at the paper's scale (Appendix A):

- ``resnet18_cifar5m``: Fig. 2-5 vision columns, App. A.2.1 (ResNet-18-LN on
  CIFAR-5m); needs the ``cifar5m`` data; spec ``gpu/resnet18_cifar5m.yaml``.
- ``transformer_wikitext``: Fig. 1d, 2-3 and 5 language columns, App. A.3.1 (muP
  transformer, masked LM on Wikitext-103); needs the ``wikitext`` data; spec
  ``gpu/transformer_wikitext.yaml``.
- ``mlp_lazy_entk``: Fig. 10a-c, Section 5, App. A.1 (lazy mean-field MLP, eNTK);
  no data (procedural); spec ``gpu/mlp_lazy_entk.yaml``.

:data:`PROFILES` maps each name to its spec, the data it needs and its **estimated**
H200 GPU-hours; :func:`run_profile` runs one (``reduced=True``: a few minutes on one
H200); :func:`missing_data` says in one line what to install when a data directory is
absent. The estimates come from :func:`estimate`: widthwise's own count of FLOPs,
kernel calls and bytes written (:func:`widthwise.cost.study_costs`) at an *assumed*
sustained fraction (:data:`ASSUMED_FRACTION`) of the H200's datasheet peak
(:data:`H200_PEAK`) and bandwidth (:data:`H200_BYTES_PER_S`) and an assumed cost per
kernel call (:data:`ASSUMED_CALL_S`). None of them has been measured:
``benchmarks/gpu.py`` measures the step times on a lent GPU and extrapolates.

    python examples/paper/gpu_profiles.py             # the estimates, per width
    python examples/paper/gpu_profiles.py --reduced   # the same for the reduced profiles
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from widthwise.calibration import Calibration
    from widthwise.spec import StudySpec
    from widthwise.streams.base import Stream

HERE = Path(__file__).resolve().parent
GPU_DIR = HERE / "gpu"

# -- the assumptions of the estimates -------------------------------------------------
H200_PEAK = {
    "fp32": 67.0e12,  # plain float32 (CUDA cores): torch's default for float32 matmuls
    "tf32": 494.7e12,  # dense TF32 tensor cores: cuDNN's default for float32 convolutions
    "bf16": 989.4e12,  # dense bf16 tensor cores: matmuls and convolutions under autocast
}
"""FLOP/s of one H200 SXM by NVIDIA's datasheet (dense; the H100 SXM's rates)."""
ASSUMED_FRACTION = 0.25
"""Sustained share of :data:`H200_PEAK` assumed for the estimates (not measured)."""
H200_BYTES_PER_S = 4.8e12
"""HBM3e bandwidth of one H200 by the datasheet (bytes/s)."""
ASSUMED_CALL_S = 10e-6
"""Seconds assumed per kernel call of eager PyTorch on a GPU (launch and dispatch)."""


@dataclass(frozen=True)
class Profile:
    """One paper-scale GPU study."""

    name: str
    spec: Path
    """The YAML spec (examples/paper/gpu/)."""
    paper: str
    """Figures and appendix sections it redoes."""
    data: str | None
    """The stream whose local files it needs (a key of ``data_dirs``), or None."""
    data_help: str
    """Where to get that data and what the directory must hold."""
    precision: tuple[str, str]
    """Keys of :data:`H200_PEAK` for (matmuls, convolutions) in the spec's precision."""
    gpu_hours: float
    """ESTIMATED H200 GPU-hours of the full profile (:func:`estimate`, rounded)."""
    reduced_sets: tuple[str, ...] = field(default_factory=tuple)
    """``--set`` overrides of the reduced profile (≤ 5 min on one H200, estimated)."""
    reduced_minutes: float = 0.0
    """ESTIMATED H200 minutes of the reduced profile."""


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="resnet18_cifar5m",
            spec=GPU_DIR / "resnet18_cifar5m.yaml",
            paper="Fig. 2-5 (vision), App. A.2.1",
            data="cifar5m",
            data_help=(
                "a directory with the CIFAR-5m parts cifar5m_part0.npz ... cifar5m_part5.npz "
                "(Nakkiran et al. 2021, github.com/preetum/cifar5m; ~18 GB)"
            ),
            precision=("fp32", "tf32"),
            gpu_hours=15.4,
            reduced_sets=(
                "widths=[16, 32, 64, 128]",
                "steps=600",
                "probes.test.log_spaced=10",
                "checkpoint_every=300",
            ),
            reduced_minutes=3.9,
        ),
        Profile(
            name="transformer_wikitext",
            spec=GPU_DIR / "transformer_wikitext.yaml",
            paper="Fig. 1d, 2-3 and 5 (language), App. A.3.1",
            data="wikitext",
            data_help=(
                "a directory with Wikitext-103 raw (wiki.train.raw, wiki.valid.raw, "
                "wiki.test.raw) or the parquet parts of Salesforce/wikitext "
                "wikitext-103-raw-v1 (parquet needs pip install 'widthwise[parquet]')"
            ),
            precision=("bf16", "bf16"),
            gpu_hours=28.9,
            reduced_sets=(
                "widths=[128, 256, 512]",
                "steps=1500",
                "schedule.warmup_steps=100",
                "probes.test.log_spaced=8",
                "checkpoint_every=750",
            ),
            reduced_minutes=1.8,
        ),
        Profile(
            name="mlp_lazy_entk",
            spec=GPU_DIR / "mlp_lazy_entk.yaml",
            paper="Fig. 10a-c, Section 5, App. A.1",
            data=None,
            data_help="none: the gegenbauer stream is procedural",
            precision=("fp32", "fp32"),
            gpu_hours=0.039,
            reduced_sets=(
                "widths=[64, 256, 1024]",
                "steps=300",
                "probes.test.every=30",
                "checkpoint_every=150",
            ),
            reduced_minutes=0.36,
        ),
    )
}
"""Profile name -> :class:`Profile`."""


def get_profile(name: str) -> Profile:
    """The profile ``name``; ``KeyError`` naming the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown GPU profile {name!r} (known: {', '.join(PROFILES)})") from None


# -- data ------------------------------------------------------------------------------
def _data_present(stream: str, path: Path) -> bool:
    """Whether ``path`` holds the files the ``stream`` looks for (cheap: names only)."""
    if not path.is_dir():
        return False
    if stream == "cifar5m":
        return any(path.glob("cifar5m_part*.npz"))
    if stream == "wikitext":
        return any(path.rglob("wiki.train.raw")) or any(path.rglob("train-*.parquet"))
    return True


def missing_data(name: str, data_dirs: Mapping[str, str]) -> str | None:
    """One line naming what to install and where to point when profile ``name``'s data
    directory is not given or lacks the data set's files; None when it needs no data
    or the directory looks right."""
    p = get_profile(name)
    if p.data is None:
        return None
    given = data_dirs.get(p.data)
    flag = f"--data {p.data}=DIR"
    if not given:
        return f"{name}: needs {p.data} data: pass {flag}, DIR = {p.data_help}"
    path = Path(os.path.expanduser(given))
    if not _data_present(p.data, path):
        return f"{name}: {path} does not hold the {p.data} files: point {flag} at {p.data_help}"
    return None


def write_fake_data(stream: str, root: str | os.PathLike[str], *, images: int = 1024) -> Path:
    """A tiny data set in ``stream``'s real file layout under ``root`` (plumbing only:
    random pixels and labels, pseudo-random text), for validating and timing a profile
    where the real data set is absent. Returns the directory to give as
    ``data.options.path``.

    ``cifar5m``: ``cifar5m_part0.npz`` (``images`` images) and ``cifar5m_part1.npz``
    (``images // 4``), each ``X (N, 32, 32, 3) uint8``, ``Y (N,)`` labels 0-9.
    ``wikitext``: ``wiki.{train,valid,test}.raw`` of random lower-case words
    (~64 KB train).
    """
    import numpy as np

    out = Path(root) / f"fake_{stream}"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    if stream == "cifar5m":
        for k, n in ((0, images), (1, max(images // 4, 16))):
            target = out / f"cifar5m_part{k}.npz"
            if not target.exists():
                x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
                np.savez(target, X=x, Y=rng.integers(0, 10, size=n))
        return out
    if stream == "wikitext":
        letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
        for split, size in (("train", 65536), ("valid", 16384), ("test", 16384)):
            target = out / f"wiki.{split}.raw"
            if not target.exists():
                text = letters[rng.integers(0, len(letters), size=size)]
                text[rng.random(size) < 0.18] = ord(" ")
                target.write_bytes(text.tobytes())
        return out
    raise ValueError(f"no fake layout for stream {stream!r} (cifar5m, wikitext)")


# -- specs and runs ------------------------------------------------------------------
def profile_sets(
    name: str,
    *,
    data_dirs: Mapping[str, str] | None = None,
    reduced: bool = False,
    sets: Sequence[str] = (),
) -> list[str]:
    """The ``--set`` overrides of profile ``name``: its data path, the reduced profile's
    changes, then ``sets``."""
    p = get_profile(name)
    out: list[str] = []
    if p.data is not None and data_dirs and data_dirs.get(p.data):
        path = os.path.expanduser(str(data_dirs[p.data]))
        out.append(f"data.options.path={path}")
    if reduced:
        out.extend(p.reduced_sets)
    out.extend(sets)
    return out


def load_profile(
    name: str,
    *,
    data_dirs: Mapping[str, str] | None = None,
    reduced: bool = False,
    device: str | None = None,
    out: str | os.PathLike[str] | None = None,
    sets: Sequence[str] = (),
) -> StudySpec:
    """The validated spec of profile ``name`` (data path, reduction, ``device`` and
    ``sets`` applied; nothing is read from the data directory)."""
    import widthwise

    p = get_profile(name)
    overrides: dict[str, Any] = {}
    if device is not None:
        overrides["device"] = device
    if out is not None:
        overrides["out"] = str(out)
    all_sets = profile_sets(name, data_dirs=data_dirs, reduced=reduced, sets=sets)
    return widthwise.load_spec(p.spec, sets=all_sets, **overrides)


def run_profile(
    name: str,
    runs: str | os.PathLike[str],
    *,
    data_dirs: Mapping[str, str],
    reduced: bool = False,
    device: str | None = None,
    sets: Sequence[str] = (),
    progress: bool = False,
) -> Path:
    """Run (or resume) profile ``name`` into ``runs/<spec name>[_reduced]``; returns the
    study directory. ``data_dirs``: stream name -> local directory (``cifar5m``,
    ``wikitext``). Raises :class:`widthwise.UserError` with :func:`missing_data`'s line
    when the profile's data directory is absent."""
    import widthwise

    line = missing_data(name, data_dirs)
    if line is not None:
        raise widthwise.UserError(line)
    stem = load_profile(name).name + ("_reduced" if reduced else "")
    spec = load_profile(
        name,
        data_dirs=data_dirs,
        reduced=reduced,
        device=device,
        out=Path(runs) / stem,
        sets=sets,
    )
    return widthwise.run(spec, progress=progress)


# -- estimates -----------------------------------------------------------------------
def assumed_calibration(profile: Profile) -> Calibration:
    """A :class:`~widthwise.calibration.Calibration` of an *assumed* H200: the
    profile's precision at :data:`ASSUMED_FRACTION` of :data:`H200_PEAK` (and of
    :data:`H200_BYTES_PER_S` for the bytes written), :data:`ASSUMED_CALL_S` per kernel
    call. ``widthwise.cost`` scales the rates by its ``FLOP_EFFICIENCY`` and the call
    cost by its ``OP_OVERHEAD`` (fitted to CPUs); both are divided out here, so the
    assumptions above are the whole model."""
    import dataclasses

    from widthwise import cost
    from widthwise.calibration import Calibration

    eff = float(getattr(cost, "FLOP_EFFICIENCY", 1.0))
    overhead = float(getattr(cost, "OP_OVERHEAD", 1.0))
    mm, conv = profile.precision
    values: dict[str, Any] = {
        "matmul_flops_per_s": ASSUMED_FRACTION * H200_PEAK[mm] / eff,
        "conv_flops_per_s": ASSUMED_FRACTION * H200_PEAK[conv] / eff,
        "op_seconds": ASSUMED_CALL_S / overhead,
        "byte_seconds": 1.0 / (ASSUMED_FRACTION * H200_BYTES_PER_S),
        "device": f"assumed H200 ({ASSUMED_FRACTION:.0%} of {mm}/{conv} peak)",
        "threads": 1,
        "measured": "assumption, not a measurement",
        "seconds": 0.0,
    }
    names = {f.name for f in dataclasses.fields(Calibration)}
    return Calibration(**{k: v for k, v in values.items() if k in names})


def stand_in_stream(spec: StudySpec, root: str | os.PathLike[str]) -> Stream:
    """``spec``'s stream built on :func:`write_fake_data`'s files when it reads local
    data (the same input shape and vocabulary as the real data set), else its own."""
    from widthwise.job import build_stream

    stream = spec.data.stream
    if stream in ("cifar5m", "wikitext"):
        path = write_fake_data(stream, root)
        spec = spec.model_copy(
            update={
                "data": spec.data.model_copy(
                    update={"options": {**spec.data.options, "path": str(path)}}
                )
            }
        )
    return build_stream(spec)


@dataclass(frozen=True)
class ProfileEstimate:
    """The estimated H200 time of one profile, per width."""

    name: str
    widths: list[int]
    flops: list[float]
    """FLOPs of each width's run (all seeds, steps and probe calls)."""
    seconds: list[float]
    """Estimated seconds of each width's run."""
    memory_bytes: list[int]
    """widthwise.resources' lower bound of each width's peak memory."""
    parts: dict[str, list[float]] = field(default_factory=dict)
    """Seconds of each width from the FLOPs alone (``flops``), the kernel calls and
    batch drawing (``calls``) and the bytes written (``bytes``); they sum to
    :attr:`seconds`."""

    @property
    def hours(self) -> float:
        return sum(self.seconds) / 3600.0


def estimate(name: str, *, reduced: bool = False, sets: Sequence[str] = ()) -> ProfileEstimate:
    """The ESTIMATED H200 time of profile ``name`` (see the module docstring): FLOPs and
    kernel calls counted by :func:`widthwise.cost.study_costs` on the meta device,
    timed with :func:`assumed_calibration`. Writes a tiny fake data set to a
    temporary directory for the input shapes. Imports torch."""
    import dataclasses
    import inspect
    import tempfile

    from widthwise.cost import seconds, study_costs

    p = get_profile(name)
    spec = load_profile(name, reduced=reduced, sets=sets)
    cal = assumed_calibration(p)
    kwargs: dict[str, Any] = {}
    if "op_seconds" in inspect.signature(study_costs).parameters:
        # drawing a batch is timed on this machine's CPU (as it would be on the GPU
        # machine's host) and converted to call equivalents of the assumed calibration
        kwargs["op_seconds"] = cal.op_seconds
    with tempfile.TemporaryDirectory() as tmp:
        costs = study_costs(spec, stand_in_stream(spec, tmp), **kwargs)
    inf = math.inf
    only = {  # the calibration with every other term switched off
        "flops": dataclasses.replace(cal, op_seconds=0.0, byte_seconds=0.0),
        "calls": dataclasses.replace(
            cal, matmul_flops_per_s=inf, conv_flops_per_s=inf, byte_seconds=0.0
        ),
        "bytes": dataclasses.replace(
            cal, matmul_flops_per_s=inf, conv_flops_per_s=inf, op_seconds=0.0
        ),
    }
    names = {f.name for f in dataclasses.fields(cal)}
    only = {k: v for k, v in only.items() if k != "bytes" or "byte_seconds" in names}
    return ProfileEstimate(
        name=name,
        widths=[c.width for c in costs],
        flops=[c.flops for c in costs],
        seconds=[seconds(c, cal) for c in costs],
        memory_bytes=[c.memory_bytes for c in costs],
        parts={k: [seconds(c, v) for c in costs] for k, v in only.items()},
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="ESTIMATED H200 GPU-hours of the paper profiles")
    ap.add_argument("--reduced", action="store_true", help="the reduced profiles")
    ap.add_argument("names", nargs="*", help="profiles (default: all)")
    args = ap.parse_args(argv)
    print(
        f"ESTIMATES (not measured): widthwise.cost FLOP/call counts at {ASSUMED_FRACTION:.0%} "
        f"of the H200 dense peak ({', '.join(f'{k} {v / 1e12:g}' for k, v in H200_PEAK.items())} "
        f"TFLOP/s) and {ASSUMED_CALL_S * 1e6:g} us per kernel call"
    )
    for name in args.names or list(PROFILES):
        e = estimate(name, reduced=args.reduced)
        p = PROFILES[name]
        per = ", ".join(f"{w}: {s / 3600:.2g} h" for w, s in zip(e.widths, e.seconds))
        print(
            f"{name} ({'/'.join(p.precision)}): {e.hours:.3g} GPU-hours "
            f"({e.hours * 60:.3g} min), {sum(e.flops):.2e} FLOPs; {per}"
        )
        for i, (w, f, m) in enumerate(zip(e.widths, e.flops, e.memory_bytes)):
            split = ", ".join(f"{k} {v[i] / 3600:.2g} h" for k, v in e.parts.items())
            print(
                f"    width {w:>5}: {f:.2e} FLOPs, {e.seconds[i] / 3600:.3g} h ({split}), "
                f"memory lower bound {m / 2**30:.1f} GiB"
            )
        if not math.isfinite(e.hours):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
