"""What a report is made of: sections holding figures, facts and tidy tables.

A section builder looks at a study's Dataset, returns ``None`` when the study did not
record what the section needs, and otherwise a :class:`Section` whose figures and
tables come from the *same* analysis arrays, so every plotted number is in a CSV.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

TOL = 0.05
"""Tolerance of the consistency verdicts: relative successive difference ≤ 5 %."""


@dataclass
class Panel:
    """One figure of a section; ``name`` is its file stem (figures/<name>.png/.svg)."""

    name: str
    figure: Figure
    caption: str


@dataclass
class Section:
    """A report section: ``id`` is its HTML anchor, ``paper`` the paper figure it mirrors."""

    id: str
    title: str
    paper: str
    text: str
    panels: list[Panel] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    facts: list[tuple[str, str]] = field(default_factory=list)
    table: tuple[list[str], list[list[str]]] | None = None  # header, rows (HTML table)
    notes: list[str] = field(default_factory=list)


def tidy(obj: xr.DataArray | xr.Dataset, name: str = "value") -> pd.DataFrame:
    """Long ("tidy") table of an array: one row per entry, one column per dim and coord."""
    if isinstance(obj, xr.DataArray):
        obj = obj.rename(obj.name or name).to_dataset()
    if not obj.dims:
        return pd.DataFrame([{k: _scalar(v.values) for k, v in obj.variables.items()}])
    return obj.to_dataframe().reset_index()


def _scalar(v: np.ndarray) -> Any:
    return v.item() if hasattr(v, "item") else v


def spec_of(ds: xr.Dataset) -> dict[str, Any]:
    """The study's validated spec (the JSON stored in the Dataset's attrs)."""
    try:
        return json.loads(ds.attrs.get("spec", "{}"))
    except (TypeError, ValueError):
        return {}


def loss_kind(ds: xr.Dataset) -> str:
    """'cross_entropy' for classification studies (labels recorded), else 'mse'."""
    spec_loss = spec_of(ds).get("loss")
    if spec_loss:
        return spec_loss
    return "cross_entropy" if "test_label" in ds else "mse"


def loss_label(ds: xr.Dataset) -> str:
    return "cross-entropy (nats)" if loss_kind(ds) == "cross_entropy" else "MSE"


def target_of(ds: xr.Dataset) -> xr.DataArray | None:
    """Probe-set targets: ``test_label`` (classification) or ``test_target`` (regression)."""
    if loss_kind(ds) == "cross_entropy" and "test_label" in ds:
        return ds["test_label"]
    return ds.get("test_target")


def has(ds: xr.Dataset, *names: str) -> bool:
    """All variables present and holding at least one finite value."""
    for n in names:
        if n not in ds:
            return False
        v = ds[n]
        if v.dtype.kind == "f" and not bool(np.isfinite(v).any()):
            return False
    return True


FLAT = "flattened_sample_dims"


def flatten_samples(ds: xr.Dataset) -> xr.Dataset:
    """The study with the probe set's extra sample dims folded into ``point``.

    Sequence streams log ``test_logits`` (..., point, position, output) and labels
    (point, position); the report treats every (sequence, position) pair as one probe
    "point", so every analysis sees (..., point, output) and (point,). The dims that
    were folded are listed in ``attrs[FLAT]`` (then the targets no longer match the
    kernel probes' points, which index sequences).
    """
    if "test_logits" not in ds:
        return ds
    extra = [d for d in ds.test_logits.dims if d not in ("width", "seed", "test_step", "output")]
    if extra == ["point"]:
        return ds

    def fold(da: xr.DataArray) -> xr.DataArray:
        dims = [d for d in extra if d in da.dims]
        stacked = da.stack(_sample=dims).reset_index("_sample", drop=True)
        stacked = stacked.drop_vars(dims, errors="ignore").rename(_sample="point")
        order = [d for d in da.dims if d not in dims[1:]]  # point where the first one was
        stacked = stacked.transpose(*["point" if d == dims[0] else d for d in order])
        return stacked.assign_coords(point=np.arange(stacked.sizes["point"]))

    # everything on the old sample dims goes (only the probe-set arrays live there)
    gone = [n for n, v in ds.variables.items() if set(v.dims) & set(extra)]
    out = ds.drop_vars(gone)
    for name in ("test_logits", "test_label", "test_target"):
        if name in ds and set(extra) <= set(ds[name].dims):
            out[name] = fold(ds[name])
    out.attrs[FLAT] = ", ".join(extra)
    return out


def fmt_width(w: float) -> str:
    return "—" if not np.isfinite(w) else str(int(w))
