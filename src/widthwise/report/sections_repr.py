"""Report sections of the representation probes: kernels, preactivations, attention,
sharpness, eNTK spectrum, coordinate check (paper Fig. 1d, 5, 6a, 10, 12, 14)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from widthwise import analysis as wa
from widthwise.report import fig_curves, fig_fits, fig_repr
from widthwise.report.section import FLAT, Panel, Section, has, loss_kind, spec_of, tidy
from widthwise.report.style import slope_label

MAX_ATTENTION_ROWS = 4

# -- captions computed from the numbers shown ----------------------------------------------
#
# Every sentence a section states about its data comes from one of these pure helpers:
# they take the computed values (the same ones the section's CSV holds) and return the
# sentence, with "not measured" wherever a value is not finite, never a fixed claim.

NOT_MEASURED = "not measured"
EOS_BAND = 0.1
"""A sharpness plateau is "at the edge of stability" when its interval over seeds
reaches within 10 % of the threshold (it hovers at or just above it: Cohen et al. 2021)."""
CKA_AGREES = 0.9
"""Kernel shape agrees with the widest's where CKA ≥ 0.9."""
FROB_AGREES = 0.1
"""Kernel scale agrees with the widest's where the relative Frobenius distance ≤ 0.1."""
LIMIT_SLOPE, LIMIT_SLOPE_TOL = -0.5, 0.25
"""A kernel at init approaches its infinite-width limit like n^-1/2: the log-log slope
of the distance agrees when its interval lies within −1/2 ± 0.25."""
PLATEAU_FRACTION = 0.2
"""The sharpness plateau is its mean over the last 20 % of the recorded steps."""
FLAT_SLOPE = 0.1
"""Coordinate check: a layer is flat in width where |log-log slope| ≤ 0.1."""


def fmt(v: float) -> str:
    """A number as captions print it: 3 significant digits; "n/a" when not finite."""
    v = float(v)
    return f"{v:.3g}".replace("-", "−") if np.isfinite(v) else "n/a"


def span(values) -> str:
    """'13.7–16.7': the range of the finite ``values`` (one number when they print
    alike); '' when none is finite."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return ""
    lo, hi = fmt(v.min()), fmt(v.max())
    return lo if lo == hi else f"{lo}–{hi}"


def _w(w) -> str:
    return str(int(w)) if float(w).is_integer() else f"{float(w):g}"


def width_list(widths) -> str:
    """'64', '64 and 128', '64, 128 and 256'."""
    w = [_w(x) for x in widths]
    return w[0] if len(w) == 1 else ", ".join(w[:-1]) + " and " + w[-1]


def per_width(widths, values, *, max_items: int = 6) -> str:
    """'0.213 at width 64, 0.121 at 128, …': every width's value (NaN: "n/a"); with more
    than ``max_items`` widths, the first two, "…" and the last two."""
    items = [
        f"{fmt(v)} at {'width ' if i == 0 else ''}{_w(w)}"
        for i, (w, v) in enumerate(zip(widths, values))
    ]
    if len(items) > max_items:
        items = [*items[:2], "…", *items[-2:]]
    return ", ".join(items)


def loglog_slope(widths, values) -> float:
    """Least-squares slope of log(value) on log(width) over the positive finite values
    (NaN with fewer than two)."""
    w = np.asarray(widths, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v) & (v > 0) & np.isfinite(w) & (w > 0)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(w[ok]), np.log(v[ok]), 1)[0])


def monotone_word(values) -> str:
    """'decreasing in width' / 'increasing in width' (strictly, over the finite values in
    width order), 'not monotone in width', or '' with fewer than two finite values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return ""
    d = np.diff(v)
    if (d < 0).all():
        return "decreasing in width"
    if (d > 0).all():
        return "increasing in width"
    return "not monotone in width"


def trend_sentence(label: str, widths, values) -> str:
    """'<label>: 0.03 at width 64, …, 0.01 at 512 (decreasing in width; log-log slope
    −0.5)'; '<label>: not measured' when no value is finite."""
    v = np.asarray(values, dtype=np.float64)
    if not np.isfinite(v).any():
        return f"{label}: {NOT_MEASURED}"
    extra = [x for x in (monotone_word(v),) if x]
    slope = loglog_slope(widths, v)
    if np.isfinite(slope):
        extra.append(f"log-log slope {fmt(slope)}")
    return f"{label}: {per_width(widths, v)}" + (f" ({'; '.join(extra)})" if extra else "")


