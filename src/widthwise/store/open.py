"""``open_study``: a study directory as one xarray.Dataset (schema in docs/dataset.md)."""

from __future__ import annotations

import contextlib
import json
import zipfile
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
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
from widthwise.store.records import WidthRecords, load_width, status_values
from widthwise.store.study_dir import StudyDir
from widthwise.summary import width_state
from widthwise.sweep import SWEEP_KEYS, stored_sweep_values

__all__ = ["open_study", "status_values", "study_layout", "training_loss_of"]

STUDY = declare(
    Schema(
        "study",
        None,
        (
            Dim("width", "the study's widths (those with results)", "widths"),
            Dim("seed", "seed ids (`seeds: 4` → 0, 1, 2, 3)", "seed ids"),
            Dim(
                "depth",
                "a depth study's depths (`depths: [...]`, docs/depth.md): one width study each",
                "depths",
            ),
            *(
                Dim(key, f"a sweep's {key} (`sweep: {{{key}: [...]}}`, docs/sweeps.md)", "values")
                for key in SWEEP_KEYS
            ),
            Dim("point", "a point of the fixed probe (test) set", "0 … probe_points−1"),
            Dim("position", "position in a sequence (sequence models)"),
            Dim("output", "output unit (1 for scalar regression, C for C classes)", "0 … C−1"),
            Dim("probe", "a probe of the spec (`missing_records`)", "probe names"),
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
                "`widthwise run` resumes it); `failed` (its status.json says why); `damaged` "
                "(records its status.json says were logged are missing or damaged on disk: "
                "`damage` says which, `widthwise run` recomputes them); `unknown` "
                "(status.json missing, unreadable, failing its checksum or another width's)",
            ),
            Var(
                "missing_records",
                ("width", "probe"),
                "records",
                "records of the probe that the width's status.json says were logged but that "
                "are missing or damaged on disk (scalar lines, array files and coords.json "
                "each count one); 0 for an intact width (and for stores older than the count)",
            ),
            Var(
                "damage",
                ("width",),
                "",
                "what is missing or damaged, in words (`24 records missing in "
                "scalars.jsonl`); empty for an intact width",
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
    manifest = study.read_manifest()  # widths and seeds checked, its checksum verified
    return manifest, list(manifest["widths"]), list(manifest["seeds"])


def _width_dataset(records: WidthRecords, seeds: list[int]) -> xr.Dataset:
    """One width's variables on their probes' step coordinates (``records`` checked by
    :func:`widthwise.store.records.load_width`)."""
    data: dict[str, xr.DataArray] = {}
    for (probe, name), by_step in records.scalars.items():
        steps = sorted(by_step)
        values = np.array([by_step[s] for s in steps], dtype=np.float64)  # (step, seed)
        sd = _step_dim(probe)
        data[name] = xr.DataArray(values.T, dims=("seed", sd), coords={"seed": seeds, sd: steps})
    for (probe, name), (dims, by_step) in records.arrays.items():
        sd = _step_dim(probe)
        steps = sorted(by_step)
        stacked = np.stack([by_step[s] for s in steps], axis=1)  # (seed, step, ...)
        dims = _current(dims)
        data[name] = xr.DataArray(
            stacked, dims=(dims[0], sd, *dims[1:]), coords={"seed": seeds, sd: steps}
        )
    return xr.Dataset(data)


def open_study(path: str | PathLike[str]) -> xr.Dataset:
    """Load a study directory as one Dataset with dims (width, seed, step, point, output, ...).

    A depth study (``depths: [...]``) gets a leading ``depth`` dim
    (:func:`widthwise.depth_study.open_depth_study`).

    Each probe has its own step coordinate (``step`` for ``train_loss``, ``test_step``
    for ``test``, ...); widths that have not reached a step hold NaN there. Torn
    scalar lines, partial array files, records failing their checksum and files of
    another width are skipped (and counted in ``attrs["skipped_records"]``), never
    reported as data. What a width's status says was logged but is not on disk intact
    is counted per probe in ``missing_records`` (width, probe) and said in ``damage``
    (width); such a width's ``status`` is ``damaged``, never ``done``. A ``spec.yaml``
    that is not the spec the manifest's hash records is a one-line :class:`StoreError`. Diverged members are NaN
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
    from widthwise.depth_study import is_depth_study, open_depth_study

    if is_depth_study(path):  # depths: [...] — one width study per depth, stacked
        return open_depth_study(path)
    study = StudyDir(Path(path))
    if not study.path.is_dir():
        raise StoreError(f"{study.path}: not a widthwise study (not a directory)")
    manifest, widths, seeds = study_layout(study)
    spec = study.read_spec_dict()
    problem = study.stored_spec_problem(manifest, spec)
    if problem:
        raise StoreError(
            f"{problem}; `widthwise run SPEC --out DIR` with the study's spec rewrites it"
        )
    per_width, present, skipped = [], [], 0
    statuses, walls, diverged, reached, damages, coords = [], [], [], [], [], []
    for width in widths:
        wd = study.width_dir(width)
        if not wd.path.is_dir():
            continue
        records = load_width(wd.path, len(seeds), width)
        skipped += records.bad
        ws = width_state(study, width, seeds, records)  # the state `widthwise show` prints
        per_width.append(_width_dataset(records, seeds))
        present.append(width)
        statuses.append(ws.state)
        walls.append(ws.wall_time)
        diverged.append([ws.diverged.get(s, -1) for s in seeds])
        reached.append(ws.step if ws.step is not None else -1)
        damages.append(ws.damage)
        coords.append(records.coords)
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
    probes = _probe_names(spec, damages)
    ds["missing_records"] = (
        ("width", "probe"),
        np.array(
            [[d.records(p) if d else 0 for p in probes] for d in damages], dtype=np.int64
        ).reshape(len(present), len(probes)),
    )
    ds["damage"] = ("width", np.array([d.describe() if d else "" for d in damages], dtype=str))
    ds = ds.assign_coords(probe=np.array(probes, dtype=str))
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
    for recorded in coords:  # coordinates recorded at run time (e.g. layer names)
        for cname, (dims, values) in recorded.items():
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
    sweep = manifest.get("sweep")
    return ds if not sweep else _unstack_sweep(ds, sweep, study.path, spec.get("sweep"))


def _unstack_sweep(ds: xr.Dataset, sweep: Any, where: Path, spec_sweep: Any) -> xr.Dataset:
    """A sweep study's member dim (point-major: member = point · n_seeds + seed index)
    as one dim per sweep key before ``seed``: e.g. ``train_loss`` (width, lr, seed, step);
    ``attrs["sweep"]`` = {key: values}, in the spec's key order, which the points follow.

    (:func:`widthwise.sweep.stored_sweep_values`).
    """
    values = stored_sweep_values(sweep, spec_sweep)
    seeds = sweep.get("seeds") if isinstance(sweep, dict) else 0
    ok = (
        isinstance(values, dict)
        and all(k in SWEEP_KEYS and isinstance(v, list) and v for k, v in values.items())
        and isinstance(seeds, list)
        and int(np.prod([len(v) for v in values.values()])) * len(seeds) == ds.sizes["seed"]
    )
    if not ok:
        raise StoreError(f"{where / 'manifest.json'}: corrupt sweep entry; the study is unreadable")
    keys = list(values)
    index = pd.MultiIndex.from_product([*values.values(), seeds], names=[*keys, "seed"])
    ds = ds.rename({"seed": "member"})
    ds = ds.assign_coords(xr.Coordinates.from_pandas_multiindex(index, "member")).unstack("member")
    for name in ds.data_vars:  # the sweep dims just before seed, as documented
        dims = list(ds[name].dims)
        if "seed" in dims:
            rest = [d for d in dims if d not in (*keys, "seed")]
            at = dims.index("width") + 1 if "width" in dims else 0
            order = [*rest[:at], *keys, "seed", *rest[at:]]
            ds[name] = ds[name].transpose(*order)
    ds.attrs["sweep"] = {k: list(v) for k, v in values.items()}
    return ds


def _probe_names(spec: dict[str, Any], damages: list[Any]) -> list[str]:
    """The ``probe`` coordinate: the spec's probes, then any other a damage names."""
    probes = spec.get("probes")
    names = [str(p) for p in probes] if isinstance(probes, dict) else []
    for d in damages:
        names += [p for p in (d.missing if d else {}) if p not in names]
    return names


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
