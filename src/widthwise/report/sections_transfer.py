"""The report's learning-rate transfer section (μTransfer: Yang et al. 2022, Fig. 1).

Drawn for sweep studies (``sweep: {lr: [...]}``): the final training and test loss
against the swept value per width, the optimum per width with its seed-bootstrap
interval, and the verdict whether it moves by at most the tolerance factor from the
narrowest width to the widest. Numbers: :mod:`widthwise.analysis.transfer`; every
sentence of the caption is computed from them. The other sections of the report show
the study at one sweep point, the tuned one (:func:`tuned_note` says which).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from widthwise.analysis._checks import AnalysisError
from widthwise.analysis.transfer import (
    TOL_FACTOR,
    loss_at,
    optimal_lr,
    select_point,
    sweep_dims,
    transfer_sentence,
    transfer_verdict,
    tuned_point,
    tuning_width,
)
from widthwise.report import fig_transfer
from widthwise.report.section import Panel, Section, fmt_width, has, loss_label, tidy

QUANTITIES = (("train_loss", "final training loss"), ("test_loss", "final test loss"))


def _num(x: float) -> str:
    return f"{x:.3g}" if np.isfinite(x) else "—"


def point_text(point: dict[str, float]) -> str:
    """``lr = 0.0625, sigma = 1`` (a sweep point, as the report names it)."""
    return ", ".join(f"{k} = {v:.3g}" for k, v in point.items())


def tuned_note(ds: xr.Dataset, point: dict[str, float] | None = None) -> str:
    """'Other sections show lr = 0.0625, the optimum at width 1024 (lowest final training
    loss, seed mean; points where a member diverged excluded).'"""
    point = tuned_point(ds) if point is None else point
    if not point:
        return ""
    w = tuning_width(ds)
    var = "training" if "train_loss" in ds else "test"
    if not np.isfinite(w):
        return (
            f"Other sections show {point_text(point)}, the first sweep point: no point has a "
            f"finite final {var} loss."
        )
    return (
        f"Other sections show {point_text(point)}, the optimum at width {fmt_width(w)} "
        f"(lowest final {var} loss, seed mean, on the grid; points where a member diverged "
        "excluded)."
    )


def edge_sentence(opt: xr.Dataset, dim: str) -> str:
    """Which widths' optima sit at the grid edge (or beside a diverged point)."""
    low = [fmt_width(w) for w in opt.width.values[(opt["edge"] == "low").values]]
    high = [fmt_width(w) for w in opt.width.values[(opt["edge"] == "high").values]]
    near = [fmt_width(w) for w in opt.width.values[opt["next_to_diverged"].values]]
    grid = opt[dim].values
    parts = []
    if low:
        parts.append(f"at the smallest {dim} ({grid.min():.3g}) at width {', '.join(low)}")
    if high:
        parts.append(f"at the largest {dim} ({grid.max():.3g}) at width {', '.join(high)}")
    if not parts:
        text = f"No width's optimum sits at the edge of the {dim} grid."
    else:
        text = (
            f"The optimum sits at the grid edge {' and '.join(parts)}: it may lie beyond the "
            "grid (not extrapolated; verdicts with that width are undetermined)."
        )
    if near:
        text += (
            f" At width {', '.join(near)} the optimum is a grid point next to one where a "
            "member diverged (no parabola through an infinite loss)."
        )
    return text


def diverged_sentence(opt: xr.Dataset, dim: str) -> str:
    """How many members diverged at which grid value and width."""
    nd, nm = opt["n_diverged"], opt["n_members"]
    total = int(nd.sum())
    if total == 0:
        return "No member diverged."
    parts = []
    for v in opt[dim].values:
        d, m = nd.sel({dim: v}), nm.sel({dim: v})
        hit = [(fmt_width(w), int(d.sel(width=w)), int(m.sel(width=w))) for w in d.width.values]
        hit = [h for h in hit if h[1] > 0]
        if not hit:
            continue
        if len(hit) == d.sizes["width"] and all(h[1] == h[2] for h in hit):
            parts.append(f"{dim} {v:.3g} (every member of every width)")
        else:
            parts.append(
                f"{dim} {v:.3g} (" + ", ".join(f"width {w}: {a}/{b}" for w, a, b in hit) + ")"
            )
    return (
        f"{total} of {int(nm.sum())} members diverged, counted as infinite loss (never an "
        "optimum): at " + "; ".join(parts) + "."
    )


