"""``open_study``: a study directory as one xarray.Dataset (schema in docs/dataset.md)."""

from __future__ import annotations

import contextlib
import json
import math
import zipfile
from collections import Counter
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from pydantic import ValidationError

from widthwise.dataset_schema import (
    Dim,
    Schema,
    Var,
    declare,
    declared_dims,
    declared_vars,
    legacy_dims,
)
from widthwise.errors import StoreError, UserError
from widthwise.probes import PROBES
from widthwise.store.study_dir import StudyDir
from widthwise.summary import width_state

STUDY = declare(
    Schema(
        "study",
        None,
        (
            Dim("width", "the study's widths (those with results)", "widths"),
            Dim("seed", "seed ids (`seeds: 4` → 0, 1, 2, 3)", "seed ids"),
            Dim("point", "a point of the fixed probe (test) set", "0 … probe_points−1"),
            Dim("position", "position in a sequence (sequence models)"),
            Dim("output", "output unit (1 for scalar regression, C for C classes)", "0 … C−1"),
        ),
        (
            Var(
                "test_target",
                ("point", "output"),
                "target",
                "regression targets of the probe set",
                when="regression streams",
            ),
            Var(
                "test_label",
                ("point",),
                "class",
                "class labels of the probe set",
                when="classification streams",
                alt_dims=("point", "position"),
                alt_when="token streams (label per position)",
            ),
            Var(
                "diverged_step",
                ("width", "seed"),
                "step",
                "step at which a member diverged and was frozen; -1: never",
            ),
            Var(
                "status",
                ("width",),
                "",
                "state of the width's run, the word `widthwise show` prints "
                "(`widthwise.summary.width_state`): `done`; `running` (a live process holds "
                "the writer lock); `interrupted` (stopped without a live writer, e.g. killed: "
                "`widthwise run` resumes it); `failed` (its status.json says why); `unknown` "
                "(status.json missing or unreadable)",
            ),
            Var(
                "step_reached",
                ("width",),
                "step",
                "updates the width had taken when its status was last written (`steps` "
                "when done; where a failed run stopped; a killed run's last checkpoint); "
                "-1: unknown. Steps it did not reach hold NaN",
            ),
            Var(
                "wall_time",
                ("width",),
                "s",
                "training wall time of the width (all seeds), summed over sessions; NaN if unknown",
            ),
        ),
    )
)

_RENAMED = legacy_dims()  # dims of stores written before the naming rule, by their names now


def _current(dims: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(_RENAMED.get(d, d) for d in dims)


def _step_dim(probe: str) -> str:
    return PROBES.get(probe).step_dim if probe in PROBES else f"{probe}_step"


def study_layout(study: StudyDir) -> tuple[dict[str, Any], list[int], list[int]]:
    """The manifest, its widths and its seeds, checked (one-line :class:`StoreError`)."""
    manifest = study.read_manifest()
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
            f"{study.manifest_path}: corrupt manifest (widths and seeds must be lists of "
            f"distinct integers; got widths {widths!r:.60}, seeds {seeds!r:.60})"
        )
    return manifest, widths, seeds


def status_values(status: dict[str, Any], n_seeds: int) -> tuple[str, float, list[int]]:
    """(state, wall time, diverged step per seed) of a ``status.json`` mapping, sanitized:
    ``unknown`` / NaN / -1 where a field is missing or malformed."""
    state = status.get("state")
    state = state if isinstance(state, str) and state else "unknown"
    wall = status.get("wall_time")
    wall = float(wall) if isinstance(wall, int | float) and not isinstance(wall, bool) else math.nan
    div = status.get("diverged_step")
    ok = isinstance(div, list) and len(div) == n_seeds and all(type(d) is int for d in div)
    return state, wall, list(div) if ok else [-1] * n_seeds


