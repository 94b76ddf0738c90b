"""The coordinate check's verdict: is each layer's coordinate size flat in width?

Yang et al. 2022 (Tensor Programs V, Section 3 and Fig. 5; ``mup.coord_check``): under
a parameterization with a feature-learning limit (muP, mean field) the typical size of
every layer's coordinates stays Θ(1) as width grows, after any fixed number of steps;
under SP the output and the hidden layers of networks trained with Adam (or SGD at a
width-independent lr) grow like a power of width.

Pipeline::

    cc = widthwise.coord_check(spec)          # (width, seed, layer, step)
    s = coord_slopes(cc)                      # (layer,): slope, interval, verdict, hint
    coord_sentence(s)                         # "flat in width: ...; growing: ..."

**Statistic.** The least-squares slope of log(seed-mean size) against log(width) over
the widths, at one step (default the last): the exponent b of size ∝ width^b.
**Interval.** Seed bootstrap (:func:`~widthwise.analysis.uncertainty.bootstrap_over_seeds`),
each width's seeds resampled on their own (different widths share no initialization),
95 %, "expanded" percentile method. **Verdict**, decided with the margin
:data:`FLAT_SLOPE` = 0.1 (the issue's and the report's threshold, fixed before any
result was looked at: over widths 64 → 1024 a slope of 0.1 is a factor 1.32):

- "flat": the interval lies within [−0.1, 0.1];
- "grows" / "shrinks": it lies above 0.1 / below −0.1;
- "undetermined": it straddles a bound; fewer than 2 seeds or no seed variation;
  any size that is not finite and > 0 (a zero-initialised readout at step 0 has no
  log size); fewer than 2 widths.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from widthwise.analysis._checks import AnalysisError, require_dataarray, require_dims
from widthwise.analysis.uncertainty import Method, bootstrap_over_seeds

FLAT_SLOPE = 0.1
"""A layer is flat in width when its log-log slope's interval lies within ±0.1."""

VERDICTS = ("flat", "grows", "shrinks", "undetermined")
RULE = (
    "flat if the slope's 95 % seed-bootstrap interval lies within [-0.1, 0.1]; grows / "
    "shrinks if it lies above / below; otherwise (straddles, < 2 seeds, no seed "
    "variation, a size not finite and > 0) undetermined"
)


def _slope_along(dim: str):
    def slope(da: xr.DataArray) -> xr.DataArray:
        """Least-squares slope of log(seed-mean) against log(``dim``); NaN where a
        seed-mean is not finite and > 0 somewhere along it (nothing is skipped)."""
        mean = da.mean("seed")  # NaN-skipping: a resample's missing members
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.log(mean.where(mean > 0))
        x = np.log(da[dim].astype(np.float64))
        xc = x - x.mean()
        return (xc * (y - y.mean(dim, skipna=False))).sum(dim, skipna=False) / (xc**2).sum()

    return slope