def stability_sentence(
    widths,
    estimate,
    lo,
    hi,
    threshold: float | None,
    threshold_name: str = "2/lr",
    *,
    fraction: float = 0.2,
    window: tuple[int, int] | None = None,
    no_threshold: str = "",
    band: float = EOS_BAND,
) -> str:
    """The sharpness section's verdict from the plateau (``widthwise.analysis.plateau``:
    per-width seed mean over the last ``fraction`` of recorded steps, ``lo``/``hi`` its
    interval over seeds) against the stability ``threshold`` (None: none applies, and
    ``no_threshold`` says why). Per width: *below* when hi < (1 − band)·threshold, *at
    the edge of stability* when the interval reaches within ``band`` of it, *above*
    when lo > (1 + band)·threshold. Not finite: "not measured", and no claim.
    """
    widths = list(widths)
    est, lo, hi = (np.asarray(a, dtype=np.float64).ravel() for a in (estimate, lo, hi))
    where = f"over the last {fraction * 100:g} % of the recorded steps"
    notes = []
    if window is not None:
        a, b = (int(x) for x in window)
        notes.append(f"step {a}" if a == b else f"steps {a}–{b}")
    ok = np.isfinite(est)
    if not ok.any():
        return f"Sharpness {NOT_MEASURED} {where}" + (f" ({notes[0]})." if notes else ".")
    notes.append(f"seed means across widths {_w(widths[0])}–{_w(widths[-1])}")
    have_ci = np.isfinite(lo) & np.isfinite(hi) & ok
    if have_ci.any():
        notes.append(f"95 % intervals over seeds {span([*lo[have_ci], *hi[have_ci]])}")
    text = f"Plateau {span(est[ok])} {where} ({'; '.join(notes)})"
    if not ok.all():
        text += f"; {NOT_MEASURED} at width {width_list([w for w, k in zip(widths, ok) if not k])}"
    if threshold is None or not np.isfinite(threshold) or threshold <= 0:
        why = f" ({no_threshold})" if no_threshold else ""
        return f"{text}; no stability threshold applies{why}."
    low, high = np.where(have_ci, lo, est), np.where(have_ci, hi, est)
    t_lo, t_hi = (1 - band) * threshold, (1 + band) * threshold
    state = np.where(high < t_lo, "below", np.where(low > t_hi, "above", "at"))
    thr = f"{threshold_name} = {fmt(threshold)}"
    words = {  # (where the plateau is, what that means)
        "below": (f"below {thr}", "not at the edge of stability"),
        "at": (f"within {band * 100:g} % of {thr}", "at the edge of stability"),
        "above": (f"above {thr} by more than {band * 100:g} %", "beyond the stability threshold"),
    }
    found = [s for s in ("below", "at", "above") if (state[ok] == s).any()]
    if len(found) == 1:
        rel, means = words[found[0]]
        text += f", {rel}" + (" at every width" if ok.sum() > 1 else "") + f": {means}"
    else:
        parts = []
        for f in found:
            ws = [w for w, s, k in zip(widths, state, ok) if k and s == f]
            parts.append(f"width {width_list(ws)} {words[f][0]} ({words[f][1]})")
        text += ": " + "; ".join(parts)
    if not have_ci[ok].all():
        text += " (the seed mean alone where there is no interval: fewer than 2 seeds)"
    return text + "."


def _criterion(widths, values, ok) -> tuple[str, object]:
    """('all' | 'none' | 'from' | 'some' | 'unknown', the first width of 'from')."""
    finite = np.isfinite(values)
    if not finite.any():
        return "unknown", None
    good = ok & finite
    if good[finite].all():
        return "all", None
    if not good.any():
        return "none", None
    fw = [w for w, f in zip(widths, finite) if f]
    fg = good[finite]
    for i in range(1, len(fw)):
        if fg[i:].all() and not fg[:i].any():
            return "from", fw[i]
    return "some", None


def kernel_sentence(
    layer: str,
    widths,
    frob,
    cka,
    *,
    cka_min: float = CKA_AGREES,
    frob_max: float = FROB_AGREES,
) -> str:
    """What the kernel of ``layer`` shows against the widest's: its *shape* (CKA ≥
    ``cka_min``) and its *scale* (relative Frobenius distance ≤ ``frob_max``) each agree at
    every width, from some width on, or not, e.g. "l2: shape agrees with the widest at
    every width (CKA 0.937–0.991 ≥ 0.9) but scale differs (relative Frobenius 1.3 at width
    64, …; > 0.1)". ``widths``, ``frob``, ``cka``: the widths below the widest and their
    values; not finite: "not measured".
    """
    widths = list(widths)
    frob, cka = (np.asarray(a, dtype=np.float64).ravel() for a in (frob, cka))
    shape, s_from = _criterion(widths, cka, cka >= cka_min)
    scale, f_from = _criterion(widths, frob, frob <= frob_max)
    if shape == scale == "unknown":
        return f"{layer}: {NOT_MEASURED}"
    frob_text = f"relative Frobenius {per_width(widths, frob)}"
    cka_text = f"CKA {span(cka)}"

    def say(what: str, state: str, first, vals: str, bound: str, bad: str) -> str:
        if state == "unknown":
            return f"{what} {NOT_MEASURED}"
        if state == "all":
            return f"{what} agrees ({vals}; {bound})"
        if state == "none":
            return f"{what} differs ({vals}; {bad})"
        if state == "from":
            return f"{what} agrees from width {_w(first)} on ({vals}; {bound} there)"
        return f"{what} agrees at some widths only ({vals}; {bound})"

    s = say("shape", shape, s_from, cka_text, f"≥ {cka_min:g}", f"< {cka_min:g}")
    f = say("scale", scale, f_from, frob_text, f"≤ {frob_max:g}", f"> {frob_max:g}")
    agree = {"all": 1, "from": 1, "none": 0, "some": 0, "unknown": -1}
    conj = " but " if {agree[shape], agree[scale]} == {0, 1} else " and "
    return f"{layer}: {s}{conj}{f}"


