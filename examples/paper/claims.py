"""The paper's claims as code: which specs test a claim, the numbers, the figures, the verdict.

Each claim of Vyas et al. (2023), "Feature-learning networks are consistent across
widths at realistic scales", is a :class:`Claim`: the example specs in this directory
that test it, how to shrink them for the ``pytest -m repro`` suite, a function that
computes the claim's numbers from the studies (``widthwise.open_study``) with
``widthwise.analysis`` and turns them into :class:`Check` s with thresholds stated
here, and a function that draws the figures with widthwise's report figure functions.

The verdict follows from the checks alone (:func:`verdict_of`): every check passes ->
"reproduced", some pass -> "partly", none -> "not at this scale". Used by
``reproduce.py`` (full runs, docs/reproduction.md) and ``tests/test_repro.py``
(reduced runs).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import yaml
from matplotlib.figure import Figure

import widthwise
from widthwise import analysis as wa
from widthwise.report import fig_compare, figures
from widthwise.report import sections_curves as sc
from widthwise.report import sections_repr as sr

HERE = Path(__file__).resolve().parent
DPI = 100
"""Resolution of the committed PNGs (the report's figures are 7 in wide: 700 px)."""

Datasets = dict[str, xr.Dataset]
Rows = list[tuple[str, str]]


# --------------------------------------------------------------------------- results


@dataclass
class Check:
    """One qualitative statement tested on the numbers, with its threshold in ``text``."""

    text: str
    value: str
    passed: bool


@dataclass
class ClaimResult:
    """Numbers, checks, figures and verdict of one claim from one set of runs."""

    claim: Claim
    rows: Rows
    checks: list[Check]
    figures: list[Path] = field(default_factory=list)
    wall_s: dict[str, float | None] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return verdict_of(self.checks)

    def check(self, prefix: str) -> Check:
        """The check whose text starts with ``prefix`` (for the tests)."""
        found = [c for c in self.checks if c.text.startswith(prefix)]
        if len(found) != 1:
            raise KeyError(f"{prefix!r}: {len(found)} checks match in {self.claim.id}")
        return found[0]


def verdict_of(checks: Sequence[Check]) -> str:
    """'reproduced' when every check passes, 'partly' when some do, else 'not at this scale'."""
    n = sum(c.passed for c in checks)
    if checks and n == len(checks):
        return "reproduced"
    return "partly" if n else "not at this scale"


# --------------------------------------------------------------------------- helpers


def fmt(x: float) -> str:
    """A number with 3 significant digits ('nan' for NaN)."""
    x = float(x)
    return "nan" if not np.isfinite(x) else f"{x:.3g}"


def per_width(da: xr.DataArray) -> str:
    """'64: 0.1, 128: 0.05, ...' for a DataArray with a single dim ``width``."""
    da = da.sortby("width")
    return ", ".join(f"{int(w)}: {fmt(v)}" for w, v in zip(da.width.values, da.values))


def decreasing(da: xr.DataArray, rtol: float = 0.0) -> bool:
    """Every value ≤ the previous one × (1 + rtol) along width (sorted), all finite."""
    v = da.sortby("width").values.astype(float)
    return bool(np.all(np.isfinite(v)) and np.all(v[1:] <= v[:-1] * (1 + rtol)))


def increasing(da: xr.DataArray, rtol: float = 0.0) -> bool:
    """Every value ≥ the previous one × (1 − rtol) along width (sorted), all finite."""
    v = da.sortby("width").values.astype(float)
    return bool(np.all(np.isfinite(v)) and np.all(v[1:] >= v[:-1] * (1 - rtol)))


def but_widest(da: xr.DataArray) -> xr.DataArray:
    """``da`` without its widest width (where a distance to the widest is 0 by definition)."""
    return da.sortby("width").isel(width=slice(0, -1))


MAX_PNG = 150_000
"""Committed PNGs stay below this many bytes (heatmaps are re-saved with a 256-colour palette)."""


def save(fig: Figure, out: Path, name: str) -> Path:
    """Write ``fig`` as ``out/name.png`` at :data:`DPI`, below :data:`MAX_PNG` bytes."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=DPI)
    if path.stat().st_size > MAX_PNG:
        with Image.open(path) as im:
            small = im.convert("RGB").quantize(colors=256)
        small.save(path, optimize=True)
    return path


def panel_figure(section: Any, name: str) -> Figure:
    """The figure of the report section's panel called ``name``."""
    for p in section.panels:
        if p.name == name:
            return p.figure
    raise KeyError(f"no panel {name!r} in section {section.id!r}")


def seed_mean_curve(da: xr.DataArray) -> xr.DataArray:
    return da.mean("seed", skipna=True)


# --------------------------------------------------------------------------- C1


def c1_analyze(d: Datasets) -> tuple[Rows, list[Check]]:
    ds = d["c1_mup_mlp_logits"]
    last = ds.test_step.values[-1]
    mid = ds.test_step.values[len(ds.test_step) // 2]
    loss = seed_mean_curve(ds.test_loss)
    ens = wa.scaled_rmse_to_widest(ds.test_logits, ensemble=True)
    single = wa.scaled_rmse_to_widest(ds.test_logits).mean("seed")
    succ = wa.successive_differences(
        ds.test_logits, over=("point", "output"), ensemble=True, relative=True
    )
    loss_succ = wa.successive_differences(ds.test_loss, ensemble=True, relative=True)
    widest_pair = loss_succ.isel(width=-1).sel(test_step=ds.test_step.values[1:])
    train_pair = wa.successive_differences(ds.train_loss, ensemble=True, relative=True).isel(
        width=-1
    )
    over = np.flatnonzero(train_pair.values > 0.05)
    agree_until = int(train_pair.step.values[over[0] - 1]) if len(over) else int(ds.step[-1])
    verdict = wa.consistency_verdict(
        wa.successive_differences(ds.test_loss, ensemble=True, relative=True), tol=0.05
    ).sel(test_step=last)
    rows = [
        ("final test loss (seed mean) by width", per_width(loss.sel(test_step=last))),
        (
            f"scaled RMSE of seed-mean test logits to widest, step {int(last)}",
            per_width(but_widest(ens.sel(test_step=last))),
        ),
        (
            f"scaled RMSE of seed-mean test logits to widest, step {int(mid)}",
            per_width(but_widest(ens.sel(test_step=mid))),
        ),
        (
            f"scaled RMSE single seeds (mean over seeds), step {int(last)}",
            per_width(but_widest(single.sel(test_step=last))),
        ),
        (
            f"relative successive logit difference (seed means), step {int(last)}",
            per_width(succ.sel(test_step=last)),
        ),
        (
            "max over steps of the widest pair's relative test-loss difference",
            fmt(widest_pair.max()),
        ),
        (
            "test loss consistent (5 % successive differences) from width",
            "none within the widths studied" if np.isnan(verdict) else str(int(verdict)),
        ),
        ("training loss (seed means): widest pair within 5 % up to step", str(agree_until)),
    ]
    checks = [
        Check(
            "scaled RMSE to the widest (seed means, final step) falls with every doubling",
            per_width(but_widest(ens.sel(test_step=last))),
            decreasing(but_widest(ens.sel(test_step=last))),
        ),
        Check(
            "scaled RMSE to the widest (single seeds, final step) falls with every doubling",
            per_width(but_widest(single.sel(test_step=last))),
            decreasing(but_widest(single.sel(test_step=last))),
        ),
        Check(
            "relative successive logit differences (final step) fall with width",
            per_width(succ.sel(test_step=last)),
            decreasing(succ.sel(test_step=last)),
        ),
        Check(
            "wider is better: final test loss non-increasing in width (1 % slack)",
            per_width(loss.sel(test_step=last)),
            decreasing(loss.sel(test_step=last), rtol=0.01),
        ),
        Check(
            "loss curves agree: widest pair's relative test-loss difference ≤ 0.05 at every step",
            fmt(widest_pair.max()),
            bool(widest_pair.max() <= 0.05),
        ),
    ]
    return rows, checks


def c1_figures(d: Datasets, out: Path) -> list[Path]:
    ds = d["c1_mup_mlp_logits"]
    f1 = figures.loss_curves(ds.train_loss, ds.test_loss, loss_name="MSE")
    f2 = figures.distance_to_widest(
        wa.scaled_rmse_to_widest(ds.test_logits),
        wa.scaled_rmse_to_widest(ds.test_logits, ensemble=True),
    )
    return [save(f1, out, "c1_loss_curves"), save(f2, out, "c1_distance_to_widest")]


# --------------------------------------------------------------------------- C2


def representation_numbers(ds: xr.Dataset) -> dict[str, Any]:
    """End-of-training kernel and preactivation distances to the widest width (Fig. 5 c)."""
    k = ds.feature_kernel
    over = ("kernels_point_i", "kernels_point_j")
    frob = wa.relative_frobenius_to_widest(k, over=over).isel(kernels_step=-1)
    cka = wa.cka_to_widest(k, sample_dims=over).isel(kernels_step=-1)
    w1 = wa.wasserstein1_to_widest(
        ds.preact_hist, bin_dim="preacts_bin", edges=ds.preacts_edge, edge_dim="preacts_edge"
    ).isel(preacts_step=-1)
    # how far the widest width's kernel moved during training (is there anything to agree on?)
    kw = k.sel(width=k.width.max()).mean("seed")
    moved = wa.relative_frobenius(kw.isel(kernels_step=-1), kw.isel(kernels_step=0), over=over)
    return {
        "frob": frob,
        "cka": cka,
        "w1": w1,
        "moved": moved,
        "layers": [str(x) for x in k.kernels_layer.values],
        "players": [str(x) for x in ds.preact_hist.preacts_layer.values],
    }


def _representation_rows_checks(ds: xr.Dataset, tag: str) -> tuple[Rows, list[Check]]:
    n = representation_numbers(ds)
    frob, cka, w1, moved = n["frob"], n["cka"], n["w1"], n["moved"]
    layers, players = n["layers"], n["players"]
    rows: Rows = []
    for i, name in enumerate(layers):
        rows.append(
            (
                f"{tag}: kernel rel. Frobenius distance to widest, layer {name}",
                per_width(but_widest(frob.isel(kernels_layer=i))),
            )
        )
        rows.append(
            (
                f"{tag}: kernel CKA to widest, layer {name}",
                per_width(but_widest(cka.isel(kernels_layer=i))),
            )
        )
    for i, name in enumerate(players):
        rows.append(
            (
                f"{tag}: preactivation W1 to widest, layer {name}",
                per_width(but_widest(w1.isel(preacts_layer=i))),
            )
        )
    rows.append(
        (
            f"{tag}: widest width's kernel, rel. change init → end",
            ", ".join(f"{n}: {fmt(v)}" for n, v in zip(layers, moved.values)),
        )
    )
    second = frob.sortby("width").isel(width=-2)
    checks = [
        Check(
            f"{tag}: kernel distance to the widest falls with width, every layer",
            "; ".join(
                per_width(but_widest(frob.isel(kernels_layer=i))) for i in range(len(layers))
            ),
            all(decreasing(but_widest(frob.isel(kernels_layer=i))) for i in range(len(layers))),
        ),
        Check(
            f"{tag}: preactivation W1 to the widest falls with width, every layer",
            "; ".join(per_width(but_widest(w1.isel(preacts_layer=i))) for i in range(len(players))),
            all(decreasing(but_widest(w1.isel(preacts_layer=i))) for i in range(len(players))),
        ),
        Check(
            f"{tag}: second-widest kernels within 10 % (rel. Frobenius) of the widest",
            ", ".join(f"{n}: {fmt(v)}" for n, v in zip(layers, second.values)),
            bool((second <= 0.10).all()),
        ),
        Check(
            f"{tag}: features were learned: the widest kernel moved ≥ 10 % in some layer",
            fmt(moved.max()),
            bool(moved.max() >= 0.10),
        ),
    ]
    return rows, checks


def c2_analyze(d: Datasets) -> tuple[Rows, list[Check]]:
    rows, checks = _representation_rows_checks(d["c2_cnn_representations"], "CNN")
    r2, c2 = _representation_rows_checks(d["c2_mlp_representations"], "MLP")
    return rows + r2, checks + c2


def c2_figures(d: Datasets, out: Path) -> list[Path]:
    paths = []
    for name, tag in (("c2_cnn_representations", "cnn"), ("c2_mlp_representations", "mlp")):
        ds = d[name]
        ks, ps = sr.kernels_section(ds), sr.preacts_section(ds)
        paths += [
            save(panel_figure(ks, "kernel_grid"), out, f"c2_{tag}_kernel_grid"),
            save(panel_figure(ks, "kernel_distance"), out, f"c2_{tag}_kernel_distance"),
            save(panel_figure(ps, "preact_histograms"), out, f"c2_{tag}_preact_histograms"),
        ]
    return paths


# --------------------------------------------------------------------------- C3


EARLY = 1 / 8
"""C3b compares loss fluctuations over the first eighth of training ("early times", App. E)."""


def fluctuation_deviation(train_loss: xr.DataArray, fraction: float = 1.0) -> xr.DataArray:
    """RMS over steps 1..fraction·T of log10(L_n,s(t) / L_widest,s(t)), mean over seeds s.

    Seed s of width n is compared with seed s of the widest width on the same batches
    (paper Fig. 15b: the difference from the widest network); a step where either is not
    finite (a diverged member) is left out. Dims (width,); 0 at the widest.
    """
    steps = train_loss.step.values
    tl = train_loss.sel(step=steps[(steps >= 1) & (steps <= steps[-1] * fraction)])
    ref = tl.sel(width=tl.width.max())
    r = np.log10(tl.where(tl > 0)) - np.log10(ref.where(ref > 0))
    return np.sqrt((r**2).mean("step", skipna=True)).mean("seed", skipna=True)


def sharpness_stats(ds: xr.Dataset) -> dict[str, xr.DataArray]:
    """Seed-mean top eigenvalue of the lr-weighted Hessian: init, its minimum after init
    (after the initial drop), the plateau (mean over the last third of the recorded
    steps), its relative range there, and the plateau's spread across widths."""
    s = ds.sharpness_lr.isel(sharpness_eig=0).mean("seed", skipna=True)
    steps = s.sharpness_step.values
    tail = s.sel(sharpness_step=steps[steps >= steps[-1] * 2 / 3])
    plateau = tail.mean("sharpness_step")
    tail_range = (tail.max("sharpness_step") - tail.min("sharpness_step")) / plateau
    low = s.sel(sharpness_step=steps[steps > 0]).min("sharpness_step")
    spread = (plateau.max("width") - plateau.min("width")) / plateau.mean("width")
    return {
        "init": s.isel(sharpness_step=0),
        "low": low,
        "plateau": plateau,
        "tail_range": tail_range,
        "spread": spread,
    }


def c3_analyze(d: Datasets) -> tuple[Rows, list[Check]]:
    sh = sharpness_stats(d["c3a_sharpness_mup"])
    lr = float(json.loads(d["c3a_sharpness_mup"].attrs["spec"])["optimizer"]["lr"])
    mup, sp = d["c3b_large_lr_mup"].train_loss, d["c3b_large_lr_sp"].train_loss
    dm = but_widest(fluctuation_deviation(mup, EARLY))
    dsp = but_widest(fluctuation_deviation(sp, EARLY))
    early = int(mup.step.values[-1] * EARLY)
    rows = [
        ("sharpness (lr-weighted) at init, by width", per_width(sh["init"])),
        ("sharpness minimum after init (after the initial drop)", per_width(sh["low"])),
        ("sharpness plateau (mean over last third of steps)", per_width(sh["plateau"])),
        ("stability threshold 2/lr", fmt(2 / lr)),
        ("plateau relative range over last third", per_width(sh["tail_range"])),
        ("plateau spread across widths (max − min)/mean", fmt(sh["spread"])),
        (f"muP: RMS log10 train-loss deviation from widest, steps 1-{early}", per_width(dm)),
        (f"SP: RMS log10 train-loss deviation from widest, steps 1-{early}", per_width(dsp)),
        (
            "muP: the same over the whole run",
            per_width(but_widest(fluctuation_deviation(mup))),
        ),
        ("SP: the same over the whole run", per_width(but_widest(fluctuation_deviation(sp)))),
    ]
    checks = [
        Check(
            "sharpness grows: plateau ≥ 1.5 × its minimum after init at every width",
            per_width(sh["plateau"] / sh["low"]),
            bool((sh["plateau"] >= 1.5 * sh["low"]).all()),
        ),
        Check(
            "sharpness plateaus: range over the last third ≤ 25 % of its mean at every width",
            per_width(sh["tail_range"]),
            bool((sh["tail_range"] <= 0.25).all()),
        ),
        Check(
            "sharpness agrees across widths: plateau spread ≤ 10 %",
            fmt(sh["spread"]),
            bool(sh["spread"] <= 0.10),
        ),
        Check(
            "muP early loss fluctuations converge: deviation from widest falls with width",
            per_width(dm),
            decreasing(dm),
        ),
        Check(
            "SP deviates more than muP early on: SP deviation > 2 × muP's at every width",
            per_width(dsp / dm),
            bool((dsp > 2 * dm).all()),
        ),
    ]
    return rows, checks


def c3_figures(d: Datasets, out: Path) -> list[Path]:
    sec = sr.sharpness_section(d["c3a_sharpness_mup"])
    mup, sp = d["c3b_large_lr_mup"].train_loss, d["c3b_large_lr_sp"].train_loss
    f2 = fig_compare.overlay_curves(
        {"muP, training loss": {"muP": mup}, "SP, training loss": {"SP": sp}},
        xdims={"muP, training loss": "step", "SP, training loss": "step"},
        ylabel={"muP, training loss": "MSE", "SP, training loss": "MSE"},
    )
    return [
        save(panel_figure(sec, "sharpness"), out, "c3_sharpness"),
        save(f2, out, "c3_large_lr_mup_vs_sp"),
    ]


# --------------------------------------------------------------------------- C4


def ensemble_size_curve_ce(logits: xr.DataArray, labels: xr.DataArray) -> xr.DataArray:
    """Cross-entropy of k-seed ensembles (averaged logits), averaged over *all* k-subsets.

    ``widthwise.analysis.ensemble_size_curve`` with ``max_subsets`` at least C(E, E/2),
    so that every size is enumerated rather than sampled. ``logits`` (width, seed,
    point, output) without diverged members; returns (ensemble_size, width).
    """
    from math import comb

    n = logits.sizes["seed"]
    curve = wa.ensemble_size_curve(logits, labels, max_subsets=comb(n, n // 2))
    return curve.transpose("ensemble_size", "width")


def c4_analyze(d: Datasets) -> tuple[Rows, list[Check]]:
    ds = d["c4_bias_variance"]
    target = ds.test_label
    bv = wa.bias_variance(ds.test_logits, target).isel(test_step=-1)
    sizes = ensemble_size_curve_ce(ds.test_logits.isel(test_step=-1), target)
    e = int(sizes.ensemble_size.max())
    widest_single = float(bv.single_loss.sel(width=bv.width.max()))
    narrow = bv.isel(width=0)
    l1, l3, le = (sizes.sel(ensemble_size=k) for k in (1, 3, e))
    frac3 = (l1 - l3) / (l1 - le)
    gap3 = abs(l3 - le) / le
    worse = [
        int(w) for w in bv.width.values if float(bv.ensemble_loss.sel(width=w)) > widest_single
    ]
    g = d["c1_mup_mlp_logits"]
    gbv = wa.bias_variance(g.test_logits, g.test_target).isel(test_step=-1)
    g_single = float(gbv.single_loss.sel(width=gbv.width.max()))
    gn = gbv.isel(width=0)
    g_worse = [int(w) for w in gbv.width.values if float(gbv.ensemble_loss.sel(width=w)) > g_single]
    rows = [
        ("Fashion-MNIST: single-network test loss", per_width(bv.single_loss)),
        (f"Fashion-MNIST: {e}-seed ensemble test loss", per_width(bv.ensemble_loss)),
        ("Fashion-MNIST: variance gap (single − ensemble)", per_width(bv.variance_gap)),
        ("Fashion-MNIST: bias gap (ensemble − widest ensemble)", per_width(bv.bias_gap)),
        ("Fashion-MNIST: widths whose ensemble is worse than one widest network", str(worse)),
        ("Fashion-MNIST: share of the 1 → E ensembling gain reached at k = 3", per_width(frac3)),
        ("Fashion-MNIST: |L(3 seeds) − L(E seeds)| / L(E seeds)", per_width(gap3)),
        (
            "Fashion-MNIST: 3-seed loss, mean over 16 sampled 3-subsets (the default)",
            per_width(
                wa.ensemble_size_curve(ds.test_logits.isel(test_step=-1), target).sel(
                    ensemble_size=3
                )
            ),
        ),
        ("Fashion-MNIST: 3-seed loss, exact mean over all 3-subsets", per_width(l3)),
        ("Gegenbauer (C1 study, 4 seeds): variance gap", per_width(gbv.variance_gap)),
        ("Gegenbauer (C1 study): bias gap", per_width(gbv.bias_gap)),
        ("Gegenbauer (C1 study): ensemble loss", per_width(gbv.ensemble_loss)),
        (
            "Gegenbauer (C1 study): widths whose ensemble is worse than one widest network",
            str(g_worse),
        ),
    ]
    checks = [
        Check(
            "Fashion-MNIST: bias gap > variance gap at the narrowest width",
            f"{fmt(narrow.bias_gap)} vs {fmt(narrow.variance_gap)}",
            bool(narrow.bias_gap > narrow.variance_gap),
        ),
        Check(
            "Gegenbauer: bias gap > variance gap at the narrowest width",
            f"{fmt(gn.bias_gap)} vs {fmt(gn.variance_gap)}",
            bool(gn.bias_gap > gn.variance_gap),
        ),
        Check(
            "Fashion-MNIST: the narrowest networks' ensemble is worse than one widest network",
            f"{float(narrow.ensemble_loss):.4g} vs {widest_single:.4g}",
            bool(narrow.ensemble_loss > widest_single),
        ),
        Check(
            "Gegenbauer: the narrowest networks' ensemble is worse than one widest network",
            f"{float(gn.ensemble_loss):.4g} vs {g_single:.4g}",
            bool(gn.ensemble_loss > g_single),
        ),
        Check(
            "3 seeds suffice: k = 3 reaches ≥ 70 % of the 1 → E gain at every width",
            per_width(frac3),
            bool((frac3 >= 0.70).all()),
        ),
        Check(
            "3 seeds suffice: 3-seed ensemble loss within 5 % of the E-seed one at every width",
            per_width(gap3),
            bool((gap3 <= 0.05).all()),
        ),
    ]
    return rows, checks


def c4_figures(d: Datasets, out: Path) -> list[Path]:
    ds = d["c4_bias_variance"]
    curves = wa.bias_variance(ds.test_logits, ds.test_label)
    sizes = ensemble_size_curve_ce(ds.test_logits.isel(test_step=-1), ds.test_label)
    fig = figures.bias_variance(
        curves.isel(test_step=-1), curves, sizes, loss_name="cross-entropy (nats)"
    )
    return [save(fig, out, "c4_bias_variance")]


# --------------------------------------------------------------------------- C5


def c5_analyze(d: Datasets) -> tuple[Rows, list[Check]]:
    ds = d["c5_power_law"]
    final = ds.test_loss.isel(test_step=-1)
    fit = wa.power_law_fit(final)
    steps = ds.test_step.values
    late = ds.test_loss.sel(test_step=steps[steps >= steps[-1] * 3 / 4])
    late_fit = wa.power_law_fit(late, n_boot=20)
    tail = ds.train_loss.isel(step=slice(-50, None)).mean("step")
    train_fit = wa.power_law_fit(tail)
    rows = [
        ("final test loss (seed mean)", per_width(seed_mean_curve(final))),
        (
            "fit a·n^(−b) + c to the final test loss",
            f"a = {fmt(fit.a)}, b = {fmt(fit.b)} "
            f"[{fmt(fit.b_ci[0])}, {fmt(fit.b_ci[1])}], c = {fmt(fit.c)}, R² = {fit.r2.item():.4f}",
        ),
        (
            "R² of the test-loss fit at each step of the last quarter",
            ", ".join(
                f"{int(s)}: {r:.4f}" for s, r in zip(late_fit.test_step.values, late_fit.r2.values)
            ),
        ),
        (
            "fit to the training loss (mean of the last 50 steps)",
            f"b = {fmt(train_fit.b)}, c = {fmt(train_fit.c)}, R² = {train_fit.r2.item():.4f}",
        ),
    ]
    checks = [
        Check(
            "power law in width: R² > 0.99 for the final test loss",
            f"{fit.r2.item():.4f}",
            bool(fit.r2 > 0.99),
        ),
        Check(
            "R² > 0.99 at every test step of the last quarter of training",
            f"min {late_fit.r2.min().item():.4f}",
            bool((late_fit.r2 > 0.99).all()),
        ),
        Check(
            "power law for the training loss too: R² > 0.99",
            f"{train_fit.r2.item():.4f}",
            bool(train_fit.r2 > 0.99),
        ),
        Check(
            "a finite-width effect: exponent b > 0 and a > 0 (loss falls with width)",
            f"a = {fmt(fit.a)}, b = {fmt(fit.b)}",
            bool(fit.a > 0 and np.isfinite(fit.b) and fit.b > 0),
        ),
    ]
    return rows, checks


def c5_figures(d: Datasets, out: Path) -> list[Path]:
    sec = sc.power_law_section(d["c5_power_law"])
    return [save(panel_figure(sec, "power_law"), out, "c5_power_law")]


# --------------------------------------------------------------------------- C6


C6_MODES = 64
"""C6 summarizes spectra and task power over the top 64 eNTK modes."""


def c6_numbers(ds: xr.Dataset, k_modes: int = C6_MODES) -> dict[str, xr.DataArray]:
    """Seed-mean (lr-weighted) eNTK at init: spectra, task power and gradient flow.

    The eigenvalue-vs-eigenvector attribution swaps spectra: the gradient-flow loss at the
    last step with a width's own eigenvectors and eigenvalues, with its own eigenvectors
    and the *widest* width's eigenvalues, and the widest width's own. The first difference
    is the effect of the eigenvalues, the second that of the eigenvectors (task alignment).
    """
    kern = ds.entk_lr if "entk_lr" in ds else ds.entk
    rows, cols = ("entk_point_i",), ("entk_point_j",)
    m = kern.sizes["entk_point_i"]
    k_modes = min(k_modes, m)
    eig = wa.ntk_eigen(kern, sample_dims=(rows, cols))
    y = ds.test_target.isel(point=slice(0, m)).rename({"point": "entk_point_i"})
    ck = wa.cumulative_task_power(eig, y, target_dims=rows)
    widest = eig.width.max()
    lam = eig.eigenvalue.isel(mode=slice(0, k_modes))
    eig_change = (abs(lam - lam.sel(width=widest)) / lam.sel(width=widest)).mean("mode")
    auc = ck.isel(mode=slice(0, k_modes)).mean("mode")
    opt = json.loads(ds.attrs["spec"])["optimizer"]
    eta = wa.sgd_flow_rate(float(opt["lr"]) / (1 - float(opt.get("momentum") or 0)), m, 1)
    init = eig.isel(entk_step=0)
    logits = ds.test_logits.isel(point=slice(0, m))
    f0 = logits.isel(test_step=0).mean("seed").rename({"point": "entk_point_i"})
    times = ds.test_step.values

    def flow(e: xr.Dataset) -> xr.DataArray:
        return wa.gradient_flow_loss(
            e, y, eta=eta, times=times, time_dim="test_step", target_dims=rows, f0=f0
        )

    pred = flow(init)
    swapped = init.copy()
    swapped["eigenvalue"] = init.eigenvalue.sel(width=widest, drop=True).broadcast_like(
        init.eigenvalue
    )
    pred_swap = flow(swapped)
    last = pred.test_step.values[-1]
    l_own, l_swap = pred.sel(test_step=last), pred_swap.sel(test_step=last)
    l_widest = l_own.sel(width=widest)
    target = ds.test_target.isel(point=slice(0, m))
    ens_loss = wa.probe_loss(logits.mean("seed"), target)
    cmp = wa.compare_loss_curves(
        pred.sel(test_step=pred.test_step[1:]), ens_loss, time_dim="test_step"
    )
    moved = wa.relative_frobenius(
        kern.isel(entk_step=-1).mean("seed"), kern.isel(entk_step=0).mean("seed"), over=rows + cols
    )
    return {
        "eig_change": eig_change.isel(entk_step=0),
        "auc": auc.isel(entk_step=0),
        "auc_end": auc.isel(entk_step=-1),
        "effect_eigenvalues": abs(l_own - l_swap) / l_widest,
        "effect_eigenvectors": abs(l_swap - l_widest) / l_widest,
        "flow_rmse": cmp.log10_rmse,
        "pred_final": l_own,
        "ens_final": ens_loss.isel(test_step=-1),
        "kernel_moved": moved,
    }


def c6_analyze(d: Datasets) -> tuple[Rows, list[Check]]:
    n = c6_numbers(d["c6_lazy_entk"])
    k = C6_MODES
    ec = but_widest(n["eig_change"])
    ev, evec = but_widest(n["effect_eigenvalues"]), but_widest(n["effect_eigenvectors"])
    rows = [
        (f"top-{k} eNTK eigenvalues (init): mean rel. difference to widest", per_width(ec)),
        (f"mean of C(k) over k ≤ {k}, init kernel", per_width(n["auc"])),
        (f"mean of C(k) over k ≤ {k}, final kernel", per_width(n["auc_end"])),
        (
            "predicted final loss: eigenvalue effect |L(own) − L(widest λ)| / L(widest)",
            per_width(ev),
        ),
        (
            "predicted final loss: eigenvector effect |L(widest λ) − L(widest)| / L(widest)",
            per_width(evec),
        ),
        ("gradient flow vs measured ensemble loss: RMS log10 ratio", per_width(n["flow_rmse"])),
        ("predicted final loss (init kernel)", per_width(n["pred_final"])),
        ("measured final ensemble loss", per_width(n["ens_final"])),
        ("seed-mean eNTK: rel. change init → end (laziness)", per_width(n["kernel_moved"])),
    ]
    checks = [
        Check(
            f"eigenvalues barely change: top-{k} mean rel. difference to widest ≤ 10 %",
            per_width(ec),
            bool((ec <= 0.10).all()),
        ),
        Check(
            f"task power worse for narrow widths: mean C(k), k ≤ {k}, increases with width",
            per_width(n["auc"]),
            increasing(n["auc"]),
        ),
        Check(
            "eigenvectors dominate: eigenvector effect > eigenvalue effect (narrowest)",
            f"{fmt(evec.isel(width=0))} vs {fmt(ev.isel(width=0))}",
            bool(evec.isel(width=0) > ev.isel(width=0)),
        ),
        Check(
            "gradient flow tracks the ensemble loss: RMS log10 ratio ≤ 0.1 at every width",
            per_width(n["flow_rmse"]),
            bool((n["flow_rmse"] <= 0.1).all()),
        ),
    ]
    return rows, checks


def c6_figures(d: Datasets, out: Path) -> list[Path]:
    sec = sr.ntk_section(d["c6_lazy_entk"])
    return [save(panel_figure(sec, "ntk_spectrum"), out, "c6_ntk_spectrum")]


# --------------------------------------------------------------------------- C7


def c7_alignment(ds: xr.Dataset) -> xr.DataArray:
    """Centered alignment of the seed-mean last-hidden-layer feature kernel with the labels."""
    k = ds.feature_kernel.isel(kernels_layer=-1).mean("seed")
    m = k.sizes["kernels_point_i"]
    y = ds.test_label.isel(point=slice(0, m))
    return wa.kernel_target_alignment(k, y, sample_dims=("kernels_point_i", "kernels_point_j"))


def c7_analyze(d: Datasets) -> tuple[Rows, list[Check]]:
    ntp, mup = d["c7_ntp_vs_mup_ntp"], d["c7_ntp_vs_mup_mup"]
    a_ntp, a_mup = c7_alignment(ntp), c7_alignment(mup)
    g_ntp = a_ntp.isel(kernels_step=-1) - a_ntp.isel(kernels_step=0)
    g_mup = a_mup.isel(kernels_step=-1) - a_mup.isel(kernels_step=0)
    e_ntp = ntp.test_error.isel(test_step=-1).mean("seed")
    e_mup = mup.test_error.isel(test_step=-1).mean("seed")
    base = int(ntp.width.min())
    tl_ntp, tl_mup = ntp.train_loss.sel(width=base), mup.train_loss.sel(width=base)
    rel = abs(tl_ntp - tl_mup) / tl_mup
    same_early = float(rel.isel(step=slice(0, 10)).max())
    same = float(rel.max())
    ratio_ntp = float(g_ntp.isel(width=-1) / g_ntp.isel(width=0))
    ratio_mup = float(g_mup.isel(width=-1) / g_mup.isel(width=0))
    rows = [
        ("NTP: kernel-target alignment gain (end − init), last hidden layer", per_width(g_ntp)),
        ("muP: kernel-target alignment gain (end − init)", per_width(g_mup)),
        ("NTP: final test error (seed mean)", per_width(e_ntp)),
        ("muP: final test error (seed mean)", per_width(e_mup)),
        (
            "base width: max rel. difference of NTP and muP training loss, steps 0-9",
            fmt(same_early),
        ),
        ("base width: the same over the whole run (float rounding, amplified)", fmt(same)),
    ]
    checks = [
        Check(
            "NTP: wider networks learn features more slowly (alignment gain falls with width)",
            per_width(g_ntp),
            decreasing(g_ntp),
        ),
        Check(
            "NTP: widest alignment gain < 50 % of the base width's",
            fmt(ratio_ntp),
            ratio_ntp < 0.5,
        ),
        Check(
            "muP: no slow-down: widest alignment gain ≥ 80 % of the base width's",
            fmt(ratio_mup),
            ratio_mup >= 0.8,
        ),
        Check(
            "NTP: wider is worse: final test error increases with width",
            per_width(e_ntp),
            increasing(e_ntp),
        ),
        Check(
            "muP: wider is not worse: final test error non-increasing in width (2 % slack)",
            per_width(e_mup),
            decreasing(e_mup, rtol=0.02),
        ),
        Check(
            "the two coincide at the base width: training losses equal to 1e-5 over steps 0-9",
            fmt(same_early),
            same_early <= 1e-5,
        ),
    ]
    return rows, checks


def c7_figures(d: Datasets, out: Path) -> list[Path]:
    ntp, mup = d["c7_ntp_vs_mup_ntp"], d["c7_ntp_vs_mup_mup"]
    fig = fig_compare.overlay_curves(
        {
            "kernel-target alignment": {"muP": c7_alignment(mup), "NTP": c7_alignment(ntp)},
            "test error": {"muP": mup.test_error, "NTP": ntp.test_error},
        },
        xdims={"kernel-target alignment": "kernels_step", "test error": "test_step"},
        ylabel={"kernel-target alignment": "alignment", "test error": "error (fraction)"},
        logy=False,
    )
    return [save(fig, out, "c7_ntp_vs_mup")]


# --------------------------------------------------------------------------- C8


def c8_spread(loss: xr.DataArray) -> float:
    """(max − min) / min over widths of the seed-mean loss."""
    m = loss.mean("seed")
    return float((m.max() - m.min()) / m.min())


def c8_analyze(d: Datasets) -> tuple[Rows, list[Check]]:
    off, on = d["c8_offline_label_noise"], d["c8_online"]
    t_off = off.test_loss.isel(test_step=-1)
    t_on = on.test_loss.isel(test_step=-1)
    tr_off = off.train_eval_loss.isel(train_eval_step=-1)
    best_off = off.test_loss.mean("seed").min("test_step")
    succ_off = wa.successive_differences(t_off, ensemble=True, relative=True)
    succ_on = wa.successive_differences(t_on, ensemble=True, relative=True)
    s_off, s_on = c8_spread(t_off), c8_spread(t_on)
    rows = [
        ("offline (noisy): final held-out loss", per_width(t_off.mean("seed"))),
        ("offline (noisy): best held-out loss during training", per_width(best_off)),
        ("offline (noisy): final loss on the noisy training set", per_width(tr_off.mean("seed"))),
        ("online: final held-out loss", per_width(t_on.mean("seed"))),
        ("held-out loss spread across widths (max − min)/min: offline", fmt(s_off)),
        ("held-out loss spread across widths: online", fmt(s_on)),
        ("offline: relative successive held-out-loss differences", per_width(succ_off)),
        ("online: relative successive held-out-loss differences", per_width(succ_on)),
    ]
    checks = [
        Check(
            "online stays consistent: widest-pair relative test-loss difference ≤ 5 %",
            fmt(succ_on.isel(width=-1)),
            bool(succ_on.isel(width=-1) <= 0.05),
        ),
        Check(
            "offline breaks consistency: widest-pair relative difference > 2 × online's",
            f"{fmt(succ_off.isel(width=-1))} vs {fmt(succ_on.isel(width=-1))}",
            bool(succ_off.isel(width=-1) > 2 * succ_on.isel(width=-1)),
        ),
        Check(
            "offline spread across widths > 2 × online spread (final held-out loss)",
            f"{fmt(s_off)} vs {fmt(s_on)}",
            s_off > 2 * s_on,
        ),
        Check(
            "online: wider is better: final held-out loss non-increasing in width (1 % slack)",
            per_width(t_on.mean("seed")),
            decreasing(t_on.mean("seed"), rtol=0.01),
        ),
        Check(
            "offline breaks 'wider is better': final held-out loss not monotone in width",
            per_width(t_off.mean("seed")),
            not decreasing(t_off.mean("seed"), rtol=0.01),
        ),
        Check(
            "networks memorize the noisy labels: final training loss < 0.5 × held-out loss",
            f"{fmt(tr_off.mean())} vs {fmt(t_off.mean())}",
            bool(tr_off.mean() < 0.5 * t_off.mean()),
        ),
    ]
    return rows, checks


def c8_figures(d: Datasets, out: Path) -> list[Path]:
    off, on = d["c8_offline_label_noise"], d["c8_online"]
    fig = fig_compare.overlay_curves(
        {
            "held-out loss": {"offline, 50 % noise": off.test_loss, "online": on.test_loss},
            "offline: loss on the noisy training set": {"offline, 50 % noise": off.train_eval_loss},
        },
        xdims={
            "held-out loss": "test_step",
            "offline: loss on the noisy training set": "train_eval_step",
        },
        ylabel={
            "held-out loss": "cross-entropy (nats)",
            "offline: loss on the noisy training set": "cross-entropy (nats)",
        },
    )
    return [save(fig, out, "c8_offline_vs_online")]


# --------------------------------------------------------------------------- C9


def c9_analyze(d: Datasets) -> tuple[Rows, list[Check]]:
    ds = d["c9_transformer_attention"]
    att = ds.attention
    tv = wa.attention_distance_to_widest(att, key_dim="key", query_dims="query")
    tv_end = tv.isel(attention_step=-1).mean(["attention_point", "head", "attention_layer"])
    per_layer = tv.isel(attention_step=-1).mean(["attention_point", "head"])
    wide = att.sel(width=att.width.max()).mean("seed")
    moved = wa.attention_distance(
        wide.isel(attention_step=-1), wide.isel(attention_step=0), key_dim="key", query_dims="query"
    ).mean()
    layers = [str(x) for x in att.attention_layer.values]
    loss = ds.test_loss.isel(test_step=-1).mean("seed")
    rows = [
        (
            "attention TV distance to widest (end; mean over layers, heads, sequences)",
            per_width(but_widest(tv_end)),
        ),
    ]
    rows += [
        (
            f"attention TV distance to widest, layer {n}",
            per_width(but_widest(per_layer.isel(attention_layer=i))),
        )
        for i, n in enumerate(layers)
    ]
    rows += [
        ("widest width's maps: TV distance end vs init", fmt(moved)),
        ("final test loss (seed mean)", per_width(loss)),
    ]
    checks = [
        Check(
            "attention distance to the widest falls with width",
            per_width(but_widest(tv_end)),
            decreasing(but_widest(tv_end)),
        ),
        Check(
            "attention maps were learned: widest maps moved ≥ 0.1 (TV) from init",
            fmt(moved),
            bool(moved >= 0.1),
        ),
        Check(
            "second-widest maps agree with the widest: TV distance < half the learned change",
            f"{fmt(but_widest(tv_end).isel(width=-1))} vs {fmt(moved)}",
            bool(but_widest(tv_end).isel(width=-1) < 0.5 * moved),
        ),
    ]
    return rows, checks


def c9_figures(d: Datasets, out: Path) -> list[Path]:
    """The attention grid of the report, and the final TV distance to the widest against
    width (the report's ``attention_distance`` draws lines over the attention steps: with
    ``at: [init, end]`` and uniform maps at init (distance 0, off its log axis) it has a
    single point per width and shows nothing)."""
    ds = d["c9_transformer_attention"]
    sec = sr.attention_section(ds)
    dists = {}
    for label, ens in (("seed-mean maps", True), ("seed s vs seed s", False)):
        tv = wa.attention_distance_to_widest(
            ds.attention, key_dim="key", query_dims="query", ensemble=ens
        )
        tv = but_widest(tv.isel(attention_step=-1).mean(["attention_point", "head"]))
        dists[label] = tv if "seed" in tv.dims else tv.expand_dims(seed=[0])
    panels = {
        f"layer {n}: TV distance to the widest (end)": {
            label: tv.isel(attention_layer=i) for label, tv in dists.items()
        }
        for i, n in enumerate(str(x) for x in ds.attention.attention_layer.values)
    }
    fig = fig_compare.overlay_vs_width(panels, ylabel="mean TV distance per query")
    return [
        save(panel_figure(sec, "attention_grid"), out, "c9_attention_grid"),
        save(fig, out, "c9_attention_distance"),
    ]


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Claim:
    """One claim of the paper and how widthwise tests it."""

    id: str
    title: str
    paper: str
    specs: tuple[str, ...]
    reduced: dict[str, dict[str, Any]]
    analyze: Callable[[Datasets], tuple[Rows, list[Check]]]
    figures: Callable[[Datasets, Path], list[Path]]


def _mlp_probes(test_every: int) -> dict[str, Any]:
    return {"train_loss": {"every": 1}, "test": {"every": test_every}}


CLAIMS: dict[str, Claim] = {
    c.id: c
    for c in [
        Claim(
            "C1",
            "muP loss curves and pointwise test logits converge across widths",
            "Fig. 2-4",
            ("c1_mup_mlp_logits",),
            {"c1_mup_mlp_logits": {"widths": [64, 128, 256, 512], "steps": 300, "seeds": 3}},
            c1_analyze,
            c1_figures,
        ),
        Claim(
            "C2",
            "feature kernels and preactivation distributions agree across widths",
            "Fig. 5",
            ("c2_cnn_representations", "c2_mlp_representations"),
            {
                "c2_cnn_representations": {"widths": [8, 16, 32], "steps": 150, "seeds": 2},
                "c2_mlp_representations": {
                    "widths": [64, 128, 256, 512],
                    "steps": 200,
                    "seeds": 2,
                },
            },
            c2_analyze,
            c2_figures,
        ),
        Claim(
            "C3",
            "sharpness rises to a plateau consistent across widths; large-lr fluctuations "
            "agree under muP, not under SP",
            "Fig. 6a, 15, 16",
            ("c3a_sharpness_mup", "c3b_large_lr_mup", "c3b_large_lr_sp"),
            {
                "c3a_sharpness_mup": {"widths": [128, 256], "steps": 200, "seeds": 2},
                "c3b_large_lr_mup": {"widths": [128, 256, 512], "steps": 250, "seeds": 2},
                "c3b_large_lr_sp": {"widths": [128, 256, 512], "steps": 250, "seeds": 2},
            },
            c3_analyze,
            c3_figures,
        ),
        Claim(
            "C4",
            "ensembles of narrow networks underperform one wide network (bias > variance); "
            "3 seeds suffice",
            "Fig. 7, 18",
            ("c4_bias_variance", "c1_mup_mlp_logits"),
            {"c4_bias_variance": {"widths": [32, 64, 128, 256], "steps": 300, "seeds": 6}},
            c4_analyze,
            c4_figures,
        ),
        Claim(
            "C5",
            "loss vs width fits a power law with R² > 0.99 late in training",
            "Fig. 9",
            ("c5_power_law",),
            {"c5_power_law": {"widths": [32, 64, 128, 256, 512], "steps": 400, "seeds": 3}},
            c5_analyze,
            c5_figures,
        ),
        Claim(
            "C6",
            "lazy MLP: ensembled eNTK eigenvalues barely change with width, C(k) is worse "
            "for narrow widths, kernel gradient flow tracks the ensemble loss",
            "Fig. 10a-c",
            ("c6_lazy_entk",),
            {"c6_lazy_entk": {"widths": [64, 128, 256], "steps": 100, "seeds": 6}},
            c6_analyze,
            c6_figures,
        ),
        Claim(
            "C7",
            "under NTP wider networks learn features more slowly, unlike muP",
            "Fig. 14",
            ("c7_ntp_vs_mup_ntp", "c7_ntp_vs_mup_mup"),
            {
                n: {"widths": [64, 256, 1024], "seeds": 2}
                for n in ("c7_ntp_vs_mup_ntp", "c7_ntp_vs_mup_mup")
            },
            c7_analyze,
            c7_figures,
        ),
        Claim(
            "C8",
            "offline training with label noise breaks width consistency",
            "Fig. 8",
            ("c8_offline_label_noise", "c8_online"),
            {
                n: {"widths": [64, 256, 1024], "steps": 1500, "seeds": 2}
                for n in ("c8_offline_label_noise", "c8_online")
            },
            c8_analyze,
            c8_figures,
        ),
        Claim(
            "C9",
            "transformer attention maps agree across widths",
            "Fig. 1d, 5e",
            ("c9_transformer_attention",),
            {"c9_transformer_attention": {"widths": [16, 32, 64], "steps": 300, "seeds": 2}},
            c9_analyze,
            c9_figures,
        ),
    ]
}


# --------------------------------------------------------------------------- running


def spec_path(name: str) -> Path:
    return HERE / f"{name}.yaml"


def load(name: str, reduced: bool) -> widthwise.StudySpec:
    """The claim spec ``name`` (examples/paper/NAME.yaml), shrunk when ``reduced``."""
    overrides: dict[str, Any] = {}
    if reduced:
        for c in CLAIMS.values():
            overrides.update(c.reduced.get(name, {}))
        steps = overrides.get("steps")
        if steps is not None:
            raw = yaml.safe_load(spec_path(name).read_text())
            overrides["checkpoint_every"] = steps
            overrides["probes"] = _shrink_probes(raw.get("probes", {}), steps)
    return widthwise.load_spec(spec_path(name), **overrides)


def _shrink_probes(probes: dict[str, dict[str, Any]], steps: int) -> dict[str, dict[str, Any]]:
    """Probe schedules restricted to ``steps`` (explicit step lists cut, the end kept)."""
    out = {}
    for name, opts in probes.items():
        opts = dict(opts)
        if "steps" in opts:
            opts["steps"] = sorted({s for s in opts["steps"] if s < steps} | {steps})
        out[name] = opts
    return out


def is_done(out: Path) -> bool:
    """True when ``out`` holds a study whose widths are all finished."""
    if not (out / "manifest.json").exists():
        return False
    try:
        ds = widthwise.open_study(out)
    except Exception:
        return False
    return bool((ds.status == "done").all())


def run_spec(name: str, runs: Path, *, reduced: bool = False) -> float | None:
    """Run (or resume) one spec into ``runs/NAME``; returns its measured wall time.

    A finished study is skipped; the wall time recorded when it ran (``runs/NAME.wall.json``)
    is returned, or None when there is none.
    """
    out = runs / name
    record = runs / f"{name}.wall.json"
    if is_done(out):
        if record.exists():
            return float(json.loads(record.read_text())["wall_s"])
        return None
    spec = load(name, reduced)
    t0 = time.perf_counter()
    widthwise.run(spec, out=out)
    wall = time.perf_counter() - t0
    record.write_text(
        json.dumps(
            {
                "wall_s": round(wall, 1),
                "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
                "reduced": reduced,
            }
        )
    )
    return wall


def run_claim(
    claim_id: str,
    runs: Path,
    *,
    reduced: bool = False,
    figures_dir: Path | None = None,
) -> ClaimResult:
    """Run the claim's specs (resumable), compute its numbers, checks and figures."""
    claim = CLAIMS[claim_id]
    runs.mkdir(parents=True, exist_ok=True)
    walls = {n: run_spec(n, runs, reduced=reduced) for n in claim.specs}
    dsets = {n: widthwise.open_study(runs / n) for n in claim.specs}
    rows, checks = claim.analyze(dsets)
    figs = claim.figures(dsets, figures_dir) if figures_dir is not None else []
    return ClaimResult(claim, rows, checks, figs, walls)
