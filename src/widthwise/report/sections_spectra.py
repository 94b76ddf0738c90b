"""The Hessian spectrum across widths: the sharpness probe's SLQ density per width, the
trace over training, per-layer curvature (paper Fig. 6a's consistency question asked
of the whole spectrum; ``widthwise.analysis.spectra``)."""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from widthwise.analysis import spectra
from widthwise.report.fig_curves import step_axes, width_lines
from widthwise.report.section import Panel, Section, has, tidy
from widthwise.report.sections_repr import fmt
from widthwise.report.style import new_figure, place_legend, style_axes, styled, width_scale

OPERATORS = ("sharpness_lr", "sharpness", "sharpness_precond")
WHAT = {
    "sharpness": "H",
    "sharpness_lr": "Λ^½HΛ^½",
    "sharpness_precond": "P⁻¹H",
}


def _operator(ds: xr.Dataset, suffix: str) -> str | None:
    return next((v for v in OPERATORS if has(ds, f"{v}{suffix}")), None)


def _last_step(da: xr.DataArray, step_dim: str = "sharpness_step") -> object | None:
    ok = np.isfinite(da).any([d for d in da.dims if d != step_dim])
    steps = da[step_dim].values[ok.values]
    return steps[-1] if steps.size else None


@styled
def density_per_width(mean: xr.Dataset, *, xlabel: str, widths=None) -> Figure:
    """Seed-mean spectral density per width (``mean``: density, grid (width, bin)) on a
    log density axis."""
    fig, axes = new_figure(1, 1, height=2.8)
    ax = axes[0, 0]
    _, colors = width_scale(widths, mean.density)
    handles = []
    floor = np.inf
    for w in mean.width.values:
        g, d = mean.grid.sel(width=w).values, mean.density.sel(width=w).values
        if not np.isfinite(d).any():
            continue
        peak = np.nanmax(d)
        floor = min(floor, peak * 1e-6)
        ax.plot(g, np.clip(d, peak * 1e-6, None), color=colors[w], lw=1.0)
        handles.append(Line2D([], [], color=colors[w], label=f"width {w}"))
    style_axes(ax, xlabel=xlabel, ylabel="density", title="Hessian spectral density", logy=True)
    if np.isfinite(floor):
        ax.set_ylim(bottom=floor)
    if handles:
        place_legend(ax, handles)
    return fig


@styled
def trace_over_training(da: xr.DataArray, *, ylabel: str, widths=None) -> Figure:
    """Trace (width, seed, sharpness_step) over training: seed mean and range per width."""
    fig, axes = new_figure(1, 1, height=2.8)
    ax = axes[0, 0]
    _, colors = width_scale(widths, da)
    sparse = width_lines(ax, da, "sharpness_step", colors)
    step_axes(
        ax, da, "sharpness_step", sparse, ylabel=ylabel, title="trace over training", logx=False
    )
    return fig


def spectra_section(ds: xr.Dataset) -> Section | None:
    """Density per width at the last recorded step, its W1 distance to the widest, the
    trace over training and per-layer curvature against the widest; None without
    ``density``, ``trace`` or ``blocks`` data."""
    dvar, tvar, bvar = (
        _operator(ds, "_density"),
        _operator(ds, "_trace"),
        _operator(ds, "_block_top"),
    )
    if dvar is None and tvar is None and bvar is None:
        return None
    panels: list[Panel] = []
    tables = {}
    text: list[str] = []
    widths = ds.width.values
    if dvar is not None:
        dens, grid = ds[f"{dvar}_density"], ds[f"{dvar}_density_grid"]
        step = _last_step(dens)
        if step is not None:
            mean = spectra.density_mean(
                dens.sel(sharpness_step=step), grid.sel(sharpness_step=step)
            )
            fig = density_per_width(mean, xlabel=f"eigenvalue of {WHAT[dvar]}", widths=widths)
            panels.append(
                Panel(
                    "spectral_density",
                    fig,
                    f"Seed-mean SLQ density of {WHAT[dvar]} at step {step}, one line per width "
                    "(Gaussian broadening as recorded; density floored at 10⁻⁶ of its peak).",
                )
            )
            w1 = spectra.density_w1_to_widest(dens, grid, relative=True)
            tables["spectral_density_w1"] = tidy(w1.rename("w1_relative"))
            last = w1.sel(sharpness_step=step)
            parts = [
                f"{w}: {fmt(float(v))}"
                for w, v in zip(last.width.values, last.values)
                if w != widths.max()
            ]
            if parts:
                text.append(
                    f"W1 distance of each width's density to the widest's at step {step}, "
                    f"in units of the widest density's standard deviation: {', '.join(parts)}."
                )
    if tvar is not None:
        tr = ds[f"{tvar}_trace"]
        panels.append(
            Panel(
                "hessian_trace",
                trace_over_training(tr, ylabel=f"tr {WHAT[tvar]}", widths=widths),
                "Hutchinson trace: seed mean (line or marker) and range over seeds per width.",
            )
        )
        tables["hessian_trace"] = tidy(tr.rename(f"{tvar}_trace"))
        step = _last_step(tr)
        if step is not None and tr.sizes["width"] >= 2:
            c = spectra.curvature_to_widest(tr.sel(sharpness_step=step))
            bad = [int(w) for w, ok in zip(c.width.values, c.consistent.values) if not ok]
            text.append(
                f"Trace at step {step}: "
                + (
                    "every width agrees with the widest within two standard errors over seeds."
                    if not bad
                    else f"widths {', '.join(map(str, bad))} differ from the widest by more "
                    "than two standard errors over seeds."
                )
            )
    if bvar is not None:
        top = ds[f"{bvar}_block_top"]
        step = _last_step(top)
        if step is not None:
            at = top.sel(sharpness_step=step).mean("seed")
            tables["block_top"] = tidy(top.rename(f"{bvar}_block_top"))
            wide = at.sel(width=widths.max())
            lead = str(wide.sharpness_layer.values[int(np.nanargmax(wide.values))])
            text.append(
                f"The diagonal block with the largest top eigenvalue at the widest width "
                f"(step {step}) is {lead}."
            )
    return Section(
        id="spectra",
        title="Hessian spectrum",
        paper="Fig. 6 a (whole spectrum)",
        text=" ".join(text) or "Hessian spectrum and trace as recorded by the sharpness probe.",
        panels=panels,
        tables=tables,
    )
