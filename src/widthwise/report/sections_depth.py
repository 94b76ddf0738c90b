"""The report of a depth study (``depths: [...]``, :mod:`widthwise.depth_study`): each
depth's own width-study report, and one page of what changes along depth.

The along-depth page shows, per width, the training-loss curves of every depth (the
paper's consistency question asked of depth: does a deeper network of the same width
train like the deepest?), the final training loss against depth with its seed range,
and the computed sentences: the consistency horizon against the deepest
(:func:`widthwise.depth_study.depth_horizons`) and, with an lr sweep, whether the
optimal lr moves with depth (:func:`widthwise.depth_study.depth_transfer`). Every
sentence is computed from the numbers in its CSV.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from widthwise.analysis._checks import AnalysisError
from widthwise.depth_study import (
    at_tuned_point,
    depth_dirname,
    depth_horizons,
    depth_transfer,
    final_loss_along_depth,
)
from widthwise.report.fig_curves import width_lines
from widthwise.report.section import Panel, Section, loss_label, tidy
from widthwise.report.style import (
    new_figure,
    style_axes,
    styled,
    width_colorbar,
    width_colors,
    width_ticks,
)


def final_loss_by_depth(ds: xr.Dataset) -> xr.DataArray:
    """Each member's final training loss (mean of its last 10 steps that every depth of
    its width reached), (width, depth, seed); NaN for a member that diverged."""
    parts = []
    for w in ds["width"].values.tolist():
        loss = final_loss_along_depth(ds, w)
        parts.append(loss.where(~loss.coords["diverged"]).drop_vars("diverged"))
    return xr.concat(parts, dim=ds["width"]).rename("final_train_loss")


@styled
def _figure(ds: xr.Dataset, final: xr.DataArray, ylabel: str) -> Figure:
    widths = ds["width"].values.tolist()
    fig, axes = new_figure(1, 2)
    left, right = axes[0]
    deep = ds["depth"].values.tolist()
    colors = width_colors(deep)
    curves = ds["train_loss"].sel(width=widths[-1], drop=True).rename(depth="width")
    width_lines(left, curves, "step", colors, logx=True, logy=True)
    style_axes(
        left,
        xlabel="step",
        ylabel=ylabel,
        title=f"training loss at width {widths[-1]}, per depth",
        logx=True,
        logy=True,
    )
    width_colorbar(fig, left, deep, label="depth")
    for i, w in enumerate(widths):
        vals = final.sel(width=w).values  # (depth, seed)
        mean = np.nanmean(vals, axis=1)
        lo, hi = np.nanmin(vals, axis=1), np.nanmax(vals, axis=1)
        right.errorbar(
            deep,
            mean,
            yerr=[mean - lo, hi - mean],
            color=f"C{i}",
            marker="o",
            capsize=3,
            label=f"width {w}",
        )
    style_axes(
        right,
        xlabel="depth",
        ylabel=f"final {ylabel}",
        title="final training loss against depth (seed range)",
        logx=True,
    )
    width_ticks(right, deep)
    right.legend()
    return fig


def depth_section(ds: xr.Dataset) -> Section | None:
    """The along-depth section of a depth study's Dataset (dims depth, width, seed, ...);
    None with fewer than 2 depths or no training loss."""
    if "depth" not in ds.dims or ds.sizes["depth"] < 2 or "train_loss" not in ds:
        return None
    at_ds, at = at_tuned_point(ds)
    try:
        final = final_loss_by_depth(at_ds)
    except AnalysisError:
        return None
    horizons, transfer = depth_horizons(ds), depth_transfer(ds)
    deep = [int(d) for d in ds["depth"].values]
    text = (
        f"Depths {', '.join(map(str, deep))}, each a width study of its own{at}; the "
        f"deepest (depth {deep[-1]}) is the reference, as the widest is along width. "
    )
    lines = list(horizons.values()) + list(transfer.values())
    text += " ".join(lines) if lines else "No width has a training loss at every depth yet."
    mean = final.mean("seed")
    spread = [
        f"width {int(w)}: {float(mean.sel(width=w).min()):.3g}–{float(mean.sel(width=w).max()):.3g}"
        for w in final["width"].values
        if np.isfinite(mean.sel(width=w).values).any()
    ]
    facts = [("final training loss over depths (seed mean)", "; ".join(spread) or "—")]
    facts += [("depth studies", ", ".join(f"{depth_dirname(d)}/report/report.html" for d in deep))]
    return Section(
        id="depth",
        title="Along depth",
        paper="Sections 2-3 asked of depth (Bordelon et al. 2023; Yang et al. 2023)",
        text=text,
        panels=[
            Panel(
                "depth_loss",
                _figure(at_ds, final, loss_label(ds)),
                "Left: seed-mean training loss of every depth at the widest width (band: "
                "seed range). Right: each member's final training loss (mean of its last 10 "
                "steps), seed mean with the seed range, against depth.",
            )
        ],
        tables={"depth_final_loss": tidy(final)},
        facts=facts,
    )