def _width_dataset(study: StudyDir, width: int, seeds: list[int]) -> tuple[xr.Dataset, int]:
    wd = study.width_dir(width)
    data: dict[str, xr.DataArray] = {}
    try:
        scalars, bad = wd.read_scalars(len(seeds))
    except OSError:  # e.g. scalars.jsonl is not a readable file: nothing from it is data
        scalars, bad = {}, 1
    for (probe, name), by_step in scalars.items():
        steps = sorted(by_step)
        values = np.array([by_step[s] for s in steps], dtype=np.float64)  # (step, seed)
        sd = _step_dim(probe)
        data[name] = xr.DataArray(values.T, dims=("seed", sd), coords={"seed": seeds, sd: steps})
    try:
        arrays, bad_arrays = wd.read_arrays()
    except OSError:
        arrays, bad_arrays = {}, 1
    bad += bad_arrays
    for (probe, name), (dims, by_step) in arrays.items():
        # one shape for all steps, with a leading seed dim; a file that differs is skipped
        shapes = Counter(a.shape for a in by_step.values() if a.shape[:1] == (len(seeds),))
        if not shapes:
            bad += len(by_step)
            continue
        shape = shapes.most_common(1)[0][0]
        steps = sorted(s for s, a in by_step.items() if a.shape == shape)
        bad += len(by_step) - len(steps)
        sd = _step_dim(probe)
        stacked = np.stack([by_step[s] for s in steps], axis=1)  # (seed, step, ...)
        dims = _current(dims)
        data[name] = xr.DataArray(
            stacked, dims=(dims[0], sd, *dims[1:]), coords={"seed": seeds, sd: steps}
        )
    return xr.Dataset(data), bad


def open_study(path: str | PathLike[str]) -> xr.Dataset:
    """Load a study directory as one Dataset with dims (width, seed, step, point, output, ...).

    Each probe has its own step coordinate (``step`` for ``train_loss``, ``test_step``
    for ``test``, ...); widths that have not reached a step hold NaN there. Torn
    scalar lines and partial array files are skipped (and counted in
    ``attrs["skipped_records"]``), never reported as data. Diverged members are NaN
    from the step they diverged; ``diverged_step`` (width, seed) says when (-1: never).
    ``status`` (width) is the state ``widthwise show`` prints (one function decides it:
    :func:`widthwise.summary.width_state`), ``step_reached`` (width) how far each width
    got; ``attrs`` hold ``steps``, ``planned_widths`` (the manifest's, started or not) and
    ``loss``, the loss the study trained with, which ``test_target`` / ``test_label`` /
    ``test_logits`` also carry as ``attrs["loss"]`` so :func:`widthwise.analysis.probe_loss`
    reproduces ``test_loss`` (mse on labels: one-hot).
    Every dim, coordinate and variable is declared in :mod:`widthwise.dataset_schema`
    (docs/dataset.md); dims of stores written under earlier names are read under the
    current ones.
    """
    study = StudyDir(Path(path))
    if not study.path.is_dir():
        raise StoreError(f"{study.path}: not a widthwise study (not a directory)")
    manifest, widths, seeds = study_layout(study)
    spec = study.read_spec_dict()
    per_width, present, skipped = [], [], 0
    statuses, walls, diverged, reached = [], [], [], []
    for width in widths:
        wd = study.width_dir(width)
        if not wd.path.is_dir():
            continue
        ds, bad = _width_dataset(study, width, seeds)
        skipped += bad
        ws = width_state(study, width, seeds)  # the state `widthwise show` prints
        per_width.append(ds)
        present.append(width)
        statuses.append(ws.state)
        walls.append(ws.wall_time)
        diverged.append([ws.diverged.get(s, -1) for s in seeds])
        reached.append(ws.step if ws.step is not None else -1)
    if not per_width:
        raise StoreError(f"{study.path}: the study has no results yet; run it first")
    try:
        ds = xr.concat(
            per_width,
            dim=xr.DataArray(present, dims="width", name="width"),
            join="outer",
            fill_value=np.nan,
            coords="different",
            compat="equals",
        )
    except (ValueError, TypeError) as err:
        raise StoreError(
            f"{study.path}: widths hold arrays that do not fit together ({err}); "
            "the study directory is corrupt"
        ) from None
    ds = ds.assign_coords(seed=seeds)
    ds["status"] = ("width", np.array(statuses, dtype=str))
    ds["step_reached"] = ("width", np.array(reached, dtype=np.int64))
    ds["wall_time"] = ("width", np.array(walls))
    ds["diverged_step"] = (("width", "seed"), np.array(diverged, dtype=np.int64))
    x, y = _probe_set(study)
    if "point" in ds.dims and ds.sizes["point"] != len(x):
        raise StoreError(
            f"{study.path / 'probe_set.npz'}: {len(x)} probe points, but the logged arrays "
            f"have {ds.sizes['point']}; the study directory is corrupt"
        )
    if np.issubdtype(y.dtype, np.floating):
        ds["test_target"] = (("point", "output"), y.reshape(len(y), -1).astype(np.float64))
    else:  # class labels (point,) or token labels (point, position)
        ds["test_label"] = (("point", "position")[: y.ndim], y.astype(np.int64))
    ds = ds.assign_coords(
        width=present,
        **({"point": np.arange(ds.sizes["point"])} if "point" in ds.dims else {}),
        **({"output": np.arange(ds.sizes["output"])} if "output" in ds.dims else {}),
    )
    param = spec.get("parameterization")
    base = spec.get("base_width")
    steps = spec.get("steps")
    loss = training_loss_of(spec, y)
    ds.attrs.update(
        name=str(manifest.get("name", "")),
        spec_hash=str(manifest["spec_hash"]),
        parameterization=str(param.get("name", "") if isinstance(param, dict) else param or ""),
        base_width=base if type(base) is int else present[0],
        spec=json.dumps(spec),
        skipped_records=skipped,
        loss=loss,
        steps=steps if type(steps) is int else -1,
        planned_widths=list(widths),
    )
    _attach_probe_coords(ds, spec)
    for width in present:  # coordinates recorded at run time (e.g. layer names)
        for cname, (dims, values) in study.width_dir(width).read_coords().items():
            cname, dims = _RENAMED.get(cname, cname), _current(dims)
            shape = np.shape(values)
            fits = (
                len(shape) == len(dims)
                and all(d in ds.dims for d in dims)
                and all(ds.sizes[d] == shape[i] for i, d in enumerate(dims))
            )
            if cname not in ds.coords and fits:
                with contextlib.suppress(ValueError):
                    ds.coords[cname] = (tuple(dims), np.asarray(values))
    _attach_point_indices(ds)
    _annotate(ds)
    for name in ("test_target", "test_label", "test_logits"):  # what the analysis reads
        if name in ds:
            ds[name].attrs["loss"] = loss
    return ds


