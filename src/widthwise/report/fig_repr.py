"""Figures of representations: kernels, preactivation histograms, attention maps, NTK spectra.

Pure functions: DataArrays / Datasets in, a Figure out. Heatmaps use ``magma`` (not the
width colours) with one shared colour scale per row, so widths compare by eye.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from widthwise.report.fig_curves import (
    STEP,
    _widths,
    layer_handles,
    sparse_probe,
    step_axes,
    width_lines,
)
from widthwise.report.style import (
    FULL,
    LINESTYLES,
    MARKERS,
    has_zero_markers,
    new_figure,
    place_legend,
    plain_number,
    positive,
    reference_slopes,
    style_axes,
    styled,
    width_colorbar,
    width_gid,
    width_scale,
    width_ticks,
    zero_handle,
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


def _per_layer(ax, da: xr.DataArray, xdim: str, layer_dim: str, colors, *, logy: bool) -> bool:
    """One line (or, for a sparse probe, one marker) per width and layer: line style
    per layer, or marker per layer where sparse; returns whether it was sparse."""
    sparse = sparse_probe(da, xdim)
    n = da.sizes[layer_dim]
    for i in range(n):
        width_lines(
            ax,
            da.isel({layer_dim: i}),
            xdim,
            colors,
            logy=logy,
            ls=LINESTYLES[i % len(LINESTYLES)],
            marker=MARKERS[i % len(MARKERS)] if sparse else None,
            sparse=sparse,
            slot=(i, n),
        )
    handles = layer_handles(da, layer_dim, sparse) if n > 1 else []
    if has_zero_markers(ax):
        handles.append(zero_handle())
    if handles:
        place_legend(ax, handles)
    return sparse


@styled
def kernel_distance(
    frob: xr.DataArray,
    cka: xr.DataArray,
    alignment: xr.DataArray | None = None,
    *,
    layer_dim: str = "kernels_layer",
    widths: Sequence[float] | None = None,
) -> Figure:
    """Distance of each width's kernel to the widest over training (paper Fig. 5 c, 12, 14).

    ``frob`` and ``cka`` (width, kernels_step, layer) from
    :func:`~widthwise.analysis.relative_frobenius_to_widest` and
    :func:`~widthwise.analysis.cka_to_widest` (seed means); ``alignment`` (width,
    kernels_step, layer): kernel-target alignment of the seed-mean kernel. Linestyle
    per layer (marker per layer where the kernels probe recorded few steps: markers
    only); the widest (distance 0, CKA 1) is not drawn in the first two panels.
    """
    ref = frob.width.values.max()
    scale, colors = width_scale(widths, frob)
    fig, axes = new_figure(1, 3 if alignment is not None else 2)
    keep = frob.width != ref
    panels = [
        (frob.sel(width=keep), FROB_LABEL, "relative Frobenius distance", True),
        (cka.sel(width=keep), "CKA with the widest", "CKA (biased HSIC)", False),
    ]
    if alignment is not None:
        panels.append((alignment, r"alignment $A(K, yy^{\top})$", "kernel-target alignment", False))
    for ax, (da, ylabel, title, logy) in zip(axes[0], panels):
        sparse = _per_layer(ax, da, "kernels_step", layer_dim, colors, logy=logy)
        step_axes(ax, da, "kernels_step", sparse, ylabel=ylabel, title=title, logx=False, logy=logy)
    width_colorbar(fig, axes, scale, ticks=_widths(frob))
    return fig


FROB_LABEL = r"$\Vert K - K_{\mathrm{widest}}\Vert\,/\,\Vert K_{\mathrm{widest}}\Vert$"
LIMIT_LABEL = r"$\Vert \bar{K}_n - K_\infty\Vert\,/\,\Vert K_\infty\Vert$"


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
        ylabel=LIMIT_LABEL,
        title=f"distance to the infinite-width limit{at}",
        logx=True,
        logy=True,
    )
    width_ticks(ax, w)
    first = positive(dist.isel({kernel_dim: 0}).values) if dist.sizes[kernel_dim] else []
    if np.isfinite(first).any():
        i0 = int(np.flatnonzero(np.isfinite(first))[0])
        reference_slopes(ax, w[i0:], float(first[i0]))
    place_legend(ax, fontsize=6.5, handlelength=2.4, outside="right")
    return fig


@styled
def preact_histograms(
    density: xr.DataArray,
    w1: xr.DataArray | None = None,
    initial: xr.DataArray | None = None,
    *,
    layer_dim: str = "preacts_layer",
    widths: Sequence[float] | None = None,
) -> Figure:
    """Preactivation densities per layer, overlaid per width (paper Fig. 5 a, 11).

    ``density`` (width, layer, preacts_bin) at one step (coordinate ``preacts_bin``: bin
    centres); ``initial`` the same at initialization (thin dotted). ``w1`` (width,
    preacts_step, layer): Wasserstein-1 distance to the widest, drawn against width.
    """
    layers = _names(density, layer_dim)[:4]
    ncols = len(layers) + (w1 is not None)
    fig, axes = new_figure(1, ncols)
    drawn = density.width.values.tolist()
    scale, colors = width_scale(widths, density)
    x = density.preacts_bin.values
    for i, (ax, name) in enumerate(zip(axes[0], layers)):
        for w in drawn:
            (ln,) = ax.plot(x, density.sel(width=w).isel({layer_dim: i}).values, color=colors[w])
            ln.set_gid(width_gid(w))
            if initial is not None:
                (ln,) = ax.plot(
                    x,
                    initial.sel(width=w).isel({layer_dim: i}).values,
                    color=colors[w],
                    ls=":",
                    lw=0.8,
                )
                ln.set_gid(width_gid(w))
        style_axes(ax, xlabel="preactivation", ylabel="density", title=name)
    if initial is not None:
        place_legend(
            axes[0, 0],
            [
                Line2D([], [], color="0.3", label="final"),
                Line2D([], [], color="0.3", ls=":", label="init"),
            ],
        )
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
            ylabel="$W_1$ to the widest",
            title="distance of densities",
            logx=True,
            logy=True,
        )
        width_ticks(ax, w1.width.values)
        first = positive(w1.isel({layer_dim: 0}).sel(preacts_step=steps[-1]).values)
        if np.isfinite(first).any():  # theory's slopes from the narrowest finite value
            i0 = int(np.flatnonzero(np.isfinite(first))[0])
            reference_slopes(ax, w1.width.values[i0:], float(first[i0]))
        place_legend(ax, ncols=2, fontsize=6)
    width_colorbar(fig, axes[0, : len(layers)].tolist(), scale, ticks=drawn)
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
def attention_distance(
    tv: xr.DataArray,
    *,
    layer_dim: str = "attention_layer",
    widths: Sequence[float] | None = None,
) -> Figure:
    """Total-variation distance of seed-mean attention maps to the widest's, over training.

    ``tv`` (width, attention_step, layer) from
    :func:`~widthwise.analysis.attention_distance_to_widest` averaged over heads/points.
    When only one recorded step has a non-zero distance (e.g. attention at init and at
    the end under ``query_zero_init``, where every map starts uniform), the figure shows
    that step's distance against width instead of a curve over training.
    """
    ref = tv.width.values.max()
    others = tv.sel(width=tv.width != ref)
    moved = (others.fillna(0) > 0).any([d for d in others.dims if d != "attention_step"])
    if int(moved.sum()) <= 1:
        return _attention_distance_vs_width(others, layer_dim, int(ref), widths)
    scale, colors = width_scale(widths, tv)
    fig, axes = new_figure(1, 1, height=2.6)
    sparse = _per_layer(axes[0, 0], others, "attention_step", layer_dim, colors, logy=True)
    step_axes(
        axes[0, 0],
        others,
        "attention_step",
        sparse,
        ylabel="mean TV distance per query",
        title="attention maps: distance to the widest",
        logx=False,
        logy=True,
    )
    width_colorbar(fig, axes, scale, ticks=_widths(tv))
    return fig


def _attention_distance_vs_width(
    others: xr.DataArray, layer_dim: str, ref: int, widths=None
) -> Figure:
    """The last recorded step's distance to the widest (width ``ref``) against width:
    one grey line per layer, markers coloured by width, with the reference slopes."""
    last = others.isel(attention_step=-1)
    step = int(last.attention_step)
    scale, colors = width_scale([*(widths if widths is not None else []), ref], others)
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
            marker=MARKERS[i % len(MARKERS)],
            mfc="none",
            ms=6,
            label=label,
        )
        for w, v in zip(row.width.values, positive(row.values)):
            (pt,) = ax.plot([w], [v], MARKERS[i % len(MARKERS)], color=colors[w], ms=3.5, zorder=3)
            pt.set_gid(width_gid(w))
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
    place_legend(ax)
    width_colorbar(fig, axes, scale, ticks=sorted({*last.width.values.tolist(), ref}))
    return fig


def flow_ratio(
    predicted: xr.DataArray, measured: xr.DataArray, time_dim: str
) -> tuple[int | None, xr.DataArray | None]:
    """(the last step both curves have finite, measured / predicted there per width);
    ``measured`` may carry a seed dim (its seed mean is taken)."""
    pm = measured.mean("seed", skipna=True) if "seed" in measured.dims else measured
    both = np.intersect1d(predicted[time_dim].values, pm[time_dim].values)
    for t in both[::-1]:
        with np.errstate(divide="ignore", invalid="ignore"):
            r = pm.sel({time_dim: t}) / predicted.sel({time_dim: t})
        if np.isfinite(r.values).any():
            return int(t), r
    return None, None


def _ratio_text(r: xr.DataArray) -> str:
    """'14× at width 32 … 100× at 512' (the narrowest and the widest finite)."""
    v = r.values.astype(np.float64)
    w = r.width.values
    ok = np.flatnonzero(np.isfinite(v))
    if not ok.size:
        return "not measured"
    first, last = ok[0], ok[-1]
    one = f"{plain_number(float(f'{v[first]:.3g}'))}× at width {int(w[first])}"
    if first == last:
        return one
    return f"{one} … {plain_number(float(f'{v[last]:.3g}'))}× at {int(w[last])}"


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
    measured_ensemble: xr.DataArray | None = None,
    floor: float | None = None,
    widths: Sequence[float] | None = None,
) -> Figure:
    """eNTK eigenvalues, cumulative task power C(k), and the gradient-flow loss (Fig. 10).

    ``eigenvalues`` and ``task_power`` (width, mode) of the seed-mean eNTK at one step
    (solid); ``*_init`` the same at an earlier step (dashed); ``labels`` name the two.
    ``predicted`` / ``measured`` (width, [seed,] time_dim): kernel gradient-flow
    prediction (dashed) and the measured loss (solid, seed mean);
    ``measured_ensemble`` (width, time_dim): the loss of the seed-mean network (dotted:
    the measured loss less the variance over seeds, which a flow of the seed-mean
    kernel from the seed-mean output does not have); ``floor``: a loss no predictor
    gets below on these points (e.g. the label-noise variance), a grey line. The legend
    states measured / predicted at the last step both have, per width (narrowest and
    widest), for the measured and the seed-mean loss. The view is clipped to four
    decades below the measured loss.
    """
    scale, colors = width_scale(widths, eigenvalues)
    drawn = eigenvalues.width.values.tolist()
    ncols = 1 + (task_power is not None) + (predicted is not None)
    fig, axes = new_figure(1, ncols, height=3.3 if predicted is not None else None)
    k = eigenvalues.mode.values
    ax_e = axes[0, 0]
    ax_c = axes[0, 1] if task_power is not None else None
    for w in drawn:
        gid = width_gid(w)
        ax_e.plot(k, positive(eigenvalues.sel(width=w).values), color=colors[w], gid=gid)
        if eigenvalues_init is not None:
            ax_e.plot(
                k,
                positive(eigenvalues_init.sel(width=w).values),
                color=colors[w],
                ls="--",
                lw=0.8,
                gid=gid,
            )
        if ax_c is not None:
            ax_c.plot(k, task_power.sel(width=w).values, color=colors[w], gid=gid)
            if task_power_init is not None:
                ax_c.plot(
                    k,
                    task_power_init.sel(width=w).values,
                    color=colors[w],
                    ls="--",
                    lw=0.8,
                    gid=gid,
                )
    style_axes(
        ax_e,
        xlabel="rank $k$",
        ylabel=r"eigenvalue $\lambda_k$",
        title="eNTK spectrum",
        logx=True,
        logy=True,
    )
    if eigenvalues_init is not None:
        place_legend(
            ax_e,
            [
                Line2D([], [], color="0.3", label=labels[0]),
                Line2D([], [], color="0.3", ls="--", lw=0.8, label=labels[1]),
            ],
        )
    if ax_c is not None:
        style_axes(
            ax_c, xlabel="rank $k$", ylabel="$C(k)$", title="cumulative task power", logx=True
        )
        ax_c.set_ylim(0, 1.02)
        if task_power_init is not None:
            place_legend(
                ax_c,
                [
                    Line2D([], [], color="0.3", label=labels[0]),
                    Line2D([], [], color="0.3", ls="--", lw=0.8, label=labels[1]),
                ],
            )
    if predicted is not None:
        ax = axes[0, -1]
        width_lines(ax, predicted, time_dim, colors, logx=True, logy=True, ls="--", band=False)
        handles = []
        if measured is not None:
            width_lines(ax, measured, time_dim, colors, logx=True, logy=True, band=False)
            handles.append(Line2D([], [], color="0.3", label="measured (seed mean)"))
        if measured_ensemble is not None:
            width_lines(
                ax, measured_ensemble, time_dim, colors, logx=True, logy=True, ls=":", band=False
            )
            handles.append(Line2D([], [], color="0.3", ls=":", label="seed-mean network"))
        handles.append(Line2D([], [], color="0.3", ls="--", label="gradient flow"))
        if floor is not None and np.isfinite(floor) and floor > 0:
            ax.axhline(floor, color="0.5", lw=0.8, ls="-.")
            handles.append(
                Line2D([], [], color="0.5", lw=0.8, ls="-.", label=f"floor {plain_number(floor)}")
            )
        style_axes(
            ax,
            xlabel=STEP,
            ylabel="loss (MSE)",
            title="kernel prediction vs training",
            logx=True,
            logy=True,
        )
        title = None
        if measured is not None:
            low = np.nanmin(positive(measured.values))
            if np.isfinite(low):
                ax.set_ylim(bottom=max(ax.get_ylim()[0], low / 1e4))
            t, ratio = flow_ratio(predicted, measured, time_dim)
            if ratio is not None:
                title = f"measured / predicted, step {t}:\n{_ratio_text(ratio)}"
                if measured_ensemble is not None:
                    _, er = flow_ratio(predicted, measured_ensemble, time_dim)
                    if er is not None:
                        title += f"\nseed-mean network: {_ratio_text(er)}"
        place_legend(
            ax, handles, title=title, title_fontsize=6.5, fontsize=6.5, ncols=2, columnspacing=1
        )
    width_colorbar(fig, axes, scale, ticks=drawn)
    return fig
