"""The per-width status table ``widthwise show`` (and ``run``) prints, and its JSON.

One row per width of the study (finished or not): its state (done, running,
interrupted, failed, not started, unknown; the same word as
:func:`widthwise.summary.width_states`), final losses, diverged members and wall
time. Below the table, one line per width that needs a word more: why it failed, who
is writing it, where to resume, which members diverged at which step; then the
consistency horizon of the loss curves and a final line counting the widths done.

The table is read straight from the study's files (``manifest.json``, ``spec.yaml``,
and each width through :mod:`widthwise.store.records` and
:func:`widthwise.summary.width_state_at`, which ``open_study`` reads through too), with
the same numbers as ``open_study`` gives (:func:`widthwise.summary.width_summary`),
and without importing torch or xarray, so ``show`` answers at once. The horizon sentence
needs the Dataset: it is computed once per state of the study's files and cached in
the user cache (:mod:`widthwise.user_cache`, ``shown.json``); ``widthwise run`` fills
that cache when it prints the table at its end.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from widthwise import user_cache
from widthwise.errors import StoreError
from widthwise.summary import FINAL_WINDOW, WidthState, fmt_mean_std
from widthwise.sweep import (
    describe_point_divergence,
    member_label,
    stored_sweep_values,
    sweep_points,
)

if TYPE_CHECKING:
    from rich.console import Console

MANIFEST = "manifest.json"
"""The study's manifest (``widthwise.store.study_dir.MANIFEST``; a test checks they agree)."""
SHOWN_FILE = "shown.json"
"""User-cache file of derived lines (horizon sentence, skipped records) per study state."""
LOSS_VARS = ("train_loss", "test_loss", "test_error")
"""Scalar variables of the table: ``train_loss`` (step), ``test_loss``/``test_error``
(test_step)."""


def width_dirname(width: int) -> str:
    """``width_00064`` (as ``widthwise.store.study_dir.width_dirname``)."""
    return f"width_{width:05d}"


# -- reading the study's files -----------------------------------------------------


def _read_manifest(path: Path) -> dict[str, Any]:
    """As ``StudyDir.read_manifest`` and ``study_layout``: the checked manifest, or a
    one-line :class:`StoreError` naming the path."""
    if not path.exists():
        raise StoreError(f"{path}: not a widthwise study (no such directory)")
    if not path.is_dir():
        raise StoreError(f"{path}: not a widthwise study (not a directory)")
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise StoreError(f"{path}: not a widthwise study (no {MANIFEST})") from None
    except (OSError, ValueError) as err:
        why = " ".join(str(err).split())[:120]
        raise StoreError(
            f"{manifest_path}: unreadable manifest ({type(err).__name__}: {why})"
        ) from None
    if not isinstance(manifest, dict) or "spec_hash" not in manifest:
        raise StoreError(f"{manifest_path}: not a widthwise manifest")
    widths, seeds = manifest.get("widths"), manifest.get("seeds")

    def ints(v: Any, low: int) -> bool:
        return (
            isinstance(v, list)
            and bool(v)
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= low for i in v)
            and len(set(v)) == len(v)
        )

    if not ints(widths, 1) or not ints(seeds, 0):
        raise StoreError(
            f"{manifest_path}: corrupt manifest (widths and seeds must be lists of "
            f"distinct integers; got widths {widths!r:.60}, seeds {seeds!r:.60})"
        )
    return manifest


