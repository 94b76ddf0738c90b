"""Shared look of every report figure: width colours, colour bar, sizes, line styles.

Widths are coloured on a logarithmic viridis scale, so a doubling series of widths is
evenly spaced in colour and the narrowest is dark, the widest yellow. Every figure
that colours by width carries a colour bar labelled "width" with a tick per width.
Sizes are in inches at paper scale: ``FULL`` is a two-column paper's text width.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import LogNorm, Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FixedLocator, LogFormatter, NullLocator  # noqa: E402

CMAP = "viridis"
FULL = 7.0  # inches: text width of a two-column paper
PANEL_H = 2.5  # inches: height of one row of panels
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D")

RC = {
    "font.size": 8,
    "axes.titlesize": 8.5,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.2,
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "svg.fonttype": "none",
    "svg.hashsalt": "widthwise",
    "path.simplify": True,
}


def width_norm(widths: Sequence[float]) -> Normalize:
    """Log-width normalization over the study's widths (padded when there is only one)."""
    w = np.asarray(widths, dtype=np.float64)
    lo, hi = float(w.min()), float(w.max())
    if lo <= 0:
        return Normalize(lo, hi if hi > lo else lo + 1)
    if hi <= lo:
        lo, hi = lo / 2, hi * 2
    return LogNorm(lo, hi)


def width_colors(widths: Sequence[float]) -> dict[float, tuple]:
    """Colour of each width: viridis on a log scale (narrow dark, wide bright)."""
    norm, cmap = width_norm(widths), plt.get_cmap(CMAP)
    # stop short of viridis' pale yellow end, which is hard to see on white
    return {w: cmap(0.92 * float(norm(w))) for w in widths}


def _trunc_cmap():
    from matplotlib.colors import ListedColormap

    return ListedColormap(plt.get_cmap(CMAP)(np.linspace(0, 0.92, 256)))


def width_colorbar(fig: Figure, axes, widths: Sequence[float], label: str = "width") -> None:
    """A colour bar beside ``axes`` with one tick per width (the colour key of the lines)."""
    sm = ScalarMappable(norm=width_norm(widths), cmap=_trunc_cmap())
    cb = fig.colorbar(sm, ax=axes, pad=0.015, fraction=0.035, aspect=30)
    cb.set_label(label)
    ticks = sorted({float(w) for w in widths})
    cb.ax.yaxis.set_major_locator(FixedLocator(ticks))
    cb.ax.yaxis.set_minor_locator(NullLocator())
    cb.ax.set_yticklabels([f"{int(t)}" if float(t).is_integer() else f"{t:g}" for t in ticks])
    cb.outline.set_linewidth(0.5)


