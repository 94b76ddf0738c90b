"""What every tracker shares: the options base class (checks the extra is installed),
the :class:`Tracker` interface, and the study as the trackers see it.

A tracker mirrors, per width, one run (W&B run, MLflow run, TensorBoard run
directory) holding each scalar variable of the study — every variable with dims
(width, seed, <step dim>) in :func:`widthwise.open_study` — as ``<var>/mean`` (mean
over the seeds with a finite value) and ``<var>/seed_<id>``, at the training step
(all step dims count optimizer updates). Small per-step arrays are mirrored too, from
the npz files of probes whose variables all have at most two dims (the sharpness
probe): a variable with dims (seed, ``<probe>_eig``) as its top eigenvalue (index 0)
under ``<var>/mean`` and ``<var>/seed_<id>``, one with dims (seed, ``<probe>_layer``)
as ``<var>/<layer>/mean`` and ``<var>/<layer>/seed_<id>`` per recorded layer (group)
name; other arrays (densities, kernels) are not mirrored. Non-finite values (a diverged member, a
step a width has not reached) are not mirrored. A width that has not finished is
mirrored only up to its last checkpoint: later records are dropped and redone when
the study resumes, so nothing mirrored ever changes afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from widthwise.errors import UserError
from widthwise.store import records as rec
from widthwise.store.study_dir import StudyDir
from widthwise.sweep import stored_sweep_values, sweep_points


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except ValueError:  # imported, without a __spec__ (e.g. a stand-in module)
        return True


class TrackerOptions(BaseModel):
    """Options of a tracker; validation fails (one line naming the extra) when the
    tracker's package is not installed."""

    model_config = ConfigDict(extra="forbid")

    package: ClassVar[str] = ""
    """Top-level module the tracker needs (checked with ``importlib.util.find_spec``)."""
    extra: ClassVar[str] = ""
    """pyproject extra that installs it."""
    path_fields: ClassVar[tuple[str, ...]] = ()
    """Options holding a path: relative ones are taken inside the study directory."""

    @model_validator(mode="before")
    @classmethod
    def _installed(cls, data: Any) -> Any:
        if cls.package and not _installed(cls.package):
            raise UserError(f"needs the {cls.extra} extra: pip install 'widthwise[{cls.extra}]'")
        return data

    @model_validator(mode="after")
    def _paths_stay_inside(self) -> TrackerOptions:
        for name in self.path_fields:
            value = getattr(self, name)
            if value and not Path(value).expanduser().is_absolute() and ".." in Path(value).parts:
                raise UserError(
                    f"{name}: a relative path stays inside the study directory, got {value!r} "
                    "(give an absolute path to write elsewhere)"
                )
        return self


@dataclass
class WidthScalars:
    """One width's mirrored series: metric name -> {step: value} (finite values only)."""

    width: int
    state: str
    series: dict[str, dict[int, float]] = field(default_factory=dict)

    def rows(self) -> list[tuple[int, dict[str, float]]]:
        """The series merged by step, in increasing step order: [(step, {metric: value})]."""
        by_step: dict[int, dict[str, float]] = defaultdict(dict)
        for key, values in self.series.items():
            for step, value in values.items():
                by_step[step][key] = value
        return [(s, by_step[s]) for s in sorted(by_step)]


