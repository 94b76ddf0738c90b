"""Report sections of the representation probes: kernels, preactivations, attention,
sharpness, eNTK spectrum, coordinate check (paper Fig. 1d, 5, 6a, 10, 12, 14)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from widthwise import analysis as wa
from widthwise.report import fig_fits, fig_repr
from widthwise.report.section import FLAT, Panel, Section, has, loss_kind, spec_of, tidy

MAX_ATTENTION_ROWS = 4


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
    m = k.sizes["kpoint_i"]
    order = _point_order(ds, m)
    final = _seed_mean(k.isel(kernels_step=-1)).isel(kpoint_i=order, kpoint_j=order)
    final = final.transpose("kernel_layer", "width", "kpoint_i", "kpoint_j")
    step = int(k.kernels_step.values[-1])
    sec = Section(
        id="kernels",
        title="Feature kernels",
        paper="Fig. 5 b-c, Fig. 12, Fig. 14",
        text=f"Seed-mean feature kernels K = φφᵀ/N on {m} probe points"
        + (" (sorted by target)" if _point_targets(ds) is not None else "")
        + f" at "
        f"step {step}, per layer and width; in muP they converge to a width-independent "
        "kernel. Below: distance of each width's kernel to the widest's over training.",
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
        over = ("kpoint_i", "kpoint_j")
        frob = wa.relative_frobenius_to_widest(k, over=over)
        cka = wa.cka_to_widest(k, sample_dims=over)
        y = _kernel_target(ds, m)
        align = None
        if y is not None:
            target_dims = "point"
            align = wa.kernel_target_alignment(
                _seed_mean(k), y, sample_dims=over, target_dims=target_dims
            )
        fig = fig_repr.kernel_distance(frob, cka, align)
        sec.panels.append(
            Panel(
                "kernel_distance",
                fig,
                "Linestyle: layer. CKA uses the "
                "biased HSIC; alignment is centered kernel-target alignment.",
            )
        )
        sec.tables["kernel_frobenius_to_widest"] = tidy(frob)
        sec.tables["kernel_cka_to_widest"] = tidy(cka)
        if align is not None:
            sec.tables["kernel_target_alignment"] = tidy(align)
    return sec


def _density(ds: xr.Dataset, step_index: int) -> xr.DataArray:
    """Seed-pooled density (width, layer, preact_bin) at one preacts step."""
    h = ds.preact_hist.isel(preacts_step=step_index).sum("seed", skipna=True)
    n = ds.preact_count.isel(preacts_step=step_index).sum("seed", skipna=True)
    widths = np.diff(ds.preact_bin_edge.values)
    bw = xr.DataArray(widths, dims="preact_bin", coords={"preact_bin": ds.preact_bin})
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
            ds.preact_hist, bin_dim="preact_bin", edges=ds.preact_bin_edge, edge_dim="preact_edge"
        )
    fig = fig_repr.preact_histograms(final, w1, initial)
    sec = Section(
        id="preacts",
        title="Preactivation distributions",
        paper="Fig. 5 a, Fig. 11",
        text=f"Density of all preactivation coordinates per layer at step {int(steps[-1])} "
        "(dotted: at initialization), pooled over seeds; mean-field theory predicts one "
        "width-independent density. Right: Wasserstein-1 distance to the widest width.",
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
    last = _seed_mean(att.isel(attention_step=-1, attn_point=0))  # (width, layer, head, q, k)
    rows, names = [], []
    for li in range(last.sizes["attn_layer"]):
        lname = str(att.attn_layer.values[li]) if "attn_layer" in att.coords else f"layer {li + 1}"
        for h in range(last.sizes["head"]):
            if len(rows) < MAX_ATTENTION_ROWS:
                rows.append(last.isel(attn_layer=li, head=h, drop=True))
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
        tv = tv.mean(["attn_point", "head"])
        sec.panels.append(
            Panel(
                "attention_distance",
                fig_repr.attention_distance(tv),
                "Total variation per query row, averaged over rows, heads and "
                "probe sequences; linestyle: layer.",
            )
        )
        sec.tables["attention_tv_to_widest"] = tidy(tv)
    return sec


def sharpness_section(ds: xr.Dataset) -> Section | None:
    spec = spec_of(ds)
    opt = spec.get("optimizer", {})
    lr = float(opt.get("lr", np.nan))
    adam = str(opt.get("name", "sgd")).startswith("adam")
    if adam and has(ds, "sharpness_precond"):
        var, b1 = "sharpness_precond", float(opt.get("betas", [0.9])[0])
        thresholds = {
            f"(2 + 2β₁)/(1 − β₁) = {(2 + 2 * b1) / (1 - b1):.3g}": (2 + 2 * b1) / (1 - b1)
        }
        ylabel, what = "top eigenvalue of P⁻¹H", "Adam-preconditioned Hessian"
    elif has(ds, "sharpness_lr") or has(ds, "sharpness"):
        var = "sharpness_lr" if has(ds, "sharpness_lr") else "sharpness"
        thresholds = {}
        if not adam and np.isfinite(lr) and lr > 0:
            thresholds[f"2/lr = {2 / lr:.3g}"] = 2 / lr
            mom = float(opt.get("momentum") or 0)
            if mom > 0:
                thresholds[f"(2 + 2β)/lr = {(2 + 2 * mom) / lr:.3g} (momentum β = {mom:g})"] = (
                    2 + 2 * mom
                ) / lr
        ylabel = "top eigenvalue of Λ^½HΛ^½" if var == "sharpness_lr" else "top eigenvalue of H"
        what = (
            "Hessian weighted by per-tensor learning rates" if var == "sharpness_lr" else "Hessian"
        )
    else:
        return None
    top = ds[var].isel(sharpness_eig=0, drop=True)
    fig = fig_fits.sharpness(top, thresholds, ylabel=ylabel)
    sched = spec.get("schedule", {}).get("name", "constant")
    return Section(
        id="sharpness",
        title="Sharpness",
        paper="Fig. 6 a",
        text=f"Top eigenvalue of the {what} on the sharpness batch over training; "
        "in muP it is consistent across widths and settles near the stability threshold "
        "(edge of stability)."
        + ("" if sched == "constant" else f" Thresholds use the base lr (schedule: {sched})."),
        panels=[
            Panel(
                "sharpness",
                fig,
                "Lines: seed mean; bands: range over seeds; dashed red: stability thresholds.",
            )
        ],
        tables={"sharpness": tidy(top.rename(var))},
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
        "eigenvectors. Feature learning moves task power into the top modes.",
    )
    sec.tables["ntk_eigenvalues"] = tidy(eig["eigenvalue"])
    ck = ck_first = None
    if y is not None:
        ck_all = wa.cumulative_task_power(eig, y, target_dims=rows)
        ck = ck_all.isel(entk_step=-1)
        ck_first = ck_all.isel(entk_step=0) if first is not None else None
        sec.tables["ntk_task_power"] = tidy(ck_all)
    predicted, measured, note = _gradient_flow(ds, eig, y, rows, m)
    if predicted is not None:
        sec.tables["ntk_gradient_flow"] = tidy(predicted)
        sec.tables["ntk_measured_loss"] = tidy(measured)
    fig = fig_repr.ntk_spectrum(
        last["eigenvalue"],
        ck,
        predicted,
        measured,
        eigenvalues_init=None if first is None else first["eigenvalue"],
        task_power_init=ck_first,
        labels=(f"step {int(steps[-1])}", f"step {int(steps[0])}"),
        time_dim="test_step",
    )
    sec.panels.append(Panel("ntk_spectrum", fig, note))
    return sec


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
    """The coordinate check (computed by the caller), or a note saying why it was skipped."""
    sec = Section(
        id="coord_check",
        title="Coordinate check",
        paper="",
        text="As in Yang et al. (2022): mean |coordinate| of every layer's activations and of "
        "the output against width "
        "after each of the first training steps: flat in width under a parameterization "
        "with a feature-learning limit (mup, mf), growing under sp.",
    )
    if cc is None:
        sec.notes.append(reason or "Skipped.")
        return sec
    sec.panels.append(
        Panel(
            "coord_check",
            fig_fits.coord_check(cc),
            f"Parameterization {cc.attrs.get('parameterization', '?')}; "
            "mean over probe inputs, coordinates and seeds.",
        )
    )
    sec.tables["coord_check"] = tidy(cc)
    return sec
