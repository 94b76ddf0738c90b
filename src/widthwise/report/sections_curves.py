"""Report sections built from losses and test logits: summary, Fig. 2, 3, 4, 7, 9.

Each ``*_section(ds)`` returns ``None`` when the study lacks the data it needs.
The analysis is :mod:`widthwise.analysis`; this module only chooses what to show.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from widthwise import analysis as wa
from widthwise.report import fig_curves, fig_fits
from widthwise.report.section import (
    TOL,
    Panel,
    Section,
    common_steps,
    fmt_width,
    has,
    is_partial,
    loss_label,
    reached,
    spec_of,
    target_of,
    tidy,
)
from widthwise.report.sections_repr import (
    NOT_MEASURED,
    fmt,
    limit_sentence,
    monotone_word,
    per_width,
    trend_sentence,
)
from widthwise.summary import FINAL_WINDOW

LOGIT_POINTS = 3


def _logit_output(ds: xr.Dataset) -> xr.DataArray:
    """test_logits of one output: the only one, or (classification) each point's true class."""
    logits = ds.test_logits
    if logits.sizes["output"] == 1:
        return logits.isel(output=0, drop=True)
    if "test_label" in ds:  # positions without a label (-100): class 0, and not shown
        label = ds.test_label.astype(np.int64)
        return logits.isel(output=label.where(label >= 0, 0), drop=True)
    return logits.isel(output=0, drop=True)


def _verdicts(ds: xr.Dataset, tol: float) -> tuple[list[list[str]], dict[str, xr.DataArray]]:
    """Verdict rows at the last step every width reached, and the verdict arrays (for
    CSV) at every step every width reached: a width that did not reach a step would
    count as "not consistent" there, so such steps get no verdict at all."""
    diffs = successive_diff_arrays(ds)
    rows, arrays = [], {}
    for name, d in diffs.items():
        step_dim = next(x for x in d.dims if x.endswith("step"))
        v = wa.consistency_verdict(d.sel({step_dim: common_steps(ds, step_dim)}), tol=tol)
        arrays[name] = v
        if v.sizes[step_dim] == 0:
            rows.append([name, "—", "undetermined: no recorded step that every width reached"])
            continue
        last = v.isel({step_dim: -1})
        step = int(v[step_dim].values[-1])
        if last.ndim == 0:
            rows.append([name, str(step), _verdict_text(float(last))])
        else:  # per layer
            ld = last.dims[0]
            names = last[ld].values if ld in last.coords else range(1, last.sizes[ld] + 1)
            for i, lname in enumerate(names):
                label = f"{name}, {lname if ld in last.coords else f'layer {lname}'}"
                rows.append([label, str(step), _verdict_text(float(last.isel({ld: i})))])
    return rows, arrays


def _verdict_text(w: float) -> str:
    if not np.isfinite(w):
        return "not consistent within the widths studied"
    return f"consistent from width {fmt_width(w)}"


def _pair_reached(ds: xr.Dataset, diff: xr.DataArray) -> xr.DataArray:
    """``diff`` (a successive difference) NaN wherever either width of its pair did not
    reach the step."""
    step_dim = next(x for x in diff.dims if x.endswith("step"))
    ok = reached(ds, step_dim)
    both = ok.sel(width=diff.width.values).values & ok.sel(width=diff.width_wider.values).values
    mask = xr.DataArray(
        both, dims=("width", step_dim), coords={"width": diff.width.values, step_dim: ok[step_dim]}
    )
    return diff.where(mask)


def successive_diff_arrays(ds: xr.Dataset) -> dict[str, xr.DataArray]:
    """Relative successive differences of the seed-mean loss, logits and kernels (Fig. 4);
    NaN at the steps where either width of a pair did not reach (partial studies)."""
    if ds.sizes["width"] < 2:
        return {}
    out = {}
    if has(ds, "test_loss"):
        out["test loss"] = wa.successive_differences(ds.test_loss, ensemble=True, relative=True)
    elif has(ds, "train_loss"):
        out["train loss"] = wa.successive_differences(ds.train_loss, ensemble=True, relative=True)
    if has(ds, "test_logits"):
        out["test logits"] = wa.successive_differences(
            ds.test_logits, over=("point", "output"), ensemble=True, relative=True
        )
    if has(ds, "feature_kernel"):
        out["feature kernels"] = wa.successive_differences(
            ds.feature_kernel,
            over=("kernels_point_i", "kernels_point_j"),
            ensemble=True,
            relative=True,
            norm="fro",
        )
    return {name: _pair_reached(ds, d) for name, d in out.items()}


