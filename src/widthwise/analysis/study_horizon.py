"""The consistency horizon of a whole study: t*(n) per width and quantity, and its dual.

Paper Sections 2-3: "the effective width required to reach infinite-width behavior
increases with training time". :func:`study_horizons` measures that statement on a
study's Dataset (``widthwise.open_study``) for every quantity it recorded:

| quantity | variable | distance to the widest (``verdict.py``) |
|---|---|---|
| ``train loss`` | ``train_loss`` | relative gap of the seed-mean minibatch loss |
| ``test loss`` | ``test_loss`` | relative gap of the seed-mean probe-set loss |
| ``ensemble test logits`` | ``test_logits`` | scaled RMSE of the seed-mean logits |
| ``feature kernel L`` | ``feature_kernel`` | relative Frobenius distance of the seed-mean kernel of layer L |

Each distance gets a seed-bootstrap interval and a verdict at tolerance ``tol`` per
(width, step); :func:`~widthwise.analysis.horizon.consistency_horizon` turns the
verdicts into t*(n) and :func:`~widthwise.analysis.horizon.consistent_width` into the
dual, the narrowest width consistent at each step (as is every wider one).

**Steps judged.** From ``start`` (default 1) on: step 0 is the initial network, where
the members of a width may be identical (``readout_zero_init`` makes every output 0,
so every loss equals the targets' mean square and every width "agrees" exactly,
with no seed variation to bound it), and where agreement says nothing about
training. Each quantity is judged on its own probe's steps (every step for the
training loss, the test schedule for the test loss and logits, ...); a quantity with
no recorded step ≥ ``start`` is left out.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import xarray as xr

from widthwise.analysis._checks import AnalysisError, plain
from widthwise.analysis.horizon import consistency_horizon, consistent_width, horizon_sentence
from widthwise.analysis.verdict import (
    kernel_distance_to_widest,
    logit_distance_to_widest,
    loss_gap_to_widest,
)

TOL = 0.05
"""The paper's tolerance: a relative difference to the widest of at most 5 %."""
START = 1
"""First step judged (step 0, the initial network, is skipped; module docstring)."""
LOSSES = ("train loss", "test loss")
QUANTITIES = (*LOSSES, "ensemble test logits", "feature kernels")
"""The quantity families :func:`study_horizons` knows (kernels: one quantity per layer)."""

_PHRASE = {
    "train loss": "training-loss curves",
    "test loss": "test-loss curves",
    "ensemble test logits": "ensemble test logits",
}
_HORIZON_VARS = (
    "horizon",
    "horizon_hi",
    "horizon_estimate",
    "reaches_end",
    "ever_consistent",
    "stop_step",
    "stop_verdict",
    "stop_reason",
)


def _finite_any(da: xr.DataArray) -> bool:
    return da.dtype.kind != "f" or bool(np.isfinite(da.values).any())


def _verdicts(
    ds: xr.Dataset, tol: float, wanted: set[str], kw, dim: str = "width"
) -> list[tuple[str, str, xr.Dataset]]:
    """(label, sentence phrase, verdict Dataset) of every wanted quantity the study has."""
    out = []
    for label, var in (("train loss", "train_loss"), ("test loss", "test_loss")):
        if label in wanted and var in ds and _finite_any(ds[var]):
            v = loss_gap_to_widest(ds[var], tol=tol, dim=dim, **kw)
            out.append((label, _PHRASE[label], v))
    if "ensemble test logits" in wanted and "test_logits" in ds and _finite_any(ds.test_logits):
        logits = ds.test_logits
        over = [d for d in logits.dims if d not in (dim, "seed", "test_step")]
        v = logit_distance_to_widest(logits, tol=tol, over=over, dim=dim, **kw)
        out.append(("ensemble test logits", _PHRASE["ensemble test logits"], v))
    if "feature kernels" in wanted and "feature_kernel" in ds and _finite_any(ds.feature_kernel):
        v = kernel_distance_to_widest(ds.feature_kernel, tol=tol, dim=dim, **kw)
        layers = v["kernels_layer"].values if "kernels_layer" in v.coords else None
        for i in range(v.sizes.get("kernels_layer", 0)):
            name = str(layers[i]) if layers is not None else str(i + 1)
            one = v.isel(kernels_layer=i, drop=True)
            out.append(
                (f"feature kernel {name}", f"seed-mean feature kernels of layer {name}", one)
            )
    return out


def _step_dim(v: xr.Dataset) -> str:
    return next(str(d) for d in v["estimate"].dims if str(d).endswith("step"))


