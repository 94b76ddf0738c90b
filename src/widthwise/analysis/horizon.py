"""The consistency horizon: up to which step does width n agree with the widest?

Paper Sections 2-3: "the effective width required to reach infinite-width behavior
increases with training time. Conversely, as network size grows we approximate the
infinite width network for a larger number of training steps." Given per-(width,
step) verdicts of a distance to the widest (``verdict.py``: ``estimate``, ``lo``,
``hi``, ``verdict``, ``reason``, attrs ``tolerance``), this module measures both
sides of that statement and says it in one sentence.

t*(n), the **horizon** of width n: the largest recorded step t such that the verdict
is "consistent" (hi ≤ tol) at every recorded step s ≤ t (from ``start`` on); −1 when
it is not consistent at the first step. It is the pessimistic end of its interval:
``horizon_hi`` uses lo ≤ tol instead (the optimistic horizon: not yet refuted), and
``horizon_estimate`` uses the point estimate. A non-finite value ends all three.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from widthwise.analysis._checks import AnalysisError, plain, require_dims


def _step_dim(ds: xr.Dataset, dim: str, step_dim: str | None) -> str:
    if step_dim is not None:
        require_dims(ds, (dim, step_dim), "verdicts")
        return step_dim
    require_dims(ds, dim, "verdicts")
    cands = [d for d in ds["estimate"].dims if str(d).endswith("step")]
    if len(cands) != 1:
        raise AnalysisError(
            f"Cannot tell the step dim of the verdicts among {list(ds['estimate'].dims)}; "
            "pass step_dim=... (e.g. step_dim='test_step')."
        )
    return str(cands[0])


def _prepare(verdicts: xr.Dataset, dim: str, step_dim: str | None, start):
    if not isinstance(verdicts, xr.Dataset) or "verdict" not in verdicts:
        raise AnalysisError(
            "The 'verdicts' parameter must be a Dataset with a 'verdict' variable, as "
            "returned by loss_gap_to_widest, logit_distance_to_widest or verdict()."
        )
    if "tolerance" not in verdicts.attrs:
        raise AnalysisError(
            "The verdicts carry no 'tolerance' attribute; make them with verdict()."
        )
    sd = _step_dim(verdicts, dim, step_dim)
    ds = verdicts.sortby(sd) if sd in verdicts.coords else verdicts
    if start is not None:
        if sd not in ds.coords:
            raise AnalysisError(f"'start' needs a {sd!r} coordinate.")
        ds = ds.sel({sd: ds[sd] >= start})
    if ds.sizes[sd] == 0:
        raise AnalysisError(f"No {sd} left to judge (start={start!r}).")
    steps = ds[sd].values if sd in ds.coords else np.arange(ds.sizes[sd])
    return ds, sd, steps, float(verdicts.attrs["tolerance"])


def _last_ok(ok: xr.DataArray, sd: str, steps: np.ndarray) -> xr.DataArray:
    def run(a):
        n = np.logical_and.accumulate(a, axis=-1).sum(-1)
        return np.where(n > 0, np.asarray(steps)[np.maximum(n - 1, 0)], -1)

    return xr.apply_ufunc(run, ok, input_core_dims=[[sd]])


def consistency_horizon(
    verdicts: xr.Dataset, *, dim: str = "width", step_dim: str | None = None, start=None
) -> xr.Dataset:
    """t*(n) for every width in ``verdicts`` (the widest is the reference, not in them).

    ``verdicts``: (width, step_dim, ...) from ``verdict.py``; ``step_dim`` defaults to
    the one dim ending in "step". ``start``: ignore steps before it (e.g. 1 to skip
    the initial network, where logit ensembles of every width are ≈ 0 and their
    distance to the widest is noise). Returns (width, ...):

    - ``horizon``, ``horizon_hi``, ``horizon_estimate``: steps (int; −1 = never),
      from hi ≤ tol, lo ≤ tol and estimate ≤ tol (module docstring);
    - ``reaches_end``: consistent at every recorded step (``horizon`` = last step);
    - ``ever_consistent``: consistent at some step;
    - ``stop_step``, ``stop_verdict``, ``stop_reason``: the first step that is not
      "consistent" and its verdict and reason (−1, "", "" when it reaches the end).
    """
    ds, sd, steps, tol = _prepare(verdicts, dim, step_dim, start)
    fin = np.isfinite(ds["estimate"]) & np.isfinite(ds["lo"]) & np.isfinite(ds["hi"])
    ok = ds["verdict"] == "consistent"
    out = xr.Dataset(
        {
            "horizon": _last_ok(ok, sd, steps),
            "horizon_hi": _last_ok(fin & (ds["lo"] <= tol), sd, steps),
            "horizon_estimate": _last_ok(fin & (ds["estimate"] <= tol), sd, steps),
            "reaches_end": ok.all(sd),
            "ever_consistent": ok.any(sd),
        }
    )
    first_bad = (~ok).argmax(sd)
    stop_v = ds["verdict"].isel({sd: first_bad}, drop=True)
    stop_r = ds["reason"].isel({sd: first_bad}, drop=True)
    end = out["reaches_end"]
    out["stop_step"] = xr.where(end, -1, first_bad.copy(data=np.asarray(steps)[first_bad.values]))
    out["stop_verdict"] = xr.where(end, "", stop_v)
    out["stop_reason"] = xr.where(end, "", stop_r)
    out = out.drop_vars([c for c in out.coords if sd in out[c].dims or c == sd], errors="ignore")
    out.attrs = {
        **{k: v for k, v in verdicts.attrs.items() if isinstance(v, (str, int, float, np.generic))},
        "step_dim": sd,
        **({"start": plain(start)} if start is not None else {}),
        "first_step": plain(steps[0]),
        "last_step": plain(steps[-1]),
        "description": "last step up to which each width is consistent with the widest "
        "at every step (-1: not at the first step)",
    }
    return out


def consistent_width(
    verdicts: xr.Dataset, *, dim: str = "width", step_dim: str | None = None
) -> xr.Dataset:
    """The dual: per step, the smallest width n consistent there, as is every wider one.

    Returns (step_dim, ...): ``min_width`` (from hi ≤ tol, the verdict),
    ``min_width_lo`` (optimistic, from lo ≤ tol) and ``min_width_estimate``; float
    widths, NaN when even the widest compared width is not consistent at that step.
    """
    ds, sd, _, tol = _prepare(verdicts, dim, step_dim, None)
    ds = ds.sortby(dim) if dim in ds.coords else ds
    labels = np.asarray(ds[dim].values if dim in ds.coords else np.arange(ds.sizes[dim]), float)
    fin = np.isfinite(ds["estimate"]) & np.isfinite(ds["lo"]) & np.isfinite(ds["hi"])

    def first(ok: xr.DataArray) -> xr.DataArray:
        def run(a):
            tail = np.flip(np.logical_and.accumulate(np.flip(a, -1), axis=-1), -1)
            return np.where(tail.any(-1), labels[np.argmax(tail, axis=-1)], np.nan)

        return xr.apply_ufunc(run, ok, input_core_dims=[[dim]])

    out = xr.Dataset(
        {
            "min_width": first(ds["verdict"] == "consistent"),
            "min_width_lo": first(fin & (ds["lo"] <= tol)),
            "min_width_estimate": first(fin & (ds["estimate"] <= tol)),
        }
    )
    out = out.drop_vars([c for c in out.coords if dim in out[c].dims], errors="ignore")
    out.attrs = {
        k: v for k, v in verdicts.attrs.items() if isinstance(v, (str, int, float, np.generic))
    }
    return out


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _widths(dim: str, ws: list) -> str:
    return f"{dim} {ws[0]}" if len(ws) == 1 else f"{dim}s {_join([str(w) for w in ws])}"


def horizon_sentence(horizon: xr.Dataset, *, quantity: str = "loss curves") -> str:
    """One sentence from :func:`consistency_horizon`'s result (no extra dims), e.g.

    "Loss curves agree with the widest (width 1024) within 5% up to step 180 at width
    256 and over the whole run (to step 399) at width 512; widths 64 and 128 never
    agree." Tolerance in % when the verdicts were relative. Widths whose horizon ends
    at an undetermined step say why; widths undetermined at the first step are listed
    with the reason. ``horizon_hi`` is added as "at best step t" when larger.
    ``quantity`` is a plural noun phrase ("loss curves", "ensemble logits").
    """
    other = [d for d in horizon["horizon"].dims if d != horizon.attrs.get("dim", "width")]
    if other or horizon["horizon"].ndim != 1:
        raise AnalysisError(
            f"horizon_sentence needs one dim (width); select the others first, e.g. "
            f".sel({other[0] if other else 'layer'}=...). Got dims {list(horizon['horizon'].dims)}."
        )
    dim = str(horizon["horizon"].dims[0])
    a = horizon.attrs
    if not {"tolerance", "last_step", "first_step"} <= set(a):
        raise AnalysisError("horizon_sentence needs the result of consistency_horizon().")
    tol = float(a["tolerance"])
    tol_s = f"{100 * tol:g}%" if a.get("relative", 0) else f"{tol:g}"
    if "reference_width" in a:  # along depth (widthwise.depth_study): the deepest
        ref = f"the {'deepest' if dim == 'depth' else 'widest'} ({dim} {a['reference_width']})"
    else:  # successive_gap: each width against the next wider one
        ref = f"the next wider {dim}" if "successive" in str(a.get("quantity")) else "the widest"
    last, first = a["last_step"], a["first_step"]
    agree: dict[str, list] = {}
    never, late, undet = [], [], {}
    for w in sorted(horizon[dim].values.tolist()):
        h = horizon.sel({dim: w})
        t, hi, sv, sr = (
            h[k].item() for k in ("horizon", "horizon_hi", "stop_verdict", "stop_reason")
        )
        if t < 0 and sv == "not consistent":
            (late if h["ever_consistent"].item() else never).append(w)
            continue
        if t < 0:
            undet.setdefault(sr, []).append(w)
            continue
        phrase = (
            f"over the whole run (to step {last})" if h["reaches_end"].item() else f"up to step {t}"
        )
        notes = []
        if hi > t:
            notes.append("at best the whole run" if hi == last else f"at best step {hi}")
        if sv == "undetermined" and sr != "interval straddles the tolerance":
            notes.append(f"undetermined at step {h['stop_step'].item()}: {sr}")
        agree.setdefault(phrase + (f" ({'; '.join(notes)})" if notes else ""), []).append(w)
    since = f" from step {first}" if a.get("start") is not None else ""
    within = f"{ref} within {tol_s}{since}"
    parts = []
    if agree:
        items = [f"{p} at {_widths(dim, ws)}" for p, ws in agree.items()]
        parts.append(f"{quantity} agree with {within} " + _join(items))
    if never:
        ws = _widths(dim, never)
        parts.append(
            f"{ws} never {'agree' if len(never) > 1 else 'agrees'}"
            if parts
            else f"{quantity} never agree with {within} at {ws}"
        )
    if late:
        ws = _widths(dim, late)
        parts.append(
            f"{ws} already {'disagree' if len(late) > 1 else 'disagrees'} at step {first}"
            if parts
            else f"{quantity} already disagree with {within} at step {first} at {ws}"
        )
    for reason, ws in undet.items():
        ws_s, verb = _widths(dim, ws), "is" if len(ws) == 1 else "are"
        parts.append(
            f"{ws_s} {verb} undetermined at step {first} ({reason})"
            if parts
            else f"whether {quantity} agree with {within} is undetermined at step {first} "
            f"at {ws_s} ({reason})"
        )
    if not parts:
        return f"There is no narrower {dim} to compare with {ref}."
    s = "; ".join(parts) + "."
    return s[0].upper() + s[1:]