def styled(fn):
    """Run a figure function under the report's rc settings (fonts are read at creation)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.rc_context(RC):
            return fn(*args, **kwargs)

    return wrapper


def new_figure(
    nrows: int = 1, ncols: int = 1, *, height: float | None = None, width: float = FULL, **kw
):
    """A figure at paper width with a grid of panels (constrained layout, 2-d axes array).

    Not attached to pyplot: nothing global is kept, so figures are garbage-collected.
    """
    fig = Figure(figsize=(width, height or PANEL_H * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


class PlainLogFormatter(LogFormatter):
    """Log-axis tick labels as plain numbers ("20", "0.3") instead of 2×10¹, with fewer
    labels between decades the more decades the axis spans (so narrow panels stay legible)."""

    def _num_to_string(self, x, vmin, vmax):
        return f"{x:g}"

    def set_locs(self, locs=None):
        vmin, vmax = sorted(self.axis.get_view_interval())
        if vmin <= 0:
            self._sublabels = {1}
            return
        numdec = np.log10(vmax / vmin)
        if numdec > 2.5:
            self._sublabels = {1}
        elif numdec > 0.7:
            self._sublabels = {1, 2, 5}
        elif numdec > 0.35:
            self._sublabels = {1, 2, 3, 5}
        else:
            self._sublabels = set(range(1, 11))


def log_axis(ax, which: str) -> None:
    """Log scale with plain-number labels on the ``which`` ("x" or "y") axis of ``ax``."""
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_formatter(PlainLogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))


def style_axes(ax, *, xlabel: str, ylabel: str, title: str | None = None, logx=False, logy=False):
    """Labels, title and (optionally) log scales with plain-number tick labels."""
    if logx:
        log_axis(ax, "x")
    if logy:
        log_axis(ax, "y")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)


def width_ticks(ax, widths, max_labels: int = 4) -> None:
    """A tick per width on a log-width x axis, labelled (the widest always) at most
    ``max_labels`` times so that narrow panels stay legible; no minor ticks on x."""
    w = sorted({float(v) for v in widths})
    every = -(-len(w) // max_labels)
    labels = [
        (str(int(v)) if v.is_integer() else f"{v:g}") if (len(w) - 1 - i) % every == 0 else ""
        for i, v in enumerate(w)
    ]
    ax.set_xticks(w, labels)
    ax.xaxis.set_minor_locator(NullLocator())


def positive(values: np.ndarray) -> np.ndarray:
    """``values`` with non-positive entries NaN (for log axes)."""
    v = np.asarray(values, dtype=np.float64)
    return np.where(v > 0, v, np.nan)


# -- reference slopes on against-width panels ---------------------------------------------

REFERENCE_SLOPES = (-0.5, -1.0)
"""Theory's slopes in width: n^-1/2 (fluctuations of a width-n network around its
limit, e.g. a kernel at init) and n^-1 (the variance over seeds, paper Section 3)."""
REFERENCE_COLOR = "0.55"
_REFERENCE_DASHES = {-0.5: (0, (5, 2.5)), -1.0: (0, (2, 2))}


def slope_label(slope: float) -> str:
    """'∝ n^−1/2', '∝ n^−1', '∝ n^0.75': the legend label of a reference slope."""
    from fractions import Fraction

    f = Fraction(slope).limit_denominator(8)
    text = str(f) if abs(float(f) - slope) < 1e-9 else f"{slope:g}"
    return "∝ n^" + text.replace("-", "−")


def reference_slopes(
    ax,
    widths: Sequence[float],
    anchor: float,
    slopes: Sequence[float] = REFERENCE_SLOPES,
    *,
    keep_view: bool = True,
) -> list:
    """Dashed grey power laws y = anchor · (n / n_min)^slope over the widths' range.

    Anchored at the narrowest width's value (``anchor``, e.g. its seed mean), so the
    data's own slope reads against theory's; drawn beneath the data (low zorder), thin,
    and labelled for the legend (``slope_label``); each line's gid is
    ``reference_slope_<slope>`` (also in the SVG). ``keep_view``: the data's view is
    kept, widened only to show the shallowest line whole, so a steep reference never
    squeezes the data. Nothing is drawn (returns ``[]``) without a positive finite
    anchor or two positive widths. Call it after the data and before ``ax.legend()``.
    """
    w = np.asarray(sorted({float(v) for v in widths if np.isfinite(v) and v > 0}))
    if len(w) < 2 or not (np.isfinite(anchor) and anchor > 0):
        return []
    view = ax.get_ylim() if keep_view else None  # forces the autoscale of the data
    x = np.geomspace(w[0], w[-1], 32)
    lines = []
    for s in slopes:
        (line,) = ax.plot(
            x,
            anchor * (x / w[0]) ** s,
            color=REFERENCE_COLOR,
            ls=_REFERENCE_DASHES.get(float(s), (0, (4, 2))),
            lw=0.9,
            zorder=1,
            label=slope_label(float(s)),
        )
        line.set_gid(f"reference_slope_{float(s):g}")
        lines.append(line)
    if view is not None:
        lo, hi = view
        end = anchor * (w[-1] / w[0]) ** min(slopes, key=abs)  # the shallowest line's end
        if ax.get_yscale() == "log" and np.isfinite(end) and end > 0:
            lo, hi = min(lo, end / 1.3), max(hi, end * 1.3)
        ax.set_ylim(lo, hi)
    return lines