def limit_sentence(
    name: str,
    widths,
    distance,
    slope: float,
    lo: float = float("nan"),
    hi: float = float("nan"),
    *,
    expected: float = LIMIT_SLOPE,
    tol: float = LIMIT_SLOPE_TOL,
) -> str:
    """The distance of a kernel to its infinite-width limit against width, and whether
    its log-log ``slope`` (interval [``lo``, ``hi``] over seeds) is ``expected`` (n^-1/2)
    within ``tol``: "falls like n^−1/2" when the whole interval is within, "falls, but
    faster/slower than n^−1/2" or "does not fall with width" when it lies outside,
    "undetermined" when it straddles or there is no interval; "not measured" when not
    finite.
    """
    d = np.asarray(distance, dtype=np.float64).ravel()
    if not np.isfinite(d).any():
        return f"{name}: {NOT_MEASURED}"
    text = f"{name}: {per_width(widths, d)}"
    if not np.isfinite(slope):
        return f"{text}; slope in width {NOT_MEASURED}"
    ref = slope_label(expected).removeprefix("∝ ")
    band = f"within {fmt(expected)} ± {tol:g}"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{text}; log-log slope {fmt(slope)} (no finite interval over seeds): undetermined"
    text += f"; log-log slope {fmt(slope)} [{fmt(lo)}, {fmt(hi)}]"
    dev_hi = max(abs(lo - expected), abs(hi - expected))
    dev_lo = 0.0 if lo <= expected <= hi else min(abs(lo - expected), abs(hi - expected))
    if dev_hi <= tol:
        return f"{text}: falls like {ref} ({band})"
    if dev_lo <= tol:
        inside = f"contains {fmt(expected)} but " if lo <= expected <= hi else ""
        return (
            f"{text}: undetermined (the interval {inside}reaches beyond {fmt(expected)} ± {tol:g})"
        )
    if hi < 0:
        pace = "faster" if hi < expected else "slower"
        return f"{text}: falls, but {pace} than {ref} (not {band})"
    if lo > 0:
        return f"{text}: grows with width"
    return f"{text}: not like {ref} (the interval reaches 0: no trend in width resolved)"


def _seed_mean(da: xr.DataArray) -> xr.DataArray:
    """Mean over seeds; a diverged member is NaN throughout, so NaN-skipping drops it."""
    return da.mean("seed", skipna=True)


def _point_targets(ds: xr.Dataset) -> xr.DataArray | None:
    """Targets indexed by probe point alone: labels (point,) or regression (point, output).

    None for sequence streams (targets per position, or folded by ``flatten_samples``):
    the kernel and eNTK probes index sequences, which have no single target.
    """
    if FLAT in ds.attrs:
        return None
    y = ds.test_label if "test_label" in ds else ds.get("test_target")
    if y is None or not set(y.dims) <= {"point", "output"} or "point" not in y.dims:
        return None
    return y


def _point_order(ds: xr.Dataset, m: int) -> np.ndarray:
    """Order of the first m probe points by target (label, or first regression output)."""
    y = _point_targets(ds)
    if y is None:
        return np.arange(m)
    if "output" in y.dims:
        y = y.isel(output=0)
    return np.argsort(y.values[:m], kind="stable")


def _kernel_target(ds: xr.Dataset, m: int) -> xr.DataArray | None:
    y = _point_targets(ds)
    return None if y is None else y.isel(point=slice(0, m))


def kernels_section(ds: xr.Dataset) -> Section | None:
    if not has(ds, "feature_kernel"):
        return None
    k = ds.feature_kernel
    m = k.sizes["kernels_point_i"]
    order = _point_order(ds, m)
    final = _seed_mean(k.isel(kernels_step=-1)).isel(kernels_point_i=order, kernels_point_j=order)
    final = final.transpose("kernels_layer", "width", "kernels_point_i", "kernels_point_j")
    step = int(k.kernels_step.values[-1])
    sec = Section(
        id="kernels",
        title="Feature kernels",
        paper="Fig. 5 b-c, Fig. 12, Fig. 14",
        text=f"Seed-mean feature kernels K = φφᵀ/N on {m} probe points"
        + (" (sorted by target)" if _point_targets(ds) is not None else "")
        + f" at step {step}, per layer and width.",
        panels=[
            Panel(
                "kernel_grid",
                fig_repr.kernel_grid(final),
                "Rows: layers; columns: widths; one colour scale per row.",
            )
        ],
    )
    sec.tables["kernel_final"] = tidy(final.rename("kernel"))
    if ds.sizes["width"] >= 2:
        over = ("kernels_point_i", "kernels_point_j")
        frob = wa.relative_frobenius_to_widest(k, over=over)
        cka = wa.cka_to_widest(k, sample_dims=over)
        y = _kernel_target(ds, m)
        align = None
        if y is not None:
            target_dims = "point"
            align = wa.kernel_target_alignment(
                _seed_mean(k), y, sample_dims=over, target_dims=target_dims
            )
        fig = fig_repr.kernel_distance(frob, cka, align, widths=ds.width.values)
        sec.text += " " + _kernel_summary(frob, cka)
        few = fig_curves.sparse_probe(frob, "kernels_step")
        sec.panels.append(
            Panel(
                "kernel_distance",
                fig,
                "Over training: relative Frobenius distance and CKA of each width's seed-mean "
                "kernel to the widest's; "
                + (
                    "markers at the "
                    f"{len(fig_curves.recorded_steps(frob, 'kernels_step'))} recorded steps (nothing "
                    "measured between them), marker: layer. "
                    if few
                    else "linestyle: layer. "
                )
                + "CKA uses the biased HSIC; alignment is centered kernel-target alignment.",
            )
        )
        sec.tables["kernel_frobenius_to_widest"] = tidy(frob)
        sec.tables["kernel_cka_to_widest"] = tidy(cka)
        if align is not None:
            sec.tables["kernel_target_alignment"] = tidy(align)
    _add_limit(sec, ds)
    return sec


def _kernel_summary(frob: xr.DataArray, cka: xr.DataArray) -> str:
    """The kernels' verdict sentences at the last kernels step, per layer (the numbers of
    ``kernel_frobenius_to_widest.csv`` and ``kernel_cka_to_widest.csv`` there)."""
    ref = frob.width.values.max()
    f = frob.isel(kernels_step=-1).sel(width=frob.width != ref)
    c = cka.isel(kernels_step=-1).sel(width=cka.width != ref)
    widths = f.width.values.tolist()
    names = [str(v) for v in f.kernels_layer.values]
    parts = [
        kernel_sentence(n, widths, f.sel(kernels_layer=n).values, c.sel(kernels_layer=n).values)
        for n in names
    ]
    step = int(frob.kernels_step.values[-1])
    return (
        f"At step {step}, against the widest ({_w(ref)}): " + "; ".join(parts) + ". Shape: CKA "
        f"≥ {CKA_AGREES:g}; scale: relative Frobenius distance ≤ {FROB_AGREES:g}."
    )


