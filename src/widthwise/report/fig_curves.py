"""Figures of scalar curves over training and width: losses, logits, distances, fits.

Every function takes DataArrays / Datasets (named dims, as the analysis returns them)
and returns a :class:`matplotlib.figure.Figure`; nothing is read or written here.
Lines are coloured by width on the scale ``widths`` (the study's widths; default the
widths in the data, see :mod:`widthwise.report.style`); a shaded band is the range over
seeds where a seed dim is given. A probe with fewer than
:data:`~widthwise.report.style.SPARSE_STEPS` recorded steps is drawn as markers with
error bars (the range over seeds) at exactly its steps, on a linear step axis.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from widthwise.report.style import (
    LINESTYLES,
    MARKERS,
    dodge,
    figure_legend,
    has_zero_markers,
    is_sparse,
    new_figure,
    place_legend,
    positive,
    recorded,
    reference_slopes,
    step_ticks,
    style_axes,
    styled,
    width_colorbar,
    width_gid,
    width_scale,
    width_ticks,
    zero_handle,
    zero_markers,
)

STEP = "training step"


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


def recorded_steps(da: xr.DataArray, xdim: str) -> np.ndarray:
    """The values of ``xdim`` at which ``da`` has any finite value."""
    return recorded(da[xdim].values, da.transpose(..., xdim).values)


def sparse_probe(da: xr.DataArray | None, xdim: str) -> bool:
    """Too few recorded steps for lines (:func:`~widthwise.report.style.is_sparse`)."""
    return da is not None and is_sparse(len(recorded_steps(da, xdim)))


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
    sparse: bool | None = None,
    slot: tuple[int, int] = (0, 1),
) -> bool:
    """One line per width over ``xdim``: the seed mean (NaN members left out), with the
    min-max range over seeds shaded when ``band``. ``da``: (width, [seed], xdim).

    Sparse (``sparse``; default: fewer than ``SPARSE_STEPS`` recorded steps): markers
    (``marker``, default a circle) with the seed range as error bars and nothing joining
    them, dodged sideways per width (and per ``slot`` = (index, count), e.g. a layer) so
    they stay apart; values exactly 0 on a log axis are open markers on its bottom edge.
    Returns whether it drew sparse: the caller then uses a linear step axis with ticks
    at the recorded steps (:func:`step_axes`)."""
    x = np.asarray(da[xdim].values, dtype=np.float64)
    if sparse is None:
        sparse = sparse_probe(da, xdim)
    order = list(colors)
    n_w = len(order)
    for w in da.width.values:
        row = da.sel(width=w)
        if seed_dim in row.dims:
            vals = row.transpose(seed_dim, xdim).values.astype(np.float64)
            mean, lo, hi = nan_stats(vals)
        else:
            mean = row.values.astype(np.float64)
            lo = hi = None
        c, gid = colors[w], width_gid(w)
        if sparse:
            i = order.index(w) if w in order else 0
            xs = dodge(x, slot[0] * n_w + i, slot[1] * n_w)
            y = positive(mean) if logy else mean
            err = None
            if lo is not None and row.sizes.get(seed_dim, 1) > 1:
                with np.errstate(invalid="ignore"):
                    down = np.clip(mean - lo, 0, None)
                    if logy:
                        down = np.minimum(down, mean * 0.999)
                    err = np.nan_to_num(np.stack([down, np.clip(hi - mean, 0, None)]))
            cont = ax.errorbar(
                xs,
                y,
                yerr=err,
                color=c,
                ls="none",
                marker=marker or "o",
                ms=4,
                lw=0.9,
                capsize=2,
                zorder=3,
            )
            cont.lines[0].set_gid(gid)
            for coll in cont.lines[2]:
                coll.set_gid(gid)
            if logy:
                zero_markers(ax, xs, mean, color=c, gid=gid)
            continue
        keep = x > 0 if logx else np.ones_like(x, dtype=bool)
        y = positive(mean) if logy else mean
        (line,) = ax.plot(x[keep], y[keep], color=c, ls=ls, lw=lw, marker=marker, ms=3)
        line.set_gid(gid)
        if band and lo is not None and row.sizes.get(seed_dim, 1) > 1:
            lo_, hi_ = (positive(lo), positive(hi)) if logy else (lo, hi)
            poly = ax.fill_between(x[keep], lo_[keep], hi_[keep], color=c, alpha=0.15, lw=0)
            poly.set_gid(f"{gid} band")
    return sparse


def step_axes(ax, da, xdim: str, sparse: bool, *, ylabel: str, title=None, logx=True, logy=False):
    """Labels and scales of a panel over training: log steps, or (``sparse``) a linear
    axis with a tick at each recorded step of ``da`` (so step 0 is shown too)."""
    style_axes(ax, xlabel=STEP, ylabel=ylabel, title=title, logx=logx and not sparse, logy=logy)
    if sparse:
        das = da if isinstance(da, (list, tuple)) else [da]
        step_ticks(ax, np.concatenate([recorded_steps(d, xdim) for d in das]))


@styled
def loss_curves(
    train_loss: xr.DataArray | None,
    test_loss: xr.DataArray | None,
    test_error: xr.DataArray | None = None,
    *,
    loss_name: str = "loss",
    widths: Sequence[float] | None = None,
) -> Figure:
    """Training and test loss over training, log-log, coloured by width (paper Fig. 2).

    ``train_loss`` (width, seed, step), ``test_loss`` / ``test_error`` (width, seed,
    test_step); any may be None. Step 0 (the initial network) is off the log axis.
    ``widths``: the colour scale (the study's widths).
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
    scale, colors = width_scale(widths, *[p[0] for p in panels])
    for ax, (da, xdim, title, ylabel, logy) in zip(axes[0], panels):
        sparse = width_lines(ax, da, xdim, colors, logx=True, logy=logy)
        step_axes(ax, da, xdim, sparse, ylabel=ylabel, title=title, logy=logy)
        robust_ylim(ax, [da], logy=logy)
        if has_zero_markers(ax):
            place_legend(ax, [zero_handle()])
    width_colorbar(fig, axes, scale, ticks=_widths(*[p[0] for p in panels]))
    return fig


def _widths(*das) -> list:
    ws = set()
    for da in das:
        if da is not None and "width" in da.dims:
            ws.update(da.width.values.tolist())
    return sorted(ws)


@styled
def logit_trajectories(
    logits: xr.DataArray,
    target: xr.DataArray | None = None,
    *,
    ylabel: str = "logit",
    widths: Sequence[float] | None = None,
) -> Figure:
    """Network output at a few probe points over training (paper Fig. 3 a-c).

    ``logits`` (width, seed, test_step, point): thin lines are single seeds, thick ones
    the seed mean; ``target`` (point,) draws the target as a dashed black line.
    """
    points = logits.point.values
    fig, axes = new_figure(1, len(points))
    scale, colors = width_scale(widths, logits)
    x = logits.test_step.values
    sparse = sparse_probe(logits, "test_step")
    for ax, p in zip(axes[0], points):
        one = logits.sel(point=p)
        if not sparse:
            for w in logits.width.values:
                vals = one.sel(width=w).transpose("seed", "test_step").values
                for s in vals:
                    (ln,) = ax.plot(x, s, color=colors[w], lw=0.5, alpha=0.35)
                    ln.set_gid(width_gid(w))
        width_lines(ax, one, "test_step", colors, band=False, lw=1.6, sparse=sparse)
        handles = []
        if target is not None:
            ax.axhline(float(target.sel(point=p)), color="k", ls="--", lw=0.8)
            handles.append(Line2D([], [], color="k", ls="--", lw=0.8, label="target"))
        step_axes(
            ax, one, "test_step", sparse, ylabel=ylabel, title=f"probe point {int(p)}", logx=False
        )
        if handles:
            place_legend(ax, handles)
    width_colorbar(fig, axes, scale, ticks=_widths(logits))
    return fig


@styled
def distance_to_widest(
    single: xr.DataArray,
    ensemble: xr.DataArray | None = None,
    *,
    what: str = "logits",
    widths: Sequence[float] | None = None,
) -> Figure:
    """Scaled RMSE to the widest width over training and at the end (paper Fig. 3 d-f).

    ``single`` (width, seed, test_step): seed s vs seed s of the widest; ``ensemble``
    (width, test_step): seed means compared. The widest (distance 0) is not drawn. The
    last panel (final step against width) carries the reference slopes n^-1/2 and n^-1
    from the narrowest width's value (:func:`~widthwise.report.style.reference_slopes`).
    """
    ref = single.width.values.max()
    scale, colors = width_scale(widths, single)
    single = single.sel(width=single.width != ref)
    ens = ensemble.sel(width=ensemble.width != ref) if ensemble is not None else None
    fig, axes = new_figure(1, 3 if ens is not None else 2)
    drawn = _widths(single)
    panels = [(axes[0, 0], single, f"single networks ({what})")]
    if ens is not None:
        panels.append((axes[0, 1], ens, f"ensemble means ({what})"))
    for ax, da, title in panels:
        sparse = width_lines(ax, da, "test_step", colors, logx=True, logy=True)
        step_axes(ax, da, "test_step", sparse, ylabel="scaled RMSE", title=title, logy=True)
    ax = axes[0, -1]
    last = single.isel(test_step=-1)
    w = np.asarray(drawn, dtype=np.float64)
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
    for wi in drawn:
        (pt,) = ax.plot(
            [wi],
            [positive(last.sel(width=wi).mean("seed").values)],
            "o",
            color=colors[wi],
            ms=5,
            zorder=3,
        )
        pt.set_gid(width_gid(wi))
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
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: ("propto" in labels[i], labels[i] != "single"))
    place_legend(ax, [handles[i] for i in order], [labels[i] for i in order], ncols=2, fontsize=6.5)
    width_colorbar(fig, axes, scale, ticks=sorted([*drawn, ref]))
    return fig


