"""Figures of seed statistics and fits in width: bias/variance, power laws, sharpness,
coordinate check. Pure functions: DataArrays / Datasets in, a Figure out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullLocator

from widthwise.report.fig_curves import STEP, _widths, nan_stats, step_axes, width_lines
from widthwise.report.style import (
    MARKERS,
    figure_legend,
    has_zero_markers,
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
    zero_handle,
    zero_markers,
)

BAR_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52")


@styled
def bias_variance(
    final: xr.Dataset,
    curves: xr.Dataset | None = None,
    sizes: xr.DataArray | None = None,
    *,
    loss_name: str = "loss",
    widths: Sequence[float] | None = None,
) -> Figure:
    """Bias and variance over initialization (paper Fig. 7; Appendix F, H / Fig. 18).

    ``final``: :func:`widthwise.analysis.bias_variance` at one step, dims (width,):
    bars of the single-network loss, the ensemble loss, the variance gap (single −
    ensemble) and the bias gap (ensemble − widest ensemble). ``curves``: the same over
    training, dims (width, test_step): single (solid) vs ensemble (dashed) loss.
    ``sizes``: :func:`widthwise.analysis.ensemble_size_curve` at one step, dims
    (ensemble_size, width): loss of ensembles of k seeds. With ``variance`` finite at
    two widths or more, a panel draws the variance (and the bias) against width, log-log,
    with the reference slopes n^-1/2 and n^-1 (variance ∝ 1/n: paper Section 3).
    ``widths``: the colour scale (the study's widths).
    """
    drawn = final.width.values.tolist()
    against = "variance" in final and int(np.sum(positive(final["variance"].values) > 0)) >= 2
    n = 1 + (curves is not None) + (sizes is not None) + against
    # four panels do not fit one row legibly: two rows of two
    fig, grid = new_figure(2, 2) if n == 4 else new_figure(1, n)
    slots = iter(grid.flat)
    scale, colors = width_scale(widths, final)
    ax = next(slots)
    names = [
        ("single_loss", "single net"),
        ("ensemble_loss", "ensemble"),
        ("variance_gap", "variance gap"),
        ("bias_gap", "bias gap"),
    ]
    x = np.arange(len(drawn))
    bw = 0.8 / len(names)
    for i, (var, label) in enumerate(names):
        ax.bar(x + (i - 1.5) * bw, final[var].values, bw, color=BAR_COLORS[i], label=label)
    ax.set_xticks(x, [str(int(w)) for w in drawn])
    ax.grid(axis="x", visible=False)
    ax.axhline(0, color="0.3", lw=0.6)
    style_axes(ax, xlabel="width", ylabel=loss_name, title="loss split at the final step")
    bars = np.array([final[v].values for v, _ in names], dtype=np.float64)
    top = float(np.nanmax(bars)) if np.isfinite(bars).any() else np.nan
    if np.isfinite(top) and top > 0:
        ax.set_ylim(top=top * 1.5)  # room for the legend above the bars
    place_legend(
        ax,
        [Patch(color=BAR_COLORS[i], label=label) for i, (_, label) in enumerate(names)],
        ncols=2,
        fontsize=6.5,
        columnspacing=1.0,
        handlelength=1.2,
    )
    if curves is not None:
        ax = next(slots)
        one = curves["single_loss"]
        sparse = width_lines(ax, one, "test_step", colors, logx=True, logy=True)
        width_lines(
            ax,
            curves["ensemble_loss"],
            "test_step",
            colors,
            logx=True,
            logy=True,
            ls="--",
            marker="s" if sparse else None,
            sparse=sparse,
            slot=(1, 2) if sparse else (0, 1),
        )
        step_axes(
            ax,
            one,
            "test_step",
            sparse,
            ylabel=loss_name,
            title="single vs ensemble over training",
            logy=True,
        )
        mk = {"ls": "none"} if sparse else {}
        place_legend(
            ax,
            [
                Line2D([], [], color="0.3", marker="o" if sparse else None, label="single net", **mk),
                Line2D(
                    [], [], color="0.3", ls="none" if sparse else "--",
                    marker="s" if sparse else None, label="ensemble",
                ),
            ],
        )  # fmt: skip
    if against:
        _variance_vs_width(next(slots), final, colors)
    if sizes is not None:
        ax = next(slots)
        k = sizes.ensemble_size.values
        for w in drawn:
            (ln,) = ax.plot(k, positive(sizes.sel(width=w).values), "o-", color=colors[w], ms=3)
            ln.set_gid(width_gid(w))
        ax.set_xticks(k)
        ax.xaxis.set_minor_locator(NullLocator())
        style_axes(
            ax,
            xlabel="ensemble size (seeds averaged)",
            ylabel=loss_name,
            title="ensemble-size sufficiency",
            logy=True,
        )
    width_colorbar(fig, grid, scale, ticks=drawn)
    return fig


def _variance_vs_width(ax, final: xr.Dataset, colors: dict) -> None:
    """Variance over seeds (Eq. 10) and bias (Eq. 9, the widest left out: 0) against
    width, log-log, with theory's n^-1/2 and n^-1 from the narrowest width's variance."""
    w = final.width.values.astype(np.float64)
    var = positive(final["variance"].values)
    ax.plot(w, var, color="0.25", lw=1, zorder=2, label="variance")
    for wi, v in zip(final.width.values, var):
        (pt,) = ax.plot([wi], [v], "o", color=colors[wi], ms=4.5, zorder=3)
        pt.set_gid(width_gid(wi))
    if "bias" in final:
        narrower = final.width.values != final.width.values.max()
        ax.plot(  # solid, open squares: the dashed grey lines are the reference slopes
            w[narrower],
            positive(final["bias"].values[narrower]),
            "s-",
            color="0.45",
            mfc="white",
            ms=3.5,
            lw=0.9,
            zorder=2,
            label="bias",
        )
    style_axes(
        ax,
        xlabel="width",
        ylabel="variance, bias (Eq. 10, 9)",
        title="variance and bias vs width",
        logx=True,
        logy=True,
    )
    width_ticks(ax, w)
    first = np.flatnonzero(np.isfinite(var))
    if first.size:
        reference_slopes(ax, w[first[0] :], float(var[first[0]]))
    place_legend(ax, fontsize=6.5, handlelength=2.2)


def _fmt_ci(v: float, ci: np.ndarray) -> str:
    if not np.isfinite(v):
        return "n/a"
    if np.all(np.isfinite(ci)):
        return f"{v:.3g} [{ci[0]:.3g}, {ci[1]:.3g}]"
    return f"{v:.3g}"


def fit_label(fit: xr.Dataset) -> str:
    """'b = …, c = … [ci], R² = …' for a scalar power-law fit."""
    return (
        f"b = {_fmt_ci(float(fit.b), fit.b_ci.values)}\n"
        f"c = {_fmt_ci(float(fit.c), fit.c_ci.values)}\n"
        f"R² = {float(fit.r2):.3f}"
    )


FIT_LABEL = r"$a\,n^{-b} + c$"
C_LABEL = r"$c$ ($n \to \infty$)"


@styled
def power_law(
    fits: dict[str, tuple[xr.DataArray, xr.Dataset, xr.DataArray]],
    limit: xr.Dataset | None = None,
    limit_data: xr.DataArray | None = None,
    *,
    loss_name: str = "loss",
    widths: Sequence[float] | None = None,
) -> Figure:
    """Power-law fits L(n) = a·n^(−b) + c in width, with data and intervals (paper Fig. 9).

    ``fits`` maps a panel title to (data (width, seed), fit (scalar Dataset from
    :func:`widthwise.analysis.power_law_fit`), curve (width,) — the fit evaluated on a
    fine width grid). Points are seed means with the seed range; the line the fit; the
    dotted line and band c and its bootstrap interval (the infinite-width value). The
    fit's b, c and R² are in the legend's title, placed where it covers no data.
    ``limit``: :func:`widthwise.analysis.limit_curve` over ``test_step`` drawn in black
    with its interval over the per-width seed means of ``limit_data``; steps where the
    fitted c is 0 (off a log axis) are open markers on the bottom edge.
    """
    ncols = len(fits) + (limit is not None)
    fig, axes = new_figure(1, ncols, height=3.0)
    data_widths = sorted({w for data, _, _ in fits.values() for w in data.width.values.tolist()})
    scale, colors = width_scale(widths, *[d for d, _, _ in fits.values()], limit_data)
    for ax, (title, (data, fit, curve)) in zip(axes[0], fits.items()):
        vals = data.transpose("width", "seed").values.astype(np.float64)
        mean, lo, hi = nan_stats(vals, 1)
        for i, w in enumerate(data.width.values):
            err = np.array([[max(mean[i] - lo[i], 0)], [max(hi[i] - mean[i], 0)]])
            cont = ax.errorbar(
                [w],
                [mean[i]],
                yerr=np.nan_to_num(err),
                fmt="o",
                color=colors[w],
                ms=4,
                capsize=2,
                zorder=3,
            )
            cont.lines[0].set_gid(width_gid(w))
            for coll in cont.lines[2]:
                coll.set_gid(width_gid(w))
        (fit_line,) = ax.plot(curve.width.values, positive(curve.values), color="0.2", lw=1)
        handles, labels = [fit_line], [FIT_LABEL]
        c, c_ci = float(fit.c), fit.c_ci.values
        style_axes(ax, xlabel="width", ylabel=loss_name, title=title, logx=True, logy=True)
        shown = [positive(lo), positive(hi), positive(mean)]
        c_key: list = []
        span_ = None
        if np.isfinite(c) and c > 0:
            c_key.append(ax.axhline(c, color="0.4", ls=":", lw=0.8))
            shown.append(np.array([c]))
        if np.all(np.isfinite(c_ci)) and c_ci[1] > 0:
            finite = np.concatenate(shown)
            floor = np.nanmin(finite) / 3 if np.isfinite(finite).any() else c_ci[1] / 10
            span = ax.axhspan(max(c_ci[0], floor), c_ci[1], color="0.5", alpha=0.15, lw=0)
            span.set_gid("soft")
            c_key.insert(0, span)
            span_ = span
            shown.append(np.array([max(c_ci[0], floor), c_ci[1]]))
        if c_key:  # the dotted c over its band: one key
            handles.append(tuple(c_key))
            if len(c_key) == 2:
                labels.append(C_LABEL + ", 95 % interval")
            else:
                labels.append(C_LABEL if c_key[0] is not span_ else "$c$: 95 % interval")
        view = np.concatenate(shown)
        view = view[np.isfinite(view) & (view > 0)]
        if view.size:
            lo_y, hi_y = view.min(), view.max()
            pad = (hi_y / lo_y) ** 0.08 if hi_y > lo_y else 1.2
            ax.set_ylim(lo_y / pad, hi_y * pad)
        width_ticks(ax, data.width.values)
        leg = place_legend(
            ax,
            handles,
            labels,
            title=fit_label(fit),
            title_fontsize=7,
            alignment="left",
            frameon=True,
            framealpha=0.9,
            edgecolor="0.8",
            borderpad=0.5,
        )
        leg.get_frame().set_linewidth(0.5)
    if limit is not None:
        ax = axes[0, -1]
        if limit_data is not None:
            width_lines(
                ax, limit_data, "test_step", colors, logx=True, logy=True, band=False, lw=0.9
            )
        x = limit.test_step.values.astype(np.float64)
        keep = x > 0
        c = limit.limit.values[keep]
        finite = c[np.isfinite(c)]
        logy = bool(finite.size and np.mean(finite > 0) >= 0.5)  # mostly c = 0: linear
        ci = limit.limit_ci.transpose("test_step", "bound").values[keep]
        tr = positive if logy else np.asarray
        # markers: a step between two c = 0 steps is a lone point a line would miss
        ax.plot(
            x[keep],
            tr(c),
            color="k",
            lw=1.6,
            marker="o",
            ms=2.5,
            label=r"extrapolated $n \to \infty$",
        )
        band = ax.fill_between(x[keep], tr(ci[:, 0]), tr(ci[:, 1]), color="k", alpha=0.15, lw=0)
        band.set_gid("limit band")
        handles, labels = ax.get_legend_handles_labels()
        if logy and zero_markers(ax, x[keep], np.where(c <= 0, 0.0, c), color="k"):
            z = zero_handle()
            z.set_label("$c = 0$ (off the log scale)")
            handles.append(z)
        style_axes(
            ax,
            xlabel=STEP,
            ylabel=loss_name,
            title="infinite-width limit over training",
            logx=True,
            logy=logy,
        )
        if logy:  # the interval's low end may reach far below the data: clip the view
            shown = [positive(c)]
            if limit_data is not None:
                shown.append(positive(limit_data.values.ravel()))
            low = np.nanmin(np.concatenate(shown))
            if np.isfinite(low):
                ax.set_ylim(bottom=low / 1.5)
        place_legend(ax, handles)
    width_colorbar(fig, axes, scale, ticks=data_widths or None)
    return fig


@styled
def sharpness(
    da: xr.DataArray,
    thresholds: dict[str, float],
    *,
    ylabel: str = "top Hessian eigenvalue",
    widths: Sequence[float] | None = None,
) -> Figure:
    """Sharpness over training per width, with stability thresholds (paper Fig. 6a).

    ``da`` (width, seed, sharpness_step): the top eigenvalue; ``thresholds`` maps a
    label (e.g. '2/lr') to a value drawn as a horizontal line. With fewer than
    ``SPARSE_STEPS`` recorded steps (the usual schedule: a few steps) each step is a
    marker per width with the seed range as error bar, at exactly the recorded steps.
    """
    fig, axes = new_figure(1, 1, height=2.8)
    ax = axes[0, 0]
    scale, colors = width_scale(widths, da)
    sparse = width_lines(ax, da, "sharpness_step", colors)
    handles = []
    for i, (label, value) in enumerate(thresholds.items()):
        ls = ("--", ":")[i % 2]
        ax.axhline(value, color="crimson", ls=ls, lw=0.9)
        handles.append(Line2D([], [], color="crimson", ls=ls, lw=0.9, label=label))
    if thresholds:
        top = max([*thresholds.values(), float(np.nanmax(da.values))])
        ax.set_ylim(bottom=0, top=top * 1.25)  # room for the legend above the threshold lines
    step_axes(
        ax,
        da,
        "sharpness_step",
        sparse,
        ylabel=ylabel,
        title="sharpness over training",
        logx=False,
    )
    if handles:
        place_legend(ax, handles)
    width_colorbar(fig, axes, scale, ticks=_widths(da))
    return fig


@styled
def coord_check(da: xr.DataArray) -> Figure:
    """Coordinate size per layer vs width after each of the first steps (coordinate check).

    ``da`` (width, [seed], layer, step) from :func:`widthwise.coord_check` (seed mean
    drawn). Flat lines in width mean the parameterization has a width-independent
    limit; growth means it blows up (sp). A value that is exactly 0 (a
    zero-initialised readout before the first step) cannot sit on the log axis: it is
    an open marker on the bottom edge.
    """
    return _coord_rows({"": da})


@styled
def coord_check_rows(checks: dict[str, xr.DataArray]) -> Figure:
    """Several coordinate checks, one row each (e.g. ``{"mup": …, "sp": …}``: muP above
    SP, ``widthwise coord-check --compare sp``), one y range per row."""
    return _coord_rows(checks)


def _coord_rows(checks: dict[str, xr.DataArray]) -> Figure:
    means = {
        k: da.mean("seed", keep_attrs=True) if "seed" in da.dims else da for k, da in checks.items()
    }
    first = next(iter(means.values()))
    steps = first.step.values
    fig, axes = new_figure(len(means), len(steps), sharey="row")
    handles: dict[str, Any] = {}
    for row, (label, da) in zip(axes, means.items()):
        along = "depth" if "depth" in da.dims else "width"
        w = da[along].values
        for ax, s in zip(row, steps):
            for i, layer in enumerate(da.layer.values):
                y = da.sel(step=s, layer=layer).values
                ax.plot(
                    w,
                    positive(y),
                    marker=MARKERS[i % len(MARKERS)],
                    ms=3,
                    color=f"C{i}",
                    label=str(layer),
                )
                zero_markers(ax, w, y, color=f"C{i}", marker=MARKERS[i % len(MARKERS)])
            title = f"after {int(s)} step{'s' if s != 1 else ''}"
            style_axes(
                ax,
                xlabel=along,
                ylabel=da.attrs.get("units", "mean |coordinate|") if s == steps[0] else "",
                title=f"{label} — {title}" if label else title,
                logx=True,
                logy=True,
            )
            width_ticks(ax, w)
        hs, ls = row[0].get_legend_handles_labels()
        for h, lab in zip(hs, ls):
            handles.setdefault(lab, h)
    out = list(handles.values())
    if any(has_zero_markers(a) for a in axes.flat):
        out.append(zero_handle())
    figure_legend(fig, out, where="right upper")
    return fig
