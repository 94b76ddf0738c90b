"""The report's first section: the consistency horizon t*(n) (paper Sections 2-3).

"The effective width required to reach infinite-width behavior increases with
training time": for each width and recorded quantity, the last step up to which it
agrees with the widest within the tolerance, with its interval, and the dual — the
narrowest width that agrees at each step. The numbers are
:func:`widthwise.analysis.study_horizon.study_horizons`; the caption is the sentence
:func:`~widthwise.analysis.study_horizon.horizon_summary` states (``widthwise show``
prints the same one).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from widthwise.analysis.study_horizon import START, loss_quantity, study_horizons
from widthwise.report import fig_horizon
from widthwise.report.section import TOL, Panel, Section, fmt_width

HORIZON_VARS = (
    "horizon",
    "horizon_hi",
    "horizon_estimate",
    "reaches_end",
    "ever_consistent",
    "stop_step",
    "stop_verdict",
    "stop_reason",
)
DUAL_VARS = ("min_width", "min_width_lo", "min_width_estimate")


def _cell(row: xr.Dataset) -> str:
    """'180 [180, 240]', 'whole run (399)', 'never', 'never [≤ 40]' for one width."""
    t, hi = int(row["horizon"]), int(row["horizon_hi"])
    if bool(row["reaches_end"]):
        return f"whole run ({t})"
    if t < 0:
        return "never" + (f" [≤ {hi}]" if hi >= 0 else "")
    return f"{t}" + (f" [{t}, {hi}]" if hi > t else "")


def horizon_tables(h: xr.Dataset) -> dict[str, pd.DataFrame]:
    """Tidy tables: one row per (quantity, width) and per recorded (quantity, step)."""
    per_width = h[list(HORIZON_VARS)].to_dataframe().reset_index()
    steps = h[["first_step", "last_step", "step_dim"]].to_dataframe().reset_index()
    per_width = per_width.merge(steps, on="quantity")
    per_width.insert(2, "reference_width", h.attrs.get("reference_width"))
    per_width["tolerance"] = h.attrs["tolerance"]
    dual = h[[*DUAL_VARS, "recorded"]].to_dataframe().reset_index()
    dual = dual[dual.pop("recorded").astype(bool)].reset_index(drop=True)
    return {"horizon": per_width, "consistent_width": dual}


def horizon_section(ds: xr.Dataset, tol: float = TOL) -> Section | None:
    """t*(n) per width and quantity, with the loss sentence as caption; None with one width."""
    if ds.sizes.get("width", 0) < 2:
        return None
    try:
        h = study_horizons(ds, tol)
    except ValueError:  # AnalysisError: nothing recorded after the initial step
        return None
    names = [str(q) for q in h.quantity.values]
    q = loss_quantity(ds)
    lead = q if q in names else names[0]
    sentence = str(h["sentence"].sel(quantity=lead).item())
    ref = h.attrs.get("reference_width")
    sec = Section(
        id="horizon",
        title="Consistency horizon",
        paper="Sections 2-3, Fig. 2-4",
        text=(
            "How long does each width behave like the widest? t*(n) is the last step up "
            "to which width n agrees with the widest width "
            f"({ref}, the infinite-width proxy) at every step judged: the distance of its "
            "seed mean to the widest's — relative loss gap, scaled RMSE of the ensemble "
            "logits, relative Frobenius distance of the kernels — has a seed-bootstrap "
            f"95 % interval whose upper end is ≤ {tol:g} ({tol:.0%}). The interval of t* "
            "reaches the optimistic horizon, up to which the lower end is ≤ the "
            f"tolerance. Steps from {START} on are judged (step 0 is the initial "
            "network). The dual is the narrowest width that agrees at a step, as does "
            "every wider one: the paper's claim is that t*(n) grows with n, and the "
            "width needed grows with training time."
        ),
        facts=[(name, str(h["sentence"].sel(quantity=name).item())) for name in names],
        panels=[Panel("horizon", fig_horizon.horizon(h), sentence)],
    )
    header = ["quantity", *(f"width {fmt_width(float(w))}" for w in h.width.values)]
    rows = []
    for name in names:
        row = h.sel(quantity=name)
        rows.append([name, *(_cell(row.sel(width=w)) for w in h.width.values)])
    sec.table = (header, rows)
    sec.tables.update(horizon_tables(h))
    if not np.asarray(h["ever_consistent"]).any():
        sec.notes.append(
            f"No width agrees with the widest within {tol:g} at any step judged: "
            "more widths, more seeds (tighter intervals) or a wider range would tell."
        )
    return sec
