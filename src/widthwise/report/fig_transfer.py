"""The μTransfer figure: loss against the swept learning rate, one line per width (pure).

Yang et al. 2022 (Tensor Programs V), Fig. 1: under μP the curves of every width share
their minimum; under SP it drifts. Input is :func:`widthwise.analysis.transfer.loss_at`
(members, with their ``diverged`` coordinate) and
:func:`~widthwise.analysis.transfer.optimal_lr` (seed means, optima); nothing is read
or written here. Lines are coloured by width on the study's scale
(:mod:`widthwise.report.style`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, NullLocator
from matplotlib.transforms import blended_transform_factory

from widthwise.report.style import (
    figure_legend,
    new_figure,
    style_axes,
    styled,
    width_colorbar,
    width_gid,
    width_scale,
    width_ticks,
)

DIVERGED_GID = "diverged"
OPTIMUM_GID = "optimum"
TOP_SPAN = 4.0  # the view reaches at most this many times the lowest seed mean


def sweep_label(dim: str) -> str:
    return _SWEEP_LABELS.get(dim, dim)


_SWEEP_LABELS = {
    "lr": "learning rate",
    "weight_decay": "weight decay",
    "sigma": "init scale σ",
    "momentum": "SGD momentum",
    "beta1": "Adam β₁",
    "beta2": "Adam β₂",
    "eps": "Adam ε",
}


def grid_ticks(ax, grid: np.ndarray, max_labels: int = 7) -> None:
    """A tick at every grid value of a log x axis, labelled (3 significant digits) at most
    ``max_labels`` times, the largest always."""
    g = np.sort(np.asarray(grid, dtype=np.float64))
    every = -(-len(g) // max_labels)
    labels = [
        f"{v:.3g}".replace("-", "\N{MINUS SIGN}") if (len(g) - 1 - i) % every == 0 else ""
        for i, v in enumerate(g)
    ]
    ax.xaxis.set_major_locator(FixedLocator(g))
    ax.set_xticks(g, labels)
    ax.xaxis.set_minor_locator(NullLocator())


def draw_transfer(
    ax, loss: xr.DataArray, opt: xr.Dataset, colors: dict, *, dim: str, logx: bool = True
) -> dict:
    """Draw one panel: per width the seed-mean loss against ``dim`` (the grid points where
    no member diverged) with the range over seeds shaded, the fitted optimum (a star on
    the curve at the parabola's vertex, the 95 % interval as a horizontal bar; open at the grid
    edge), and × markers at the top edge over the points where a member diverged
    (stacked by width). ``loss``: (width, dim, seed); ``opt``: its optimum over (width,).
    Returns what was drawn: ``lows`` / ``highs`` (finite seed means, for the view),
    ``diverged``, ``edge`` (bool), ``grid``.
    """
    grid = np.asarray(np.sort(opt[dim].values), dtype=np.float64)
    loss = loss.sortby(dim).transpose("width", dim, "seed")
    div = loss.coords["diverged"].values if "diverged" in loss.coords else np.isposinf(loss.values)
    top = blended_transform_factory(ax.transData, ax.transAxes)
    widths = list(opt.width.values)
    drawn = {"values": [], "diverged": False, "edge": False, "grid": grid}
    for i, w in enumerate(widths):
        c, gid = colors[w], width_gid(w)
        mean = opt["loss_mean"].sel(width=w).values.astype(np.float64)
        vals = np.where(div[i], np.nan, loss.sel(width=w).values.astype(np.float64))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, hi = np.nanmin(vals, 1), np.nanmax(vals, 1)
        ok = np.isfinite(mean)
        y = np.where(ok, mean, np.nan)
        (line,) = ax.plot(grid, y, color=c, lw=1.2, marker="o", ms=2.8, zorder=2)
        line.set_gid(gid)
        if loss.sizes["seed"] > 1:
            band = ax.fill_between(
                grid, np.where(ok, lo, np.nan), np.where(ok, hi, np.nan), color=c, alpha=0.15, lw=0
            )
            band.set_gid(f"{gid} band")
        drawn["values"].extend(y[ok].tolist())
        bad = np.isposinf(mean)
        if bad.any():
            drawn["diverged"] = True
            (x,) = ax.plot(
                grid[bad],
                np.full(int(bad.sum()), 0.975 - 0.035 * i),
                ls="none",
                marker="x",
                ms=4,
                mew=1.1,
                color=c,
                transform=top,
                clip_on=False,
                zorder=4,
            )
            x.set_gid(f"{DIVERGED_GID} {gid}")
        o = opt.sel(width=w)
        xo = float(o["optimum"])
        yo = on_curve(grid, y, xo, logx=logx) if np.isfinite(xo) else float("nan")
        if not (np.isfinite(xo) and np.isfinite(yo)):
            continue
        edge = bool(o["at_edge"])
        drawn["edge"] |= edge
        lo_x, hi_x = float(o["optimum_lo"]), float(o["optimum_hi"])
        if np.isfinite(lo_x) and np.isfinite(hi_x):
            err = np.array([[max(xo - lo_x, 0.0)], [max(hi_x - xo, 0.0)]])
            bar = ax.errorbar(
                [xo], [yo], xerr=err, color=c, lw=1.0, capsize=2.5, ls="none", zorder=5
            )
            for part in (*bar.lines[1], *bar.lines[2]):
                part.set_gid(f"{OPTIMUM_GID} {gid}")
        (star,) = ax.plot(
            [xo],
            [yo],
            ls="none",
            marker="*",
            ms=8,
            mfc="white" if edge else c,
            mec="0.15" if not edge else c,
            mew=0.7 if not edge else 1.2,
            zorder=6,
        )
        star.set_gid(f"{OPTIMUM_GID} {gid}")
        drawn["values"].append(yo)
    return drawn


def on_curve(grid: np.ndarray, y: np.ndarray, x: float, *, logx: bool = True) -> float:
    """Where the star sits: the drawn seed-mean curve at ``x`` (linear between the grid
    points on the log-log axes). Display only: the parabola's own minimum can lie below
    every drawn point, which would put the star off the curve it marks."""
    ok = np.isfinite(y) & (y > 0)
    if not ok.any():
        return float("nan")
    if not logx:  # a grid with 0 (momentum, weight decay): linear in x
        return float(np.exp(np.interp(x, grid[ok], np.log(y[ok]))))
    return float(np.exp(np.interp(np.log(x), np.log(grid[ok]), np.log(y[ok]))))


def set_view(
    ax, values: Sequence[float], grid: np.ndarray, *, logy: bool, logx: bool = True
) -> None:
    """x: the grid, padded; y: from the lowest seed mean to at most :data:`TOP_SPAN` times
    it (curves at large lr leave through the top), leaving room for the × markers."""
    g = np.asarray(grid, dtype=np.float64)
    if logx:
        ax.set_xlim(g.min() / 1.35, g.max() * 1.35)
    else:
        pad = 0.06 * (g.max() - g.min()) or 0.1 * max(abs(g.max()), 1e-12)
        ax.set_xlim(g.min() - pad, g.max() + pad)
    v = np.asarray([x for x in values if np.isfinite(x) and (x > 0 or not logy)])
    if v.size == 0:
        return
    lo, hi = float(v.min()), float(min(v.max(), v.min() * TOP_SPAN if v.min() > 0 else v.max()))
    if logy:
        ax.set_ylim(lo / 1.08, hi * 1.25 if hi > lo else lo * 1.5)
    else:
        pad = 0.08 * (hi - lo) if hi > lo else 0.1 * abs(lo) + 1e-12
        ax.set_ylim(lo - pad, hi + 2.5 * pad)


def legend_handles(*, diverged: bool, edge: bool, seeds: bool) -> list:
    h = [Line2D([], [], color="0.35", marker="o", ms=2.8, label="seed mean")]
    if seeds:
        h.append(Patch(color="0.35", alpha=0.2, lw=0, label="range over seeds"))
    h.append(
        Line2D(
            [],
            [],
            color="0.35",
            marker="*",
            ms=8,
            mec="0.15",
            mew=0.7,
            ls="none",
            label="optimum (parabola) and 95 % interval",
        )
    )
    if edge:
        h.append(
            Line2D(
                [],
                [],
                color="0.35",
                marker="*",
                ms=8,
                mfc="white",
                ls="none",
                label="at the grid edge",
            )
        )
    if diverged:
        h.append(
            Line2D(
                [],
                [],
                color="0.35",
                marker="x",
                ms=4,
                mew=1.1,
                ls="none",
                label="a member diverged",
            )
        )
    return h


def draw_optima(
    ax,
    opts: dict[str, xr.Dataset],
    colors: dict,
    *,
    tol_factor: float | None,
    ylabel: str = "lr",
    logy: bool = True,
) -> None:
    """The optimum against width (log-log), one marker shape per quantity, coloured by
    width, the 95 % interval as error bars, open at the grid edge; shaded: the
    tolerance ×``tol_factor`` around the narrowest width's optimum of the first quantity
    (the verdict "transfers" needs the factor's interval inside it)."""
    markers = ("o", "s", "^", "D")
    first = True
    for k, opt in enumerate(opts.values()):
        w = np.asarray(opt.width.values, dtype=np.float64)
        x = w * 1.06 ** (k - (len(opts) - 1) / 2)
        y = opt["optimum"].values.astype(np.float64)
        lo, hi = opt["optimum_lo"].values, opt["optimum_hi"].values
        ax.plot(x, y, color="0.55", lw=0.8, zorder=1)
        for j, wj in enumerate(opt.width.values):
            if not np.isfinite(y[j]):
                continue
            edge = bool(opt["at_edge"].values[j])
            if np.isfinite(lo[j]) and np.isfinite(hi[j]):
                err = [[max(y[j] - lo[j], 0)], [max(hi[j] - y[j], 0)]]
                bar = ax.errorbar([x[j]], [y[j]], yerr=err, color=colors[wj], lw=0.9, capsize=2)
                for part in (*bar.lines[1], *bar.lines[2]):
                    part.set_gid(f"{OPTIMUM_GID} {width_gid(wj)}")
            (pt,) = ax.plot(
                [x[j]],
                [y[j]],
                ls="none",
                marker=markers[k % len(markers)],
                ms=4.5,
                color=colors[wj],
                mfc="white" if edge else colors[wj],
                zorder=3,
            )
            pt.set_gid(f"{OPTIMUM_GID} {width_gid(wj)}")
        ref = y[np.isfinite(y)]
        if first and tol_factor and ref.size:
            ax.axhspan(
                ref[0] / tol_factor, ref[0] * tol_factor, color="0.85", alpha=0.5, lw=0, zorder=0
            )
            first = False
    style_axes(
        ax,
        xlabel="width",
        ylabel=f"optimal {ylabel}",
        title=f"optimal {ylabel} against width",
        logx=True,
        logy=logy,
    )
    allw = sorted({float(v) for o in opts.values() for v in o.width.values})
    ax.set_xlim(allw[0] / 1.4, allw[-1] * 1.4)
    width_ticks(ax, allw)


@styled
def transfer(
    panels: dict[str, tuple[xr.DataArray, xr.Dataset]],
    *,
    dim: str = "lr",
    ylabel: str = "loss",
    logy: bool = True,
    widths: Sequence[float] | None = None,
    tol_factor: float | None = None,
) -> Figure:
    """Loss against ``dim`` (log x), one panel per quantity (e.g. final training and test
    loss), one line per width (:func:`draw_transfer`). ``panels[title]`` = (members
    (width, dim, seed), optimum Dataset (width,)). With ``tol_factor`` a last panel shows
    the optima against width (:func:`draw_optima`). One legend below the panels and the
    width colour bar."""
    n = len(panels) + (tol_factor is not None)
    fig, axes = new_figure(1, n, height=2.9)
    scale, colors = width_scale(widths, *[p[0] for p in panels.values()])
    any_div = any_edge = False
    seeds = False
    # log x as the optimum's fit (transfer.optimal_lr: "log" for positive grids)
    logx = all(p[1].attrs.get("scale", "log") == "log" for p in panels.values())
    for ax, (title, (loss, opt)) in zip(axes[0], panels.items()):
        d = draw_transfer(ax, loss, opt, colors, dim=dim, logx=logx)
        any_div |= d["diverged"]
        any_edge |= d["edge"]
        seeds |= loss.sizes.get("seed", 1) > 1
        style_axes(ax, xlabel=sweep_label(dim), ylabel=ylabel, title=title, logx=logx, logy=logy)
        grid_ticks(ax, d["grid"], max_labels=4 if n >= 3 else 6)
        set_view(ax, d["values"], d["grid"], logy=logy, logx=logx)
    handles = legend_handles(diverged=any_div, edge=any_edge, seeds=seeds)
    if tol_factor is not None:
        opts = {t: p[1] for t, p in panels.items()}
        draw_optima(axes[0][-1], opts, colors, tol_factor=tol_factor, ylabel=dim, logy=logx)
        markers = ("o", "s", "^", "D")
        for k, t in enumerate(opts):
            handles.append(
                Line2D(
                    [], [], color="0.35", marker=markers[k], ms=4, ls="none", label=f"optimum: {t}"
                )
            )
        narrow = min(float(w) for o in opts.values() for w in o.width.values)
        handles.append(
            Patch(
                color="0.85",
                alpha=0.5,
                lw=0,
                label=f"within ×{tol_factor:g} of width {narrow:g}'s optimum",
            )
        )
    figure_legend(fig, handles, ncols=min(len(handles), 3))
    width_colorbar(
        fig,
        axes,
        scale,
        ticks=sorted({w for p in panels.values() for w in p[1].width.values.tolist()}),
    )
    return fig