def pair_text(row: xr.Dataset) -> str:
    """'64→128: ×0.499 [0.488, 0.509], undetermined' (one pair, no other dims)."""
    a, b = fmt_width(float(row["width_from"])), fmt_width(float(row["width_to"]))
    f, lo, hi = (
        float(row[k].max()) if row[k].ndim else float(row[k])
        for k in ("factor", "factor_lo", "factor_hi")
    )
    iv = f" [{_num(lo)}, {_num(hi)}]" if np.isfinite(lo) and np.isfinite(hi) else ""
    words = sorted({str(x) for x in np.asarray(row["verdict"].values).ravel()})
    return f"{a}→{b}: ×{_num(f)}{iv}, {'/'.join(words)}"


def _interval_cell(o: xr.Dataset) -> str:
    x, lo, hi = float(o["optimum"]), float(o["optimum_lo"]), float(o["optimum_hi"])
    if not np.isfinite(x):
        return "not measured"
    cell = _num(x) + (f" [{_num(lo)}, {_num(hi)}]" if np.isfinite(lo) and np.isfinite(hi) else "")
    if str(o["edge"].item()):
        cell += f" (grid edge, {o['edge'].item()})"
    elif bool(o["next_to_diverged"]):
        cell += " (next to divergence)"
    return cell


def transfer_tables(
    results: dict[str, tuple[xr.DataArray, xr.Dataset, xr.Dataset | None]], dim: str
) -> dict[str, pd.DataFrame]:
    """Tidy tables: optimum per (quantity, width), seed means and members per (quantity,
    width, grid value), the verdicts per (quantity, pair)."""
    opt_rows, loss_rows, verdict_rows = [], [], []
    for var, (loss, opt, verdict) in results.items():
        per_width = [
            "optimum",
            "optimum_lo",
            "optimum_hi",
            "grid_optimum",
            "loss_at_optimum",
            "at_edge",
            "edge",
            "next_to_diverged",
            "n_seeds",
        ]
        df = opt[per_width].drop_vars(dim, errors="ignore").to_dataframe().reset_index()
        df.insert(0, "quantity", var)
        opt_rows.append(df)
        cells = opt[["loss_mean", "n_diverged", "n_members"]].to_dataframe().reset_index()
        cells.insert(0, "quantity", var)
        loss_rows.append(cells)
        members = tidy(loss.reset_coords("diverged"), var).rename(columns={var: "loss"})
        members.insert(0, "quantity", var)
        loss_rows.append(members)
        if verdict is not None:
            v = verdict.to_dataframe().reset_index()
            v.insert(0, "quantity", var)
            v["tol_factor"] = verdict.attrs["tol_factor"]
            verdict_rows.append(v)
    out = {
        "transfer_optimum": pd.concat(opt_rows, ignore_index=True),
        "transfer_loss": pd.concat(loss_rows, ignore_index=True),
    }
    if verdict_rows:
        out["transfer_verdict"] = pd.concat(verdict_rows, ignore_index=True)
    return out


def transfer_results(
    ds: xr.Dataset, *, tol_factor: float = TOL_FACTOR, n_boot: int = 1000
) -> tuple[str, dict[str, tuple[xr.DataArray, xr.Dataset, xr.Dataset | None]]]:
    """(dim, {var: (members, optimum, verdict or None)}) at the tuned values of the other
    sweep dims; the verdict is None with a single width."""
    dims = sweep_dims(ds)
    dim = "lr" if "lr" in dims else dims[0]
    tuned = tuned_point(ds)
    others = {d: tuned[d] for d in dims if d != dim}
    base = select_point(ds, others) if others else ds
    if others:
        base = base.assign_attrs(sweep={dim: ds.attrs.get("sweep", {}).get(dim, [])})
    results = {}
    for var, _ in QUANTITIES:
        if not has(base, var):
            continue
        loss = loss_at(base, var)
        opt = optimal_lr(loss, dim, n_boot=n_boot)
        v = transfer_verdict(opt, tol_factor) if opt.sizes.get("width", 0) >= 2 else None
        results[var] = (loss, opt, v)
    return dim, results