def training_loss_of(spec: dict[str, Any], y: np.ndarray) -> str:
    """The loss the study trained with: the spec's ``loss``, else the stream's own (float
    targets: ``mse``; integer labels: ``cross_entropy``), as ``streams.training_loss``."""
    loss = spec.get("loss")
    if loss in ("mse", "cross_entropy"):
        return loss
    return "mse" if np.issubdtype(y.dtype, np.floating) else "cross_entropy"


def _probe_set(study: StudyDir) -> tuple[np.ndarray, np.ndarray]:
    """The stored probe set (x, y); a one-line :class:`StoreError` if it is unreadable."""
    path = study.path / "probe_set.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            x, y = z["x"], z["y"]
    except FileNotFoundError:
        raise StoreError(f"{path}: missing; the study directory is incomplete") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise StoreError(
            f"{path}: unreadable probe set ({type(err).__name__}); the study directory is corrupt"
        ) from None
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise StoreError(f"{path}: x and y disagree in length; the study directory is corrupt")
    return x, y


def _attach_probe_coords(ds: xr.Dataset, spec: dict) -> None:
    """Static coordinates a probe declares (``ProbeDef.coords``), from its logged options."""
    probes = spec.get("probes")
    for name, options in (probes if isinstance(probes, dict) else {}).items():
        if name not in PROBES or PROBES.get(name).coords is None:
            continue
        try:
            coords = PROBES.get(name).coords(PROBES.validate_options(name, options))
        except (ValidationError, UserError, TypeError, ValueError):
            continue  # a hand-edited spec.yaml: the data is still there, without these labels
        for cname, (dims, values) in coords.items():
            with contextlib.suppress(ValueError):
                ds.coords[cname] = (dims, np.asarray(values))


def _attach_point_indices(ds: xr.Dataset) -> None:
    """A probe's points are the first probe points: coordinate 0 … M−1 on each such dim
    (``Dim.index_of``), so e.g. ``ds.test_target.sel(point=ds.kernels_point_i)`` lines up."""
    for name, dim in declared_dims().items():
        if dim.index_of and name in ds.dims and name not in ds.coords:
            ds.coords[name] = np.arange(ds.sizes[name])


def _annotate(ds: xr.Dataset) -> None:
    """``description`` and ``units`` attrs of every declared variable present."""
    for name, var in declared_vars().items():
        if name in ds:
            ds[name].attrs.update(description=var.meaning, units=var.units)
