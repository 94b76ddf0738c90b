"""Figures overlaying several studies: colour per width, linestyle per study (pure)."""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from widthwise.report.fig_curves import STEP, nan_stats, robust_ylim, width_lines
from widthwise.report.style import (
    LINESTYLES,
    MARKERS,
    new_figure,
    positive,
    style_axes,
    styled,
    width_colorbar,
    width_colors,
    width_ticks,
)


def _all_widths(panels: dict[str, dict[str, xr.DataArray]]) -> list[int]:
    """Every width any study in any panel has, sorted (one shared colour scale)."""
    return sorted(
        {
            w
            for studies in panels.values()
            for da in studies.values()
            for w in da.width.values.tolist()
        }
    )


def _study_legend(ax, labels: list[str], *, markers: bool = False) -> None:
    handles = [
        Line2D(
            [],
            [],
            color="0.25",
            ls=LINESTYLES[i % len(LINESTYLES)],
            marker=MARKERS[i % len(MARKERS)] if markers else None,
            ms=4,
            label=label,
        )
        for i, label in enumerate(labels)
    ]
    ax.legend(handles=handles, loc="best")


@styled
def overlay_curves(
    panels: dict[str, dict[str, xr.DataArray]],
    *,
    xdims: dict[str, str],
    ylabel: dict[str, str],
    logy: bool = True,
) -> Figure:
    """One panel per quantity; in each, every study's curves (width, seed, x) coloured by
    width with one linestyle per study. ``panels[title][study] = DataArray``."""
    fig, axes = new_figure(1, len(panels))
    widths = _all_widths(panels)
    colors = width_colors(widths)
    for ax, (title, studies) in zip(axes[0], panels.items()):
        for i, da in enumerate(studies.values()):
            width_lines(
                ax,
                da,
                xdims[title],
                colors,
                logx=True,
                logy=logy,
                ls=LINESTYLES[i % len(LINESTYLES)],
                band=False,
            )
        style_axes(ax, xlabel=STEP, ylabel=ylabel[title], title=title, logx=True, logy=logy)
        robust_ylim(ax, list(studies.values()), logy=logy)
    _study_legend(axes[0, 0], list(next(iter(panels.values()))))
    width_colorbar(fig, axes, widths)
    return fig


@styled
def overlay_vs_width(panels: dict[str, dict[str, xr.DataArray]], *, ylabel: str) -> Figure:
    """Final values against width, one line per study (seed mean, range as error bars).

    ``panels[title][study]`` is a DataArray (width, seed). Points are coloured by width.
    """
    fig, axes = new_figure(1, len(panels))
    widths = _all_widths(panels)
    colors = width_colors(widths)
    for ax, (title, studies) in zip(axes[0], panels.items()):
        for i, da in enumerate(studies.values()):
            vals = da.transpose("width", "seed").values.astype(np.float64)
            mean, lo, hi = nan_stats(vals, 1)
            w = da.width.values
            err = np.nan_to_num(
                np.stack([np.clip(mean - lo, 0, None), np.clip(hi - mean, 0, None)])
            )
            ax.errorbar(
                w, positive(mean), yerr=err, color="0.3", ls=LINESTYLES[i % 4], lw=1, capsize=2
            )
            for j, wj in enumerate(w):
                ax.plot(
                    [wj],
                    [positive(mean)[j]],
                    marker=MARKERS[i % 4],
                    color=colors[wj],
                    ms=5,
                    ls="none",
                    zorder=3,
                )
        style_axes(ax, xlabel="width", ylabel=ylabel, title=title, logx=True, logy=True)
        width_ticks(ax, widths)
        if ax is axes[0, 0]:
            _study_legend(ax, list(studies), markers=True)
    width_colorbar(fig, axes, widths)
    return fig
