"""Figures of representations: kernels, preactivation histograms, attention maps, NTK spectra.

Pure functions: DataArrays / Datasets in, a Figure out. Heatmaps use ``magma`` (not the
width colours) with one shared colour scale per row, so widths compare by eye.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from widthwise.report.fig_curves import STEP, _layer_legend, width_lines
from widthwise.report.style import (
    FULL,
    LINESTYLES,
    MARKERS,
    new_figure,
    positive,
    reference_slopes,
    style_axes,
    styled,
    width_colorbar,
    width_colors,
    width_ticks,
)

HEATMAP = "magma"


def _names(da: xr.DataArray, dim: str, prefix: str = "layer") -> list[str]:
    if dim in da.coords:
        return [str(v) for v in da[dim].values]
    return [f"{prefix} {i + 1}" for i in range(da.sizes[dim])]


def _heatmap_grid(
    mats: xr.DataArray,
    row_dim: str,
    row_names: list[str],
    *,
    cbar_label: str,
    sym: bool,
    xlabel: str = "",
) -> Figure:
    """mats (row_dim, width, i, j) -> a row × width grid of heatmaps, one colour bar per row."""
    rows, widths = mats.sizes[row_dim], mats.sizes["width"]
    cell = min(1.35, (FULL - 1.2) / widths)
    fig, axes = new_figure(rows, widths, height=cell * rows + 0.55, width=cell * widths + 1.3)
    for r in range(rows):
        block = mats.isel({row_dim: r}).values.astype(np.float64)
        finite = block[np.isfinite(block)]
        vmax = float(np.percentile(np.abs(finite) if sym else finite, 99.5)) if finite.size else 1
        vmin = -vmax if sym else (float(finite.min()) if finite.size else 0.0)
        if vmax <= vmin:
            vmax = vmin + 1e-12
        im = None
        for c, w in enumerate(mats.width.values):
            ax = axes[r, c]
            im = ax.imshow(
                block[c],
                cmap="RdBu_r" if sym else HEATMAP,
                vmin=vmin,
                vmax=vmax,
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if r == 0:
                ax.set_title(f"width {int(w)}")
            if c == 0:
                ax.set_ylabel(row_names[r])
            if r == rows - 1:
                ax.set_xlabel(xlabel, fontsize=7)
        cb = fig.colorbar(im, ax=axes[r, :].tolist(), fraction=0.03, pad=0.01, aspect=12)
        cb.set_label(cbar_label, fontsize=7)
        cb.ax.tick_params(labelsize=6)
    return fig


@styled
def kernel_grid(kernels: xr.DataArray, *, layer_dim: str = "kernels_layer") -> Figure:
    """Seed-mean feature kernels as a layer × width grid of heatmaps (paper Fig. 5 b, 12).

    ``kernels`` (layer_dim, width, kernels_point_i, kernels_point_j); each row shares one colour scale.
    """
    sym = bool(np.nanmin(kernels.values) < 0)
    return _heatmap_grid(
        kernels,
        layer_dim,
        _names(kernels, layer_dim),
        cbar_label="K",
        sym=sym,
        xlabel="probe point j (rows: i)",
    )


def _per_layer(ax, da: xr.DataArray, xdim: str, layer_dim: str, colors, *, logy: bool) -> None:
    # a sparse schedule (e.g. init and end, where init is 0 and leaves a log axis) would
    # leave a lone point that a line does not draw: mark every point
    marker = "o" if da.sizes[xdim] <= 3 else None
    for i in range(da.sizes[layer_dim]):
        width_lines(
            ax,
            da.isel({layer_dim: i}),
            xdim,
            colors,
            logy=logy,
            ls=LINESTYLES[i % len(LINESTYLES)],
            marker=marker,
        )
    if da.sizes[layer_dim] > 1:
        _layer_legend(ax, da, layer_dim)


@styled
def kernel_distance(
    frob: xr.DataArray,
    cka: xr.DataArray,
    alignment: xr.DataArray | None = None,
    *,
    layer_dim: str = "kernels_layer",
) -> Figure:
    """Distance of each width's kernel to the widest over training (paper Fig. 5 c, 12, 14).

    ``frob`` and ``cka`` (width, kernels_step, layer) from
    :func:`~widthwise.analysis.relative_frobenius_to_widest` and
    :func:`~widthwise.analysis.cka_to_widest` (seed means); ``alignment`` (width,
    kernels_step, layer): kernel-target alignment of the seed-mean kernel. Linestyle
    per layer; the widest (distance 0, CKA 1) is not drawn in the first two panels.
    """
    ref = frob.width.values.max()
    widths = frob.width.values.tolist()
    colors = width_colors(widths)
    fig, axes = new_figure(1, 3 if alignment is not None else 2)
    keep = frob.width != ref
    _per_layer(axes[0, 0], frob.sel(width=keep), "kernels_step", layer_dim, colors, logy=True)
    style_axes(
        axes[0, 0],
        xlabel=STEP,
        ylabel="‖K − K_widest‖ / ‖K_widest‖",
        title="relative Frobenius distance",
        logy=True,
    )
    _per_layer(axes[0, 1], cka.sel(width=keep), "kernels_step", layer_dim, colors, logy=False)
    style_axes(axes[0, 1], xlabel=STEP, ylabel="CKA with the widest", title="CKA (biased HSIC)")
    if alignment is not None:
        _per_layer(axes[0, 2], alignment, "kernels_step", layer_dim, colors, logy=False)
        style_axes(
            axes[0, 2], xlabel=STEP, ylabel="alignment A(K, yyᵀ)", title="kernel-target alignment"
        )
    width_colorbar(fig, axes, widths)
    return fig


@styled
def kernel_limit_distance(
    dist: xr.DataArray, *, kernel_dim: str = "kernel", step: int | None = 0
) -> Figure:
    """Distance of each width's seed-mean kernel to its analytic infinite-width limit.

    ``dist`` (width, kernel_dim): ``relative_frobenius`` of the seed-mean kernel (at
    ``step``, default init) to :func:`widthwise.analysis.limit_kernels_for`'s limit, one
    line per kernel (a feature-kernel layer, the eNTK; colour and marker per kernel),
    log-log against width, with the
    reference slopes n^-1/2 (the fluctuations around the limit theory predicts) and n^-1
    from the narrowest width's value of the first kernel.
    """
    fig, axes = new_figure(1, 1, height=2.6, width=FULL * 0.6)
    ax = axes[0, 0]
    w = dist.width.values.astype(np.float64)
    names = _names(dist, kernel_dim, "kernel")
    for i, name in enumerate(names):  # width is the x axis: colour and marker name the kernel
        y = positive(dist.isel({kernel_dim: i}).values)
        marker = MARKERS[i % len(MARKERS)]
        ax.plot(w, y, color=f"C{i}", marker=marker, ms=4, lw=1.1, zorder=2 + i, label=name)
    at = "" if step is None else f" at step {int(step)}"
    style_axes(
        ax,
        xlabel="width",
        ylabel="‖K̄_n − K_∞‖ / ‖K_∞‖",
        title=f"distance to the infinite-width limit{at}",
        logx=True,
        logy=True,
    )
    width_ticks(ax, w)
    first = positive(dist.isel({kernel_dim: 0}).values) if dist.sizes[kernel_dim] else []
    if np.isfinite(first).any():
        i0 = int(np.flatnonzero(np.isfinite(first))[0])
        reference_slopes(ax, w[i0:], float(first[i0]))
    ax.legend(loc="lower left", fontsize=6.5, handlelength=2.4)
    return fig


@styled
def preact_histograms(
    density: xr.DataArray,
    w1: xr.DataArray | None = None,
    initial: xr.DataArray | None = None,
    *,
    layer_dim: str = "preacts_layer",
) -> Figure:
    """Preactivation densities per layer, overlaid per width (paper Fig. 5 a, 11).

    ``density`` (width, layer, preacts_bin) at one step (coordinate ``preacts_bin``: bin
    centres); ``initial`` the same at initialization (thin dotted). ``w1`` (width,
    preacts_step, layer): Wasserstein-1 distance to the widest, drawn against width.
    """
    layers = _names(density, layer_dim)[:4]
    ncols = len(layers) + (w1 is not None)
    fig, axes = new_figure(1, ncols)
    widths = density.width.values.tolist()
    colors = width_colors(widths)
    x = density.preacts_bin.values
    for i, (ax, name) in enumerate(zip(axes[0], layers)):
        for w in widths:
            ax.plot(x, density.sel(width=w).isel({layer_dim: i}).values, color=colors[w])
            if initial is not None:
                ax.plot(
                    x,
                    initial.sel(width=w).isel({layer_dim: i}).values,
                    color=colors[w],
                    ls=":",
                    lw=0.8,
                )
        style_axes(ax, xlabel="preactivation", ylabel="density", title=name)
    if initial is not None:
        axes[0, 0].plot([], [], color="0.3", label="final")
        axes[0, 0].plot([], [], color="0.3", ls=":", label="init")
        axes[0, 0].legend(loc="upper left")
    if w1 is not None:
        ax = axes[0, -1]
        w1 = w1.sel(width=w1.width != w1.width.values.max())
        steps = w1.preacts_step.values
        for i in range(w1.sizes[layer_dim]):
            for j, s in enumerate(steps):
                ax.plot(
                    w1.width.values,
                    positive(w1.isel({layer_dim: i}).sel(preacts_step=s)),
                    marker="o",
                    ms=3,
                    color=f"C{i}",
                    ls=LINESTYLES[j % len(LINESTYLES)],
                    label=f"{_names(w1, layer_dim)[i]}, step {int(s)}",
                )
        style_axes(
            ax,
            xlabel="width",
            ylabel="W1 to the widest",
            title="distance of densities",
            logx=True,
            logy=True,
        )
        width_ticks(ax, w1.width.values)
        first = positive(w1.isel({layer_dim: 0}).sel(preacts_step=steps[-1]).values)
        if np.isfinite(first).any():  # theory's slopes from the narrowest finite value
            i0 = int(np.flatnonzero(np.isfinite(first))[0])
            reference_slopes(ax, w1.width.values[i0:], float(first[i0]))
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncols=2, fontsize=6)
    width_colorbar(fig, axes[0, : len(layers)].tolist(), widths)
    return fig


@styled
def attention_grid(maps: xr.DataArray, *, row_dim: str = "row") -> Figure:
    """Seed-mean attention maps (query × key) as a (layer, head) × width grid (Fig. 1d, 5e).

    ``maps`` (row_dim, width, query, key) with a coordinate ``row_dim`` naming each row
    (e.g. 'layer 1, head 2'); rows share a colour scale (probability, 0 to its max).
    """
    names = [str(v) for v in maps[row_dim].values]
    return _heatmap_grid(
        maps, row_dim, names, cbar_label="attention prob.", sym=False, xlabel="key (rows: query)"
    )


@styled
def attention_distance(tv: xr.DataArray, *, layer_dim: str = "attention_layer") -> Figure:
    """Total-variation distance of seed-mean attention maps to the widest's, over training.

    ``tv`` (width, attention_step, layer) from
    :func:`~widthwise.analysis.attention_distance_to_widest` averaged over heads/points.
    When only one recorded step has a non-zero distance (e.g. attention at init and at
    the end under ``query_zero_init``, where every map starts uniform), the figure shows
    that step's distance against width instead of a curve over training.
    """
    widths = tv.width.values.tolist()
    ref = tv.width.values.max()
    others = tv.sel(width=tv.width != ref)
    moved = (others.fillna(0) > 0).any([d for d in others.dims if d != "attention_step"])
    if int(moved.sum()) <= 1:
        return _attention_distance_vs_width(others, layer_dim, int(ref))
    colors = width_colors(widths)
    fig, axes = new_figure(1, 1, height=2.6)
    _per_layer(axes[0, 0], others, "attention_step", layer_dim, colors, logy=True)
    style_axes(
        axes[0, 0],
        xlabel=STEP,
        ylabel="mean TV distance per query",
        title="attention maps: distance to the widest",
        logy=True,
    )
    width_colorbar(fig, axes, widths)
    return fig


def _attention_distance_vs_width(others: xr.DataArray, layer_dim: str, ref: int) -> Figure:
    """The last recorded step's distance to the widest (width ``ref``) against width."""
    last = others.isel(attention_step=-1)
    step = int(last.attention_step)
    fig, axes = new_figure(1, 1, height=2.6)
    ax = axes[0, 0]
    names = last[layer_dim].values if layer_dim in last.coords else None
    for i in range(last.sizes.get(layer_dim, 1)):
        row = last.isel({layer_dim: i}) if layer_dim in last.dims else last
        label = str(names[i]) if names is not None else f"layer {i + 1}"
        ax.plot(
            row.width.values,
            positive(row.values),
            color="0.2",
            ls=LINESTYLES[i % len(LINESTYLES)],
            marker="o",
            ms=4,
            label=label,
        )
    style_axes(
        ax,
        xlabel="width",
        ylabel="mean TV distance per query",
        title=f"attention maps at step {step}: distance to width {ref}",
        logx=True,
        logy=True,
    )
    width_ticks(ax, last.width.values)
    first = positive(np.asarray(last.isel({layer_dim: 0}) if layer_dim in last.dims else last))
    if np.isfinite(first).any():
        i0 = int(np.flatnonzero(np.isfinite(first))[0])
        reference_slopes(ax, last.width.values[i0:], float(first[i0]))
    ax.legend(loc="best")
    return fig