LIMIT_KERNELS = {"entk": "eNTK", "entk_lr": "eNTK_lr"}
"""eNTK variables compared with their infinite-width limit besides the feature kernels."""


def limit_distances(ds: xr.Dataset) -> tuple[xr.DataArray | None, xr.Dataset | None, list[str]]:
    """Distance of each width's seed-mean kernel at step 0 to its analytic infinite-width
    limit (``widthwise.analysis.limit_kernels_for``; relative Frobenius), with the log-log
    slope in width (``widthwise.analysis.width_slope`` of the RMS seed-mean difference,
    which is that distance; interval over seeds, verdict against n^-1/2).

    Returns (distance (width, kernel), slope Dataset (kernel,) with ``estimate``, ``lo``,
    ``hi``, ``verdict``, ``reason``, notes): the feature kernel of every layer, and the
    eNTK and eNTK_lr where recorded at step 0 and a non-zero limit exists. The notes say,
    one line each, what has no limit and why (``attrs["no_limit"]``), or why nothing was
    computed (no step 0, a family without a limit).
    """
    notes: list[str] = []
    if 0 not in ds.kernels_step.values:
        return (
            None,
            None,
            [
                "Distance to the infinite-width limit not measured: the kernels probe did not "
                "record step 0 (add init to its schedule)."
            ],
        )
    try:
        lim = wa.limit_kernels_for(ds)
    except Exception as err:  # the limit is an extra: a report never fails for it
        return None, None, [f"No infinite-width limit kernels: {err}."]
    if lim.attrs.get("no_limit"):
        notes.append(f"No infinite-width limit for {lim.attrs['no_limit']}.")
    pairs = []  # (name, kernel at step 0 with seed, its limit, sample dims)
    kd = ("kernels_point_i", "kernels_point_j")
    k0 = ds.feature_kernel.sel(kernels_step=0)
    for layer in k0.kernels_layer.values:
        pairs.append(
            (
                f"feature kernel {layer}",
                k0.sel(kernels_layer=layer, drop=True),
                lim.feature_kernel.sel(kernels_layer=layer, drop=True),
                kd,
            )
        )
    for var, label in LIMIT_KERNELS.items():
        if var not in lim or not has(ds, var) or 0 not in ds.entk_step.values:
            continue
        limit = lim[var]
        if not float(np.abs(limit).max()) > 0:
            notes.append(
                f"{label}: its infinite-width limit at init is the zero kernel "
                f"({lim.attrs.get('parameterization', '?')}), so no relative distance."
            )
            continue
        pairs.append((label, ds[var].sel(entk_step=0), limit, tuple(limit.dims)))
    dists, slopes = [], []
    for name, kern, limit, over in pairs:
        rms = float(np.sqrt((limit**2).mean()))
        dists.append(wa.relative_frobenius(_seed_mean(kern), limit, over=over).rename(name))
        sl = wa.width_slope(
            (kern - limit) / rms,
            quantity="mean",
            over=over,
            expected=LIMIT_SLOPE,
            tol=LIMIT_SLOPE_TOL,
        )
        slopes.append(sl)
    if not pairs:
        return None, None, notes
    names = [p[0] for p in pairs]
    dist = xr.concat(
        [d.drop_vars([c for c in d.coords if c != "width"]) for d in dists],
        dim=xr.DataArray(names, dims="kernel", name="kernel"),
    ).transpose("width", "kernel")
    dist = dist.rename("distance_to_limit").assign_attrs(
        description="relative Frobenius distance of the seed-mean kernel at step 0 to its "
        "infinite-width limit",
        units="fraction of the limit's norm",
    )
    slope = xr.concat(
        [s[["estimate", "lo", "hi", "verdict", "reason"]].reset_coords(drop=True) for s in slopes],
        dim=xr.DataArray(names, dims="kernel", name="kernel"),
    )
    return dist, slope, notes


def _add_limit(sec: Section, ds: xr.Dataset) -> None:
    """The kernels section's "limit" panel: distance to the analytic infinite-width
    kernels at init against width (MLP), or one line saying why there is none."""
    dist, slope, notes = limit_distances(ds)
    sec.notes += notes
    if dist is None:
        return
    widths = dist.width.values.tolist()
    said = [
        limit_sentence(
            str(n),
            widths,
            dist.sel(kernel=n).values,
            float(slope.estimate.sel(kernel=n)),
            float(slope.lo.sel(kernel=n)),
            float(slope.hi.sel(kernel=n)),
        )
        for n in dist.kernel.values
    ]
    sec.panels.append(
        Panel(
            "kernel_limit",
            fig_repr.kernel_limit_distance(dist),
            "Relative Frobenius distance of each width's seed-mean kernel at step 0 to its "
            "analytic infinite-width limit (Lee et al. 2018; Jacot et al. 2018), with the "
            "log-log slope in width and its 95 % interval over seeds: "
            + "; ".join(said)
            + ". Dashed grey: reference slopes n^−1/2 and n^−1 from the narrowest width.",
        )
    )
    sec.tables["kernel_limit_distance"] = tidy(dist)
    sec.tables["kernel_limit_slope"] = tidy(slope.rename(estimate="slope"))


