"""Shared look of every report figure: width colours, colour bar, sizes, axes, legends.

Widths are coloured on a logarithmic viridis scale, so a doubling series of widths is
evenly spaced in colour and the narrowest is dark, the widest yellow. The scale is the
*study's* widths (``width_colors(widths)``), passed to every figure of a report (the
``widths=`` argument of the figure functions) and the union of every study's widths in
a comparison, so one colour means one width in every panel. Every figure that colours
by width carries a colour bar labelled "width" with a tick per width, and every artist
drawn for one width has the gid ``width=<n>`` (:func:`width_gid`, also in the SVG).

Sizes are in inches at paper scale: ``FULL`` is a two-column paper's text width.
Log axes label at least two values in view (:class:`PlainLogLocator`); a value that is
exactly zero on a log axis is drawn as an open marker on the bottom edge
(:func:`zero_markers`), never silently dropped. Legends and text boxes are placed
where they cover no data point (:func:`place_legend`; outside the axes when no spot
inside is free), once the figure is laid out (:func:`settle_legends`, run by
:func:`styled`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.collections import Collection, LineCollection, PathCollection  # noqa: E402
from matplotlib.colors import LogNorm, Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.legend import Legend  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    FixedLocator,
    Formatter,
    Locator,
    LogLocator,
    MaxNLocator,
    NullFormatter,
    NullLocator,
)
from matplotlib.transforms import Bbox, ScaledTranslation, blended_transform_factory  # noqa: E402

CMAP = "viridis"
FULL = 7.0  # inches: text width of a two-column paper
PANEL_H = 2.5  # inches: height of one row of panels
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "P", "X")  # "v" is kept for zeros on a log axis

SPARSE_STEPS = 6
"""A probe with fewer recorded steps than this is drawn as markers with error bars (the
range over seeds), not as lines with bands: a line between 3 points suggests a course
between them that was never measured."""

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
    "mathtext.fontset": "dejavusans",
    "mathtext.default": "it",
}


# -- the width → colour map ----------------------------------------------------------------


def _sorted_widths(widths) -> list:
    return sorted({w for w in np.asarray(widths).ravel().tolist() if np.isfinite(w)})


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
    """Colour of each width: viridis on a log scale (narrow dark, wide bright).

    The one width → colour map of widthwise: a width's colour depends only on the set
    ``widths`` (the study's, or every compared study's), so figures drawn with the same
    set colour a width alike.
    """
    norm, cmap = width_norm(widths), plt.get_cmap(CMAP)
    # stop short of viridis' pale yellow end, which is hard to see on white
    return {w: cmap(0.92 * float(norm(w))) for w in widths}


def width_scale(widths: Sequence[float] | None, *arrays) -> tuple[list, dict]:
    """(the widths of the colour scale, their colours) for a figure of ``arrays``.

    ``widths``: the study's widths (the scale every figure of a report shares); ``None``
    takes the widths found in ``arrays`` (DataArrays or Datasets with a width dim).
    Widths in the data but not in ``widths`` are added, so every drawn width has a colour.
    """
    found = []
    for a in arrays:
        if a is not None and "width" in getattr(a, "dims", ()):
            found.extend(np.asarray(a["width"].values).tolist())
    scale = _sorted_widths(list(widths if widths is not None else []) + found)
    return scale, width_colors(scale)


def width_gid(w) -> str:
    """The gid of every artist drawn for width ``w`` ('width=256'), also in the SVG."""
    w = float(w)
    return f"width={int(w) if w.is_integer() else w:g}"


def _trunc_cmap():
    from matplotlib.colors import ListedColormap

    return ListedColormap(plt.get_cmap(CMAP)(np.linspace(0, 0.92, 256)))


def width_colorbar(
    fig: Figure,
    axes,
    widths: Sequence[float],
    label: str = "width",
    *,
    ticks: Sequence[float] | None = None,
) -> None:
    """A colour bar beside ``axes`` on the scale ``widths`` (the colour key of the lines),
    with a tick per width drawn (``ticks``; default every width of the scale)."""
    sm = ScalarMappable(norm=width_norm(widths), cmap=_trunc_cmap())
    cb = fig.colorbar(sm, ax=axes, pad=0.015, fraction=0.035, aspect=30)
    cb.set_label(label)
    ticks = sorted({float(w) for w in (widths if ticks is None else ticks)})
    cb.ax.yaxis.set_major_locator(FixedLocator(ticks))
    cb.ax.yaxis.set_minor_locator(NullLocator())
    cb.ax.set_yticklabels([f"{int(t)}" if float(t).is_integer() else f"{t:g}" for t in ticks])
    cb.outline.set_linewidth(0.5)
    cb.ax.set_gid("width_colorbar")


def styled(fn):
    """Run a figure function under the report's rc settings (fonts are read at creation),
    then place its legends off the data (:func:`settle_legends`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.rc_context(RC):
            fig = fn(*args, **kwargs)
            if isinstance(fig, Figure):
                settle_legends(fig)
            return fig

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


# -- log axes: labelled ticks ---------------------------------------------------------------


def _log_view(axis) -> tuple[float, float] | None:
    vmin, vmax = sorted(axis.get_view_interval())
    if not (np.isfinite(vmin) and np.isfinite(vmax) and vmin > 0 and vmax > vmin):
        return None
    return vmin, vmax


LOG_SUBS = ((1.0, 2.0, 3.0, 5.0), (1.0, 2.0, 5.0), (1.0,))
"""Mantissas of the labelled ticks of a log axis, densest first."""


def _log_ticks(vmin: float, vmax: float, subs, stride: int = 1) -> np.ndarray:
    lo, hi = math.floor(math.log10(vmin)), math.ceil(math.log10(vmax))
    t = np.array([s * 10.0**e for e in range(lo, hi + 1) if e % stride == 0 for s in subs])
    return t[(t >= vmin * (1 - 1e-9)) & (t <= vmax * (1 + 1e-9))]


def _capacity(axis, default: int = 6) -> int:
    """How many tick labels fit along ``axis``: its length over a label's extent (about
    26 pt across for an x label, 22 pt for a y label at the report's font size)."""
    ax = getattr(axis, "axes", None)
    if ax is None:
        return default
    fig = ax.figure
    dpi = fig.dpi if fig is not None else 100.0
    length = ax.bbox.width if axis.axis_name == "x" else ax.bbox.height
    per = 26.0 if axis.axis_name == "x" else 22.0
    return max(2, int(length * 72.0 / dpi / per))


class PlainLogLocator(Locator):
    """Major (labelled) ticks of a log axis: the densest of 1-2-3-5, 1-2-5, decades
    (every k-th decade when even those crowd) whose labels fit along the axis, and
    'nice' linear steps where the view is too narrow for two of them (there a log
    locator leaves one tick or none, and lines sit against an unlabelled axis)."""

    def __call__(self):
        view = _log_view(self.axis)
        if view is None:  # no positive view (no positive data): no ticks to label
            return []
        return self.tick_values(*view)

    def tick_values(self, vmin, vmax):
        vmin, vmax = sorted((float(vmin), float(vmax)))
        if not (vmin > 0 and np.isfinite(vmax)):
            return np.array([])
        cap = _capacity(self.axis) if self.axis is not None else 6
        dense = _log_ticks(vmin, vmax, LOG_SUBS[0])
        if len(dense) < 2:  # too narrow a view for log ticks: nice linear steps
            ticks = MaxNLocator(nbins=min(cap, 4), steps=[1, 2, 2.5, 5, 10]).tick_values(vmin, vmax)
            return ticks[ticks > 0]
        for subs in LOG_SUBS:
            t = _log_ticks(vmin, vmax, subs)
            if len(t) <= cap and len(t) >= 2:
                return t
        numdec = math.log10(vmax / vmin)
        t = _log_ticks(vmin, vmax, (1.0,), stride=max(1, math.ceil(numdec / cap)))
        if len(t) >= 2:
            return t
        for subs in LOG_SUBS[::-1]:  # crowded, but never fewer than two labels
            t = _log_ticks(vmin, vmax, subs)
            if len(t) >= 2:
                return t
        return dense


def _linear_view(axis) -> bool:
    """True where :class:`PlainLogLocator` puts linear steps (a very narrow view)."""
    view = _log_view(axis)
    return view is None or len(_log_ticks(*view, LOG_SUBS[0])) < 2


class PlainLogMinorLocator(Locator):
    """Unlabelled minor ticks of a log axis: the mantissas 2-9 not already major
    (none in a narrow view, whose major ticks are linear steps)."""

    def __call__(self):
        view = _log_view(self.axis)
        if view is None:
            return []
        vmin, vmax = view
        if _linear_view(self.axis):
            return []
        major = set(np.round(self.axis.get_majorticklocs(), 12).tolist())
        ticks = LogLocator(subs=np.arange(1.0, 10.0)).tick_values(vmin, vmax)
        return [t for t in ticks if round(t, 12) not in major]

    def tick_values(self, vmin, vmax):
        return LogLocator(subs=np.arange(1.0, 10.0)).tick_values(vmin, vmax)


def plain_number(x: float) -> str:
    """'20', '0.3', '0.001'; beyond 1e-4..1e5 mathtext powers of ten ('$2\\times10^{-6}$')."""
    if x == 0 or not np.isfinite(x):
        return f"{x:g}"
    a = abs(x)
    if 1e-4 <= a < 1e5:
        return f"{x:.6g}".replace("-", "\N{MINUS SIGN}")
    e = math.floor(math.log10(a))
    m = x / 10.0**e
    if abs(m - round(m)) < 1e-9 and round(m) == 1:
        return f"$10^{{{e}}}$"
    return f"${m:.3g}\\times10^{{{e}}}$"


class PlainLogFormatter(Formatter):
    """Log-axis tick labels as plain numbers ("20", "0.3") instead of 2×10¹."""

    def __call__(self, x, pos=None):
        return plain_number(float(x))


def log_axis(ax, which: str) -> None:
    """Log scale on the ``which`` ("x" or "y") axis of ``ax``, with labelled ticks that
    always name at least two values in view (:class:`PlainLogLocator`)."""
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(PlainLogLocator())
    axis.set_minor_locator(PlainLogMinorLocator())
    axis.set_major_formatter(PlainLogFormatter())
    axis.set_minor_formatter(NullFormatter())


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


def step_ticks(ax, steps) -> None:
    """Ticks at exactly the recorded steps (a sparse probe's x axis, linear)."""
    s = sorted({float(v) for v in np.asarray(steps).ravel() if np.isfinite(v)})
    if not s:
        return
    ax.set_xticks(s, [str(int(v)) if v.is_integer() else f"{v:g}" for v in s])
    ax.xaxis.set_minor_locator(NullLocator())
    span = (s[-1] - s[0]) or max(abs(s[0]), 1.0)
    ax.set_xlim(s[0] - 0.25 * span / max(len(s) - 1, 1), s[-1] + 0.25 * span / max(len(s) - 1, 1))


def positive(values: np.ndarray) -> np.ndarray:
    """``values`` with non-positive entries NaN (for log axes)."""
    v = np.asarray(values, dtype=np.float64)
    return np.where(v > 0, v, np.nan)


# -- sparse probes: markers with error bars --------------------------------------------------


def recorded(x: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """The x values at which ``vals`` (..., x) has any finite value."""
    v = np.asarray(vals, dtype=np.float64).reshape(-1, len(x))
    return np.asarray(x)[np.isfinite(v).any(0)]


def is_sparse(n_steps: int) -> bool:
    """Fewer recorded steps than :data:`SPARSE_STEPS`: draw markers, not lines."""
    return n_steps < SPARSE_STEPS


def dodge(x: np.ndarray, slot: int, n_slots: int, *, spread: float = 0.3) -> np.ndarray:
    """``x`` moved sideways for slot ``slot`` of ``n_slots`` (a width, a layer), so that
    markers at one step stay apart: the slots span ``spread`` of the smallest gap."""
    x = np.asarray(x, dtype=np.float64)
    if n_slots <= 1:
        return x
    u = np.unique(x[np.isfinite(x)])
    gap = float(np.min(np.diff(u))) if len(u) > 1 else max(float(np.abs(u).max(initial=0)), 1.0)
    return x + gap * spread * (slot / (n_slots - 1) - 0.5)


ZERO_GID = "zero_on_log_axis"
ZERO_LABEL = "0 (off the log scale)"


def zero_markers(ax, x, values, *, color, marker: str = "v", ms: float = 4.5, gid=None) -> int:
    """Values exactly 0 on a log y axis, drawn as open markers on the bottom edge.

    A log axis cannot show 0: such a value (a zero-initialised readout at step 0, a
    distance that is exactly 0) would otherwise vanish without a trace. Returns how many
    were drawn; their gid is ``zero_on_log_axis`` (and ``gid`` when given, e.g. a width).
    """
    x = np.asarray(x, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    zero = np.isfinite(x) & (v == 0)
    if not zero.any():
        return 0
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    (line,) = ax.plot(
        x[zero],
        np.full(int(zero.sum()), 0.03),
        ls="none",
        marker=marker,
        ms=ms,
        mfc="white",
        mec=color,
        mew=1.0,
        transform=trans,
        clip_on=False,
        zorder=4,
        label="_zero",
    )
    line.set_gid(ZERO_GID if gid is None else f"{ZERO_GID} {gid}")
    return int(zero.sum())


def zero_handle() -> Line2D:
    """The legend entry of :func:`zero_markers`."""
    return Line2D([], [], ls="none", marker="v", ms=4.5, mfc="white", mec="0.3", label=ZERO_LABEL)


def has_zero_markers(ax) -> bool:
    return any(str(ln.get_gid() or "").startswith(ZERO_GID) for ln in ax.get_lines())


def figure_legend(fig: Figure, handles: Sequence, *, where: str = "lower center", **kw):
    """One legend for every panel of ``fig``, outside them all (``where``: "lower
    center" below the panels, "right upper" beside them): keys shared by the panels
    (a tolerance, the layers' markers) are said once and cover no data. Duplicate
    labels are dropped."""
    seen: dict[str, object] = {}
    for h in handles:
        seen.setdefault(h.get_label(), h)
    if not seen:
        return None
    if where == "lower center":
        kw.setdefault("ncols", min(len(seen), 6))
    return fig.legend(list(seen.values()), list(seen), loc=f"outside {where}", **kw)


# -- legends placed off the data --------------------------------------------------------------

LEGEND_PAD = 3.0  # px: a legend keeps this far from data points and the axes' edges


def place_legend(
    ax,
    handles: Sequence | None = None,
    labels: Sequence[str] | None = None,
    *,
    title: str | None = None,
    main: bool = True,
    outside: str = "below",
    **kw,
) -> Legend:
    """A legend (or, without handles, a text box: ``title``) where it covers no data.

    Placed by :func:`settle_legends` once the figure is laid out: inside ``ax`` at the
    free spot nearest a corner (no line, marker, error bar or text within it; bands and
    spans are avoided where possible), else ``outside`` the axes ("below": under the x
    axis label; "right": beside the axes). ``main``: the axes' own legend
    (``ax.get_legend()``); otherwise an extra artist (a fit box, a note).
    """
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    elif labels is None:
        labels = [h.get_label() for h in handles]
    handles, labels = list(handles), list(labels)
    kw.setdefault("borderaxespad", 0.0)
    if main and handles:
        leg = ax.legend(handles, labels, title=title, loc="upper right", **kw)
    else:
        leg = Legend(ax, handles, labels, title=title, loc="upper right", **kw)
        ax.add_artist(leg)
        leg.set_clip_on(False)
    if title:
        leg.get_title().set_multialignment("left")
    leg._ww_outside = outside  # noqa: SLF001 - read by settle_legends
    placed = getattr(ax.figure, "_ww_placed", [])
    placed.append((ax, leg))
    ax.figure._ww_placed = placed
    return leg


def _densify(xy: np.ndarray, step: float = 2.5, limit: int = 40000) -> np.ndarray:
    """Points along a polyline in display coordinates, every ``step`` px or closer."""
    if len(xy) < 2:
        return xy
    seg = np.diff(xy, axis=0)
    n = np.clip(np.ceil(np.hypot(seg[:, 0], seg[:, 1]) / step).astype(int), 1, None)
    if n.sum() > limit:
        n = np.clip((n * limit / n.sum()).astype(int), 1, None)
    t = np.concatenate([np.arange(k) / k for k in n])
    i = np.repeat(np.arange(len(seg)), n)
    return np.vstack([xy[i] + seg[i] * t[:, None], xy[-1:]])


def _finite_runs(xy: np.ndarray) -> list[np.ndarray]:
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    ok = np.isfinite(xy).all(1)
    runs, cur = [], []
    for p, good in zip(xy, ok):
        if good:
            cur.append(p)
        elif cur:
            runs.append(np.array(cur))
            cur = []
    if cur:
        runs.append(np.array(cur))
    return runs


def data_points(ax) -> np.ndarray:
    """Display coordinates (N, 2) of the data in ``ax`` a legend must not cover: line
    vertices and their segments (sampled every few px), markers, error bars and
    scatter points. Reference lines and thresholds count; empty legend proxies do not."""
    pts = []
    for line in ax.get_lines():
        if not line.get_visible():
            continue
        xy = np.asarray(line.get_xydata(), dtype=np.float64)
        if not len(xy):
            continue
        with np.errstate(all="ignore"):
            disp = line.get_transform().transform(xy)
        joined = line.get_linestyle() not in ("None", "none", "", " ")
        for run in _finite_runs(disp):
            pts.append(_densify(run) if joined else run)
    for coll in ax.collections:
        if not coll.get_visible():
            continue
        if isinstance(coll, LineCollection):
            for seg in coll.get_segments():
                seg = np.asarray(seg, dtype=np.float64)
                if len(seg):
                    with np.errstate(all="ignore"):
                        disp = coll.get_transform().transform(seg)
                    for run in _finite_runs(disp):
                        pts.append(_densify(run))
        elif isinstance(coll, PathCollection):
            offs = np.asarray(coll.get_offsets(), dtype=np.float64)
            if len(offs):
                with np.errstate(all="ignore"):
                    pts.append(coll.get_offset_transform().transform(offs))
    for patch in ax.patches:  # bars
        if isinstance(patch, Rectangle) and patch.get_gid() != "soft" and patch.get_visible():
            corners = patch.get_verts()
            for run in _finite_runs(np.asarray(corners, dtype=np.float64)):
                pts.append(_densify(run))
    if not pts:
        return np.zeros((0, 2))
    p = np.vstack(pts)
    p = p[np.isfinite(p).all(1)]
    box = ax.bbox
    inside = (p[:, 0] >= box.x0 - 1) & (p[:, 0] <= box.x1 + 1)
    inside &= (p[:, 1] >= box.y0 - 1) & (p[:, 1] <= box.y1 + 1)
    return p[inside]


def _areas(ax) -> list:
    """(path, transform) of the shaded areas in ``ax`` (bands, spans): soft obstacles."""
    out = []
    for coll in ax.collections:
        if isinstance(coll, (LineCollection, PathCollection)) or not coll.get_visible():
            continue
        if isinstance(coll, Collection):
            out.extend((p, coll.get_transform()) for p in coll.get_paths())
    for patch in ax.patches:
        if patch.get_gid() == "soft" and patch.get_visible():
            out.append((patch.get_path(), patch.get_transform()))
    return out


def _hits(box: Bbox, pts: np.ndarray, pad: float = LEGEND_PAD) -> int:
    if not len(pts):
        return 0
    return int(
        (
            (pts[:, 0] >= box.x0 - pad)
            & (pts[:, 0] <= box.x1 + pad)
            & (pts[:, 1] >= box.y0 - pad)
            & (pts[:, 1] <= box.y1 + pad)
        ).sum()
    )


def _area_hits(box: Bbox, areas) -> int:
    if not areas:
        return 0
    gx, gy = np.meshgrid(np.linspace(box.x0, box.x1, 6), np.linspace(box.y0, box.y1, 4))
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    n = 0
    for path, trans in areas:
        with np.errstate(all="ignore"):
            n += int(path.contains_points(grid, transform=trans).sum())
    return n


def _obstacle_boxes(ax, leg, renderer) -> list[Bbox]:
    boxes = []
    for t in ax.texts:
        if t.get_visible() and t.get_text():
            boxes.append(t.get_window_extent(renderer))
    for other_ax, other in getattr(ax.figure, "_ww_placed", []):
        if other is not leg and other_ax is ax and other.get_visible():
            boxes.append(other.get_window_extent(renderer))
    return boxes


def legend_overlaps(ax, leg: Legend, renderer=None) -> int:
    """How many data points of ``ax`` (:func:`data_points`) lie within ``leg``'s box."""
    renderer = renderer or ax.figure._get_renderer()
    return _hits(leg.get_window_extent(renderer), data_points(ax), pad=0.0)


_CORNER = {  # candidate side → (legend loc, the loc's anchor in the candidate box)
    ("upper", "right"): "upper right",
    ("upper", "left"): "upper left",
    ("upper", "center"): "upper center",
    ("lower", "right"): "lower right",
    ("lower", "left"): "lower left",
    ("lower", "center"): "lower center",
}


def _candidates(ax, w: float, h: float, rows: int = 7):
    """Boxes of a w×h legend inside ``ax``, corners first, then along the edges."""
    b = ax.bbox
    pad = LEGEND_PAD + 1
    xs = {"right": b.x1 - pad - w, "left": b.x0 + pad, "center": (b.x0 + b.x1 - w) / 2}
    top, bottom = b.y1 - pad - h, b.y0 + pad
    if top < bottom or xs["right"] < xs["left"]:
        return []
    ys = np.linspace(top, bottom, rows)
    out = []
    order = [("right", 0), ("left", 0), ("left", rows - 1), ("right", rows - 1)]
    order += [(s, r) for r in range(1, rows - 1) for s in ("right", "left")]
    order += [("center", 0), ("center", rows - 1)]
    order += [("center", r) for r in range(1, rows - 1)]
    for side, r in order:
        out.append(
            (side, "upper" if r < rows / 2 else "lower", Bbox.from_bounds(xs[side], ys[r], w, h))
        )
    return out


def _place_inside(ax, leg, renderer) -> bool:
    ext = leg.get_window_extent(renderer)
    pts, areas = data_points(ax), _areas(ax)
    boxes = _obstacle_boxes(ax, leg, renderer)
    best = None
    for rank, (side, vert, box) in enumerate(_candidates(ax, ext.width, ext.height)):
        if _hits(box, pts) or any(box.overlaps(o) for o in boxes):
            continue
        score = (_area_hits(box, areas), rank)
        if best is None or score < best[0]:
            best = (score, side, vert, box)
        if score[0] == 0:
            break
    if best is None:
        return False
    _, side, vert, box = best
    loc = _CORNER[(vert, side)]
    x = {"right": box.x1, "left": box.x0, "center": (box.x0 + box.x1) / 2}[side]
    y = box.y1 if vert == "upper" else box.y0
    ax_frac = ax.transAxes.inverted().transform((x, y))
    leg.set_loc(loc)
    leg.set_bbox_to_anchor((float(ax_frac[0]), float(ax_frac[1])), transform=ax.transAxes)
    leg._ww_where = "inside"  # noqa: SLF001
    return True


def _place_outside(ax, leg, renderer) -> None:
    """Put ``leg`` outside ``ax``: below the x axis label (a fixed distance in inches
    below the axes' bottom edge, so it stays clear when the layout resizes the axes), or
    right of the axes."""
    if getattr(leg, "_ww_outside", "below") == "right":
        leg.set_loc("upper left")
        leg.set_bbox_to_anchor((1.02, 1.0), transform=ax.transAxes)
    else:
        below = ax.xaxis.get_tightbbox(renderer)
        y0 = min(ax.bbox.y0, below.y0) if below is not None else ax.bbox.y0
        drop = (ax.bbox.y0 - y0 + 4) / ax.figure.dpi  # inches from the axes' bottom
        trans = ax.transAxes + ScaledTranslation(0, -drop, ax.figure.dpi_scale_trans)
        leg.set_loc("upper center")
        leg.set_bbox_to_anchor((0.5, 0.0), transform=trans)
    leg._ww_where = "outside"  # noqa: SLF001


def _layout(fig: Figure):
    """Lay ``fig`` out (constrained layout) without drawing it; returns a renderer."""
    renderer = fig._get_renderer()  # noqa: SLF001
    for ax in fig.axes:  # settle autoscaled views: data points are placed through them
        ax.get_xlim()
        ax.get_ylim()
    engine = fig.get_layout_engine()
    if engine is not None:
        engine.execute(fig)
    return renderer


def _fits_inside(ax, leg, renderer) -> bool:
    ext = leg.get_window_extent(renderer)
    b = ax.bbox
    if ext.x0 < b.x0 - 0.5 or ext.x1 > b.x1 + 0.5 or ext.y0 < b.y0 - 0.5 or ext.y1 > b.y1 + 0.5:
        return False
    if _hits(ext, data_points(ax)):
        return False
    return not any(ext.overlaps(o) for o in _obstacle_boxes(ax, leg, renderer))


def settle_legends(fig: Figure, rounds: int = 3) -> None:
    """Place every :func:`place_legend` legend of ``fig`` off the data.

    Lays the figure out, puts each legend at its best free spot inside its axes (or
    outside), and repeats while the layout moves something (a legend put outside
    shrinks the axes, which can make an inside legend overlap again).
    """
    placed = getattr(fig, "_ww_placed", [])
    if not placed:
        return
    for _ in range(rounds):
        renderer = _layout(fig)
        moved = False
        for ax, leg in placed:
            where = getattr(leg, "_ww_where", None)
            if where == "outside" or (where == "inside" and _fits_inside(ax, leg, renderer)):
                continue
            if not _place_inside(ax, leg, renderer):
                _place_outside(ax, leg, renderer)
            moved = True
        if not moved:
            return


# -- reference slopes on against-width panels ---------------------------------------------

REFERENCE_SLOPES = (-0.5, -1.0)
"""Theory's slopes in width: n^-1/2 (fluctuations of a width-n network around its
limit, e.g. a kernel at init) and n^-1 (the variance over seeds, paper Section 3)."""
REFERENCE_COLOR = "0.55"
_REFERENCE_DASHES = {-0.5: (0, (5, 2.5)), -1.0: (0, (2, 2))}


def _fraction(slope: float) -> str:
    from fractions import Fraction

    f = Fraction(slope).limit_denominator(8)
    return str(f) if abs(float(f) - slope) < 1e-9 else f"{slope:g}"


def slope_label(slope: float) -> str:
    """'∝ n^−1/2', '∝ n^−1', '∝ n^0.75': a reference slope in plain text (captions)."""
    return "∝ n^" + _fraction(slope).replace("-", "−")


def slope_math(slope: float) -> str:
    """'$\\propto n^{-1/2}$': the legend label of a reference slope (mathtext)."""
    return f"$\\propto n^{{{_fraction(slope)}}}$"


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
    and labelled for the legend (:func:`slope_math`); each line's gid is
    ``reference_slope_<slope>`` (also in the SVG). ``keep_view``: the data's view is
    kept, widened only to show the shallowest line whole, so a steep reference never
    squeezes the data. Nothing is drawn (returns ``[]``) without a positive finite
    anchor or two positive widths. Call it after the data and before the legend.
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
            label=slope_math(float(s)),
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