def _err(last: xr.DataArray) -> np.ndarray | None:
    if last.sizes.get("seed", 1) < 2:
        return None
    mean = last.mean("seed").values
    lo = np.clip(mean - last.min("seed").values, 0, None)
    hi = np.clip(last.max("seed").values - mean, 0, None)
    lo = np.minimum(lo, mean * 0.999)  # keep bars on the log axis
    return np.nan_to_num(np.stack([lo, hi]))


DIFF_LABEL = r"$\Vert q(2n) - q(n)\Vert\,/\,\Vert q(2n)\Vert$"


@styled
def successive_differences(
    diffs: dict[str, xr.DataArray],
    *,
    tol: float | None = None,
    widths: Sequence[float] | None = None,
) -> Figure:
    """‖q(2n) − q(n)‖ over training for each quantity, one panel each (paper Fig. 4).

    ``diffs`` maps a panel title to the output of
    :func:`widthwise.analysis.successive_differences` with dims (width, <step dim>,
    [layer]); lines are coloured by the narrower width n of each pair (on the scale
    ``widths``, the study's widths, so n has the colour it has in every other panel),
    linestyle per layer — marker per layer where the probe is sparse (markers only).
    ``tol`` draws the verdict's tolerance on every panel.
    """
    fig, axes = new_figure(1, len(diffs))
    scale, colors = width_scale(widths, *diffs.values())
    shared: list = []  # one legend below the panels: the tolerance and layers are shared
    for ax, (title, da) in zip(axes[0], diffs.items()):
        xdim = next(d for d in da.dims if d != "width" and d.endswith("step"))
        layer_dims = [d for d in da.dims if d not in ("width", xdim)]
        sparse = sparse_probe(da, xdim)
        handles: list = []
        if layer_dims:
            ld = layer_dims[0]
            n = da.sizes[ld]
            for i in range(n):
                width_lines(
                    ax,
                    da.isel({ld: i}),
                    xdim,
                    colors,
                    logx=True,
                    logy=True,
                    ls=LINESTYLES[i % len(LINESTYLES)],
                    marker=MARKERS[i % len(MARKERS)] if sparse else None,
                    sparse=sparse,
                    slot=(i, n),
                )
            handles += layer_handles(da, ld, sparse)
        else:
            width_lines(ax, da, xdim, colors, logx=True, logy=True, sparse=sparse)
        if da.attrs.get("relative"):
            ylabel = DIFF_LABEL
        else:
            units = da.attrs.get("units", "")
            ylabel = r"$\Vert q(2n) - q(n)\Vert$" + (f" ({units})" if units else "")
        if tol is not None:
            ax.axhline(tol, color="crimson", ls="--", lw=0.8)
            handles.append(
                Line2D([], [], color="crimson", ls="--", lw=0.8, label=f"tolerance {tol:g}")
            )
        step_axes(ax, da, xdim, sparse, ylabel=ylabel, title=title, logy=True)
        if has_zero_markers(ax):
            handles.append(zero_handle())
        shared += handles
    figure_legend(fig, shared)
    width_colorbar(fig, axes, scale, label="narrower width n", ticks=_widths(*diffs.values()))
    return fig


def layer_names(da: xr.DataArray, ld: str) -> list[str]:
    if ld in da.coords:
        return [str(v) for v in da[ld].values]
    return [f"layer {i + 1}" for i in range(da.sizes[ld])]


def layer_handles(da: xr.DataArray, ld: str, sparse: bool) -> list[Line2D]:
    """Legend entries of the layers: the marker each is drawn with where the probe is
    sparse (markers only), else its line style."""
    out = []
    for i, name in enumerate(layer_names(da, ld)):
        if sparse:
            h = Line2D([], [], color="0.3", ls="none", marker=MARKERS[i % len(MARKERS)], ms=4)
        else:
            h = Line2D([], [], color="0.3", ls=LINESTYLES[i % len(LINESTYLES)])
        h.set_label(name)
        out.append(h)
    return out