def _to_widest_summary(dist: xr.DataArray, probe: str, what: str) -> str:
    """'<what> to the widest (N) at step t: <layer>: values per width (trend; slope); …'
    from ``dist`` (width, <probe>_step, <probe>_layer) at its last step, the widest left
    out (the numbers of the section's CSV there)."""
    ref = dist.width.values.max()
    last = dist.isel({f"{probe}_step": -1}).sel(width=dist.width != ref)
    step = int(dist[f"{probe}_step"].values[-1])
    ld = f"{probe}_layer"
    widths = last.width.values.tolist()
    if ld not in last.dims:
        return (
            f"{what} to the widest ({_w(ref)}) at step {step}: "
            + trend_sentence("all layers", widths, last.values).removeprefix("all layers: ")
            + "."
        )
    names = [str(v) for v in last[ld].values] if ld in last.coords else None
    parts = [
        trend_sentence(names[i] if names else f"layer {i + 1}", widths, last.isel({ld: i}).values)
        for i in range(last.sizes[ld])
    ]
    return f"{what} to the widest ({_w(ref)}) at step {step}: " + "; ".join(parts) + "."


def _density(ds: xr.Dataset, step_index: int) -> xr.DataArray:
    """Seed-pooled density (width, layer, preacts_bin) at one preacts step."""
    h = ds.preact_hist.isel(preacts_step=step_index).sum("seed", skipna=True)
    n = ds.preact_count.isel(preacts_step=step_index).sum("seed", skipna=True)
    widths = np.diff(ds.preacts_edge.values)
    bw = xr.DataArray(widths, dims="preacts_bin", coords={"preacts_bin": ds.preacts_bin})
    return (h / (n.where(n > 0) * bw)).rename("density")


def preacts_section(ds: xr.Dataset) -> Section | None:
    if not has(ds, "preact_hist", "preact_count"):
        return None
    final = _density(ds, -1)
    steps = ds.preacts_step.values
    initial = _density(ds, 0) if len(steps) > 1 and steps[0] == 0 else None
    w1 = None
    if ds.sizes["width"] >= 2:
        w1 = wa.wasserstein1_to_widest(
            ds.preact_hist, bin_dim="preacts_bin", edges=ds.preacts_edge, edge_dim="preacts_edge"
        )
    fig = fig_repr.preact_histograms(final, w1, initial, widths=ds.width.values)
    sec = Section(
        id="preacts",
        title="Preactivation distributions",
        paper="Fig. 5 a, Fig. 11",
        text=f"Density of all preactivation coordinates per layer at step {int(steps[-1])} "
        "(dotted: at initialization), pooled over seeds. Right: Wasserstein-1 distance to "
        "the widest width against width."
        + ("" if w1 is None else " " + _to_widest_summary(w1, "preacts", "W1")),
        panels=[
            Panel(
                "preact_histograms",
                fig,
                "Density = counts / (coordinates × bin width); "
                "values outside the histogram range are not shown.",
            )
        ],
    )
    sec.tables["preact_density_final"] = tidy(final)
    if initial is not None:
        sec.tables["preact_density_init"] = tidy(initial)
    if w1 is not None:
        sec.tables["preact_w1_to_widest"] = tidy(w1)
    return sec


def attention_section(ds: xr.Dataset) -> Section | None:
    if not has(ds, "attention"):
        return None
    att = ds.attention
    last = _seed_mean(att.isel(attention_step=-1, attention_point=0))  # (width, layer, head, q, k)
    rows, names = [], []
    for li in range(last.sizes["attention_layer"]):
        lname = (
            str(att.attention_layer.values[li])
            if "attention_layer" in att.coords
            else f"layer {li + 1}"
        )
        for h in range(last.sizes["head"]):
            if len(rows) < MAX_ATTENTION_ROWS:
                rows.append(last.isel(attention_layer=li, head=h, drop=True))
                names.append(f"{lname}, head {h + 1}")
    maps = xr.concat(rows, dim="row").assign_coords(row=names)
    maps = maps.transpose("row", "width", "query", "key")
    step = int(att.attention_step.values[-1])
    sec = Section(
        id="attention",
        title="Attention maps",
        paper="Fig. 1 d, Fig. 5 e",
        text=f"Seed-mean attention probabilities (query × key) of the first probe sequence "
        f"at step {step}; with a fixed number of heads the maps of every width compare entry "
        "by entry.",
        panels=[
            Panel(
                "attention_grid",
                fig_repr.attention_grid(maps),
                f"Rows: (layer, head), at most {MAX_ATTENTION_ROWS}; columns: widths.",
            )
        ],
    )
    sec.tables["attention_maps"] = tidy(maps.rename("probability"))
    if ds.sizes["width"] >= 2:
        tv = wa.attention_distance_to_widest(att, key_dim="key", query_dims="query")
        tv = tv.mean(["attention_point", "head"])
        sec.panels.append(
            Panel(
                "attention_distance",
                fig_repr.attention_distance(tv, widths=ds.width.values),
                "Total variation per query row, averaged over rows, heads and "
                "probe sequences; "
                + (
                    "marker: layer."
                    if fig_curves.sparse_probe(tv, "attention_step")
                    else "linestyle: layer."
                ),
            )
        )
        sec.tables["attention_tv_to_widest"] = tidy(tv)
        sec.text += " " + _to_widest_summary(tv, "attention", "TV distance")
    return sec