def _spec_dict(path: Path) -> dict[str, Any] | None:
    try:
        spec = yaml.safe_load((path / "spec.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return spec if isinstance(spec, dict) else None


def _read_width(
    path: Path, width: int, seeds: list[int]
) -> tuple[WidthState, dict[str, dict[int, list[float]]]]:
    """The width's state (:func:`widthwise.summary.width_state_at`, as ``open_study``
    and the report say it) and the table's variables ``{var: {step: per-seed
    values}}``, read once through :mod:`widthwise.store.records` (no torch, no
    xarray); for a name logged by two probes, the later probe's (as ``open_study``)."""
    from widthwise.store.records import load_width
    from widthwise.summary import width_state_at

    wd = path / width_dirname(width)
    if not wd.is_dir():
        return WidthState(width, "not started"), {}
    records = load_width(wd, len(seeds), width)
    state = width_state_at(path, width, seeds, records)
    scalars = {name: by_step for (_, name), by_step in records.scalars.items() if name in LOSS_VARS}
    return state, scalars


def _nan_mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and std (ddof 0) over the finite-or-not values, NaN skipped (as xarray)."""
    ok = values[~np.isnan(values)]
    if ok.size == 0:
        return math.nan, math.nan
    return float(ok.mean()), float(ok.std())


def _final_losses(
    per_width: dict[int, dict[str, dict[int, list[float]]]], n_seeds: int
) -> dict[int, dict[str, float]]:
    """``{width: {"train_loss_mean": …, …}}`` as :func:`widthwise.summary.width_summary`
    computes them on the Dataset: steps are the union over widths (a width that did not
    reach one holds NaN there); train loss: each seed's mean over the last
    ``FINAL_WINDOW`` steps (NaN if one is missing); test loss and error: the last step."""
    out: dict[int, dict[str, float]] = {w: {} for w in per_width}
    for var in LOSS_VARS:
        if not any(var in v for v in per_width.values()):
            continue
        union = sorted({s for v in per_width.values() for s in v.get(var, {})})
        window = union[-FINAL_WINDOW:] if var == "train_loss" else union[-1:]
        nan_row = [math.nan] * n_seeds
        for width, scalars in per_width.items():
            by_step = scalars.get(var, {})
            table = np.array([by_step.get(s, nan_row) for s in window], dtype=np.float64)
            per_seed = table.mean(axis=0)  # NaN where a step is missing (skipna=False)
            mean, std = _nan_mean_std(per_seed)
            out[width][f"{var}_mean"] = mean
            if var != "test_error":
                out[width][f"{var}_std"] = std
    return out


@dataclass
class StudyView:
    """What ``widthwise show`` prints, read from the study's files."""

    path: Path
    name: str
    parameterization: str
    seeds: list[int]
    steps: int | None
    states: list[WidthState]
    losses: dict[int, dict[str, float]] = field(default_factory=dict)
    """Final losses of every width with a directory (see :func:`_final_losses`)."""
    points: list[dict[str, float]] = field(default_factory=list)
    """A sweep's points (empty without a sweep); member m is point m // n_seeds."""
    point_losses: dict[int, list[dict[str, float]]] = field(default_factory=dict)
    """A sweep's final losses per width and point (as ``losses``, over its seeds)."""
    seed_ids: list[int] = field(default_factory=list)
    """The seeds (``seeds`` holds the member ids in a sweep)."""

    def member(self, m: int) -> str:
        """``seed 2``, or ``lr=0.1 seed 2`` in a sweep (member id ``m``)."""
        if not self.points:
            return f"seed {m}"
        n = len(self.seed_ids)
        return member_label(self.points[m // n], self.seed_ids[m % n])

    @property
    def started(self) -> bool:
        return any(st.state != "not started" for st in self.states)

    def has(self, key: str) -> bool:
        return any(key in v for v in self.losses.values())

    def final_line(self) -> str:
        """``quickstart: 5 of 5 widths done`` (with the other states counted)."""
        n = len(self.states)
        done = sum(st.state == "done" for st in self.states)
        counts: dict[str, int] = {}
        for st in self.states:
            if st.state != "done":
                counts[st.state] = counts.get(st.state, 0) + 1
        rest = ", ".join(f"{k} {v}" for k, v in counts.items())
        text = f"{self.name}: {done} of {n} widths done" + (f" ({rest})" if rest else "")
        if any(
            st.state in ("interrupted", "not started", "failed", "damaged") for st in self.states
        ):
            text += "; `widthwise run` resumes the rest"
        return text


def read_study(path: str | Path) -> StudyView:
    """The study at ``path`` as ``show`` prints it, from its files only (no torch, no
    xarray); a one-line :class:`StoreError` if it is not a readable study."""
    path = Path(path)
    manifest = _read_manifest(path)
    widths, seeds = manifest["widths"], manifest["seeds"]
    read = {w: _read_width(path, w, seeds) for w in widths}
    states = [read[w][0] for w in widths]
    spec = _spec_dict(path)
    started = any(st.state != "not started" for st in states)
    p = spec.get("parameterization") if spec is not None else None
    if started:  # as open_study's attrs
        param = str(p.get("name", "") if isinstance(p, dict) else p or "")
    else:
        param = "?" if spec is None else str(p.get("name", "?") if isinstance(p, dict) else p)
    steps = spec.get("steps") if spec is not None else None
    per_width = {st.width: read[st.width][1] for st in states if st.state != "not started"}
    points, seed_ids = _sweep_of(manifest, len(seeds))
    point_losses: dict[int, list[dict[str, float]]] = {w: [] for w in per_width}
    n = len(seed_ids)
    for i in range(len(points)):
        columns = {
            w: {v: {t: row[i * n : (i + 1) * n] for t, row in by.items()} for v, by in sc.items()}
            for w, sc in per_width.items()
        }
        for w, losses in _final_losses(columns, n).items():
            point_losses[w].append(losses)
    return StudyView(
        path=path,
        name=str(manifest.get("name", "")),
        parameterization=param,
        seeds=list(seeds),
        steps=steps if type(steps) is int else None,
        states=states,
        losses=_final_losses(per_width, len(seeds)),
        points=points,
        point_losses=point_losses,
        seed_ids=seed_ids or list(seeds),
    )


def _sweep_of(manifest: dict[str, Any], n_members: int) -> tuple[list[dict[str, float]], list[int]]:
    """A sweep study's (points, seed ids) from its manifest; ([], []) without a sweep.
    A sweep entry that does not fit the members is a one-line :class:`StoreError`."""
    sweep = manifest.get("sweep")
    if not sweep:
        return [], []
    values = stored_sweep_values(sweep)
    seeds = sweep.get("seeds") if isinstance(sweep, dict) else None
    try:
        points = sweep_points(values)  # type: ignore[arg-type]
        ok = isinstance(seeds, list) and len(points) * len(seeds) == n_members
    except (TypeError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise StoreError(f"{MANIFEST}: corrupt sweep entry; the study is unreadable")
    return points, [int(s) for s in seeds]  # type: ignore[union-attr]


# -- the derived lines: cached per state of the files ------------------------------


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def fingerprint(view: StudyView) -> list[Any]:
    """What the horizon sentence depends on: the stat of every file it is read from."""
    fp: list[Any] = [_stat(view.path / name) for name in (MANIFEST, "spec.yaml", "probe_set.npz")]
    for st in view.states:
        wd = view.path / width_dirname(st.width)
        fp.append([_stat(wd / "status.json"), _stat(wd / "scalars.jsonl"), _stat(wd / "arrays")])
        arrays = wd / "arrays"
        if arrays.is_dir():
            fp.append(sorted([p.name, _stat(p)] for p in arrays.iterdir()))
    return fp


def derived(view: StudyView) -> dict[str, Any]:
    """``{"horizon": sentence, "skipped_records": n}`` of a started study: from the user
    cache when the study's files are as they were, else computed from ``open_study``
    (imports xarray and torch) and cached."""
    from widthwise import __version__

    key = str(view.path.resolve())
    fp = fingerprint(view)
    hit = user_cache.read_json(SHOWN_FILE).get(key)
    if isinstance(hit, dict) and hit.get("fingerprint") == fp and hit.get("version") == __version__:
        return {"horizon": str(hit.get("horizon", "")), "skipped_records": hit.get("skipped", 0)}
    from widthwise.analysis.study_horizon import horizon_summary
    from widthwise.store import open_study

    ds = open_study(view.path)
    losses = ds[[v for v in ("train_loss", "test_loss") if v in ds]]
    if view.points:  # a sweep: the horizon at the tuned point, said so (docs/sweeps.md)
        from widthwise.analysis.transfer import select_point, tuned_point

        point = tuned_point(ds)
        horizon = horizon_summary(select_point(losses, point))
        if horizon:
            at = ", ".join(f"{k} = {v:g}" for k, v in point.items())
            horizon = f"At the tuned point {at}: {horizon[0].lower()}{horizon[1:]}"
    else:
        horizon = horizon_summary(losses)
    skipped = int(ds.attrs.get("skipped_records", 0))
    if fingerprint(view) == fp:  # not written to meanwhile
        user_cache.update_json(
            SHOWN_FILE,
            key,
            {"fingerprint": fp, "version": __version__, "horizon": horizon, "skipped": skipped},
        )
    return {"horizon": horizon, "skipped_records": skipped}


# -- output -------------------------------------------------------------------------


def _finite(x: float) -> float | None:
    return x if isinstance(x, float) and math.isfinite(x) else None


def _diverged_entry(view: StudyView, m: int, step: int) -> dict[str, Any]:
    """``{seed, step}``; in a sweep also the member's ``point`` and label, ``seed`` being
    its seed id (not the member id)."""
    if not view.points:
        return {"seed": m, "step": step}
    n = len(view.seed_ids)
    return {
        "seed": view.seed_ids[m % n],
        "step": step,
        "point": view.points[m // n],
        "member": view.member(m),
    }


def show_data(path: str | Path) -> dict[str, Any]:
    """The study at ``path`` as one JSON-able mapping (``widthwise show --json``; the
    fields are documented in docs/cli.md)."""
    from widthwise.depth_study import is_depth_study, show_depth_data

    if is_depth_study(path):
        return show_depth_data(path)
    view = read_study(path)
    extra = derived(view) if view.started else {"horizon": "", "skipped_records": 0}
    widths = []
    for st in view.states:
        losses = {} if view.points else view.losses.get(st.width, {})  # sweep: per point
        widths.append(
            {
                "width": st.width,
                "state": st.state,
                "step": st.step,
                "steps": st.steps,
                "train_loss_mean": _finite(losses.get("train_loss_mean", math.nan)),
                "train_loss_std": _finite(losses.get("train_loss_std", math.nan)),
                "test_loss_mean": _finite(losses.get("test_loss_mean", math.nan)),
                "test_loss_std": _finite(losses.get("test_loss_std", math.nan)),
                "test_error_mean": _finite(losses.get("test_error_mean", math.nan)),
                "diverged": [_diverged_entry(view, m, t) for m, t in sorted(st.diverged.items())],
                **(
                    {
                        "sweep_points": [
                            {**pt, **{k: _finite(v) for k, v in pl.items()}}
                            for pt, pl in zip(view.points, view.point_losses.get(st.width, []))
                        ]
                    }
                    if view.points
                    else {}
                ),
                "wall_time": _finite(st.wall_time),
                "reason": st.reason or None,
                "holder": st.holder,
                "note": st.describe(),
            }
        )
    return {
        "study": str(view.path),
        "name": view.name,
        "parameterization": view.parameterization,
        "seeds": view.seed_ids,
        **(
            {"sweep": {"points": view.points, "seeds": view.seed_ids}, "members": len(view.seeds)}
            if view.points
            else {}
        ),
        "steps": view.steps,
        "widths": widths,
        "done": sum(st.state == "done" for st in view.states),
        "horizon": extra["horizon"] or None,
        "skipped_records": extra["skipped_records"],
        "summary": view.final_line(),
    }


def _cell(losses: dict[str, float], var: str, with_std: bool) -> str:
    """A summary cell (``—`` for a width without data)."""
    mean = losses.get(f"{var}_mean", math.nan)
    if not with_std:
        return f"{mean:.3f}" if math.isfinite(mean) else "—"
    return fmt_mean_std(mean, losses.get(f"{var}_std", math.nan))


def print_show(path: str | Path, console: Console, *, quiet: bool = False) -> None:
    """Print the study at ``path`` (``quiet``: only its final line); a one-line
    ``StoreError`` if it is not a readable study."""
    from rich.markup import escape
    from rich.measure import Measurement
    from rich.table import Table

    from widthwise.depth_study import is_depth_study, print_depth_show

    if is_depth_study(path):
        print_depth_show(path, console, quiet=quiet)
        return
    view = read_study(path)
    extra = derived(view) if view.started else {"horizon": "", "skipped_records": 0}
    if quiet:
        console.print(escape(view.final_line()), soft_wrap=True, highlight=False)
        return
    seeds = view.seeds
    who = f"{len(seeds)} seeds"
    if view.points:
        keys = list(view.points[0])
        who = f"{len(view.points)} sweep points × {len(view.seed_ids)} seeds"
    table = Table(title=escape(f"{view.name} ({view.parameterization}, {who})"))
    table.add_column("width", justify="right", no_wrap=True)
    for key in keys if view.points else []:
        table.add_column(key, justify="right", no_wrap=True)
    longest = max(len(st.state) for st in view.states)
    table.add_column("status", no_wrap=True, min_width=longest)  # a state word is never cut
    columns = [
        (var, label, var != "test_error")
        for var, label in (
            ("train_loss", "train loss"),
            ("test_loss", "test loss"),
            ("test_error", "test error"),
        )
        if view.has(f"{var}_mean")
    ]
    for _, label, _ in columns:
        table.add_column(label, justify="right", no_wrap=True)
    table.add_column("diverged", justify="right", no_wrap=True)
    table.add_column("wall time", justify="right", no_wrap=True)
    table.caption = (
        "train loss: each seed's last 10 logged steps; test loss: final; mean ± std over seeds"
    )
    for st in view.states:
        wall = f"{st.wall_time:.1f} s" if math.isfinite(st.wall_time) else "—"
        if not view.points:
            losses = view.losses.get(st.width, {})
            row = [str(st.width), st.state]
            row += [_cell(losses, var, with_std) for var, _, with_std in columns]
            row += [f"{len(st.diverged)}/{len(seeds)}", wall]
            table.add_row(*(escape(c) for c in row))
            continue
        n = len(view.seed_ids)
        for i, point in enumerate(view.points):  # one row per sweep point
            losses = (view.point_losses.get(st.width) or [{}] * len(view.points))[i]
            first = i == 0
            row = [str(st.width) if first else "", *(f"{v:g}" for v in point.values())]
            row.append(st.state if first else "")
            row += [_cell(losses, var, with_std) for var, _, with_std in columns]
            dead = sum(i * n <= m < (i + 1) * n for m in st.diverged)
            row += [f"{dead}/{n}", wall if first else ""]
            table.add_row(*(escape(c) for c in row), end_section=i == len(view.points) - 1)
    # never narrower than the table: on a narrow terminal its lines wrap, no cell is cut
    need = Measurement.get(console, console.options.update(max_width=10_000), table).maximum
    width = console.width
    console.width = max(width, need)  # print(width=...) cannot exceed the console's
    try:
        console.print(table)
    finally:
        console.width = width
    for st in view.states:
        notes = [st.describe()] if st.state not in ("done", "not started") else []
        if st.diverged:
            notes.append(
                describe_point_divergence(view.points, len(view.seed_ids), st.diverged)
                if view.points
                else st.describe_diverged(len(seeds))
            )
        for note in notes:
            console.print(escape(f"width {st.width}: {note}"), soft_wrap=True, highlight=False)
    if extra["skipped_records"]:
        console.print(f"[yellow]skipped {extra['skipped_records']} torn or partial records[/]")
    if extra["horizon"]:  # the consistency horizon of the loss curves, in one sentence
        console.print(escape(extra["horizon"]), soft_wrap=True, highlight=False)
    console.print(escape(view.final_line()), soft_wrap=True, highlight=False)