def summary_section(ds: xr.Dataset, tol: float = TOL) -> Section:
    """The card at the top: spec, verdicts with their tolerance, diverged members, wall time."""
    spec = spec_of(ds)
    model = spec.get("model", {})
    opt = spec.get("optimizer", {})
    widths = [int(w) for w in ds.width.values]
    facts = [
        ("study", str(ds.attrs.get("name", "?"))),
        ("description", str(spec.get("description", "")).strip() or "—"),
        ("family", f"{model.get('family', '?')} {_kv(model.get('options'))}".strip()),
        ("parameterization", _param_text(spec, ds)),
        (
            "optimizer",
            f"{opt.get('name', '?')}, lr {opt.get('lr', '?')}"
            + (f", momentum {opt['momentum']}" if opt.get("momentum") else ""),
        ),
        (
            "widths",
            ", ".join(map(str, widths))
            + (f" (base width {ds.attrs['base_width']})" if "base_width" in ds.attrs else ""),
        ),
        ("seeds", str(ds.sizes["seed"])),
        ("steps", str(spec.get("steps", "?")) + f", batch size {spec.get('batch_size', '?')}"),
        (
            "data",
            f"{spec.get('data', {}).get('stream', '?')} {_kv(spec.get('data', {}).get('options'))}",
        ),
        ("diverged members", _diverged_text(ds)),
        ("wall time", _wall_text(ds)),
        ("spec hash", str(ds.attrs.get("spec_hash", "?"))),
    ]
    not_done = _unfinished_text(ds)
    if not_done:
        facts.append(("unfinished widths", not_done))
    at = (
        "at the last recorded step every width reached (a partial study: see the banner)"
        if is_partial(ds)
        else "at the final recorded step"
    )
    sec = Section(
        id="summary",
        title="Summary",
        paper="",
        text=(
            "What was trained and the consistency verdicts: a quantity is consistent from "
            "width n when the relative successive differences |q(2n) − q(n)| / |q(2n)| of "
            f"its seed mean stay ≤ {tol:g} ({tol:.0%}) for n and every wider pair "
            f"(RMS over probe points for logits, Frobenius norm for kernels), {at}."
        ),
        facts=facts,
    )
    rows, arrays = _verdicts(ds, tol)
    if rows:
        sec.table = (["quantity", "step", f"verdict (tolerance {tol:g}, relative)"], rows)
        for name, arr in arrays.items():
            sec.tables[f"verdict_{name.replace(' ', '_')}"] = tidy(
                arr.assign_attrs(), "consistent_from"
            )
    else:
        sec.notes.append("No verdicts: the study has a single width.")
    return sec


def _unfinished_text(ds: xr.Dataset) -> str:
    """``32: interrupted at step 7 of 20; 64: not started`` (the words of ``widthwise show``)."""
    steps = ds.attrs.get("steps", spec_of(ds).get("steps", -1))
    of = f" of {steps}" if isinstance(steps, int) and steps >= 0 else ""
    items = []
    for w, state in zip(ds.width.values, ds.status.values):
        if state == "done":
            continue
        step = int(ds.step_reached.sel(width=w)) if "step_reached" in ds else -1
        items.append(f"{int(w)}: {state}" + (f" at step {step}{of}" if step >= 0 else ""))
    present = {int(w) for w in ds.width.values}
    items += [
        f"{int(w)}: not started"
        for w in ds.attrs.get("planned_widths", [])
        if int(w) not in present
    ]
    return "; ".join(items)