def sharpness_section(ds: xr.Dataset) -> Section | None:
    spec = spec_of(ds)
    opt = spec.get("optimizer", {})
    lr = float(opt.get("lr", np.nan))
    adam = str(opt.get("name", "sgd")).startswith("adam")
    applies: tuple[str, float] | None = None  # (name, value) of the threshold that applies
    note = ""  # what the threshold is, or why none applies
    if adam and has(ds, "sharpness_precond"):
        var, b1 = "sharpness_precond", float(opt.get("betas", [0.9])[0])
        thr = (2 + 2 * b1) / (1 - b1)
        thresholds = {rf"$(2 + 2\beta_1)/(1 - \beta_1)$ = {thr:.3g}": thr}
        applies = ("(2 + 2β₁)/(1 − β₁)", thr)
        note = f" For Adam (β₁ = {b1:g}) this is the adaptive edge of stability."
        ylabel, what = r"top eigenvalue of $P^{-1}H$", "Adam-preconditioned Hessian"
    elif has(ds, "sharpness_lr") or has(ds, "sharpness"):
        var = "sharpness_lr" if has(ds, "sharpness_lr") else "sharpness"
        thresholds = {}
        if not adam and np.isfinite(lr) and lr > 0:
            thresholds[rf"$2/\mathrm{{lr}}$ = {2 / lr:.3g}"] = 2 / lr
            applies = ("2/lr", 2 / lr)
            mom = float(opt.get("momentum") or 0)
            if mom > 0:
                thresholds[
                    rf"$(2 + 2\beta)/\mathrm{{lr}}$ = {(2 + 2 * mom) / lr:.3g} "
                    rf"(momentum $\beta$ = {mom:g})"
                ] = (2 + 2 * mom) / lr
                applies = ("(2 + 2β)/lr", (2 + 2 * mom) / lr)
                note = (
                    f" With momentum β = {mom:g} the threshold that applies is (2 + 2β)/lr "
                    f"(heavy ball), not 2/lr = {fmt(2 / lr)} (also drawn)."
                )
        elif adam:
            note = (
                "under Adam the edge of stability is that of the preconditioned Hessian, "
                "(2 + 2β₁)/(1 − β₁): record it with the sharpness probe's preconditioned: true"
            )
        else:
            note = "no learning rate in the spec"
        ylabel = (
            r"top eigenvalue of $\Lambda^{1/2} H \Lambda^{1/2}$"
            if var == "sharpness_lr"
            else "top eigenvalue of $H$"
        )
        what = (
            "Hessian weighted by per-tensor learning rates" if var == "sharpness_lr" else "Hessian"
        )
    else:
        return None
    top = ds[var].isel(sharpness_eig=0, drop=True)
    fig = fig_fits.sharpness(top, thresholds, ylabel=ylabel, widths=ds.width.values)
    few = fig_curves.sparse_probe(top, "sharpness_step")
    sched = spec.get("schedule", {}).get("name", "constant")
    plat = wa.plateau(top, fraction=PLATEAU_FRACTION, step_dim="sharpness_step")
    widths = plat.width.values.tolist()
    verdict = stability_sentence(
        widths,
        plat.estimate.values,
        plat.lo.values,
        plat.hi.values,
        None if applies is None else applies[1],
        "" if applies is None else applies[0],
        fraction=PLATEAU_FRACTION,
        window=tuple(plat.attrs["window"]),
        no_threshold=note if applies is None else "",
    )
    if applies is not None:
        verdict += note
    est = plat.estimate.values[np.isfinite(plat.estimate.values)]
    if est.size >= 2 and est.min() > 0:
        verdict += (
            f" Across widths the plateau varies by {fmt(100 * (est.max() / est.min() - 1))} % "
            f"(largest / smallest seed mean − 1)."
        )
    par = spec.get("parameterization", {}).get("name", ds.attrs.get("parameterization", ""))
    if var == "sharpness" and applies is not None and par != "sp":
        verdict += (
            f" This is the plain Hessian: with {par}'s per-tensor learning rates the threshold "
            "applies to Λ^½HΛ^½ (the probe's lr_weighted: true), so the comparison holds only "
            "where every tensor's lr scale is 1."
        )
    return Section(
        id="sharpness",
        title="Sharpness",
        paper="Fig. 6 a",
        text=f"Top eigenvalue of the {what} on the sharpness batch over training. {verdict}"
        + ("" if sched == "constant" else f" Thresholds use the base lr (schedule: {sched})."),
        panels=[
            Panel(
                "sharpness",
                fig,
                (
                    "Markers: seed mean at each of the "
                    f"{len(fig_curves.recorded_steps(top, 'sharpness_step'))} "
                    "recorded steps (nothing is measured between them); bars: range over "
                    "seeds; red: stability thresholds."
                    if few
                    else "Lines: seed mean; bands: range over seeds; red: stability thresholds."
                ),
            )
        ],
        tables={
            "sharpness": tidy(top.rename(var)),
            "sharpness_plateau": tidy(
                plat[["estimate", "lo", "hi", "n_seeds"]].rename(estimate="plateau")
            ),
        },
    )


ENTK_ROWS = ("entk_point_i", "entk_output_i")
ENTK_COLS = ("entk_point_j", "entk_output_j")


def _entk_target(ds: xr.Dataset, k: xr.DataArray, rows: tuple[str, ...]) -> xr.DataArray | None:
    """Targets of the eNTK's points, with the kernel's row dims (one-hot for labels)."""
    m = k.sizes["entk_point_i"]
    y = _point_targets(ds)
    if y is None:
        return None
    if "test_label" in ds:
        labels = y.values[:m].astype(np.int64)
        n_out = k.sizes.get("entk_output_i", int(labels.max()) + 1)
        y = xr.DataArray(np.eye(n_out)[labels], dims=("point", "output"))
    elif "test_target" in ds:
        y = ds.test_target.isel(point=slice(0, m))
    else:
        return None
    y = y.rename({"point": "entk_point_i"})
    return y.rename({"output": "entk_output_i"}) if "entk_output_i" in rows else y


