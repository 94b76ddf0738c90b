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
    fmt_width,
    has,
    loss_label,
    spec_of,
    target_of,
    tidy,
)
from widthwise.summary import FINAL_WINDOW

LOGIT_POINTS = 3


def _logit_output(ds: xr.Dataset) -> xr.DataArray:
    """test_logits of one output: the only one, or (classification) each point's true class."""
    logits = ds.test_logits
    if logits.sizes["output"] == 1:
        return logits.isel(output=0, drop=True)
    if "test_label" in ds:
        return logits.isel(output=ds.test_label.astype(np.int64), drop=True)
    return logits.isel(output=0, drop=True)


def _verdicts(ds: xr.Dataset, tol: float) -> tuple[list[list[str]], dict[str, xr.DataArray]]:
    """Final-step verdict rows and the full verdict arrays (for CSV)."""
    diffs = successive_diff_arrays(ds)
    rows, arrays = [], {}
    for name, d in diffs.items():
        v = wa.consistency_verdict(d, tol=tol)
        arrays[name] = v
        step_dim = next(x for x in v.dims if x.endswith("step"))
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


def successive_diff_arrays(ds: xr.Dataset) -> dict[str, xr.DataArray]:
    """Relative successive differences of the seed-mean loss, logits and kernels (Fig. 4)."""
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
            over=("kpoint_i", "kpoint_j"),
            ensemble=True,
            relative=True,
            norm="fro",
        )
    return out


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
    not_done = [f"{int(w)}: {s}" for w, s in zip(ds.width.values, ds.status.values) if s != "done"]
    if not_done:
        facts.append(("unfinished widths", "; ".join(not_done)))
    sec = Section(
        id="summary",
        title="Summary",
        paper="",
        text=(
            "What was trained and the consistency verdicts: a quantity is consistent from "
            "width n when the relative successive differences |q(2n) − q(n)| / |q(2n)| of "
            f"its seed mean stay ≤ {tol:g} ({tol:.0%}) for n and every wider pair "
            "(RMS over probe points for logits, Frobenius norm for kernels), at the final "
            "recorded step."
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
    fig = fig_curves.loss_curves(train, test, err, loss_name=loss_label(ds))
    sec = Section(
        id="loss",
        title="Loss curves",
        paper="Fig. 2",
        text="Losses over training, coloured by width (log-log): in a consistent "
        "parameterization wider is better at every step and the curves converge.",
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


def logits_section(ds: xr.Dataset) -> Section | None:
    if not has(ds, "test_logits"):
        return None
    logits = _logit_output(ds)
    pts = logits.point.values[:LOGIT_POINTS]
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
    fig = fig_curves.logit_trajectories(logits, target, ylabel=what)
    sec = Section(
        id="logits",
        title="Logit trajectories",
        paper="Fig. 3 a-c",
        text=f"The {what} on the first {len(pts)} probe points over training: wide "
        "networks follow the same trajectory, point by point.",
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


def distance_section(ds: xr.Dataset) -> Section | None:
    if not has(ds, "test_logits") or ds.sizes["width"] < 2:
        return None
    single = wa.scaled_rmse_to_widest(ds.test_logits)
    ens = wa.scaled_rmse_to_widest(ds.test_logits, ensemble=True)
    fig = fig_curves.distance_to_widest(single, ens)
    ref = int(ds.width.values.max())
    sec = Section(
        id="distance",
        title="Distance to the widest",
        paper="Fig. 3 d-f",
        text=f"Scaled RMSE of the test logits to the widest width ({ref}): RMS over probe "
        "points of f_n − f_widest divided by the RMS of f_widest; per seed (seed s vs seed s) "
        "and between seed means.",
        panels=[
            Panel(
                "distance_to_widest",
                fig,
                "Left: per seed (mean and range); middle: "
                "ensemble means; right: at the final step against width.",
            )
        ],
    )
    sec.tables["scaled_rmse_single"] = tidy(single)
    sec.tables["scaled_rmse_ensemble"] = tidy(ens)
    return sec


def successive_section(ds: xr.Dataset, tol: float = TOL) -> Section | None:
    diffs = successive_diff_arrays(ds)
    if not diffs:
        return None
    fig = fig_curves.successive_differences(diffs, tol=tol)
    sec = Section(
        id="successive",
        title="Successive-width differences",
        paper="Fig. 4",
        text="Relative difference between consecutive widths, ‖q(2n) − q(n)‖ / ‖q(2n)‖, of "
        "seed means: shrinking differences mean the quantity converges in width. "
        f"The dashed red line is the verdict tolerance {tol:g}.",
        panels=[
            Panel(
                "successive_differences",
                fig,
                "Colour: the narrower width n of each pair; linestyle: layer (kernels).",
            )
        ],
    )
    for name, d in diffs.items():
        sec.tables[f"successive_{name.replace(' ', '_')}"] = tidy(d)
    return sec


def bias_variance_section(ds: xr.Dataset) -> Section | None:
    target = target_of(ds)
    if not has(ds, "test_logits") or target is None or ds.sizes["seed"] < 2:
        return None
    curves = wa.bias_variance(ds.test_logits, target)
    final = curves.isel(test_step=-1)
    sizes = wa.ensemble_size_curve(ds.test_logits.isel(test_step=-1), target)
    fig = fig_fits.bias_variance(final, curves, sizes, loss_name=loss_label(ds))
    step = int(ds.test_step.values[-1])
    sec = Section(
        id="bias_variance",
        title="Bias and variance over initialization",
        paper="Fig. 7, Fig. 18",
        text="Loss of single networks vs the loss of the seed-averaged logits (ensemble). "
        "The variance gap is what ensembling removes; the bias gap is the ensemble's excess "
        f"loss over the widest width's ensemble (step {step}). Right: loss of ensembles of k "
        "seeds (is the number of seeds enough?).",
        panels=[
            Panel(
                "bias_variance",
                fig,
                f"{ds.sizes['seed']} seeds per width; diverged members left out.",
            )
        ],
    )
    sec.tables["bias_variance"] = tidy(curves)
    sec.tables["ensemble_size"] = tidy(sizes)
    return sec


def power_law_section(ds: xr.Dataset) -> Section | None:
    if ds.sizes["width"] < 3 or not (has(ds, "test_loss") or has(ds, "train_loss")):
        return None
    widths = ds.width.values.astype(np.float64)
    grid = np.geomspace(widths.min(), widths.max() * 2, 64)
    fits, tables = {}, {}
    data = []
    if has(ds, "test_loss"):
        data.append(("test loss, final step", "test_loss_final", ds.test_loss.isel(test_step=-1)))
    if has(ds, "train_loss"):
        tail = ds.train_loss.isel(step=slice(-FINAL_WINDOW, None)).mean("step", skipna=False)
        data.append((f"train loss, last {FINAL_WINDOW} steps", "train_loss_final", tail))
    for title, key, da in data:
        fit = wa.power_law_fit(da)
        curve = wa.power_law_curve(fit, grid)
        fits[title] = (da, fit, curve)
        tables[f"power_law_{key}_data"] = tidy(da.rename("loss"))
        tables[f"power_law_{key}_fit"] = _fit_table(fit)
        tables[f"power_law_{key}_curve"] = tidy(curve)
    limit = None
    if has(ds, "test_loss"):
        limit = wa.limit_curve(ds.test_loss)
        tables["limit_curve_test_loss"] = tidy(limit)
    fig = fig_fits.power_law(
        fits, limit, ds.test_loss if limit is not None else None, loss_name=loss_label(ds)
    )
    return Section(
        id="power_law",
        title="Power laws in width",
        paper="Fig. 9",
        text="L(n) = a·n^(−b) + c fitted to the seed-mean loss (a, c ≥ 0), with 95 % "
        "bootstrap intervals over seeds; c is the extrapolated infinite-width loss. Right: "
        "c fitted at every step — the infinite-width limit curve with its interval.",
        panels=[Panel("power_law", fig, "Points: seed mean and range; grey band: interval of c.")],
        tables=tables,
    )


def _fit_table(fit: xr.Dataset):
    import pandas as pd

    row = {k: float(fit[k]) for k in ("a", "b", "c", "r2")}
    for k in ("a", "b", "c"):
        row[f"{k}_low"], row[f"{k}_high"] = (float(v) for v in fit[f"{k}_ci"].values)
    row["ci"] = fit.attrs.get("ci")
    row["n_boot"] = fit.attrs.get("n_boot")
    return pd.DataFrame([row])