def _kv(options: dict | None) -> str:
    """{'depth': 3, 'bias': False} -> '(depth 3, bias False)'; '' for none."""
    if not options:
        return ""
    return "(" + ", ".join(f"{k} {v}" for k, v in options.items()) + ")"


def _param_text(spec: dict, ds: xr.Dataset) -> str:
    p = spec.get("parameterization", {})
    extras = ", ".join(f"{k} {v}" for k, v in p.items() if k != "name" and v not in (None, False))
    return str(ds.attrs.get("parameterization", p.get("name", "?"))) + (
        f" ({extras})" if extras else ""
    )


def _diverged_text(ds: xr.Dataset) -> str:
    d = ds.diverged_step
    items = [
        f"width {int(w)} seed {int(s)} at step {int(d.sel(width=w, seed=s))}"
        for w in d.width.values
        for s in d.seed.values
        if int(d.sel(width=w, seed=s)) >= 0
    ]
    return "; ".join(items) if items else "none"


def _wall_text(ds: xr.Dataset) -> str:
    wt = ds.wall_time.values.astype(np.float64)
    per = ", ".join(f"{int(w)}: {t:.1f} s" for w, t in zip(ds.width.values, wt))
    return f"{np.nansum(wt):.1f} s in total ({per})"


def loss_section(ds: xr.Dataset) -> Section | None:
    if not (has(ds, "train_loss") or has(ds, "test_loss")):
        return None
    train = ds.train_loss if has(ds, "train_loss") else None
    test = ds.test_loss if has(ds, "test_loss") else None
    err = ds.test_error if has(ds, "test_error") else None
    fig = fig_curves.loss_curves(train, test, err, loss_name=loss_label(ds), widths=ds.width.values)
    sec = Section(
        id="loss",
        title="Loss curves",
        paper="Fig. 2",
        text="Losses over training, coloured by width (log-log). " + _loss_summary(ds),
        panels=[
            Panel(
                "loss_curves",
                fig,
                "Lines: mean over seeds; bands: range over seeds. "
                "Step 0 (initial network) is off the log axis.",
            )
        ],
    )
    for name, da in (("train_loss", train), ("test_loss", test), ("test_error", err)):
        if da is not None:
            sec.tables[name] = tidy(da)
    return sec


def wider_is_better(mean: xr.DataArray, step_dim: str) -> tuple[int, int]:
    """(steps where the seed-mean loss strictly decreases in width, steps compared):
    over the steps after 0 where every width has a finite value."""
    m = mean.sortby("width").transpose("width", step_dim)
    m = m.sel({step_dim: m[step_dim] > 0})
    ok = np.isfinite(m).all("width")
    better = (m.diff("width") < 0).all("width") & ok
    return int(better.sum()), int(ok.sum())


def loss_sentence(what: str, widths, final, step: int, better: int, total: int) -> str:
    """'Test loss at step 400 (seed means): 0.0168 at width 64, … (decreasing in width);
    lower at every wider width at 20 of 20 recorded steps after step 0.'"""
    v = np.asarray(final, dtype=np.float64)
    if not np.isfinite(v).any():
        return f"{what} at step {step}: {NOT_MEASURED}."
    trend = monotone_word(v)
    text = f"{what} at step {step} (seed means): {per_width(widths, v)}" + (
        f" ({trend})" if trend else ""
    )
    if total:
        every = " (every one)" if better == total else " (none)" if better == 0 else ""
        text += (
            f"; lower at every wider width at {better} of the {total} recorded steps after "
            f"step 0{every}"
        )
    return text + "."


def _loss_summary(ds: xr.Dataset) -> str:
    """The loss section's sentence from the seed-mean curves at the steps every width
    reached (the numbers of ``test_loss.csv``, else ``train_loss.csv``)."""
    test = has(ds, "test_loss")
    da, step_dim = (ds.test_loss, "test_step") if test else (ds.train_loss, "step")
    steps = common_steps(ds, step_dim)
    what = "Test loss" if test else "Training loss"
    if len(steps) == 0:
        return f"{what}: {NOT_MEASURED} at a step every width reached."
    mean = da.sel({step_dim: steps}).mean("seed", skipna=True)
    better, total = wider_is_better(mean, step_dim) if ds.sizes["width"] >= 2 else (0, 0)
    if test:
        final = mean.sel(test_step=steps[-1])
    else:  # the minibatch loss is noisy: the mean of the last FINAL_WINDOW steps
        final = mean.sel(step=steps[-FINAL_WINDOW:]).mean("step")
        what = f"Training loss (mean of the last {min(FINAL_WINDOW, len(steps))} steps)"
    widths = mean.width.values.tolist()
    return loss_sentence(what, widths, final.values, int(steps[-1]), better, total)