def coord_slopes(
    cc: xr.DataArray,
    *,
    step: int | None = None,
    flat: float = FLAT_SLOPE,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    method: Method = "expanded",
    parameterization: str | None = None,
    dim: str = "width",
) -> xr.Dataset:
    """Per layer: the log-log slope of coordinate size in width, its interval and verdict.

    ``cc``: (width, seed, layer, step) from :func:`widthwise.coord_check` (sizes > 0),
    or with ``dim="depth"`` (depth, seed, layer, step) from
    :func:`widthwise.coordinate_check.coord_check_depths` (the same rule along depth);
    ``step``: the step (a coordinate value; default the last). Returns a Dataset over
    ``layer``: ``slope``, ``slope_lo``, ``slope_hi`` (dimensionless exponent),
    ``n_seeds``, ``verdict`` (:data:`VERDICTS`), ``reason``, ``hint`` (what to check
    where a layer grows; empty otherwise); ``ratio`` = seed-mean size at the widest /
    at the narrowest width. ``attrs``: ``flat``, ``rule``, ``step``, ``parameterization``.
    """
    cc = require_dataarray(cc, "cc")
    require_dims(cc, (dim, "seed", "layer", "step"), "cc")
    if not (np.isfinite(flat) and flat > 0):
        raise AnalysisError(f"The 'flat' parameter must be a number > 0. Got {flat!r}.")
    if cc.sizes[dim] < 2:
        raise AnalysisError(
            f"A slope in {dim} needs at least 2 values; got {cc[dim].values.tolist()}."
        )
    steps = cc["step"].values.tolist()
    if step is None:
        step = int(steps[-1])
    elif step not in steps:
        raise AnalysisError(f"Step {step!r} is not in the check's steps {steps}.")
    at = cc.sel(step=step, drop=True).sortby(dim).astype(np.float64)
    iv = bootstrap_over_seeds(
        at,
        _slope_along(dim),
        n_boot=n_boot,
        level=level,
        seed=seed,
        method=method,
        independent=dim,
    )
    slope, lo, hi = iv["estimate"], iv["lo"], iv["hi"]
    finite = np.isfinite(slope) & np.isfinite(lo) & np.isfinite(hi)
    cases = [  # later entries win
        ("undetermined", "interval straddles the threshold", xr.ones_like(slope, dtype=bool)),
        ("grows", "interval above the threshold", lo > flat),
        ("shrinks", "interval below the threshold", hi < -flat),
        ("flat", "interval within the threshold", (lo >= -flat) & (hi <= flat)),
        ("undetermined", "no interval", ~finite),
        ("undetermined", "no seed variation", ~iv["seed_varies"].astype(bool)),
        ("undetermined", "too few seeds", ~(iv["n_seeds"] >= 2)),
        ("undetermined", "a size not finite and > 0", ~np.isfinite(slope)),
    ]
    word = xr.full_like(slope, "", dtype=object)
    why = xr.full_like(slope, "", dtype=object)
    for w, r, cond in cases:
        word, why = xr.where(cond, w, word), xr.where(cond, r, why)
    param = parameterization or str(cc.attrs.get("parameterization", ""))
    layers = [str(v) for v in at["layer"].values]
    hints = [_hint(layer, str(v), param, dim) for layer, v in zip(layers, word.values)]
    mean = at.mean("seed")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = mean.isel({dim: -1}) / mean.isel({dim: 0})
    out = xr.Dataset(
        {
            "slope": slope,
            "slope_lo": lo,
            "slope_hi": hi,
            "n_seeds": iv["n_seeds"],
            "verdict": word.astype(str),
            "reason": why.astype(str),
            "hint": ("layer", hints),
            "ratio": ratio,
        }
    )
    out.attrs = {
        "flat": float(flat),
        "rule": RULE,
        "step": int(step),
        "parameterization": param,
        "level": level,
        "dim": dim,
        "description": f"log-log slope of coordinate size against {dim}, per layer",
    }
    return out


def _hint(layer: str, verdict: str, param: str, dim: str = "width") -> str:
    """What to check where a layer's size grows with width (empty where it does not)."""
    if verdict != "grows":
        return ""
    if dim == "depth":
        return (
            "the residual stream grows with depth: scale each residual branch by 1/√L "
            "(depth_mup: {base_depth: ...}, docs/parameterizations.md)"
        )
    if param == "sp":
        return "expected under sp: weights with a width-sized fan-in move by Θ(lr) per entry"
    name = layer.lower()
    if "attn" in name or "attention" in name or "score" in name:
        return (
            "attention scores scaled by 1/√d_head; muP needs 1/d_head "
            "(widthwise.attention_scale(), docs/modules.md)"
        )
    if name in ("output", "out") or name.endswith("/out"):
        return (
            "the readout grows: check its 1/width output multiplier and zero (or 1/width) "
            "init (readout_zero_init), and that no width-scaled layer is treated as input"
        )
    return (
        "a hidden layer grows: check the hidden weights' init std (1/√fan_in) and lr scale "
        "(1/fan_in with Adam under muP), and any tensor whose role was inferred wrongly"
    )


def coord_sentence(slopes: xr.Dataset) -> str:
    """``After 3 steps (mup): flat in width: preact/l1 0.01 [-0.02, 0.04], …; growing
    with width: output 0.9 [0.8, 1.0] (hint); flat: slope interval within ±0.1.``"""
    groups: dict[str, list[str]] = {v: [] for v in VERDICTS}
    for layer in slopes.layer.values:
        r = slopes.sel(layer=layer)
        s, lo, hi = (float(r[k]) for k in ("slope", "slope_lo", "slope_hi"))
        text = f"{layer} {s:.2f} [{lo:.2f}, {hi:.2f}]" if np.isfinite(s) else f"{layer} —"
        if r["verdict"].item() == "undetermined":
            text += f" ({r['reason'].item()})"
        groups[str(r["verdict"].item())].append(text)
    along = slopes.attrs.get("dim", "width")
    names = {
        "flat": f"flat in {along}",
        "grows": f"growing with {along}",
        "shrinks": f"shrinking with {along}",
        "undetermined": "undetermined",
    }
    said = "; ".join(f"{names[g]}: {', '.join(v)}" for g, v in groups.items() if v)
    n = slopes.attrs.get("step", "?")
    param = slopes.attrs.get("parameterization", "")
    flat = slopes.attrs.get("flat", FLAT_SLOPE)
    return (
        f"Log-log slope of coordinate size in {along} after {n} step{'s' if n != 1 else ''}"
        f"{f' ({param})' if param else ''}: {said} (flat: the slope's 95 % seed interval "
        f"within ±{flat:g})."
    )