def _final_before(status: dict[str, Any], checkpoint_every: int) -> float:
    """Records at steps below this are final: everything for a finished width, else the
    steps before its last checkpoint (a resume drops and redoes the rest)."""
    if status.get("state") == "done":
        return math.inf
    step = int(status.get("step", 0) or 0)
    return (step // max(checkpoint_every, 1)) * max(checkpoint_every, 1)


def _small_arrays(
    width_dir: Path, width: int, n_seeds: int
) -> dict[tuple[str, str], dict[int, list[float]]]:
    """Per-seed series read from small arrays (see the module doc), keyed like the
    scalar log: {(probe, name): {step: per-seed values}}."""
    out: dict[tuple[str, str], dict[int, list[float]]] = {}
    arrays_dir = width_dir / "arrays"
    try:
        pdirs = sorted(p for p in arrays_dir.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return out
    for pdir in pdirs:
        try:
            dims = rec.read_json(pdir / "dims.json")
        except (OSError, ValueError):
            continue
        if not rec.valid_dims(dims) or any(len(d) > 2 for d in dims.values()):
            continue  # kernels and other large arrays: not read here
        wanted = {
            v: d[1] for v, d in dims.items() if len(d) == 2 and d[1].endswith(("_eig", "_layer"))
        }
        if not wanted:
            continue
        found = rec.WidthRecords()
        rec._load_probe_dir(pdir, width, n_seeds, found)  # noqa: SLF001
        for (probe, var), (_, by_step) in found.arrays.items():
            dim = wanted.get(var)
            if dim is None:
                continue
            if dim.endswith("_eig"):
                out[(probe, var)] = {s: a[:, 0].tolist() for s, a in by_step.items() if a.shape[1]}
                continue
            names = found.coords.get(dim, ([], []))[1]
            for i, name in enumerate(names):
                out[(probe, f"{var}/{name}")] = {
                    s: a[:, i].tolist() for s, a in by_step.items() if i < a.shape[1]
                }
    return out


class Study:
    """A study directory as the trackers see it: its spec, identity and scalars."""

    def __init__(self, path: str | Path) -> None:
        self.dir = StudyDir(Path(path))
        self.path = self.dir.path.resolve()
        self.manifest = self.dir.read_manifest()
        self.spec: dict[str, Any] = self.dir.read_spec_dict() or {}
        self.name: str = str(self.manifest.get("name") or self.spec.get("name") or "study")
        self.spec_hash: str = str(self.manifest["spec_hash"])
        self.seeds: list[int] = [int(s) for s in self.manifest.get("seeds", [])]
        self.steps: int = int(self.spec.get("steps") or 0)
        self.groups: dict[str, list[tuple[int, str]]] = _member_groups(self.manifest, self.seeds)
        """Series prefix → (member index, its series name): ``""`` → ``seed_0``, ... or,
        in a sweep, ``lr_0.1/`` → ``lr_0.1/seed_0``, ... (each prefix gets its mean)."""

    @property
    def trackers(self) -> dict[str, Any]:
        """The spec's ``trackers`` mapping (empty when it names none)."""
        return dict(self.spec.get("trackers") or {})

    def resolve(self, path: str | None, default: str) -> Path:
        """``path`` (default ``default``) as an absolute path; relative to the study dir."""
        p = Path(path if path is not None else default).expanduser()
        return p if p.is_absolute() else self.path / p

    def run_id(self, part: str) -> str:
        """A deterministic tracker run id for ``part`` of this study (name + spec hash)."""
        safe = re.sub(r"[^A-Za-z0-9_-]", "-", self.name)[:40]
        return f"{safe}-{self.spec_hash[:8]}-{part}"

    @property
    def config(self) -> dict[str, Any]:
        """Facts attached to every tracker run (study, spec hash, the spec itself)."""
        return {
            "study": self.name,
            "spec_hash": self.spec_hash,
            "parameterization": (self.spec.get("parameterization") or {}).get("name", ""),
            "seeds": self.seeds,
            "spec": {k: v for k, v in self.spec.items() if k != "trackers"},
        }

    @cached_property
    def widths(self) -> list[WidthScalars]:
        """Every width with results, with its final scalar series (see the module doc)."""
        every = int(self.spec.get("checkpoint_every") or 1)
        out = []
        for width in self.manifest.get("widths", []):
            wd = self.dir.width_dir(int(width))
            if not wd.path.exists():
                continue
            status = wd.read_status()
            final_before = _final_before(status, every)
            scalars, _ = wd.read_scalars()
            scalars = {**scalars, **_small_arrays(wd.path, int(width), len(self.seeds))}
            ws = WidthScalars(int(width), str(status.get("state", "unknown")))
            for (_probe, var), by_step in sorted(scalars.items()):
                if any(len(v) != len(self.seeds) for v in by_step.values()):
                    continue  # as open_study: a record that does not match the seeds
                for step, values in by_step.items():
                    if step >= final_before:
                        continue
                    arr = np.asarray(values, dtype=np.float64)
                    ok = np.isfinite(arr)
                    if not ok.any():
                        continue
                    for prefix, members in self.groups.items():
                        idx = [m for m, _ in members if ok[m]]
                        if idx:
                            mean = float(arr[idx].mean())
                            ws.series.setdefault(f"{var}/{prefix}mean", {})[step] = mean
                        for m, label in members:
                            if ok[m]:
                                ws.series.setdefault(f"{var}/{label}", {})[step] = float(arr[m])
            out.append(ws)
        return out

    @property
    def all_done(self) -> bool:
        """Every width of the study has finished."""
        done = {w.width for w in self.widths if w.state == "done"}
        return done == {int(w) for w in self.manifest.get("widths", [])}


def _member_groups(
    manifest: dict[str, Any], members: list[int]
) -> dict[str, list[tuple[int, str]]]:
    """Series names of the members: ``seed_<id>`` under one prefix ``""``; in a sweep
    (members point-major) ``lr_0.1/seed_<id>`` under the point's prefix ``lr_0.1/``."""
    sweep = manifest.get("sweep")
    if not isinstance(sweep, dict):
        return {"": [(m, f"seed_{s}") for m, s in enumerate(members)]}
    points = sweep_points(stored_sweep_values(sweep) or {})  # type: ignore[arg-type]
    seeds = [int(s) for s in sweep.get("seeds") or []]
    groups: dict[str, list[tuple[int, str]]] = {}
    for i, point in enumerate(points):
        prefix = "".join(f"{k}_{v:g}/" for k, v in point.items())
        groups[prefix] = [(i * len(seeds) + j, f"{prefix}seed_{s}") for j, s in enumerate(seeds)]
    return groups


def figures_digest(pngs: list[Path]) -> str:
    """A digest of the figures' names and bytes (identical reports give identical digests)."""
    h = hashlib.sha256()
    for p in pngs:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


class Tracker:
    """One tracker for one study. Subclasses set ``Options`` and implement both methods;
    each must be idempotent (mirroring twice stores every value once)."""

    Options: ClassVar[type[TrackerOptions]]

    def __init__(self, options: TrackerOptions, study: Study) -> None:
        self.options = options
        self.study = study

    def mirror_scalars(self) -> None:
        """Mirror ``study.widths`` (one tracker run per width)."""
        raise NotImplementedError

    def mirror_figures(self, pngs: list[Path]) -> None:
        """Mirror the report's PNG figures (sorted paths, at least one)."""
        raise NotImplementedError
