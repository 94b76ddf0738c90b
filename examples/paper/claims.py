"""The paper's claims as code: which specs test a claim, the numbers, the figures, the verdict.

Each claim of Vyas et al. (2023), "Feature-learning networks are consistent across
widths at realistic scales", is a :class:`Claim`: the example specs in this directory
that test it, a function that computes the claim's statistics from the studies
(``widthwise.open_study``) with seed-bootstrap intervals (``checks.py``) and turns
them into :class:`~checks.Check` s, and a function that draws the figures with
widthwise's report figure functions.

Thresholds are the paper's statements, fixed before the runs:

- *Consistency* is the paper's own operational definition (Section 1: "a quantity's
  deviations between successive widths decrease as the widths are increased, and
  ... its value for narrower networks systematically approaches its value for the
  largest trained network"): the log-log slope in width of the distance to the
  widest, and of the distance between successive widths, is < 0 (:data:`SLOPE`).
- Where a statement is "within a tolerance", the tolerance is widthwise's default
  relative tolerance of 5 % (:data:`TOL`), or the number the check names with the
  paper's section.

A check passes only when its whole 95 % seed-bootstrap interval lies on the claimed
side of the threshold; the verdict of a claim is "reproduced" when every check
passes (:func:`checks.verdict_of`). Used by ``reproduce.py`` (docs/reproduction.md)
and ``tests/test_repro.py`` (``pytest -m repro``: every check of every claim).
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
from checks import (
    Check,
    all_of,
    boot,
    but_widest,
    compare,
    describe,
    distance_to_widest,
    fmt,
    log_slope,
    slope_of,
    successive_distance,
    widest,
)
from checks import verdict_of as _verdict_of
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

SLOPE = 0.0
"""'Falls with width' means a log-log slope in width below this (Section 1's definition)."""
TOL = 0.05
"""Relative tolerance of 'agrees with the widest' (widthwise's default, docs/analysis.md)."""
SAMPLE = ("point", "output")
"""The sample dims of test logits: one member is one sample over all of them."""


# --------------------------------------------------------------------------- results


@dataclass
class ClaimResult:
    """Numbers, checks, figures and verdict of one claim from one set of runs."""

    claim: Claim
    rows: Rows
    checks: list[Check]
    figures: list[Path] = field(default_factory=list)
    wall_s: dict[str, float | None] = field(default_factory=dict)
    skipped: str = ""

    @property
    def verdict(self) -> str:
        return f"skipped ({self.skipped})" if self.skipped else _verdict_of(self.checks)

    def check(self, prefix: str) -> Check:
        """The check whose text starts with ``prefix`` (for the tests)."""
        found = [c for c in self.checks if c.text.startswith(prefix)]
        if len(found) != 1:
            raise KeyError(f"{prefix!r}: {len(found)} checks match in {self.claim.id}")
        return found[0]


def verdict_of(checks: Sequence[Check]) -> str:
    """'reproduced' when every check passes, 'partly' when some do, else 'not at this scale'."""
    return _verdict_of(checks)


# --------------------------------------------------------------------------- helpers


def per_width(da: xr.DataArray) -> str:
    """'64: 0.1, 128: 0.05, ...' for a DataArray with a single dim ``width``."""
    da = da.sortby("width")
    return ", ".join(f"{int(w)}: {fmt(v)}" for w, v in zip(da.width.values, da.values))


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


def after_init(da: xr.DataArray, step_dim: str) -> xr.DataArray:
    """``da`` from its first recorded step after 0 (at init every zero-readout net is 0)."""
    steps = da[step_dim].values
    return da.sel({step_dim: steps[steps >= 1]})


def time_slope(loss: xr.DataArray, step_dim: str) -> xr.DataArray:
    """OLS slope of the seed-mean ``loss`` against log(step) (steps > 0); dims (width,)."""
    m = loss.mean("seed")
    m = m.sel({step_dim: m[step_dim].values[m[step_dim].values > 0]})
    t = np.log(m[step_dim].astype(float))
    dt = t - t.mean()
    return ((m - m.mean(step_dim)) * dt).sum(step_dim) / (dt**2).sum()


def mean_gap_to_widest(loss: xr.DataArray, step_dim: str = "test_step") -> xr.DataArray:
    """Mean over steps of |L̄_n(t) − L̄_N(t)| / L̄_N(t), L̄ the seed mean; (width,) without N."""
    m = loss.mean("seed")
    ref = widest(m)
    return but_widest(abs(m - ref) / ref).mean(step_dim)


def spec_of(ds: xr.Dataset) -> dict[str, Any]:
    return json.loads(ds.attrs["spec"])


# --------------------------------------------------------------------------- C1

C1 = "c1_mup_mlp_logits"


def c1_analyze(d: Datasets) -> tuple[Rows, list[Check]]:
    """Loss curves and pointwise test logits (Section 2, Fig. 2-4; horizon: Section 1)."""
    ds = d[C1]
    x = ds.test_logits.isel(test_step=-1)
    last = int(ds.test_step.values[-1])
    to_widest = lambda z: distance_to_widest(z, SAMPLE)  # noqa: E731
    successive = lambda z: successive_distance(z, SAMPLE)  # noqa: E731
    dist = boot(x, to_widest, sample_dims=SAMPLE)
    dist_slope = boot(x, slope_of(to_widest), sample_dims=SAMPLE)
    succ = boot(x, successive, sample_dims=SAMPLE)
    succ_slope = boot(x, slope_of(successive), sample_dims=SAMPLE)
    loss = after_init(ds.test_loss, "test_step")
    gap = boot(loss, mean_gap_to_widest)
    gap_slope = boot(loss, lambda z: log_slope(mean_gap_to_widest(z)))
    final = ds.test_loss.isel(test_step=-1)
    final_mean = boot(final, lambda z: z.mean("seed"))
    final_slope = boot(final, lambda z: log_slope(z.mean("seed")))
    hz = wa.consistency_horizon(wa.loss_gap_to_widest(ds.test_loss, tol=TOL), start=1)
    rows = [
        (f"scaled RMSE of ensemble test logits to the widest, step {last}", describe(dist)),
        (f"successive ensemble-logit distance, step {last}", describe(succ)),
        ("mean relative test-loss gap to the widest over the run (after init)", describe(gap)),
        ("final test loss (seed mean)", describe(final_mean)),
        (
            f"consistency horizon t*(n) at {TOL:.0%} (pessimistic, optimistic)",
            ", ".join(
                f"{int(w)}: {int(h)}, {int(hh)}"
                for w, h, hh in zip(hz.width.values, hz.horizon.values, hz.horizon_hi.values)
            ),
        ),
        ("horizon sentence", wa.horizon_sentence(hz, quantity="test-loss curves")),
    ]
    checks = [
        compare(
            "pointwise predictions converge (Sec. 2, Fig. 3 d-f): the scaled RMSE of the "
            "ensemble test logits to the widest falls with width (log-log slope < 0, final step)",
            dist_slope,
            "<",
            SLOPE,
        ),
        compare(
            "successive differences shrink (Sec. 1's definition, Fig. 4): the distance between "
            "successive widths' ensemble logits falls with width (slope < 0, final step)",
            succ_slope,
            "<",
            SLOPE,
        ),
        compare(
            "loss curves converge (Sec. 2, Fig. 2): the mean relative gap of a width's test-loss "
            "curve to the widest's falls with width (slope < 0)",
            gap_slope,
            "<",
            SLOPE,
        ),
        horizon_check(hz),
        compare(
            "wider is better (Sec. 1): the final test loss falls with width (slope < 0)",
            final_slope,
            "<",
            SLOPE,
        ),
    ]
    return rows, checks


def horizon_check(hz: xr.Dataset) -> Check:
    """The horizon grows with width (Section 1): t*(narrowest) < t*(second widest).

    Decided on the horizons' ranges: the narrowest's optimistic horizon (steps where
    the interval's lower end is within tolerance) must end before the second
    widest's pessimistic one (the upper end within tolerance); it fails when the
    narrowest's pessimistic horizon reaches beyond the other's optimistic one.
    """
    ws = sorted(hz.width.values)
    a, b = hz.sel(width=ws[0]), hz.sel(width=ws[-1])
    na, na_hi = int(a.horizon), int(a.horizon_hi)
    nb, nb_hi = int(b.horizon), int(b.horizon_hi)
    text = (
        f"the consistency horizon grows with width (Sec. 1: 'as network size grows we "
        f"approximate the infinite width network for a larger number of training steps'): "
        f"t*({ws[0]}) < t*({ws[-1]}) at {TOL:.0%}"
    )
    value = f"t*({ws[0]}) in [{na}, {na_hi}], t*({ws[-1]}) in [{nb}, {nb_hi}]"
    if nb < 0:
        return Check(text, value, "undetermined", f"width {ws[-1]} is never consistent")
    if na_hi < nb:
        return Check(text, value, "pass", f"{nb - na_hi} steps apart")
    if na > nb_hi:
        return Check(text, value, "fail", "the narrow width agrees longer")
    return Check(text, value, "undetermined", "the horizons' ranges overlap")


def c1_figures(d: Datasets, out: Path) -> list[Path]:
    ds = d[C1]
    f1 = figures.loss_curves(ds.train_loss, ds.test_loss, loss_name="MSE")
    f2 = figures.distance_to_widest(
        wa.scaled_rmse_to_widest(ds.test_logits),
        wa.scaled_rmse_to_widest(ds.test_logits, ensemble=True),
    )
    return [save(f1, out, "c1_loss_curves"), save(f2, out, "c1_distance_to_widest")]


# --------------------------------------------------------------------------- C2

KERNEL = ("kernels_point_i", "kernels_point_j")


def c2_analyze(d: Datasets) -> tuple[Rows, list[Check]]:
    """Feature kernels and preactivation distributions (Section 2, Fig. 5 c and f)."""
    ds = d[C1]
    k_all = ds.feature_kernel
    k = k_all.isel(kernels_step=-1)
    to_widest = lambda z: distance_to_widest(z, KERNEL)  # noqa: E731
    successive = lambda z: successive_distance(z, KERNEL)  # noqa: E731
    dist = boot(k, to_widest, sample_dims=KERNEL)
    dist_slope = boot(k, slope_of(to_widest), sample_dims=KERNEL)
    succ_slope = boot(k, slope_of(successive), sample_dims=KERNEL)
    cka = boot(k, lambda z: but_widest(wa.cka_to_widest(z, sample_dims=KERNEL)), sample_dims=KERNEL)

    def moved(z: xr.DataArray) -> xr.DataArray:
        m = widest(z).mean("seed")
        return wa.relative_frobenius(
            m.isel(kernels_step=-1), m.isel(kernels_step=0), over=KERNEL
        ).max("kernels_layer")

    learned = boot(k_all, moved, sample_dims=KERNEL)

    def shared_change(z: xr.DataArray) -> xr.DataArray:
        """Cosine between the narrowest's and the widest's seed-mean kernel change
        (end − init), per layer: what was learned is the same function of the data."""
        m = z.mean("seed")
        dk = m.isel(kernels_step=-1) - m.isel(kernels_step=0)
        a, b = dk.isel(width=0), widest(dk)
        return (a * b).sum(KERNEL) / np.sqrt((a**2).sum(KERNEL) * (b**2).sum(KERNEL))

    shared = boot(k_all, shared_change, sample_dims=KERNEL)
    h = ds.preact_hist.isel(preacts_step=-1)
    edges = ds.preacts_edge

    def w1(z: xr.DataArray) -> xr.DataArray:
        """Seed s of width n against seed s of the widest, mean over seeds (Fig. 5 a, d)."""
        w = wa.wasserstein1_to_widest(
            z, bin_dim="preacts_bin", edges=edges, edge_dim="preacts_edge", ensemble=False
        )
        return but_widest(w.mean("seed"))

    w1_iv = boot(h, w1, sample_dims=("preacts_bin",))
    w1_slope = boot(h, lambda z: log_slope(w1(z)), sample_dims=("preacts_bin",))
    rows = [
        ("kernel rel. Frobenius distance to the widest (seed means), per layer", describe(dist)),
        ("kernel CKA to the widest (seed means), per layer", describe(cka)),
        ("preactivation W1 to the widest (seed vs seed), per layer", describe(w1_iv)),
        ("widest kernel's rel. change init → end (largest over layers)", describe(learned)),
        ("cosine of the narrowest's and the widest's kernel change, per layer", describe(shared)),
    ]
    layers = [str(v) for v in k.kernels_layer.values]
    players = [str(v) for v in h.preacts_layer.values]
    checks = [
        all_of(
            "kernels converge (Sec. 2, Fig. 5 c): the rel. Frobenius distance of seed-mean "
            "kernels to the widest falls with width in every layer (slope < 0)",
            (
                compare(n, dist_slope.sel(kernels_layer=n), "<", SLOPE)
                for n in layers  # one check per layer, all must pass
            ),
        ),
        compare(
            "kernels: successive widths' distance falls with width in every layer (slope < 0)",
            succ_slope,
            "<",
            SLOPE,
        ),
        all_of(
            "preactivation distributions converge (Sec. 2, Fig. 5 a, d): W1 to the widest falls "
            "with width in every layer (slope < 0)",
            (compare(n, w1_slope.sel(preacts_layer=n), "<", SLOPE) for n in players),
        ),
        all_of(
            "features were learned, the same at every width (the kernels' agreement is not "
            "the init's): the widest kernel moved > 10 % (rel. Frobenius) from init, and the "
            "narrowest's change (end − init) points the same way (cosine > 0.5 in every layer)",
            (
                compare("moved", learned, ">", 0.10),
                compare("cosine", shared, ">", 0.5),
            ),
        ),
    ]
    return rows, checks


def c2_figures(d: Datasets, out: Path) -> list[Path]:
    ds = d[C1]
    ks, ps = sr.kernels_section(ds), sr.preacts_section(ds)
    return [
        save(panel_figure(ks, "kernel_grid"), out, "c2_kernel_grid"),
        save(panel_figure(ks, "kernel_distance"), out, "c2_kernel_distance"),
        save(panel_figure(ps, "preact_histograms"), out, "c2_preact_histograms"),
    ]


# --------------------------------------------------------------------------- C3


EARLY = 1 / 8
"""C3b compares loss fluctuations over the first eighth of training ("early times", App. E)."""


def curve_deviation(train_loss: xr.DataArray, fraction: float = 1.0) -> xr.DataArray:
    """RMS over steps 1..fraction·T of log10(L̄_n(t) / L̄_N(t)), L̄ the seed-mean curve.

    The batches are the same for every width and seed, so the large-lr, small-batch
    fluctuations of the curves can agree step by step (paper App. E.1, Fig. 15); the
    seed mean removes the init variance, which is not what the claim is about. Dims
    (width,) without the widest N.
    """
    steps = train_loss.step.values
    tl = train_loss.sel(step=steps[(steps >= 1) & (steps <= steps[-1] * fraction)])
    m = np.log10(tl.mean("seed").where(lambda v: v > 0))
    return but_widest(np.sqrt(((m - widest(m)) ** 2).mean("step")))


def sharpness_deviation(sharpness: xr.DataArray) -> xr.DataArray:
    """RMS over the recorded steps after init of log10(S̄_n(t) / S̄_N(t)), S̄ the seed mean.

    The whole curve, not its plateau alone: the seeds' spread of a single plateau value
    (±7-16 % at 8 seeds) is as large as its differences across widths, while the
    curve's rise (when and how steeply the sharpness grows back after its early drop)
    differs between widths by far more. Dims (width,) without the widest N.
    """
    s = sharpness.mean("seed")
    steps = s.sharpness_step.values
    m = np.log10(s.sel(sharpness_step=steps[steps > 0]).where(lambda v: v > 0))
    return but_widest(np.sqrt(((m - widest(m)) ** 2).mean("sharpness_step")))


def _sharpness_parts(z: xr.DataArray) -> dict[str, xr.DataArray]:
    """Seed-mean sharpness: plateau (mean over the last third of the recorded steps),
    its minimum after init, and the plateau's relative range."""
    s = z.mean("seed")
    steps = s.sharpness_step.values
    tail = s.sel(sharpness_step=steps[steps >= steps[-1] * 2 / 3])
    plateau = tail.mean("sharpness_step")
    low = s.sel(sharpness_step=steps[steps > 0]).min("sharpness_step")
    spread = (tail.max("sharpness_step") - tail.min("sharpness_step")) / plateau
    return {"plateau": plateau, "low": low, "range": spread}


def c3_analyze(d: Datasets) -> tuple[Rows, list[Check]]:
    """Sharpness (Fig. 6a) and large-lr fluctuations, muP vs SP (App. E.1, Fig. 15)."""
    sh = d["c3a_sharpness_mup"].sharpness_lr.isel(sharpness_eig=0)
    lr = float(spec_of(d["c3a_sharpness_mup"])["optimizer"]["lr"])
    plateau = boot(sh, lambda z: _sharpness_parts(z)["plateau"])
    growth = boot(sh, lambda z: (p := _sharpness_parts(z))["plateau"] / p["low"])
    flat = boot(sh, lambda z: _sharpness_parts(z)["range"])

    def to_widest(z: xr.DataArray) -> xr.DataArray:
        p = _sharpness_parts(z)["plateau"]
        return but_widest(abs(p - widest(p)) / widest(p))

    agree = boot(sh, to_widest)
    sh_dev = boot(sh, sharpness_deviation)
    sh_dev_slope = boot(sh, lambda z: log_slope(sharpness_deviation(z)))
    # from step 1: at step 0 every zero-readout muP net has the same loss (no seed spread)
    mup = after_init(d["c3b_large_lr_mup"].train_loss, "step")
    sp = after_init(d["c3b_large_lr_sp"].train_loss, "step")
    early = lambda z: curve_deviation(z, EARLY)  # noqa: E731
    dm, dsp = boot(mup, early), boot(sp, early)
    dm_run = boot(mup, curve_deviation)
    both = xr.concat([sp, mup], dim=xr.DataArray(["sp", "mup"], dims="study"))
    ratio = boot(
        both,
        lambda z: (e := early(z)).sel(study="sp") / e.sel(study="mup"),
        independent=("width", "study"),
    )
    dm_slope = boot(mup, lambda z: log_slope(curve_deviation(z)))
    t_early = int(mup.step.values[-1] * EARLY)
    rows = [
        ("sharpness plateau (lr-weighted, mean over the last third of steps)", describe(plateau)),
        ("stability threshold 2/lr", fmt(2 / lr)),
        ("plateau / minimum after init", describe(growth)),
        ("plateau relative range over the last third", describe(flat)),
        ("plateau relative difference to the widest", describe(agree)),
        (
            "RMS log10 deviation of the seed-mean sharpness curve from the widest's (after init)",
            describe(sh_dev),
        ),
        (
            f"muP: RMS log10 deviation of the seed-mean training-loss curve from the widest's, "
            f"steps 1-{t_early}",
            describe(dm),
        ),
        (f"SP: the same, steps 1-{t_early}", describe(dsp)),
        ("muP: the same over the whole run", describe(dm_run)),
        ("SP / muP early deviation", describe(ratio)),
    ]
    checks = [
        compare(
            "sharpness grows (Sec. 2, Fig. 6a: 'grows steadily to a final value'): plateau > "
            "1.5 × its minimum after init at every width",
            growth,
            ">",
            1.5,
        ),
        compare(
            "sharpness plateaus ('a final value that it then fluctuates around'): range over the "
            "last third < 25 % of its mean at every width",
            flat,
            "<",
            0.25,
        ),
        compare(
            "sharpness curves are consistent across widths (Fig. 6a; Sec. 1's definition): the "
            "deviation of the seed-mean sharpness curve from the widest's falls with width "
            "(slope < 0)",
            sh_dev_slope,
            "<",
            SLOPE,
        ),
        compare(
            "muP loss curves converge (App. E.1, Fig. 15a-b): the deviation of the seed-mean "
            "training-loss curve from the widest's over the run falls with width (slope < 0)",
            dm_slope,
            "<",
            SLOPE,
        ),
        compare(
            "SP does not (App. E.1: 'while muP leads to strikingly consistent loss curves, SP "
            "does not'): early on (first eighth of training) SP's deviation > 2 × muP's at "
            "every width",
            ratio,
            ">",
            2.0,
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


def _ce(logits: xr.DataArray, labels: np.ndarray) -> xr.DataArray:
    """Mean cross-entropy over points of logits (…, point, output) at integer labels (point,)."""
    dims = [d for d in logits.dims if d not in ("point", "output")]
    v = logits.transpose(*dims, "point", "output").values
    top = v.max(-1, keepdims=True)
    lse = np.log(np.exp(v - top).sum(-1)) + top[..., 0]
    idx = np.broadcast_to(labels.astype(np.int64)[:, None], (*v.shape[:-1], 1))
    ce = (lse - np.take_along_axis(v, idx, axis=-1)[..., 0]).mean(-1)
    return xr.DataArray(ce, dims=dims, coords={d: logits[d] for d in dims if d in logits.coords})


BV_PARTS = ("single", "ensemble", "variance", "bias", "bias_minus_variance", "vs_widest_single")


def bias_variance_parts(z: xr.DataArray, labels: np.ndarray) -> xr.DataArray:
    """Appendix F's decomposition per width, cross-entropy, as one (part, width) array.

    single = E_s L(f_s); ensemble = L(E_s f_s) (seed-mean logits); variance = single −
    ensemble; bias = ensemble − the widest's ensemble; vs_widest_single = ensemble −
    the widest's single. ``z`` (…, width, seed, point, output).
    """
    single = _ce(z, labels).mean("seed")
    ens = _ce(z.mean("seed"), labels)
    var = single - ens
    bias = ens - widest(ens)
    parts = [single, ens, var, bias, bias - var, ens - widest(single)]
    return xr.concat(parts, dim=xr.DataArray(list(BV_PARTS), dims="part"))


def c4_analyze(d: Datasets) -> tuple[Rows, list[Check]]:
    """Bias of narrower width vs variance over seeds (Section 3.1, Fig. 7, Appendix F)."""
    ds = d["c4_bias_variance"]
    x = ds.test_logits.isel(test_step=-1)
    labels = ds.test_label.values
    iv = boot(x, lambda z: bias_variance_parts(z, labels), sample_dims=SAMPLE)
    narrow = iv.isel(width=0)
    var_slope = boot(
        x,
        lambda z: log_slope(bias_variance_parts(z, labels).sel(part="variance")),
        sample_dims=SAMPLE,
    )
    e = x.sizes["seed"]
    rows = [(f"{p.replace('_', ' ')} (cross-entropy)", describe(iv.sel(part=p))) for p in BV_PARTS]
    rows.append(("log-log slope in width of the variance gap", describe(var_slope)))
    checks = [
        compare(
            "bias dominates at narrow width (Sec. 3.1: 'bias is much larger than variance'): "
            "bias gap − variance gap > 0 at the narrowest width",
            narrow.sel(part="bias_minus_variance"),
            ">",
            0.0,
        ),
        compare(
            "single wide networks outperform ensembles of narrower ones (Sec. 3.1): the "
            f"narrowest width's {e}-seed ensemble loss − the widest single network's > 0",
            narrow.sel(part="vs_widest_single"),
            ">",
            0.0,
        ),
        compare(
            "the variance is the finite-width init variance (Sec. 3: it falls like 1/n and is "
            "'mitigated by averaging the output logits'): the variance gap (single − "
            "ensemble) falls with width (log-log slope < 0)",
            var_slope,
            "<",
            SLOPE,
        ),
    ]
    return rows, checks


def c4_figures(d: Datasets, out: Path) -> list[Path]:
    ds = d["c4_bias_variance"]
    curves = wa.bias_variance(ds.test_logits, ds.test_label)
    sizes = wa.ensemble_size_curve(ds.test_logits.isel(test_step=-1), ds.test_label)
    fig = figures.bias_variance(
        curves.isel(test_step=-1),
        curves,
        sizes.transpose("ensemble_size", "width"),
        loss_name="cross-entropy (nats)",
    )
    return [save(fig, out, "c4_bias_variance")]


# --------------------------------------------------------------------------- C5


def _r2(z: xr.DataArray) -> xr.DataArray:
    return wa.power_law_fit(z, n_boot=0).r2


def c5_analyze(d: Datasets) -> tuple[Rows, list[Check]]:
    """Power law a·n^(−b) + c in width with R² > 0.99 late in training (Section 4, Fig. 9)."""
    ds = d["c5_power_law"]
    final = ds.test_loss.isel(test_step=-1)
    fit = wa.power_law_fit(final)
    steps = ds.test_step.values
    late = ds.test_loss.sel(test_step=steps[steps >= steps[-1] * 3 / 4])
    tail = ds.train_loss.isel(step=slice(-50, None)).mean("step")
    n = 200
    r2_final = boot(final, _r2, n_boot=n)
    r2_late = boot(late, _r2, n_boot=n)
    r2_train = boot(tail, _r2, n_boot=n)
    b = boot(final, lambda z: wa.power_law_fit(z, n_boot=0).b, n_boot=n)
    rows = [
        ("final test loss (seed mean)", describe(boot(final, lambda z: z.mean("seed")))),
        (
            "fit a·n^(−b) + c to the final test loss",
            f"a = {fmt(fit.a)}, b = {fmt(fit.b)} [{fmt(fit.b_ci[0])}, {fmt(fit.b_ci[1])}], "
            f"c = {fmt(fit.c)}, R² = {fit.r2.item():.4f}",
        ),
        ("R² of the final test-loss fit", describe(r2_final)),
        ("R² at each test step of the last quarter", describe(r2_late)),
        ("R² of the training-loss fit (mean of the last 50 steps)", describe(r2_train)),
    ]
    checks = [
        compare(
            "power law in width (Sec. 4: 'an excellent power law fit, with R² above .99'): "
            "R² > 0.99 for the final test loss",
            r2_final,
            ">",
            0.99,
        ),
        compare(
            "late in training: R² > 0.99 at every test step of the last quarter",
            r2_late,
            ">",
            0.99,
        ),
        compare("for the training loss too: R² > 0.99", r2_train, ">", 0.99),
        compare(
            "a finite-width effect that vanishes as n → ∞ (Sec. 4): exponent b > 0",
            b,
            ">",
            0.0,
        ),
    ]
    return rows, checks


def c5_figures(d: Datasets, out: Path) -> list[Path]:
    sec = sc.power_law_section(d["c5_power_law"])
    return [save(panel_figure(sec, "power_law"), out, "c5_power_law")]


# --------------------------------------------------------------------------- C6


def harmonic_modes(dim: int, degree: int) -> int:
    """Σ_{l ≤ degree} N(dim, l): the dimension of polynomials of degree ≤ ``degree`` on S^(dim−1).

    N(d, 0) = 1, N(d, l) = (2l + d − 2)/l · C(l + d − 3, l − 1). A rotation-invariant
    infinite-width kernel is diagonal in spherical harmonics, with its largest
    eigenvalues on the low degrees: a degree-k Gegenbauer target lies in its top
    Σ_{l ≤ k} N(d, l) eigenvectors (Section 5), which C6 reads C(K) at.
    """
    from math import comb

    return 1 + sum(
        (2 * ell + dim - 2) * comb(ell + dim - 3, ell - 1) // ell for ell in range(1, degree + 1)
    )


ENTK = (("entk_point_i",), ("entk_point_j",))
FLOW_TOL = 0.1
"""'Tracks': RMS log10 ratio of predicted to measured loss (0.1: within ~26 % at every step)."""


def _c6_eigen(z: xr.DataArray) -> xr.Dataset:
    return wa.ntk_eigen(z.mean("seed"), sample_dims=ENTK)


def c6_analyze(d: Datasets) -> tuple[Rows, list[Check]]:
    """Lazy MLP, ensembled eNTK at init (Section 5, Fig. 10 a-c)."""
    ds = d["c6_lazy_entk"]
    kern = (ds.entk_lr if "entk_lr" in ds else ds.entk).isel(entk_step=0)
    m = kern.sizes["entk_point_i"]
    task = spec_of(ds)["data"]["options"]
    k = min(harmonic_modes(int(task["dim"]), int(task["degree"])), m)
    y = ds.test_target.isel(point=slice(0, m)).rename({"point": "entk_point_i"})
    rows_dims = ("entk_point_i",)
    opt = spec_of(ds)["optimizer"]
    eta = wa.sgd_flow_rate(float(opt["lr"]) / (1 - float(opt.get("momentum") or 0)), m, 1)
    logits = ds.test_logits.isel(point=slice(0, m))
    target = ds.test_target.isel(point=slice(0, m))
    ens_loss = wa.probe_loss(logits.mean("seed"), target)
    f0 = logits.isel(test_step=0).mean("seed").rename({"point": "entk_point_i"})
    times = ds.test_step.values

    def flow(e: xr.Dataset) -> xr.DataArray:
        return wa.gradient_flow_loss(
            e, y, eta=eta, times=times, time_dim="test_step", target_dims=rows_dims, f0=f0
        )

    def all_stats(e: xr.Dataset) -> dict[str, xr.DataArray]:
        """Every statistic of the claim from one eigendecomposition of the ensembled eNTKs."""
        lam = e.eigenvalue.isel(mode=slice(0, k))
        ck = wa.cumulative_task_power(e, y, target_dims=rows_dims).isel(mode=k - 1)
        own = flow(e)
        swapped = e.copy()
        swapped["eigenvalue"] = widest(e.eigenvalue).broadcast_like(e.eigenvalue)
        swap = flow(swapped).isel(test_step=-1)
        end, ref = own.isel(test_step=-1), widest(own.isel(test_step=-1))
        pred = own.isel(test_step=slice(1, None))
        meas = ens_loss.isel(test_step=slice(1, None))
        return {
            "eig_change": but_widest((abs(lam - widest(lam)) / widest(lam)).mean("mode")),
            # C(K): the task's share in the top K eigenvectors, K = the harmonic block size
            "power": ck,
            "power_gain": widest(ck) - ck.isel(width=0),
            # eigenvector effect − eigenvalue effect on the predicted final loss, narrowest
            "effects": (abs(swap - ref) - abs(end - swap)).isel(width=0) / ref,
            "flow_error": np.sqrt((np.log10(pred / meas) ** 2).mean("test_step")),
        }

    # The five statistics share one eigendecomposition per resample: boot() draws the
    # same resamples for every statistic (same seed), so they are computed once per
    # resampled array (keyed by its shape and a sample of its values) and kept here.
    cache: dict[tuple[Any, ...], dict[str, xr.DataArray]] = {}

    def stat(name: str) -> Callable[[xr.DataArray], xr.DataArray]:
        def one(z: xr.DataArray) -> xr.DataArray:
            v = np.ascontiguousarray(z.values).ravel()
            key = (z.shape, v[:: max(1, v.size // 4096)].tobytes())
            if key not in cache:
                cache[key] = all_stats(_c6_eigen(z))
            return cache[key][name]

        return one

    n = 200
    dims = ("entk_point_i", "entk_point_j")
    ec, pw, gain, eff, fe = (
        boot(kern, stat(name), sample_dims=dims, n_boot=n)
        for name in ("eig_change", "power", "power_gain", "effects", "flow_error")
    )

    # the ensemble loss at init, held fixed (centred networks: every member's init output is
    # 0, the same loss for every seed, which has no seed spread to resample)
    loss0 = wa.probe_loss(logits.isel(test_step=0).mean("seed"), target)

    def still_error(z: xr.DataArray) -> xr.DataArray:
        """RMS log10 ratio of the measured ensemble loss (after init) to its value at init:
        what 'nothing is learned' misses by; tracking the loss means beating it."""
        loss = wa.probe_loss(z.mean("seed"), target)
        return np.sqrt((np.log10(loss / loss0) ** 2).mean("test_step"))

    still = boot(logits.isel(test_step=slice(1, None)), still_error, sample_dims=SAMPLE)
    rows = [
        (f"top-{k} eigenvalues: mean rel. difference to the widest", describe(ec)),
        (f"task power C(K) in the top K = {k} modes (the target's harmonic block)", describe(pw)),
        ("C(K) widest − narrowest", describe(gain)),
        ("eigenvector effect − eigenvalue effect (narrowest, / widest's loss)", describe(eff)),
        ("gradient flow vs measured ensemble loss: RMS log10 ratio", describe(fe)),
        ("'nothing learned' (the loss at init) vs the same: RMS log10 ratio", describe(still)),
    ]
    checks = [
        compare(
            "the ensembled eNTK's spectrum is not substantially affected by width (Sec. 5): "
            f"top-{k} eigenvalues within 10 % of the widest's on average, every width",
            ec,
            "<",
            0.10,
        ),
        compare(
            "narrow widths put more of the task into slower modes (Sec. 5, Fig. 10c): the "
            f"task power C(K) in the top K = {k} modes (polynomials of the target's degree) is "
            "larger at the widest width than at the narrowest",
            gain,
            ">",
            0.0,
        ),
        compare(
            "'the dominant effect is the latter' (Sec. 5, Fig. 10b): the eigenvector effect "
            "exceeds the eigenvalue effect on the predicted loss at the narrowest width",
            eff,
            ">",
            0.0,
        ),
        all_of(
            "the ensembled-kernel approximation is accurate (Sec. 5, Fig. 10a): gradient flow "
            f"tracks the measured ensemble loss, RMS log10 ratio < {FLOW_TOL} at every width, "
            f"while the loss moves: 'nothing learned' (its value at init) misses by > {FLOW_TOL}",
            [
                compare("gradient flow", fe, "<", FLOW_TOL),
                compare("nothing learned", still, ">", FLOW_TOL),
            ],
        ),
    ]
    return rows, checks


def c6_figures(d: Datasets, out: Path) -> list[Path]:
    sec = sr.ntk_section(d["c6_lazy_entk"])
    return [save(panel_figure(sec, "ntk_spectrum"), out, "c6_ntk_spectrum")]


# --------------------------------------------------------------------------- C7

COINCIDE_STEPS = 50
"""App. D's "perfectly coincide": the base width's NTP and muP runs are compared over these steps."""


def alignment_gain(z: xr.DataArray, labels: xr.DataArray) -> xr.DataArray:
    """Kernel-target alignment of the seed-mean last-hidden-layer kernel: end − init."""
    k = z.isel(kernels_layer=-1).mean("seed")
    m = k.sizes["kernels_point_i"]
    y = labels.isel(point=slice(0, m))
    a = wa.kernel_target_alignment(k, y, sample_dims=KERNEL)
    return a.isel(kernels_step=-1) - a.isel(kernels_step=0)


def task_target(ds: xr.Dataset) -> xr.DataArray:
    """The probe points' labels (classification) or regression targets."""
    return ds.test_label if "test_label" in ds else ds.test_target


def performance(ds: xr.Dataset) -> tuple[xr.DataArray, str]:
    """The test error (classification) or test loss (regression) and its name."""
    return (ds.test_error, "test error") if "test_error" in ds else (ds.test_loss, "test loss")


def c7_analyze(d: Datasets) -> tuple[Rows, list[Check]]:
    """NTP vs muP early in training (Appendix D, Fig. 14)."""
    ntp, mup = d["c7_ntp_vs_mup_ntp"], d["c7_ntp_vs_mup_mup"]

    def gains(ds: xr.Dataset) -> tuple[xr.Dataset, xr.Dataset, xr.Dataset]:
        k = ds.feature_kernel
        g = boot(k, lambda z: alignment_gain(z, task_target(ds)), sample_dims=KERNEL)
        ratio = boot(
            k,
            lambda z: (a := alignment_gain(z, task_target(ds))).isel(width=-1) / a.isel(width=0),
            sample_dims=KERNEL,
        )
        slope = boot(k, lambda z: log_slope(alignment_gain(z, task_target(ds))), sample_dims=KERNEL)
        return g, ratio, slope

    g_ntp, r_ntp, s_ntp = gains(ntp)
    g_mup, r_mup, s_mup = gains(mup)
    # one bootstrap of both studies (each width's and study's seeds resampled on their own)
    both = xr.concat(
        [ntp.feature_kernel, mup.feature_kernel], dim=xr.DataArray(["ntp", "mup"], dims="study")
    )
    s_diff = boot(
        both,
        lambda z: (
            (g := log_slope(alignment_gain(z, task_target(ntp)))).sel(study="mup")
            - g.sel(study="ntp")
        ),
        sample_dims=KERNEL,
        independent=("width", "study"),
    )
    err = {n: after_init(performance(ds)[0], "test_step") for n, ds in (("ntp", ntp), ("mup", mup))}
    perf = performance(ntp)[1]
    e_ntp = boot(err["ntp"], lambda z: z.mean("seed").mean("test_step"))
    e_mup = boot(err["mup"], lambda z: z.mean("seed").mean("test_step"))
    es_ntp = boot(err["ntp"], lambda z: log_slope(z.mean("seed").mean("test_step")))
    es_mup = boot(err["mup"], lambda z: log_slope(z.mean("seed").mean("test_step")))
    base = int(ntp.width.min())
    # the window in which both must coincide; "falling" is read on the fixed held-out points
    # (a single training batch's loss varies by ±50 % from batch to batch on a regression task)
    tl_ntp = ntp.train_loss.sel(width=base).isel(step=slice(0, COINCIDE_STEPS))
    tl_mup = mup.train_loss.sel(width=base).isel(step=slice(0, COINCIDE_STEPS))
    same = float(abs(tl_ntp - tl_mup).max() / abs(tl_mup).max())
    held = performance(mup)[0].sel(width=base)
    held = held.sel(test_step=held.test_step[held.test_step < COINCIDE_STEPS])
    moves = float(
        ((held.isel(test_step=0) - held.isel(test_step=-1)) / held.isel(test_step=0)).min()
    )
    rows = [
        ("NTP: kernel-target alignment gain (end − init), last hidden layer", describe(g_ntp)),
        ("muP: the same", describe(g_mup)),
        ("NTP: widest alignment gain / the base width's", describe(r_ntp)),
        ("muP: the same", describe(r_mup)),
        ("log-log slope in width of the alignment gain: NTP", describe(s_ntp)),
        ("muP: the same", describe(s_mup)),
        (f"NTP: mean {perf} over training (after init)", describe(e_ntp)),
        ("muP: the same", describe(e_mup)),
        (
            f"base width: max rel. difference of NTP and muP training loss, steps 0-{COINCIDE_STEPS - 1}",
            fmt(same),
        ),
        (
            f"base width: relative held-out {perf} decrease over steps 0-{COINCIDE_STEPS - 1} "
            "(muP, smallest over seeds)",
            fmt(moves),
        ),
    ]
    same_ok = np.isfinite(same) and same <= 1e-5 and np.isfinite(moves) and moves > 0.01
    checks = [
        compare(
            "NTP: 'the rate of feature learning ... decreases as width grows' (App. D): the "
            "alignment gain falls with width (slope < 0)",
            s_ntp,
            "<",
            SLOPE,
        ),
        compare(
            "unlike muP (App. D): muP's alignment gain falls less with width than NTP's "
            "(slope muP − slope NTP > 0)",
            s_diff,
            ">",
            0.0,
        ),
        compare(
            "NTP: 'wider networks tend to train more slowly ... and perform worse' (App. D): "
            f"mean {perf} over training rises with width (slope > 0)",
            es_ntp,
            ">",
            SLOPE,
        ),
        compare(
            "muP: 'wider networks in muP train slightly faster' (App. D): mean "
            f"{perf} over training falls with width (slope < 0)",
            es_mup,
            "<",
            SLOPE,
        ),
        Check(
            "'initialized so that their dynamics perfectly coincide' (App. D): at the base width "
            f"NTP and muP training losses agree to 1e-5 over steps 0-{COINCIDE_STEPS - 1} (while "
            f"the held-out {perf} falls > 1 % in every seed)",
            f"{fmt(same)} (held-out {perf} fell by {fmt(moves)})",
            "pass" if same_ok else "fail",
            "deterministic: same weights, same batches",
        ),
    ]
    return rows, checks


def c7_figures(d: Datasets, out: Path) -> list[Path]:
    ntp, mup = d["c7_ntp_vs_mup_ntp"], d["c7_ntp_vs_mup_mup"]

    def alignment(ds: xr.Dataset) -> xr.DataArray:
        k = ds.feature_kernel.isel(kernels_layer=-1).mean("seed")
        y = task_target(ds).isel(point=slice(0, k.sizes["kernels_point_i"]))
        return wa.kernel_target_alignment(k, y, sample_dims=KERNEL)

    perf = performance(ntp)[1]
    fig = fig_compare.overlay_curves(
        {
            "kernel-target alignment": {"muP": alignment(mup), "NTP": alignment(ntp)},
            perf: {"muP": performance(mup)[0], "NTP": performance(ntp)[0]},
        },
        xdims={"kernel-target alignment": "kernels_step", perf: "test_step"},
        ylabel={
            "kernel-target alignment": "alignment",
            perf: "error (fraction)" if perf == "test error" else "MSE",
        },
        logy=False,
    )
    return [save(fig, out, "c7_ntp_vs_mup")]


# --------------------------------------------------------------------------- C8


def c8_analyze(d: Datasets) -> tuple[Rows, list[Check]]:
    """Offline training with label noise vs online (Section 3.2, Fig. 8)."""
    off, on = d["c8_offline_label_noise"], d["c8_online"]
    t_off = after_init(off.test_loss, "test_step")
    t_on = after_init(on.test_loss, "test_step")
    tr_off = off.train_eval_loss.isel(train_eval_step=-1)
    gap_off = boot(t_off, mean_gap_to_widest)
    gap_on = boot(t_on, mean_gap_to_widest)
    # one bootstrap of both studies (seeds of each width and study resampled on their own)
    both = xr.concat([t_off, t_on], dim=xr.DataArray(["offline", "online"], dims="study"))
    ratio = boot(
        both,
        lambda z: (g := mean_gap_to_widest(z)).sel(study="offline") / g.sel(study="online"),
        independent=("width", "study"),
    )
    slope_on = boot(t_on, lambda z: log_slope(mean_gap_to_widest(z)))
    fin_on = boot(on.test_loss.isel(test_step=-1), lambda z: log_slope(z.mean("seed")))
    fin_off = boot(off.test_loss.isel(test_step=-1), lambda z: log_slope(z.mean("seed")))
    memo = boot(
        xr.concat(
            [tr_off, off.test_loss.isel(test_step=-1)],
            dim=xr.DataArray(["train", "test"], dims="which"),
        ),
        lambda z: (m := z.mean("seed").mean("width")).sel(which="train") / m.sel(which="test"),
        sample_dims=("which",),
    )
    late = lambda z, dim: z.sel({dim: z[dim].values[z[dim].values >= z[dim].values[-1] / 8]})  # noqa: E731
    rise = boot(late(off.test_loss, "test_step"), lambda z: time_slope(z, "test_step"))
    fall = boot(
        late(off.train_eval_loss, "train_eval_step"), lambda z: time_slope(z, "train_eval_step")
    )
    rows = [
        ("offline (noisy labels): mean relative test-loss gap to the widest", describe(gap_off)),
        ("online: the same", describe(gap_on)),
        ("offline gap / online gap", describe(ratio)),
        ("online: log-log slope in width of the final test loss", describe(fin_on)),
        ("offline: the same (held-out loss)", describe(fin_off)),
        ("offline: final loss on the noisy training set / held-out loss", describe(memo)),
        ("offline, last 7/8 of training: slope of the held-out loss in log step", describe(rise)),
        ("offline, the same: slope of the loss on the noisy training set", describe(fall)),
    ]
    checks = [
        compare(
            "online stays consistent (Sec. 3.2 vs 2): the online test-loss gap to the widest "
            "falls with width (slope < 0)",
            slope_on,
            "<",
            SLOPE,
        ),
        compare(
            "online: wider is better: the final test loss falls with width (slope < 0)",
            fin_on,
            "<",
            SLOPE,
        ),
        compare(
            "offline breaks consistency (Sec. 3.2: 'larger gaps between widths'): the offline "
            "gap to the widest > 2 × the online one at every width",
            ratio,
            ">",
            2.0,
        ),
        compare(
            "offline can break 'wider is better' (Sec. 3.2): the final held-out loss rises "
            "with width (slope > 0)",
            fin_off,
            ">",
            SLOPE,
        ),
        compare(
            "the networks over-fit the noisy labels (Sec. 3.2): over the last 7/8 of training "
            "the held-out loss rises at every width (slope in log step > 0; the loss on the "
            "noisy training set ends at a tenth of it, see the table)",
            rise,
            ">",
            0.0,
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

ATT = ("attention_point", "head", "query", "key")


def _tv_to_widest(z: xr.DataArray) -> xr.DataArray:
    """Mean TV distance per query of seed-mean maps to the widest's, mean over layers."""
    tv = wa.attention_distance_to_widest(z, key_dim="key", query_dims="query")
    return but_widest(tv.mean(["attention_point", "head", "attention_layer"]))


def _tv_successive(z: xr.DataArray) -> xr.DataArray:
    m = z.mean("seed").sortby("width")
    a, b = m.isel(width=slice(0, -1)), m.isel(width=slice(1, None))
    b = b.assign_coords(width=a.width.values)
    tv = wa.attention_distance(a, b, key_dim="key", query_dims="query")
    return tv.mean(["attention_point", "head", "attention_layer"])


def _tv_moved(end: xr.DataArray, init: xr.DataArray) -> xr.DataArray:
    """TV distance of the widest's seed-mean maps at the end from its maps at init.

    ``init`` is fixed (not resampled): with a zero-initialised query every map at init
    is the same uniform causal map, the same for every seed.
    """
    tv = wa.attention_distance(widest(end).mean("seed"), init, key_dim="key", query_dims="query")
    return tv.mean(["attention_point", "head", "attention_layer"])


def c9_analyze(d: Datasets) -> tuple[Rows, list[Check]]:
    """Attention maps of a muP transformer (Fig. 1d, Fig. 5 e-f)."""
    ds = d["c9_transformer_attention"]
    att = ds.attention
    end = att.isel(attention_step=-1)
    tv = boot(end, _tv_to_widest, sample_dims=ATT)
    tv_slope = boot(end, lambda z: log_slope(_tv_to_widest(z)), sample_dims=ATT)
    succ_slope = boot(end, lambda z: log_slope(_tv_successive(z)), sample_dims=ATT)
    init = widest(att.isel(attention_step=0)).mean("seed")
    moved = boot(end, lambda z: _tv_moved(z, init), sample_dims=ATT)
    share = boot(
        end, lambda z: _tv_to_widest(z).isel(width=-1) / _tv_moved(z, init), sample_dims=ATT
    )

    def shared_change(z: xr.DataArray) -> xr.DataArray:
        """Cosine between the narrowest's and the widest's seed-mean map change from init
        (over layers, heads, sequences, queries and keys): the same maps were learned."""
        dm = z.mean("seed") - init
        a, b = dm.isel(width=0), widest(dm)
        over = [d for d in a.dims if d != "replicate"]
        return (a * b).sum(over) / np.sqrt((a**2).sum(over) * (b**2).sum(over))

    shared = boot(end, shared_change, sample_dims=ATT)
    loss = boot(ds.test_loss.isel(test_step=-1), lambda z: z.mean("seed"))
    rows = [
        (
            "attention TV distance to the widest (end; mean over layers, heads, sequences)",
            describe(tv),
        ),
        ("widest maps: TV distance end vs init", describe(moved)),
        ("second widest's distance / the learned change", describe(share)),
        ("cosine of the narrowest's and the widest's map change from init", describe(shared)),
        ("final test loss (seed mean)", describe(loss)),
    ]
    checks = [
        compare(
            "attention maps converge (Fig. 5 f): TV distance of seed-mean maps to the widest "
            "falls with width (slope < 0)",
            tv_slope,
            "<",
            SLOPE,
        ),
        compare(
            "successive widths' maps: their TV distance falls with width (slope < 0)",
            succ_slope,
            "<",
            SLOPE,
        ),
        all_of(
            "attention maps were learned, the same at every width: the widest maps moved > 0.1 "
            "(TV) from init, and the narrowest's change points the same way (cosine > 0.5)",
            (compare("moved", moved, ">", 0.1), compare("cosine", shared, ">", 0.5)),
        ),
        compare(
            "the second widest's maps agree with the widest's (Fig. 1d): TV distance < half the "
            "learned change",
            share,
            "<",
            0.5,
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
    analyze: Callable[[Datasets], tuple[Rows, list[Check]]]
    figures: Callable[[Datasets, Path], list[Path]]
    expected_fail: tuple[str, ...] = ()
    """Prefixes of the checks that do not pass at this scale (``tests/test_repro.py``)."""
    scale_note: str = ""
    """Why those checks cannot pass at this scale, with the numbers (docs/reproduction.md)."""


CLAIMS: dict[str, Claim] = {
    c.id: c
    for c in [
        Claim(
            "C1",
            "muP loss curves and pointwise test logits converge across widths; the horizon "
            "of agreement grows with width",
            "Sec. 1-2, Fig. 2-4",
            (C1,),
            c1_analyze,
            c1_figures,
        ),
        Claim(
            "C2",
            "feature kernels and preactivation distributions converge across widths",
            "Sec. 2, Fig. 5",
            (C1,),
            c2_analyze,
            c2_figures,
        ),
        Claim(
            "C3",
            "sharpness rises to a plateau consistent across widths; large-lr fluctuations "
            "converge under muP, not under SP",
            "Fig. 6a, App. E.1, Fig. 15",
            ("c3a_sharpness_mup", "c3b_large_lr_mup", "c3b_large_lr_sp"),
            c3_analyze,
            c3_figures,
        ),
        Claim(
            "C4",
            "ensembles of narrow networks underperform one wide network (bias > variance)",
            "Sec. 3.1, Fig. 7, App. F",
            ("c4_bias_variance",),
            c4_analyze,
            c4_figures,
        ),
        Claim(
            "C5",
            "loss vs width fits a power law with R² > 0.99 late in training",
            "Sec. 4, Fig. 9",
            ("c5_power_law",),
            c5_analyze,
            c5_figures,
        ),
        Claim(
            "C6",
            "lazy MLP: the ensembled eNTK's spectrum barely changes with width, its "
            "eigenvectors do; kernel gradient flow tracks the ensemble loss",
            "Sec. 5, Fig. 10 a-c",
            ("c6_lazy_entk",),
            c6_analyze,
            c6_figures,
            expected_fail=("'the dominant effect is the latter'",),
            scale_note=(
                "at widths 64-512 the ensembled eNTKs (40 seeds) are so close to the widest's "
                "that the whole width effect on the predicted loss is a few percent, and its "
                "split into an eigenvector and an eigenvalue part is not resolved: "
                "+0.012 [−0.065, 0.069] of the widest's loss. Narrower widths make the effect "
                "larger but leave the lazy regime: with widths from 16 (measured) the "
                "eigenvalues dominate at width 16 (−0.136 [−0.238, 0.066]), its spectrum is "
                "10 % from the widest's and the ensembled-kernel gradient flow misses the "
                "measured loss (RMS log10 ratio 0.16). The paper uses larger D and more points."
            ),
        ),
        Claim(
            "C7",
            "under NTP wider networks learn features more slowly and perform worse, unlike muP",
            "App. D, Fig. 14",
            ("c7_ntp_vs_mup_ntp", "c7_ntp_vs_mup_mup"),
            c7_analyze,
            c7_figures,
        ),
        Claim(
            "C8",
            "offline training with label noise breaks width consistency",
            "Sec. 3.2, Fig. 8",
            ("c8_offline_label_noise", "c8_online"),
            c8_analyze,
            c8_figures,
            expected_fail=("offline breaks consistency (Sec. 3.2",),
            scale_note=(
                "on 500 Fashion-MNIST images with half the labels random, the MLPs over-fit "
                "and, with 16 seeds, the final held-out loss rises with width as the paper says "
                "(slope +0.075 [0.047, 0.104]; with 4 seeds the interval straddled 0); but they "
                "do not memorize completely in 900 steps, so the offline gap to the widest is "
                "0.36-0.84 × the online one, not the paper's 'larger gaps'. That effect comes "
                "with full memorization and double descent (ResNet-18 on CIFAR-50k)."
            ),
        ),
        Claim(
            "C9",
            "transformer attention maps converge across widths",
            "Fig. 1d, 5e-f",
            ("c9_transformer_attention",),
            c9_analyze,
            c9_figures,
        ),
    ]
}


# --------------------------------------------------------------------------- running


def spec_path(name: str) -> Path:
    return HERE / f"{name}.yaml"


def load(name: str) -> widthwise.StudySpec:
    """The claim spec ``name`` (examples/paper/NAME.yaml)."""
    return widthwise.load_spec(spec_path(name))


def is_done(out: Path) -> bool:
    """True when ``out`` holds a study whose widths are all finished."""
    if not (out / "manifest.json").exists():
        return False
    try:
        ds = widthwise.open_study(out)
    except Exception:
        return False
    return bool((ds.status == "done").all())


def run_spec(name: str, runs: Path) -> float | None:
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
    spec = load(name)
    t0 = time.perf_counter()
    widthwise.run(spec, out=out)
    wall = time.perf_counter() - t0
    record.write_text(
        json.dumps(
            {"wall_s": round(wall, 1), "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())}
        )
    )
    return wall


def run_claim(claim_id: str, runs: Path, *, figures_dir: Path | None = None) -> ClaimResult:
    """Run the claim's specs (resumable), compute its numbers, checks and figures.

    A user error while running (e.g. a data set that is not installed) is not raised:
    the result is "skipped" with that error's one line, so the other claims still run.
    """
    from widthwise.errors import UserError

    claim = CLAIMS[claim_id]
    runs.mkdir(parents=True, exist_ok=True)
    try:
        walls = {n: run_spec(n, runs) for n in claim.specs}
    except UserError as e:
        return ClaimResult(claim, [], [], skipped=str(e).splitlines()[0])
    dsets = {n: widthwise.open_study(runs / n) for n in claim.specs}
    rows, checks = claim.analyze(dsets)
    figs = claim.figures(dsets, figures_dir) if figures_dir is not None else []
    return ClaimResult(claim, rows, checks, figs, walls)
