"""Figures of several studies side by side: one column per study, colour per width (pure).

Like the paper's Fig. 15 (muP vs SP): each study gets its own panel, the panels of a
quantity share their y range (so a higher curve is a higher loss), and one width has
one colour in every panel — the colour scale is the union of every study's widths
(or ``widths``), keyed by one colour bar.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from widthwise.report.fig_curves import nan_stats, robust_ylim, step_axes, width_lines
from widthwise.report.style import (
    PANEL_H,
    figure_legend,
    new_figure,
    place_legend,
    positive,
    reference_slopes,
    style_axes,
    styled,
    width_colorbar,
    width_gid,
    width_scale,
    width_ticks,
)


def _all_widths(panels: dict[str, dict[str, xr.DataArray]]) -> list:
    """Every width any study in any panel has, sorted (one shared colour scale)."""
    return sorted(
        {
            w
            for studies in panels.values()
            for da in studies.values()
            for w in da.width.values.tolist()
        }
    )


def grid_of(panels: dict[str, dict[str, xr.DataArray]]) -> list[list[tuple[str, str, bool]]]:
    """The layout of ``panels[title][study]``: rows of (title, study, present) cells.

    One row per quantity (title) and one column per study, in the order first seen; a
    study without that quantity leaves its cell empty (``present`` False). Where no
    quantity has more than one study (e.g. ``{"muP, loss": {"muP": a}, "SP, loss":
    {"SP": b}}``), one row with a column per panel.
    """
    if all(len(studies) <= 1 for studies in panels.values()):
        return [[(title, s, True) for title, studies in panels.items() for s in studies]]
    order: list[str] = []
    for studies in panels.values():
        order += [s for s in studies if s not in order]
    return [[(title, s, s in studies) for s in order] for title, studies in panels.items()]


def _cell_title(title: str, study: str, one_row: bool) -> str:
    if one_row and study.lower() in title.lower():
        return title
    return f"{study} — {title}"


def _layout(panels):
    grid = grid_of(panels)
    nrows, ncols = len(grid), max(len(r) for r in grid)
    fig, axes = new_figure(nrows, ncols, height=PANEL_H * nrows + (0.1 if nrows == 1 else 0))
    return grid, fig, axes


def _share_y(axes_row, logy: bool) -> None:
    """One y range for the panels of a row (the union of their views)."""
    live = [ax for ax in axes_row if ax.get_visible() and ax.axison]
    if len(live) < 2:
        return
    lims = np.array([ax.get_ylim() for ax in live], dtype=np.float64)
    lo, hi = float(np.nanmin(lims[:, 0])), float(np.nanmax(lims[:, 1]))
    if logy and lo <= 0:
        return
    for ax in live:
        ax.set_ylim(lo, hi)


def _empty(ax, title: str, study: str) -> None:
    ax.set_axis_off()
    ax.text(
        0.5,
        0.5,
        f"{study}: no {title}",
        ha="center",
        va="center",
        transform=ax.transAxes,
        color="0.45",
        fontsize=7,
    )


def _cells(grid, axes, panels):
    """Yield (row index, ax, title, study, DataArray) for every present cell of the grid;
    an absent cell is greyed (:func:`_empty`) and skipped."""
    for r, row in enumerate(grid):
        for c, (title, study, present) in enumerate(row):
            ax = axes[r, c]
            if not present:
                _empty(ax, title, study)
                continue
            yield r, ax, title, study, panels[title][study]


@styled
def overlay_curves(
    panels: dict[str, dict[str, xr.DataArray]],
    *,
    xdims: dict[str, str],
    ylabel: dict[str, str],
    logy: bool = True,
    widths: Sequence[float] | None = None,
) -> Figure:
    """Curves over training, one panel per (quantity, study): rows are the quantities
    (titles), columns the studies (:func:`grid_of`); ``panels[title][study]`` is a
    DataArray (width, [seed], xdims[title]), drawn as the seed mean coloured by width
    (the union of the studies' widths, or ``widths``). The panels of a row share their
    y range."""
    grid, fig, axes = _layout(panels)
    scale, colors = width_scale(widths, *[da for s in panels.values() for da in s.values()])
    one_row = len(grid) == 1
    for _, ax, title, study, da in _cells(grid, axes, panels):
        sparse = width_lines(ax, da, xdims[title], colors, logx=True, logy=logy, band=False)
        step_axes(
            ax,
            da,
            xdims[title],
            sparse,
            ylabel=ylabel[title],
            title=_cell_title(title, study, one_row),
            logy=logy,
        )
        robust_ylim(ax, [da], logy=logy)
    if not one_row or len({ylabel[t] for t in panels}) == 1:
        for r in range(len(grid)):
            _share_y(axes[r], logy)
    width_colorbar(fig, axes, scale, ticks=_all_widths(panels))
    return fig


@styled
def overlay_vs_width(
    panels: dict[str, dict[str, xr.DataArray]],
    *,
    ylabel: str,
    widths: Sequence[float] | None = None,
    reference: bool = True,
) -> Figure:
    """Final values against width, one panel per (quantity, study) as
    :func:`overlay_curves` lays them out: the seed mean with the range over seeds as
    error bars, a grey line through the widths and a marker per width in its colour;
    ``reference``: the slopes n^-1/2 and n^-1 from the narrowest width's value (for
    distances and variances; a loss approaching an offset c has none, as in the
    power-law panels). ``panels[title][study]`` is a DataArray (width, seed).
    """
    grid, fig, axes = _layout(panels)
    scale, colors = width_scale(widths, *[da for s in panels.values() for da in s.values()])
    one_row = len(grid) == 1
    for _, ax, title, study, da in _cells(grid, axes, panels):
        if "seed" not in da.dims:
            da = da.expand_dims(seed=[0])
        vals = da.transpose("width", "seed").values.astype(np.float64)
        mean, lo, hi = nan_stats(vals, 1)
        w = da.width.values
        with np.errstate(invalid="ignore"):  # diverged members: inf − inf
            err = np.stack([np.clip(mean - lo, 0, None), np.clip(hi - mean, 0, None)])
            err[0] = np.minimum(err[0], mean * 0.999)  # keep bars on the log axis
        ax.errorbar(w, positive(mean), yerr=np.nan_to_num(err), color="0.3", lw=1, capsize=2)
        for j, wj in enumerate(w):
            (pt,) = ax.plot(
                [wj], [positive(mean)[j]], "o", color=colors[wj], ms=5, ls="none", zorder=3
            )
            pt.set_gid(width_gid(wj))
        style_axes(
            ax,
            xlabel="width",
            ylabel=ylabel,
            title=_cell_title(title, study, one_row),
            logx=True,
            logy=True,
        )
        width_ticks(ax, w)
        finite = np.flatnonzero(np.isfinite(positive(mean)))
        if reference and finite.size >= 2:
            reference_slopes(ax, w[finite[0] :], float(mean[finite[0]]))
            place_legend(ax, fontsize=6.5)
    for r in range(len(grid)):
        _share_y(axes[r], True)
    width_colorbar(fig, axes, scale, ticks=_all_widths(panels))
    return fig


@styled
def transfer_panels(
    panels: dict[str, dict[str, tuple[xr.DataArray, xr.Dataset]]],
    *,
    dim: str = "lr",
    ylabel: str = "loss",
    widths: Sequence[float] | None = None,
) -> Figure:
    """The μTransfer panels side by side (Yang et al. 2022, Fig. 1: μP left, SP right):
    loss against ``dim`` (log x) per width, one row per quantity (titles), one column per
    study; ``panels[title][study]`` = (members (width, dim, seed), optimum Dataset
    (width,)), drawn by :func:`widthwise.report.fig_transfer.draw_transfer`. The panels of
    a row share their y range; one width colour scale (the union of the studies')."""
    from widthwise.report import fig_transfer as ft

    grid, fig, axes = _layout(panels)
    scale, colors = width_scale(widths, *[p[0] for s in panels.values() for p in s.values()])
    one_row = len(grid) == 1
    flags = {"diverged": False, "edge": False, "seeds": False}
    for _, ax, title, study, (loss, opt) in _cells(grid, axes, panels):
        d = ft.draw_transfer(ax, loss, opt, colors, dim=dim)
        flags["diverged"] |= d["diverged"]
        flags["edge"] |= d["edge"]
        flags["seeds"] |= loss.sizes.get("seed", 1) > 1
        style_axes(
            ax,
            xlabel=ft.sweep_label(dim),
            ylabel=ylabel,
            title=_cell_title(title, study, one_row),
            logx=True,
            logy=True,
        )
        ft.grid_ticks(ax, d["grid"], max_labels=5)
        ft.set_view(ax, d["values"], d["grid"], logy=True)
    for r in range(len(grid)):
        _share_y(axes[r], True)
    handles = ft.legend_handles(**flags)
    figure_legend(fig, handles, ncols=min(len(handles), 3))
    ticks = sorted({w for s in panels.values() for p in s.values() for w in p[1].width.values})
    width_colorbar(fig, axes, scale, ticks=ticks)
    return fig