def logits_section(ds: xr.Dataset) -> Section | None:
    if not has(ds, "test_logits"):
        return None
    logits = _logit_output(ds)
    shown = ds.test_label.values >= 0 if "test_label" in ds else slice(None)  # labelled
    pts = logits.point.values[shown][:LOGIT_POINTS]
    logits = logits.sel(point=pts)
    target = None
    if (
        "test_target" in ds
        and ds.test_target.sizes.get("output", 1) >= 1
        and "test_label" not in ds
    ):
        target = ds.test_target.isel(output=0, drop=True).sel(point=pts)
    multi = ds.test_logits.sizes["output"] > 1
    what = "logit of the true class" if multi and "test_label" in ds else "network output"
    fig = fig_curves.logit_trajectories(logits, target, ylabel=what, widths=ds.width.values)
    sec = Section(
        id="logits",
        title="Logit trajectories",
        paper="Fig. 3 a-c",
        text=f"The {what} on the first {len(pts)} probe points over training. "
        + _logit_summary(ds, logits),
        panels=[
            Panel(
                "logit_trajectories",
                fig,
                "Thin: single seeds; thick: seed mean"
                + ("; dashed black: target." if target is not None else "."),
            )
        ],
    )
    sec.tables["logit_trajectories"] = tidy(logits.rename("logit"))
    return sec


def _logit_summary(ds: xr.Dataset, logits: xr.DataArray) -> str:
    """How far each width's seed-mean trajectories on the shown points are from the
    widest's: scaled RMSE over those points and the test steps every width reached."""
    steps = common_steps(ds, "test_step")
    if ds.sizes["width"] < 2 or len(steps) == 0:
        return ""
    mean = logits.sel(test_step=steps).mean("seed", skipna=True)
    ref = mean.width.values.max()
    d = wa.scaled_rmse(
        mean.sel(width=mean.width != ref),
        mean.sel(width=ref, drop=True),
        over=("point", "test_step"),
    )
    label = (
        f"Scaled RMSE of the seed-mean trajectories to the widest's ({int(ref)}) over these "
        f"points and steps {int(steps[0])}–{int(steps[-1])}"
    )
    return trend_sentence(label, d.width.values.tolist(), d.values) + "."


def distance_section(ds: xr.Dataset) -> Section | None:
    if not has(ds, "test_logits") or ds.sizes["width"] < 2:
        return None
    ref = int(ds.width.values.max())
    # steps the widest reached (elsewhere there is no reference); a width that did not
    # reach a step is NaN there, never compared
    ok = reached(ds, "test_step")
    steps = ds.test_step.values[ok.sel(width=ref).values]
    if len(steps) == 0:
        return None
    single = wa.scaled_rmse_to_widest(ds.test_logits).where(ok).sel(test_step=steps)
    ens = wa.scaled_rmse_to_widest(ds.test_logits, ensemble=True).where(ok).sel(test_step=steps)
    fig = fig_curves.distance_to_widest(single, ens, widths=ds.width.values)
    missing = [int(w) for w in ds.width.values if not bool(ok.sel(width=w, test_step=steps[-1]))]
    sec = Section(
        id="distance",
        title="Distance to the widest",
        paper="Fig. 3 d-f",
        text=f"Scaled RMSE of the test logits to the widest width ({ref}): RMS over probe "
        "points of f_n − f_widest divided by the RMS of f_widest; per seed (seed s vs seed s) "
        "and between seed means. " + _distance_summary(single, ens),
        panels=[
            Panel(
                "distance_to_widest",
                fig,
                "Left: per seed (mean and range); middle: "
                f"ensemble means; right: at step {int(steps[-1])} against width, with "
                "reference slopes n^−1/2 and n^−1 (dashed grey) from the narrowest width's "
                "per-seed mean."
                + (
                    f" Left out (NaN: did not reach the step): width "
                    f"{', '.join(map(str, missing))} at step {int(steps[-1])}."
                    if missing
                    else ""
                )
                + (
                    " A width is NaN at the steps it did not reach; steps the widest did "
                    "not reach have no reference and are not shown."
                    if is_partial(ds)
                    else ""
                ),
            )
        ],
    )
    sec.tables["scaled_rmse_single"] = tidy(single)
    sec.tables["scaled_rmse_ensemble"] = tidy(ens)
    return sec