def study_horizons(
    ds: xr.Dataset,
    tol: float = TOL,
    *,
    start: int = START,
    quantities: Iterable[str] = QUANTITIES,
    n_boot: int = 1000,
    seed: int = 0,
    dim: str = "width",
) -> xr.Dataset:
    """t*(n) with its interval, and the dual, for every quantity the study recorded.

    ``ds``: a study's Dataset (at least 2 widths). ``tol``: tolerance of the verdicts
    (relative: 0.05 = 5 %). ``start``: first step judged (module docstring).
    ``quantities``: a subset of :data:`QUANTITIES`. ``n_boot``, ``seed``: the
    seed bootstrap of ``verdict.py`` (the same draws at every step). ``dim``: the axis
    compared, ``width`` (the widest is the reference) or ``depth`` (a depth study at one
    width, :mod:`widthwise.depth_study`: the deepest is the reference; read "width" below
    as that dim).

    Returns a Dataset with dims ``quantity``, ``width`` (every width but the widest,
    the reference) and ``step`` (the union of the quantities' steps ≥ ``start``):

    - (quantity, width): ``horizon`` (t*, from "consistent" = upper bound ≤ tol at
      every step up to it; −1: never), ``horizon_hi`` (optimistic: lower bound ≤
      tol), ``horizon_estimate`` (point estimate ≤ tol), ``reaches_end``,
      ``ever_consistent``, ``stop_step``, ``stop_verdict``, ``stop_reason`` — as
      :func:`~widthwise.analysis.horizon.consistency_horizon`;
    - (quantity, step): ``min_width``, ``min_width_lo``, ``min_width_estimate``
      (the dual, :func:`~widthwise.analysis.horizon.consistent_width`: NaN where no
      compared width is consistent, or the quantity was not recorded) and
      ``recorded`` (the quantity has that step);
    - (quantity,): ``first_step``, ``last_step`` (its steps judged), ``step_dim``
      (the probe's step dim it came from) and ``sentence`` (its
      :func:`~widthwise.analysis.horizon.horizon_sentence`).

    ``attrs``: ``tolerance``, ``relative``, ``reference_width``, ``start``, ``rule``,
    ``description``. Steps are int; widths as in ``ds``.
    """
    wanted = set(quantities)
    unknown = wanted - set(QUANTITIES)
    if unknown:
        raise AnalysisError(
            f"Unknown quantities {sorted(unknown)}; allowed: {', '.join(QUANTITIES)}."
        )
    if not isinstance(ds, xr.Dataset) or dim not in ds.dims:
        raise AnalysisError(
            f"The 'ds' parameter must be a study's Dataset (widthwise.open_study) with a "
            f"{dim!r} dim."
        )
    if ds.sizes[dim] < 2:
        raise AnalysisError(
            f"A consistency horizon needs at least 2 "
            f"{'widths' if dim == 'width' else f'entries along {dim!r}'} (the widest is "
            "the reference)."
        )
    kw = {"n_boot": n_boot, "seed": seed}
    per, rule = [], ""
    for label, phrase, v in _verdicts(ds, tol, wanted, kw, dim):
        sd = _step_dim(v)
        v = v.sel({sd: v[sd] >= start})
        if v.sizes[sd] == 0:
            continue
        rule = v.attrs.get("rule", rule)
        h = consistency_horizon(v, dim=dim, step_dim=sd, start=start)
        dual = consistent_width(v, dim=dim, step_dim=sd).rename({sd: "step"})
        one = h[list(_HORIZON_VARS)]
        one = one.assign(
            **{k: dual[k] for k in ("min_width", "min_width_lo", "min_width_estimate")},
            recorded=xr.DataArray(np.ones(dual.sizes["step"], bool), dims="step"),
            first_step=int(h.attrs["first_step"]),
            last_step=int(h.attrs["last_step"]),
            step_dim=sd,
            sentence=horizon_sentence(h, quantity=phrase),
        )
        one = one.assign_coords(step=dual["step"].values.astype(np.int64))
        per.append((label, one, h.attrs))
    if not per:
        raise AnalysisError(
            "The study recorded none of the quantities asked for "
            f"({', '.join(sorted(wanted))}) at a step >= {start}."
        )
    out = xr.concat(
        [one for _, one, _ in per],
        dim=xr.DataArray([label for label, _, _ in per], dims="quantity", name="quantity"),
        join="outer",
        combine_attrs="drop",
        fill_value={"recorded": False},
    )
    out["recorded"] = out["recorded"].fillna(False).astype(bool)
    a = per[0][2]
    out.attrs = {
        "tolerance": float(tol),
        "relative": int(a.get("relative", 1)),
        "reference_width": plain(a.get("reference_width")),
        "start": int(start),
        "rule": rule,
        "description": "consistency horizon t*(n): last step up to which width n agrees with "
        "the widest at every step judged (-1: never); min_width: the narrowest width that "
        "agrees at a step, as does every wider one",
    }
    return out


def loss_quantity(ds: xr.Dataset) -> str | None:
    """The loss the summary sentence is about: the training loss (every step) if recorded,
    else the test loss; None when the study has neither."""
    for label, var in (("train loss", "train_loss"), ("test loss", "test_loss")):
        if var in ds and _finite_any(ds[var]):
            return label
    return None


def horizon_summary(ds: xr.Dataset, tol: float = TOL, *, start: int = START, **kw) -> str:
    """One sentence: up to which step each width's loss curve agrees with the widest's.

    The training loss (the test loss if that is all there is), judged as
    :func:`study_horizons` does, stated by
    :func:`~widthwise.analysis.horizon.horizon_sentence`, e.g. "Training-loss curves
    agree with the widest (width 1024) within 5% from step 1 up to step 180 at width
    256 and over the whole run (to step 399) at width 512; widths 64 and 128 never
    agree." Empty when there is nothing to compare (fewer than 2 widths, no loss, no
    step from ``start`` on).
    Only the losses are read, so this is cheap (``widthwise show`` prints it).
    """
    q = loss_quantity(ds)
    dim = kw.get("dim", "width")
    if q is None or dim not in ds.dims or ds.sizes[dim] < 2:
        return ""
    try:
        h = study_horizons(ds, tol, start=start, quantities=(q,), **kw)
    except AnalysisError:  # no step >= start recorded yet
        return ""
    return str(h["sentence"].sel(quantity=q).item())
