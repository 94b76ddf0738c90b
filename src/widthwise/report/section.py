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

from widthwise.sweep import describe_point_divergence

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
    """The loss the study trained with (``open_study``'s ``attrs["loss"]``; else the
    spec's, else 'cross_entropy' when labels were recorded, 'mse' otherwise)."""
    for loss in (ds.attrs.get("loss"), spec_of(ds).get("loss")):
        if loss in ("mse", "cross_entropy"):
            return loss
    return "cross_entropy" if "test_label" in ds else "mse"


def loss_label(ds: xr.Dataset) -> str:
    return "cross-entropy (nats)" if loss_kind(ds) == "cross_entropy" else "MSE"


def target_of(ds: xr.Dataset) -> xr.DataArray | None:
    """Probe-set targets as stored: ``test_label`` (class or token labels) or
    ``test_target`` (regression), carrying the study's loss in ``attrs["loss"]`` (the
    analysis one-hot encodes labels for mse, as the trainer did)."""
    target = ds["test_label"] if "test_label" in ds else ds.get("test_target")
    if target is not None:
        target = target.assign_attrs(loss=loss_kind(ds))
    return target


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


# -- partial studies: which width reached which step ----------------------------------


def _step_dims(ds: xr.Dataset) -> list[str]:
    return [d for d in ds.dims if d == "step" or str(d).endswith("_step")]


def last_reached(ds: xr.Dataset) -> xr.DataArray:
    """(width,) the last step each width reached; +inf for a finished (``done``) width.

    An unfinished width reached the larger of its status's ``step_reached`` and the last
    step at which any of its members recorded a finite value (a killed run may have
    logged past its last checkpoint). Steps beyond it hold NaN in the Dataset: nothing
    there is data, and nothing comparing widths is computed there.
    """
    done = ds["status"] == "done" if "status" in ds else xr.full_like(ds.width, True, bool)
    last = (
        ds["step_reached"].astype(np.float64)
        if "step_reached" in ds
        else xr.full_like(ds.width, -1.0, np.float64)
    )
    for var in [] if bool(done.all()) else ds.data_vars.values():
        if "width" not in var.dims or var.dtype.kind != "f":
            continue
        for sd in (d for d in var.dims if d in _step_dims(ds)):
            finite = np.isfinite(var).any([d for d in var.dims if d not in ("width", sd)])
            seen = ds[sd].where(finite).max(sd, skipna=True).fillna(-1)
            last = np.maximum(last, seen)
    return xr.where(done, np.inf, last).rename("last_reached")


def reached(ds: xr.Dataset, step_dim: str) -> xr.DataArray:
    """(width, step_dim) True where the width reached that step (see :func:`last_reached`)."""
    return (ds[step_dim] <= last_reached(ds)).transpose("width", step_dim).rename("reached")


def common_steps(ds: xr.Dataset, step_dim: str) -> np.ndarray:
    """The steps of ``step_dim`` that every width reached (all of them in a finished study)."""
    ok = reached(ds, step_dim).all("width")
    return ds[step_dim].values[ok.values]


def is_partial(ds: xr.Dataset) -> bool:
    """Some width is not done, or a width of the manifest has no results yet."""
    planned = [int(w) for w in ds.attrs.get("planned_widths", ds.width.values)]
    present = {int(w) for w in ds.width.values}
    unfinished = "status" in ds and bool((ds["status"] != "done").any())
    return unfinished or any(w not in present for w in planned)


@dataclass
class Banner:
    """What a partial or diverged study is missing, shown above every section.

    ``widths``: one (width, state, line) per width of the study's manifest, ``state``
    the word ``widthwise show`` prints (``open_study``'s ``status``).
    """

    headline: str
    widths: list[tuple[int, str, str]]
    notes: list[str] = field(default_factory=list)


def study_banner(ds: xr.Dataset) -> Banner | None:
    """The banner of a partial or diverged study (None for a finished one without
    diverged members): which widths are not done, the step each reached out of
    ``steps``, diverged members per width, and what the analysis leaves out."""
    diverged = ds.get("diverged_step")
    any_div = diverged is not None and bool((diverged >= 0).any())
    partial = is_partial(ds)
    if not (partial or any_div):
        return None
    steps = ds.attrs.get("steps", spec_of(ds).get("steps", -1))
    of = f" of {steps}" if isinstance(steps, int) and steps >= 0 else ""
    planned = [int(w) for w in ds.attrs.get("planned_widths", ds.width.values)]
    present = [int(w) for w in ds.width.values]
    reached_at = ds.get("step_reached")
    rows, not_done = [], []
    for w in planned:
        if w not in present:
            rows.append((w, "not started", f"width {w}: not started (no results)"))
            not_done.append(w)
            continue
        state = str(ds["status"].sel(width=w).item()) if "status" in ds else "unknown"
        parts = [f"width {w}: {state}"]
        step = -1 if reached_at is None else int(reached_at.sel(width=w))
        if state != "done":
            not_done.append(w)
            parts.append(f"reached step {step}{of}" if step >= 0 else "step reached unknown")
        damage = str(ds["damage"].sel(width=w).item()) if "damage" in ds else ""
        if damage:  # what is missing or damaged on disk (never shown as a clean "done")
            parts.append(f"{damage}; `widthwise run` recomputes it")
        if diverged is not None:
            text = _diverged_members(diverged.sel(width=w))
            if text:
                parts.append(text)
        rows.append((w, state, "; ".join(parts)))
    notes = []
    if partial:
        headline = (
            f"Partial study: {len(planned) - len(not_done)} of {len(planned)} widths are done; "
            f"not done: {', '.join(map(str, not_done))}."
        )
        test = common_steps(ds, "test_step") if "test_step" in ds.dims else np.array([])
        notes.append(
            "Everything that compares widths at a step (distance to the widest, successive "
            "differences, verdicts, bias and variance, power laws) leaves out, as NaN, the "
            "widths that did not reach that step; no value is shown for them there."
            + (
                f" Verdicts and final-step comparisons are at step {int(test[-1])}, the last "
                "test step every width reached."
                if len(test)
                else ""
            )
        )
    else:
        headline = "Diverged members: every width is done, but some members diverged."
    if any_div:
        notes.append(
            "A diverged member is frozen at the step it diverged and left out of every mean "
            "from then on."
        )
    return Banner(headline, rows, notes)


def _diverged_members(d: xr.DataArray) -> str:
    """'1/4 diverged: seed 2 at step 13'; in a sweep study (d: (lr, ..., seed)) one entry
    per sweep point, '7/36 diverged: lr=1: 4/4 at steps 3–5, lr=0.5: 3/4 at step 9'."""
    extra = [k for k in d.dims if k != "seed"]
    if not extra:
        dead = [(int(s), int(t)) for s, t in zip(d.seed.values, d.values) if t >= 0]
        at = ", ".join(f"seed {s} at step {t}" for s, t in dead)
        return f"{len(dead)}/{d.sizes['seed']} diverged: {at}" if dead else ""
    flat = d.transpose(*extra, "seed").stack(_point=extra).transpose("_point", "seed")
    points = [{k: float(flat[k].values[i]) for k in extra} for i in range(flat.sizes["_point"])]
    steps = flat.values.ravel()  # point-major member ids, as the store's
    return describe_point_divergence(
        points, d.sizes["seed"], {m: int(t) for m, t in enumerate(steps) if t >= 0}
    )


def fmt_width(w: float) -> str:
    return "—" if not np.isfinite(w) else str(int(w))
