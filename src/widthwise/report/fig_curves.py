"""Figures of scalar curves over training and width: losses, logits, distances, fits.

Every function takes DataArrays / Datasets (named dims, as the analysis returns them)
and returns a :class:`matplotlib.figure.Figure`; nothing is read or written here.
Lines are coloured by width (see :mod:`widthwise.report.style`); a shaded band is
the range over seeds where a seed dim is given.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from widthwise.report.style import (
    LINESTYLES,
    new_figure,
    positive,
    reference_slopes,
    style_axes,
    styled,
    width_colorbar,
    width_colors,
    width_ticks,
)

STEP = "training step"


def _x(da: xr.DataArray, xdim: str, logx: bool) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(da[xdim].values, dtype=np.float64)
    keep = x > 0 if logx else np.ones_like(x, dtype=bool)
    return x, keep


def nan_stats(vals: np.ndarray, axis: int = 0):
    """Mean, min and max over ``axis`` ignoring NaN (all-NaN slices give NaN, quietly)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(vals, axis), np.nanmin(vals, axis), np.nanmax(vals, axis)


def robust_ylim(ax, arrays, *, logy: bool, q: float = 0.0, span: float = 1e4) -> None:
    """Keep a diverging spike from flattening every other curve: the view covers the
    ``q``-th to (100 − ``q``)-th percentile of the seed means in ``arrays`` (each
    (width, [seed], x)), and on a log axis reaches at most ``span`` × their median."""
    vals = []
    for da in arrays:
        v = da.mean("seed", skipna=True).values if "seed" in da.dims else da.values
        v = np.asarray(v, dtype=np.float64).ravel()
        vals.append(v[np.isfinite(v) & ((v > 0) if logy else True)])
    v = np.concatenate(vals) if vals else np.array([])
    if v.size < 2:
        return
    lo, hi = np.percentile(v, [q, 100 - q])
    if logy:
        hi = min(hi, np.median(v) * span)
        ax.set_ylim(lo / 1.5, hi * 1.5)
    elif hi > lo:
        pad = 0.05 * (hi - lo)
        ax.set_ylim(lo - pad, hi + pad)


def width_lines(
    ax,
    da: xr.DataArray,
    xdim: str,
    colors: dict,
    *,
    logx: bool = False,
    logy: bool = False,
    band: bool = True,
    ls: str = "-",
    seed_dim: str = "seed",
    lw: float | None = None,
    marker: str | None = None,
) -> None:
    """One line per width over ``xdim``: the seed mean (NaN members left out), with the
    min-max range over seeds shaded when ``band``. ``da``: (width, [seed], xdim).
    ``marker`` marks every point (for sparse schedules, where a lone point has no line)."""
    x, keep = _x(da, xdim, logx)
    for w in da.width.values:
        row = da.sel(width=w)
        if seed_dim in row.dims:
            vals = row.transpose(seed_dim, xdim).values.astype(np.float64)
            mean, lo, hi = nan_stats(vals)
        else:
            mean = row.values.astype(np.float64)
            lo = hi = None
        y = positive(mean) if logy else mean
        c = colors[w]
        ax.plot(x[keep], y[keep], color=c, ls=ls, lw=lw, marker=marker, ms=3)
        if band and lo is not None and row.sizes.get(seed_dim, 1) > 1:
            lo_, hi_ = (positive(lo), positive(hi)) if logy else (lo, hi)
            ax.fill_between(x[keep], lo_[keep], hi_[keep], color=c, alpha=0.15, lw=0)


