"""The consistency-horizon figure: t*(n) against width, and its dual (pure).

Input is :func:`widthwise.analysis.study_horizon.study_horizons`' Dataset; nothing is
read or written here. Width is the x axis of the left panel, so quantities (not
widths) get the colours: one line, marker and line style per quantity.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

from widthwise.report.style import (
    LINESTYLES,
    MARKERS,
    new_figure,
    style_axes,
    styled,
    width_ticks,
)

# quantities are categories: a qualitative palette, distinct from the width colours
QUANTITY_COLORS = ("#1f5f99", "#c0392b", "#2e8b57", "#8e44ad", "#d68910", "#5d6d7e")


def _style(i: int) -> dict:
    return {
        "color": QUANTITY_COLORS[i % len(QUANTITY_COLORS)],
        "marker": MARKERS[i % len(MARKERS)],
        "ls": LINESTYLES[i % len(LINESTYLES)],
    }


def _label(w: float) -> str:
    return str(int(w)) if float(w).is_integer() else f"{w:g}"


@styled
def horizon(h: xr.Dataset) -> Figure:
    """Left: t*(n) against n (log-log), one line per quantity; right: the narrowest
    width that agrees with the widest at each step (the dual), against the step.

    Markers sit at t* (every step up to it "consistent": its interval's upper bound ≤
    the tolerance); the error bar reaches the optimistic horizon ``horizon_hi``
    (lower bound ≤ tolerance). A width that never agrees is an open marker on the
    bottom line "never". Quantities are nudged apart along x so that equal values
    stay visible. The widest width is the reference and is not plotted.
    """
    fig, axes = new_figure(1, 2, height=2.9)
    left, right = axes[0]
    quantities = [str(q) for q in h["quantity"].values]
    widths = np.asarray(h["width"].values, dtype=np.float64)
    first = int(h["first_step"].min())
    last = int(h["last_step"].max())
    floor = max(first / 2.0, 0.5)  # the "never" line, below every horizon
    top = widths.max() * 2.0  # the dual's "none" line, above every compared width
    any_never = False
    for i, q in enumerate(quantities):
        row, st = h.sel(quantity=q), _style(i)
        x = widths * 1.045 ** (i - (len(quantities) - 1) / 2)
        t = row["horizon"].values.astype(np.float64)
        hi = row["horizon_hi"].values.astype(np.float64)
        ok = t >= 0
        left.plot(x, np.where(ok, t, np.nan), color=st["color"], ls=st["ls"], lw=1.0)
        yerr = np.vstack([np.zeros_like(t), np.where(ok & (hi > t), hi - t, 0.0)])
        left.errorbar(
            x[ok],
            t[ok],
            yerr=yerr[:, ok],
            fmt=st["marker"],
            color=st["color"],
            ms=4.5,
            capsize=2.5,
            lw=0.9,
        )
        if (~ok).any():
            any_never = True
            left.plot(
                x[~ok],
                np.full(int((~ok).sum()), floor),
                st["marker"],
                mfc="white",
                mec=st["color"],
                ms=4.5,
                ls="none",
            )
        # right: the dual over the quantity's own steps
        rec = row["recorded"].values.astype(bool)
        steps = row["step"].values[rec].astype(np.float64)
        mw = row["min_width"].values[rec].astype(np.float64)
        dense = len(steps) > 40
        right.plot(
            steps,
            np.where(np.isfinite(mw), mw, top) * 1.03 ** (i - (len(quantities) - 1) / 2),
            color=st["color"],
            ls=st["ls"],
            lw=0.7 if dense else 1.0,
            alpha=0.75 if dense else 1.0,
            drawstyle="steps-post",
            marker=None if dense else st["marker"],
            ms=3.5,
        )
    left.axhline(last, color="0.45", lw=0.7, ls="--")
    left.annotate(
        f"last step ({last})",
        xy=(1.0, last),
        xycoords=("axes fraction", "data"),
        ha="right",
        va="bottom",
        fontsize=6.5,
        color="0.35",
    )
    style_axes(
        left,
        xlabel="width n",
        ylabel="t*(n): last step agreeing",
        title="consistency horizon t*(n)",
        logx=True,
        logy=True,
    )
    width_ticks(left, widths, max_labels=6)
    left.set_xlim(widths.min() / 1.3, widths.max() * 1.3)
    left.set_ylim(floor / 1.4, last * 1.8)
    if any_never:
        ticks = [10.0**k for k in range(0, 7) if floor * 1.5 < 10.0**k <= last * 1.8]
        left.yaxis.set_major_locator(FixedLocator([floor, *ticks]))
        left.yaxis.set_major_formatter(FixedFormatter(["never"] + [_label(v) for v in ticks]))
        left.yaxis.set_minor_locator(NullLocator())
    style_axes(
        right,
        xlabel="training step",
        ylabel="narrowest agreeing width",
        title="the dual: width needed at each step",
        logx=True,
        logy=True,
    )
    right.yaxis.set_major_locator(FixedLocator([*widths, top]))
    right.yaxis.set_major_formatter(FixedFormatter([_label(w) for w in widths] + ["none"]))
    right.yaxis.set_minor_locator(NullLocator())
    right.set_ylim(widths.min() / 1.5, top * 1.5)
    handles = [Line2D([], [], label=q, ms=4, **_style(i)) for i, q in enumerate(quantities)]
    ref = h.attrs.get("reference_width")
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=min(len(handles), 6),
        title=f"each quantity against width {ref}" if ref is not None else None,
        title_fontsize=7,
    )
    return fig