def _distance_summary(single: xr.DataArray, ens: xr.DataArray) -> str:
    """The distance section's sentence at its last step (``scaled_rmse_*.csv`` there; the
    per-seed numbers are the mean over seeds of ``scaled_rmse_single``)."""
    ref = single.width.values.max()
    step = int(single.test_step.values[-1])
    s = single.isel(test_step=-1).sel(width=single.width != ref).mean("seed", skipna=True)
    e = ens.isel(test_step=-1).sel(width=ens.width != ref)
    widths = s.width.values.tolist()
    return (
        f"At step {step}: "
        + trend_sentence("per seed (mean over seeds)", widths, s.values)
        + "; "
        + trend_sentence("seed means", widths, e.values)
        + "."
    )


def successive_section(ds: xr.Dataset, tol: float = TOL) -> Section | None:
    diffs = successive_diff_arrays(ds)
    if not diffs:
        return None
    fig = fig_curves.successive_differences(diffs, tol=tol, widths=ds.width.values)
    sec = Section(
        id="successive",
        title="Successive-width differences",
        paper="Fig. 4",
        text="Relative difference between consecutive widths, ‖q(2n) − q(n)‖ / ‖q(2n)‖, of "
        f"seed means; the dashed red line is the verdict tolerance {tol:g}. "
        + _successive_summary(ds, diffs, tol),
        panels=[
            Panel(
                "successive_differences",
                fig,
                "Colour: the narrower width n of each pair; linestyle: layer (kernels)."
                + (
                    " A pair is left out (NaN) at the steps either of its widths did not reach."
                    if is_partial(ds)
                    else ""
                ),
            )
        ],
    )
    for name, d in diffs.items():
        sec.tables[f"successive_{name.replace(' ', '_')}"] = tidy(d)
    return sec


def successive_sentence(name: str, pairs, values, tol: float) -> str:
    """'test loss: 0.44 at 64-128, 0.35 at 128-256 (decreasing in width; ≤ 0.05 from
    pair 256-512 on)' — each pair's relative difference and where it is within ``tol``
    (the verdict's rule); "not measured" when no value is finite."""
    v = np.asarray(values, dtype=np.float64)
    if not np.isfinite(v).any():
        return f"{name}: {NOT_MEASURED}"
    items = ", ".join(f"{fmt(x)} at {p}" for p, x in zip(pairs, v))
    within = np.isfinite(v) & (v <= tol)
    if within.all():
        where = f"≤ {tol:g} at every pair"
    elif not within.any():
        where = f"> {tol:g} at every pair"
    else:
        tail = [i for i in range(len(v)) if within[i:].all()]
        where = (
            f"≤ {tol:g} from pair {pairs[tail[0]]} on"
            if tail
            else f"> {tol:g} at the widest pair {pairs[-1]}"
        )
    trend = monotone_word(v)
    return f"{name}: {items} ({'; '.join(x for x in (trend, where) if x)})"