@styled
def loss_curves(
    train_loss: xr.DataArray | None,
    test_loss: xr.DataArray | None,
    test_error: xr.DataArray | None = None,
    *,
    loss_name: str = "loss",
) -> Figure:
    """Training and test loss over training, log-log, coloured by width (paper Fig. 2).

    ``train_loss`` (width, seed, step), ``test_loss`` / ``test_error`` (width, seed,
    test_step); any may be None. Step 0 (the initial network) is off the log axis.
    """
    panels = [
        (da, xdim, title, ylabel, logy)
        for da, xdim, title, ylabel, logy in (
            (train_loss, "step", "training loss (minibatch)", loss_name, True),
            (test_loss, "test_step", "test loss (probe set)", loss_name, True),
            (test_error, "test_step", "test error", "error (fraction)", False),
        )
        if da is not None
    ]
    fig, axes = new_figure(1, len(panels))
    widths = _widths(*[p[0] for p in panels])
    colors = width_colors(widths)
    for ax, (da, xdim, title, ylabel, logy) in zip(axes[0], panels):
        width_lines(ax, da, xdim, colors, logx=True, logy=logy)
        style_axes(ax, xlabel=STEP, ylabel=ylabel, title=title, logx=True, logy=logy)
        robust_ylim(ax, [da], logy=logy)
    width_colorbar(fig, axes, widths)
    return fig


def _widths(*das) -> list:
    ws = set()
    for da in das:
        if da is not None and "width" in da.dims:
            ws.update(da.width.values.tolist())
    return sorted(ws)


@styled
def logit_trajectories(
    logits: xr.DataArray, target: xr.DataArray | None = None, *, ylabel: str = "logit"
) -> Figure:
    """Network output at a few probe points over training (paper Fig. 3 a-c).

    ``logits`` (width, seed, test_step, point): thin lines are single seeds, thick ones
    the seed mean; ``target`` (point,) draws the target as a dashed black line.
    """
    points = logits.point.values
    fig, axes = new_figure(1, len(points))
    widths = _widths(logits)
    colors = width_colors(widths)
    x = logits.test_step.values
    for ax, p in zip(axes[0], points):
        one = logits.sel(point=p)
        for w in widths:
            vals = one.sel(width=w).transpose("seed", "test_step").values
            for s in vals:
                ax.plot(x, s, color=colors[w], lw=0.5, alpha=0.35)
        width_lines(ax, one, "test_step", colors, band=False, lw=1.6)
        if target is not None:
            ax.axhline(float(target.sel(point=p)), color="k", ls="--", lw=0.8, label="target")
            ax.legend(loc="best")
        style_axes(ax, xlabel=STEP, ylabel=ylabel, title=f"probe point {int(p)}")
    width_colorbar(fig, axes, widths)
    return fig


@styled
def distance_to_widest(
    single: xr.DataArray, ensemble: xr.DataArray | None = None, *, what: str = "logits"
) -> Figure:
    """Scaled RMSE to the widest width over training and at the end (paper Fig. 3 d-f).

    ``single`` (width, seed, test_step): seed s vs seed s of the widest; ``ensemble``
    (width, test_step): seed means compared. The widest (distance 0) is not drawn. The
    last panel (final step against width) carries the reference slopes n^-1/2 and n^-1
    from the narrowest width's value (:func:`~widthwise.report.style.reference_slopes`).
    """
    ref = single.width.values.max()
    single = single.sel(width=single.width != ref)
    ens = ensemble.sel(width=ensemble.width != ref) if ensemble is not None else None
    fig, axes = new_figure(1, 3 if ens is not None else 2)
    widths = _widths(single)
    colors = width_colors(sorted([*widths, ref]))
    ax = axes[0, 0]
    width_lines(ax, single, "test_step", colors, logx=True, logy=True)
    style_axes(
        ax,
        xlabel=STEP,
        ylabel="scaled RMSE",
        title=f"single networks ({what})",
        logx=True,
        logy=True,
    )
    if ens is not None:
        ax = axes[0, 1]
        width_lines(ax, ens, "test_step", colors, logx=True, logy=True)
        style_axes(
            ax,
            xlabel=STEP,
            ylabel="scaled RMSE",
            title=f"ensemble means ({what})",
            logx=True,
            logy=True,
        )
    ax = axes[0, -1]
    last = single.isel(test_step=-1)
    w = np.asarray(widths, dtype=np.float64)
    mean = positive(last.mean("seed").values)
    ax.errorbar(w, mean, yerr=_err(last), color="0.2", marker="o", ms=3, capsize=2, label="single")
    if ens is not None:
        ax.plot(  # solid, open squares: the dashed grey lines are the reference slopes
            w,
            positive(ens.isel(test_step=-1).values),
            "s-",
            color="0.45",
            mfc="white",
            ms=3.5,
            label="ensemble",
        )
    for wi in widths:
        ax.plot(
            [wi],
            [positive(last.sel(width=wi).mean("seed").values)],
            "o",
            color=colors[wi],
            ms=5,
            zorder=3,
        )
    style_axes(
        ax,
        xlabel="width",
        ylabel="scaled RMSE",
        title=f"final step ({int(single.test_step.values[-1])})",
        logx=True,
        logy=True,
    )
    width_ticks(ax, w)
    if len(w):  # theory's slopes from the narrowest width's seed mean
        reference_slopes(ax, w, float(mean[0]))
    # below the panel: data fill it from corner to corner
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncols=2, fontsize=6.5)
    width_colorbar(fig, axes, sorted([*widths, ref]))
    return fig


