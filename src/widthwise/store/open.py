"""``open_study``: a study directory as one xarray.Dataset (schema in docs/dataset.md)."""

from __future__ import annotations

import json
import warnings
from os import PathLike
from pathlib import Path

import numpy as np
import xarray as xr

from widthwise.errors import StoreError
from widthwise.probes import PROBES
from widthwise.store.study_dir import StudyDir


def _step_dim(probe: str) -> str:
    return PROBES.get(probe).step_dim if probe in PROBES else f"{probe}_step"


def _width_dataset(study: StudyDir, width: int, seeds: list[int]) -> tuple[xr.Dataset, int]:
    wd = study.width_dir(width)
    data: dict[str, xr.DataArray] = {}
    scalars, bad = wd.read_scalars()
    for (probe, name), by_step in scalars.items():
        steps = sorted(by_step)
        values = np.array([by_step[s] for s in steps], dtype=np.float64)  # (step, seed)
        if values.shape[1] != len(seeds):
            bad += 1
            continue
        sd = _step_dim(probe)
        data[name] = xr.DataArray(values.T, dims=("seed", sd), coords={"seed": seeds, sd: steps})
    arrays, bad_arrays = wd.read_arrays()
    bad += bad_arrays
    for (probe, name), (dims, by_step) in arrays.items():
        steps = sorted(by_step)
        shapes = {by_step[s].shape for s in steps}
        if len(shapes) != 1:
            bad += 1
            continue
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
    manifest = study.read_manifest()
    spec = study.read_spec_dict()
    seeds = list(manifest["seeds"])
    per_width, present, skipped = [], [], 0
    statuses, walls, diverged = [], [], []
    for width in manifest["widths"]:
        wd = study.width_dir(width)
        if not wd.path.exists():
            continue
        ds, bad = _width_dataset(study, width, seeds)
        skipped += bad
        status = wd.read_status()
        per_width.append(ds)
        present.append(width)
        statuses.append(status.get("state", "unknown"))
        walls.append(float(status.get("wall_time", np.nan)))
        div = status.get("diverged_step", [-1] * len(seeds))
        diverged.append(div if len(div) == len(seeds) else [-1] * len(seeds))
    if not per_width:
        raise StoreError(f"{study.path}: the study has no results yet; run it first")
    ds = xr.concat(
        per_width,
        dim=xr.DataArray(present, dims="width", name="width"),
        join="outer",
        fill_value=np.nan,
        coords="different",
        compat="equals",
    )
    ds = ds.assign_coords(seed=seeds)
    ds["status"] = ("width", np.array(statuses, dtype=str))
    ds["wall_time"] = ("width", np.array(walls))
    ds["diverged_step"] = (("width", "seed"), np.array(diverged, dtype=np.int64))
    with np.load(study.path / "probe_set.npz", allow_pickle=False) as z:
        x, y = z["x"], z["y"]
    if "point" in ds.dims and ds.sizes["point"] != len(x):
        warnings.warn("probe set size differs from the logged logits", stacklevel=2)
    if np.issubdtype(y.dtype, np.floating):
        ds["test_target"] = (("point", "output"), y.reshape(len(y), -1).astype(np.float64))
    else:  # class labels (point,) or token labels (point, position)
        ds["test_label"] = (("point", "position")[: y.ndim], y.astype(np.int64))
    ds = ds.assign_coords(
        width=present,
        **({"point": np.arange(ds.sizes["point"])} if "point" in ds.dims else {}),
        **({"output": np.arange(ds.sizes["output"])} if "output" in ds.dims else {}),
    )
    ds.attrs.update(
        name=manifest.get("name", ""),
        spec_hash=manifest["spec_hash"],
        parameterization=spec.get("parameterization", {}).get("name", ""),
        base_width=int(spec.get("base_width") or present[0]),
        spec=json.dumps(spec),
        skipped_records=skipped,
    )
    _attach_probe_coords(ds, spec)
    for width in present:  # coordinates recorded at run time (e.g. layer names)
        for cname, (dims, values) in study.width_dir(width).read_coords().items():
            fits = all(d in ds.dims for d in dims) and all(
                ds.sizes[d] == np.shape(values)[i] for i, d in enumerate(dims)
            )
            if cname not in ds.coords and fits:
                ds.coords[cname] = (tuple(dims), np.asarray(values))
    _annotate(ds)
    return ds


def _attach_probe_coords(ds: xr.Dataset, spec: dict) -> None:
    """Static coordinates a probe declares (``ProbeDef.coords``), from its logged options."""
    for name, options in (spec.get("probes") or {}).items():
        if name not in PROBES or PROBES.get(name).coords is None:
            continue
        coords = PROBES.get(name).coords(PROBES.validate_options(name, options))
        for cname, (dims, values) in coords.items():
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