def _successive_summary(ds: xr.Dataset, diffs: dict[str, xr.DataArray], tol: float) -> str:
    """Each quantity's relative successive differences at the last step every width
    reached (its ``successive_*.csv`` there), per layer for kernels."""
    parts: list[tuple[str, int | None]] = []
    for name, d in diffs.items():
        step_dim = next(x for x in d.dims if x.endswith("step"))
        steps = common_steps(ds, step_dim)
        if len(steps) == 0:
            parts.append((f"{name}: {NOT_MEASURED} at a step every width reached", None))
            continue
        last, step = d.sel({step_dim: steps[-1]}), int(steps[-1])
        pairs = [str(p) for p in last.width_pair.values]
        layer_dims = [x for x in last.dims if x != "width"]
        if not layer_dims:
            parts.append((successive_sentence(name, pairs, last.values, tol), step))
            continue
        ld = layer_dims[0]
        names = last[ld].values if ld in last.coords else range(1, last.sizes[ld] + 1)
        for i, layer in enumerate(names):
            said = successive_sentence(f"{name} {layer}", pairs, last.isel({ld: i}).values, tol)
            parts.append((said, step))
    at = {t for _, t in parts if t is not None}
    if len(at) == 1:  # one step for all: say it once
        return (
            f"At step {at.pop()} (the last every width reached): "
            + "; ".join(p for p, _ in parts)
            + "."
        )
    return "; ".join(p if t is None else f"{p} at step {t}" for p, t in parts) + "."


def bias_variance_section(ds: xr.Dataset) -> Section | None:
    target = target_of(ds)
    if not has(ds, "test_logits") or target is None or ds.sizes["seed"] < 2:
        return None
    common = common_steps(ds, "test_step")  # the final comparison: a step every width reached
    if len(common) == 0:
        return None
    step = int(common[-1])
    curves = wa.bias_variance(ds.test_logits, target).where(reached(ds, "test_step"))
    final = curves.sel(test_step=step)
    sizes = wa.ensemble_size_curve(ds.test_logits.sel(test_step=step), target)
    fig = fig_fits.bias_variance(
        final, curves, sizes, loss_name=loss_label(ds), widths=ds.width.values
    )
    sec = Section(
        id="bias_variance",
        title="Bias and variance over initialization",
        paper="Fig. 7, Fig. 18",
        text="Loss of single networks vs the loss of the seed-averaged logits (ensemble). "
        "The variance gap is what ensembling removes; the bias gap is the ensemble's excess "
        f"loss over the widest width's ensemble (step {step}). Also: "
        + (
            "variance and bias against width with the reference slopes n^−1/2 and n^−1 "
            "(dashed grey), and "
            if int((final["variance"] > 0).sum()) >= 2  # as fig_fits.bias_variance draws it
            else ""
        )
        + "the loss of ensembles of k seeds (is the number of seeds enough?). "
        + _variance_summary(ds.test_logits.sel(test_step=step), final),
        panels=[
            Panel(
                "bias_variance",
                fig,
                f"{ds.sizes['seed']} seeds per width; diverged members left out."
                + (
                    f" Partial study: step {step} is the last test step every width "
                    "reached; widths are NaN at the steps they did not reach."
                    if is_partial(ds)
                    else ""
                ),
            )
        ],
    )
    sec.tables["bias_variance"] = tidy(curves)
    sec.tables["ensemble_size"] = tidy(sizes)
    return sec


VARIANCE_SLOPE = -1.0
"""Paper Section 3: the variance over initialization falls like 1/n."""


def _variance_summary(logits: xr.DataArray, final: xr.Dataset) -> str:
    """The variance over seeds per width (``bias_variance.csv`` at the final step) and
    its log-log slope in width with a seed-bootstrap interval, against n^-1."""
    slope = wa.width_slope(
        logits, quantity="variance", over=("point", "output"), expected=VARIANCE_SLOPE
    )
    step = int(final.test_step) if "test_step" in final.coords else None
    at = f" at step {step}" if step is not None else ""
    return (
        limit_sentence(
            f"Variance over seeds{at}",
            final.width.values.tolist(),
            final["variance"].values,
            float(slope.estimate),
            float(slope.lo),
            float(slope.hi),
            expected=VARIANCE_SLOPE,
            tol=float(slope.attrs.get("tolerance", 0.25)),
        )
        + "; the paper's Section 3 predicts variance ∝ 1/n."
    )