def transfer_section(
    ds: xr.Dataset, *, tol_factor: float = TOL_FACTOR, n_boot: int = 1000
) -> Section | None:
    """Loss against the swept value per width, optima and verdict; None without sweep dims
    or a recorded loss."""
    dims = sweep_dims(ds)
    if not dims or not any(has(ds, v) for v, _ in QUANTITIES):
        return None
    try:
        dim, results = transfer_results(ds, tol_factor=tol_factor, n_boot=n_boot)
    except AnalysisError as err:  # e.g. fewer than 3 grid values
        return Section(
            id="transfer",
            title="Learning-rate transfer",
            paper="Yang et al. 2022, Fig. 1",
            text=f"No optimum can be located: {err}",
        )
    titles = dict(QUANTITIES)
    lead_var = next(iter(results))
    _, lead_opt, lead_v = results[lead_var]
    sentences = {
        var: (transfer_sentence(v) if v is not None else "one width: no verdict")
        for var, (_, _, v) in results.items()
    }
    lead = sentences[lead_var]
    caption = (
        f"{titles[lead_var].capitalize()}: {lead}. {edge_sentence(lead_opt, dim)} "
        f"{diverged_sentence(lead_opt, dim)}"
    )
    panels = {titles[var]: (loss, opt) for var, (loss, opt, _) in results.items()}
    fig = fig_transfer.transfer(
        panels,
        dim=dim,
        ylabel=loss_label(ds),
        widths=ds.width.values.tolist(),
        tol_factor=tol_factor if lead_v is not None else None,
    )
    steps = {var: loss.attrs["steps"] for var, (loss, _, _) in results.items()}
    when = "; ".join(
        f"{titles[var]}: {'steps' if len(s) > 1 else 'step'} "
        + (f"{s[0]}–{s[-1]}" if len(s) > 1 else f"{s[0]}")
        for var, s in steps.items()
    )
    log = lead_opt.attrs.get("scale", "log") == "log"  # the fit's axis (a grid with 0: linear)
    expect = (
        " Under μP the optimum should stay put; under SP with SGD it moves roughly ∝ 1/width."
        if dim == "lr"
        else " Under μP the optimum should stay put."
    )
    sec = Section(
        id="transfer",
        title="Learning-rate transfer" if dim == "lr" else f"Transfer of {dim}",
        paper="Yang et al. 2022 (Tensor Programs V), Fig. 1",
        text=(
            f"Does the optimal {dim} carry over from narrow to wide? Each width trained every "
            f"{dim} of the sweep with every seed. Per width: the seed-mean final loss at each "
            f"{dim} ({when}; every width reached these), its minimum on the grid refined by "
            f"the parabola through it and its two neighbours in {'log ' if log else ''}{dim}, "
            "and a 95 % "
            "seed-bootstrap interval (each width's seeds resampled with their whole curves). "
            "A member that diverged counts as infinite loss. The verdict compares the "
            "narrowest width's optimum with the widest's: it transfers when the interval "
            f"of the factor between them lies within [1/{tol_factor:g}, {tol_factor:g}] "
            f"(tolerance ×{tol_factor:g}: one step of a ×2 grid, fixed in advance), does not "
            "transfer when it lies outside, and is undetermined otherwise (straddles, an "
            f"optimum at the grid edge, fewer than 2 seeds).{expect}"
        ),
        facts=[(f"verdict, {titles[var]}", s) for var, s in sentences.items()],
        panels=[Panel("transfer", fig, caption)],
    )
    for var, (_, _, v) in results.items():
        if v is None:
            continue
        steps_ = [
            pair_text(v.sel(pair=p))
            for p in v.pair.values
            if str(v.kind.sel(pair=p).item()) != "ends"
        ]
        if steps_:
            sec.facts.append((f"consecutive widths, {titles[var]}", "; ".join(steps_)))
    header = ["width", *(f"optimal {dim}, {titles[var]} [95 %]" for var in results)]
    rows = []
    for w in lead_opt.width.values:
        rows.append(
            [
                fmt_width(float(w)),
                *(_interval_cell(opt.sel(width=w)) for _, opt, _ in results.values()),
            ]
        )
    sec.table = (header, rows)
    sec.tables.update(transfer_tables(results, dim))
    others = [d for d in dims if d != dim]
    if others:
        tuned = tuned_point(ds)
        sec.notes.append(
            f"The sweep also varies {', '.join(others)}: shown at "
            f"{point_text({d: tuned[d] for d in others})}, the tuned point."
        )
    note = tuned_note(ds)
    if note:
        sec.notes.append(note)
    return sec