@styled
def ntk_spectrum(
    eigenvalues: xr.DataArray,
    task_power: xr.DataArray | None,
    predicted: xr.DataArray | None = None,
    measured: xr.DataArray | None = None,
    *,
    eigenvalues_init: xr.DataArray | None = None,
    task_power_init: xr.DataArray | None = None,
    labels: tuple[str, str] = ("final", "initial"),
    time_dim: str = "step",
) -> Figure:
    """eNTK eigenvalues, cumulative task power C(k), and the gradient-flow loss (Fig. 10).

    ``eigenvalues`` and ``task_power`` (width, mode) of the seed-mean eNTK at one step
    (solid); ``*_init`` the same at an earlier step (dashed); ``labels`` name the two.
    ``predicted`` / ``measured`` (width, [seed,] time_dim): kernel gradient-flow
    prediction (dashed) and the measured loss (solid); the view is clipped to four
    decades below the measured loss.
    """
    widths = eigenvalues.width.values.tolist()
    colors = width_colors(widths)
    ncols = 1 + (task_power is not None) + (predicted is not None)
    fig, axes = new_figure(1, ncols)
    k = eigenvalues.mode.values
    ax_e = axes[0, 0]
    ax_c = axes[0, 1] if task_power is not None else None
    for w in widths:
        ax_e.plot(k, positive(eigenvalues.sel(width=w).values), color=colors[w])
        if eigenvalues_init is not None:
            ax_e.plot(
                k, positive(eigenvalues_init.sel(width=w).values), color=colors[w], ls="--", lw=0.8
            )
        if ax_c is not None:
            ax_c.plot(k, task_power.sel(width=w).values, color=colors[w])
            if task_power_init is not None:
                ax_c.plot(k, task_power_init.sel(width=w).values, color=colors[w], ls="--", lw=0.8)
    style_axes(
        ax_e, xlabel="rank k", ylabel="eigenvalue λ_k", title="eNTK spectrum", logx=True, logy=True
    )
    if eigenvalues_init is not None:
        ax_e.plot([], [], color="0.3", label=labels[0])
        ax_e.plot([], [], color="0.3", ls="--", lw=0.8, label=labels[1])
        ax_e.legend(loc="lower left")
    if ax_c is not None:
        style_axes(ax_c, xlabel="rank k", ylabel="C(k)", title="cumulative task power", logx=True)
        ax_c.set_ylim(0, 1.02)
    if predicted is not None:
        ax = axes[0, -1]
        width_lines(ax, predicted, time_dim, colors, logx=True, logy=True, ls="--", band=False)
        if measured is not None:
            width_lines(ax, measured, time_dim, colors, logx=True, logy=True, band=False)
            ax.plot([], [], color="0.3", label="measured")
        ax.plot([], [], color="0.3", ls="--", label="gradient flow")
        ax.legend(loc="lower left")
        style_axes(
            ax,
            xlabel=STEP,
            ylabel="loss (MSE)",
            title="kernel prediction vs training",
            logx=True,
            logy=True,
        )
        if measured is not None:
            low = np.nanmin(positive(measured.values))
            if np.isfinite(low):
                ax.set_ylim(bottom=max(ax.get_ylim()[0], low / 1e4))
    width_colorbar(fig, axes, widths)
    return fig