def power_law_section(ds: xr.Dataset) -> Section | None:
    if ds.sizes["width"] < 3 or not (has(ds, "test_loss") or has(ds, "train_loss")):
        return None
    widths = ds.width.values.astype(np.float64)
    grid = np.geomspace(widths.min(), widths.max() * 2, 64)
    fits, tables = {}, {}
    data = []
    partial = is_partial(ds)
    test_steps = common_steps(ds, "test_step") if has(ds, "test_loss") else []
    if len(test_steps):
        last = int(test_steps[-1])
        title = f"test loss, step {last}" if partial else "test loss, final step"
        data.append((title, "test_loss_final", ds.test_loss.sel(test_step=last)))
    train_steps = common_steps(ds, "step") if has(ds, "train_loss") else []
    if len(train_steps):  # the last FINAL_WINDOW steps every width reached
        tail = ds.train_loss.sel(step=train_steps[-FINAL_WINDOW:]).mean("step", skipna=False)
        what = f"up to step {int(train_steps[-1])}" if partial else "steps"
        data.append((f"train loss, last {FINAL_WINDOW} {what}", "train_loss_final", tail))
    if not data:
        return None
    for title, key, da in data:
        fit = wa.power_law_fit(da)
        curve = wa.power_law_curve(fit, grid)
        fits[title] = (da, fit, curve)
        tables[f"power_law_{key}_data"] = tidy(da.rename("loss"))
        tables[f"power_law_{key}_fit"] = _fit_table(fit)
        tables[f"power_law_{key}_curve"] = tidy(curve)
    limit = None
    if has(ds, "test_loss"):
        limit = wa.limit_curve(ds.test_loss.where(reached(ds, "test_step")))
        tables["limit_curve_test_loss"] = tidy(limit)
    fig = fig_fits.power_law(
        fits,
        limit,
        ds.test_loss if limit is not None else None,
        loss_name=loss_label(ds),
        widths=ds.width.values,
    )
    return Section(
        id="power_law",
        title="Power laws in width",
        paper="Fig. 9",
        text="L(n) = a·n^(−b) + c fitted to the seed-mean loss (a, c ≥ 0), with 95 % "
        "bootstrap intervals over seeds; c is the extrapolated infinite-width loss. Right: "
        "c fitted at every step — the infinite-width limit curve with its interval. Fits: "
        + "; ".join(fit_sentence(title, fit) for title, (_, fit, _) in fits.items())
        + ".",
        panels=[Panel("power_law", fig, "Points: seed mean and range; grey band: interval of c.")],
        tables=tables,
    )


def fit_sentence(title: str, fit: xr.Dataset) -> str:
    """'test loss, final step: b = 0.81 [0.52, 1.2], c = 0.0021 [0, 0.0032], R² = 0.99'
    (the numbers of ``power_law_*_fit.csv``); "not measured" for a fit that failed, and
    "b not identified (a = 0)" when the fit is flat."""
    b, c, r2 = (float(fit[k]) for k in ("b", "c", "r2"))
    if not (np.isfinite(c) and np.isfinite(r2)):
        return f"{title}: fit {NOT_MEASURED} (fewer than 3 finite widths)"

    def ci(k: str) -> str:
        lo, hi = (float(v) for v in fit[f"{k}_ci"].values)
        return f" [{fmt(lo)}, {fmt(hi)}]" if np.isfinite(lo) and np.isfinite(hi) else ""

    bt = f"b = {fmt(b)}{ci('b')}" if np.isfinite(b) else "b not identified (a = 0: flat in width)"
    return f"{title}: {bt}, c = {fmt(c)}{ci('c')}, R² = {r2:.3f}"


def _fit_table(fit: xr.Dataset):
    import pandas as pd

    row = {k: float(fit[k]) for k in ("a", "b", "c", "r2")}
    for k in ("a", "b", "c"):
        row[f"{k}_low"], row[f"{k}_high"] = (float(v) for v in fit[f"{k}_ci"].values)
    row["ci"] = fit.attrs.get("ci")
    row["n_boot"] = fit.attrs.get("n_boot")
    return pd.DataFrame([row])