def ntk_section(ds: xr.Dataset) -> Section | None:
    var = "entk_lr" if has(ds, "entk_lr") else "entk" if has(ds, "entk") else None
    if var is None:
        return None
    k = ds[var]
    full = "entk_output_i" in k.dims
    rows, cols = (ENTK_ROWS, ENTK_COLS) if full else (ENTK_ROWS[:1], ENTK_COLS[:1])
    m = k.sizes["entk_point_i"]
    eig = wa.ntk_eigen(k, sample_dims=(rows, cols))
    steps = k.entk_step.values
    last = eig.isel(entk_step=-1)
    first = eig.isel(entk_step=0) if len(steps) > 1 else None
    y = _entk_target(ds, k, rows)
    what = "learning-rate-weighted eNTK Σ lr_scale·K_t" if var == "entk_lr" else "eNTK"
    sec = Section(
        id="ntk",
        title="eNTK spectrum",
        paper="Fig. 10",
        text=f"Eigenvalues of the seed-mean {what} on {m} probe points at step "
        f"{int(steps[-1])}"
        + (f" (dashed: step {int(steps[0])})" if first is not None else "")
        + ", and the cumulative task power C(k): the fraction of |y|² in the top-k "
        "eigenvectors.",
    )
    sec.tables["ntk_eigenvalues"] = tidy(eig["eigenvalue"])
    ck = ck_first = None
    if y is not None:
        ck_all = wa.cumulative_task_power(eig, y, target_dims=rows)
        ck = ck_all.isel(entk_step=-1)
        ck_first = ck_all.isel(entk_step=0) if first is not None else None
        sec.tables["ntk_task_power"] = tidy(ck_all)
        sec.text += " " + _task_power_summary(ck_all)
    predicted, measured, note = _gradient_flow(ds, eig, y, rows, m)
    ensemble = floor = None
    if predicted is not None:
        sec.tables["ntk_gradient_flow"] = tidy(predicted)
        sec.tables["ntk_measured_loss"] = tidy(measured)
        logits = ds.test_logits.isel(point=slice(0, m))
        ensemble = wa.probe_loss(
            logits.mean("seed", skipna=True), ds.test_target.isel(point=slice(0, m))
        ).rename("loss")
        floor = _noise_floor(ds)
    fig = fig_repr.ntk_spectrum(
        last["eigenvalue"],
        ck,
        predicted,
        measured,
        eigenvalues_init=None if first is None else first["eigenvalue"],
        task_power_init=ck_first,
        labels=(f"step {int(steps[-1])}", f"step {int(steps[0])}"),
        time_dim="test_step",
        measured_ensemble=ensemble,
        floor=floor,
        widths=ds.width.values,
    )
    if predicted is not None:
        note += (
            " "
            + _flow_summary(predicted, measured)
            + " "
            + _flow_gap(predicted, measured, ensemble, floor, m)
        )
    sec.panels.append(Panel("ntk_spectrum", fig, note))
    return sec


TOP_MODES = 0.1
"""C(k) is quoted at k = the top 10 % of the kernel's modes (at least 1)."""


def task_power_sentence(widths, first, last, k: int, steps: tuple[int, int]) -> str:
    """'C(7) (the top 7 of 64 modes) from step 0 to step 400: 0.31 → 0.55 at width 64, …:
    rises at every width' — or falls, or per width; "not measured" where not finite.
    ``first``/``last``: C(k) per width at the two steps."""
    a, b = (np.asarray(x, dtype=np.float64).ravel() for x in (first, last))
    ok = np.isfinite(a) & np.isfinite(b)
    head = f"C({k}) from step {steps[0]} to step {steps[1]}"
    if not ok.any():
        return f"{head}: {NOT_MEASURED}."
    items = [
        f"{fmt(x)} → {fmt(y)} at {'width ' if i == 0 else ''}{_w(w)}"
        for i, (w, x, y) in enumerate(zip(widths, a, b))
    ]
    moves = np.where(~ok, "", np.where(b > a, "rises", np.where(b < a, "falls", "stays")))
    found = [m for m in ("rises", "falls", "stays") if (moves == m).any()]
    if len(found) == 1:
        said = f"{found[0]} at every width" if ok.sum() > 1 else found[0]
    else:
        said = "; ".join(
            f"{m} at width {width_list([w for w, x in zip(widths, moves) if x == m])}"
            for m in found
        )
    return f"{head}: {', '.join(items)}: task power in the top {k} modes {said}."


def _task_power_summary(ck: xr.DataArray) -> str:
    """C(k) at the top 10 % of modes, first vs last eNTK step (``ntk_task_power.csv``)."""
    modes = ck["mode"].values
    k = int(modes[min(len(modes), max(1, int(np.ceil(TOP_MODES * len(modes))))) - 1])
    steps = ck.entk_step.values
    if len(steps) < 2:
        c = ck.sel(mode=k).isel(entk_step=0)
        return f"C({k}) at step {int(steps[0])}: {per_width(c.width.values, c.values)}."
    c0, c1 = (ck.sel(mode=k).isel(entk_step=i) for i in (0, -1))
    return task_power_sentence(
        c0.width.values.tolist(), c0.values, c1.values, k, (int(steps[0]), int(steps[-1]))
    )


