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

from widthwise.errors import StoreError, UserError
from widthwise.probes import PROBES
from widthwise.store.study_dir import StudyDir


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
    """
    study = StudyDir(Path(path))
    if not study.path.is_dir():
        raise StoreError(f"{study.path}: not a widthwise study (not a directory)")
    manifest, widths, seeds = study_layout(study)
    spec = study.read_spec_dict()
    per_width, present, skipped = [], [], 0
    statuses, walls, diverged = [], [], []
    for width in widths:
        wd = study.width_dir(width)
        if not wd.path.is_dir():
            continue
        ds, bad = _width_dataset(study, width, seeds)
        skipped += bad
        state, wall, div = status_values(wd.read_status(), len(seeds))
        per_width.append(ds)
        present.append(width)
        statuses.append(state)
        walls.append(wall)
        diverged.append(div)
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
    ds.attrs.update(
        name=str(manifest.get("name", "")),
        spec_hash=str(manifest["spec_hash"]),
        parameterization=str(param.get("name", "") if isinstance(param, dict) else param or ""),
        base_width=base if type(base) is int else present[0],
        spec=json.dumps(spec),
        skipped_records=skipped,
    )
    _attach_probe_coords(ds, spec)
    for width in present:  # coordinates recorded at run time (e.g. layer names)
        for cname, (dims, values) in study.width_dir(width).read_coords().items():
            shape = np.shape(values)
            fits = (
                len(shape) == len(dims)
                and all(d in ds.dims for d in dims)
                and all(ds.sizes[d] == shape[i] for i, d in enumerate(dims))
            )
            if cname not in ds.coords and fits:
                with contextlib.suppress(ValueError):
                    ds.coords[cname] = (tuple(dims), np.asarray(values))
    _annotate(ds)
    return ds


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


_DOCS = {
    "train_loss": ("minibatch training loss before the update of that step", "loss"),
    "test_loss": ("loss on the fixed probe set", "loss"),
    "test_error": ("classification error on the probe set", "fraction"),
    "test_logits": ("network outputs on the probe set", "logit"),
    "test_target": ("regression targets of the probe set", "target"),
    "test_label": ("class labels of the probe set", "class"),
    "wall_time": ("training wall time of the width (all seeds, all sessions)", "s"),
    "diverged_step": ("step at which a member diverged and was frozen; -1: never", "step"),
    "status": ("state of the width's run: done, running, failed", ""),
}


def _annotate(ds: xr.Dataset) -> None:
    for name, (desc, units) in _DOCS.items():
        if name in ds:
            ds[name].attrs.update(description=desc, units=units)