def _err(last: xr.DataArray) -> np.ndarray | None:
    if last.sizes.get("seed", 1) < 2:
        return None
    mean = last.mean("seed").values
    lo = np.clip(mean - last.min("seed").values, 0, None)
    hi = np.clip(last.max("seed").values - mean, 0, None)
    lo = np.minimum(lo, mean * 0.999)  # keep bars on the log axis
    return np.nan_to_num(np.stack([lo, hi]))


@styled
def successive_differences(diffs: dict[str, xr.DataArray], *, tol: float | None = None) -> Figure:
    """‖q(2n) − q(n)‖ over training for each quantity, one panel each (paper Fig. 4).

    ``diffs`` maps a panel title to the output of
    :func:`widthwise.analysis.successive_differences` with dims (width, <step dim>,
    [layer]); lines are coloured by the narrower width n of each pair, linestyle per
    layer. ``tol`` draws the verdict's tolerance on every panel.
    """
    fig, axes = new_figure(1, len(diffs))
    all_w: set = set()
    for da in diffs.values():
        all_w.update(da.width.values.tolist())
    colors = width_colors(sorted(all_w))
    for ax, (title, da) in zip(axes[0], diffs.items()):
        xdim = next(d for d in da.dims if d != "width" and d.endswith("step"))
        layer_dims = [d for d in da.dims if d not in ("width", xdim)]
        # a sparse schedule (e.g. kernels at init and the end: one point on a log axis)
        # draws no line, so mark every point
        marker = "o" if int((da[xdim].values > 0).sum()) <= 3 else None
        if layer_dims:
            ld = layer_dims[0]
            for i in range(da.sizes[ld]):
                width_lines(
                    ax,
                    da.isel({ld: i}),
                    xdim,
                    colors,
                    logx=True,
                    logy=True,
                    ls=LINESTYLES[i % len(LINESTYLES)],
                    marker=marker,
                )
            _layer_legend(ax, da, ld)
        else:
            width_lines(ax, da, xdim, colors, logx=True, logy=True, marker=marker)
        unit = "relative" if da.attrs.get("relative") else da.attrs.get("units", "")
        if tol is not None:
            ax.axhline(tol, color="crimson", ls="--", lw=0.8, label=f"tolerance {tol:g}")
            ax.legend(loc="lower left")
        style_axes(
            ax, xlabel=STEP, ylabel=f"|q(2n) − q(n)| ({unit})", title=title, logx=True, logy=True
        )
    width_colorbar(fig, axes, sorted(all_w), label="narrower width n")
    return fig


def _layer_legend(ax, da: xr.DataArray, ld: str) -> None:
    names = da[ld].values if ld in da.coords else [f"layer {i + 1}" for i in range(da.sizes[ld])]
    for i, name in enumerate(names):
        ax.plot([], [], color="0.3", ls=LINESTYLES[i % len(LINESTYLES)], label=str(name))
    ax.legend(loc="best")