def _flow_summary(predicted: xr.DataArray, measured: xr.DataArray) -> str:
    """log10(measured / predicted loss) at the last step both have, per width (0: the
    kernel's gradient flow predicts the measured loss)."""
    pm = measured.mean("seed", skipna=True) if "seed" in measured.dims else measured
    both = np.intersect1d(predicted.test_step.values, pm.test_step.values)
    if len(both) == 0:
        return ""
    t = both[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log10((pm.sel(test_step=t) / predicted.sel(test_step=t)).values)
    widths = pm.width.values.tolist()
    return f"log10(measured / predicted loss) at step {int(t)}: {per_width(widths, ratio)}."


def _noise_floor(ds: xr.Dataset) -> float | None:
    """The label-noise variance of a Gegenbauer stream (its ``noise`` is the std of the
    Gaussian label noise): no predictor's mse on held-out points gets below it."""
    data = spec_of(ds).get("data", {})
    noise = float((data.get("options") or {}).get("noise") or 0.0)
    return noise**2 if data.get("stream") == "gegenbauer" and noise > 0 else None


def _flow_gap(predicted, measured, ensemble, floor, m: int) -> str:
    """Why the gradient-flow prediction and the measured loss part, from the numbers:
    the flow treats the M kernel points as its training set (it fits their targets,
    label noise included), the network trains on the stream and never sees them; and
    the part of the measured loss that is variance over seeds (measured − seed-mean
    network), which the flow of the seed-mean kernel from the seed-mean output omits."""
    t, ratio = fig_repr.flow_ratio(predicted, measured, "test_step")
    if ratio is None:
        return ""
    text = (
        f"The prediction is gradient flow with these {m} points as the training set: it "
        "fits their targets (label noise included, where there is any) and so falls "
        "without a floor, while "
        "the network trains on the stream and never sees them (its loss on them is a "
        "held-out loss)."
    )
    if ensemble is not None:
        pm = measured.mean("seed", skipna=True).sel(test_step=t)
        var = (pm - ensemble.sel(test_step=t)).values
        text += (
            " Dotted: the loss of the seed-mean network."
            f" At step {t} the variance over seeds (measured − loss of the seed-mean "
            f"network, which the flow of the seed-mean kernel omits) is "
            f"{per_width(pm.width.values, var)}, of a measured loss of "
            f"{span(pm.values)}."
        )
    if floor is not None:
        text += f" The label-noise variance {fmt(floor)} is drawn as the floor."
    return text


def _gradient_flow(ds, eig, y, rows, m):
    """Kernel gradient-flow loss from the first recorded eNTK vs the measured loss on the
    same points (mse + SGD only); (predicted, measured, caption)."""
    spec = spec_of(ds)
    opt = spec.get("optimizer", {})
    ok = (
        y is not None
        and loss_kind(ds) == "mse"
        and opt.get("name") == "sgd"
        and has(ds, "test_logits")
        and "test_target" in ds
    )
    if not ok:
        return None, None, "Seed-mean eNTK (no gradient-flow prediction: it needs mse and SGD)."
    n_out = ds.test_logits.sizes["output"]
    beta = float(opt.get("momentum") or 0.0)
    lr_eff = float(opt["lr"]) / (1.0 - beta)  # heavy ball: lr/(1-β) once the velocity settles
    eta = wa.sgd_flow_rate(lr_eff, m, n_out)
    logits = ds.test_logits.isel(point=slice(0, m))
    f0 = None
    if int(ds.test_step.values[0]) == 0:
        f0 = logits.isel(test_step=0).mean("seed").rename({"point": "entk_point_i"})
        if "entk_output_i" in rows:
            f0 = f0.rename({"output": "entk_output_i"})
    init = eig.isel(entk_step=0)
    predicted = wa.gradient_flow_loss(
        init, y, eta=eta, times=ds.test_step.values, time_dim="test_step", target_dims=rows, f0=f0
    )
    target = ds.test_target.isel(point=slice(0, m))
    measured = wa.probe_loss(logits, target).rename("loss")
    step0 = int(eig.entk_step.values[0])
    caption = (
        f"Right: loss on the {m} kernel points predicted by gradient flow on the seed-mean "
        f"eNTK of step {step0} (dashed; η = 2·lr/(1−β)/(M·O) with lr {opt['lr']}, momentum "
        f"β = {beta:g}) against the measured loss on the same points (solid, seed mean)."
    )
    return predicted, measured, caption


def coord_check_section(cc: xr.DataArray | None, reason: str = "") -> Section:
    """The coordinate check (computed by the caller), or a note saying why it was skipped.

    ``cc``: (width, seed, layer, step) from :func:`widthwise.coord_check`; the verdict
    per layer is :func:`widthwise.analysis.coordinates.coord_slopes` at the last step."""
    from widthwise.analysis.coordinates import coord_sentence as slope_sentence
    from widthwise.analysis.coordinates import coord_slopes

    sec = Section(
        id="coord_check",
        title="Coordinate check",
        paper="(Yang et al. 2022)",
        text="As in Yang et al. (2022): the size of every layer's preactivations, "
        "activations and of the output against width after each of the first training "
        "steps, with a verdict per layer from the log-log slope in width and its seed "
        "interval (theory: flat in width under a parameterization with a "
        "feature-learning limit, mup and mf; growing under sp).",
    )
    if cc is None:
        sec.notes.append(reason or "Skipped.")
        return sec
    if "seed" not in cc.dims:  # a seed-mean check (older callers): no interval
        cc = cc.expand_dims(seed=[0]).transpose("width", "seed", ...)
    slopes = coord_slopes(cc)
    sec.text += " " + slope_sentence(slopes)
    hints = [f"{layer}: {h}" for layer, h in zip(slopes.layer.values, slopes.hint.values) if h]
    sec.notes.extend(hints)
    sec.panels.append(
        Panel(
            "coord_check",
            fig_fits.coord_check(cc),
            f"Parameterization {cc.attrs.get('parameterization', '?')}; "
            f"{cc.attrs.get('units', 'mean |coordinate|')} over "
            f"{cc.attrs.get('measured_on', 'probe inputs')}, seed mean.",
        )
    )
    sec.tables["coord_check"] = tidy(cc)
    sec.tables["coord_check_slopes"] = slopes.to_dataframe().reset_index()
    return sec
