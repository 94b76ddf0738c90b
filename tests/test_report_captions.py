"""Captions computed from the numbers shown, and the reference lines theory gives.

The caption helpers on known inputs (a plateau below the stability threshold says "not
at the edge of stability", one within says "at the edge of stability", NaN says "not
measured" and claims nothing); a report of a tiny real MLP study whose captions quote
exactly the numbers of the CSVs it writes; the n^-1/2 and n^-1 reference slopes on the
against-width panels; and the distance of the kernels at init to their analytic
infinite-width limit, which falls with width.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import tiny_spec_dict

import widthwise
import widthwise.spec
from widthwise.report import build_report, fig_curves, fig_fits
from widthwise.report import sections_curves as sc
from widthwise.report import sections_repr as sr
from widthwise.report.style import new_figure, reference_slopes, slope_label, slope_math

pytestmark = pytest.mark.usefixtures("single_thread")

NAN = float("nan")
EDGE_WORDS = ("edge of stability", "stability threshold")

# -- the caption helpers on known inputs -----------------------------------------------


def test_plateau_below_the_threshold_is_not_at_the_edge_of_stability() -> None:
    text = sr.stability_sentence(
        [64, 128, 256], [13.2, 15.0, 17.1], [12.0, 14.1, 16.0], [14.0, 16.2, 17.9], 40.0,
        "2/lr", window=(320, 400),
    )  # fmt: skip
    assert text.startswith("Plateau 13.2–17.1 over the last 20 % of the recorded steps")
    assert "steps 320–400" in text and "95 % intervals over seeds 12–17.9" in text
    assert "below 2/lr = 40 at every width: not at the edge of stability" in text


def test_plateau_within_the_interval_is_at_the_edge_of_stability() -> None:
    # the threshold inside every interval
    text = sr.stability_sentence([64, 128], [39.0, 40.5], [37.0, 39.5], [41.0, 41.5], 40.0)
    assert "at the edge of stability" in text and "not at the edge" not in text
    # a tight interval just above (the plateau hovers there): still the edge, within 10 %
    text = sr.stability_sentence([64], [41.5], [41.4], [41.6], 40.0)
    assert "within 10 % of 2/lr = 40: at the edge of stability" in text
    # far above: beyond it; mixed widths are named one by one
    assert "beyond the stability threshold" in sr.stability_sentence([64], [80], [75], [85], 40.0)
    mixed = sr.stability_sentence([64, 128], [10.0, 40.0], [9.0, 38.0], [11.0, 42.0], 40.0)
    assert "width 64 below 2/lr = 40 (not at the edge of stability)" in mixed
    assert "width 128 within 10 % of 2/lr = 40 (at the edge of stability)" in mixed


def test_nan_plateau_says_not_measured_and_claims_nothing() -> None:
    text = sr.stability_sentence([64, 128], [NAN, NAN], [NAN, NAN], [NAN, NAN], 40.0)
    assert "not measured" in text
    assert not any(w in text for w in EDGE_WORDS)
    # one width not measured: named, the others judged
    part = sr.stability_sentence([64, 128], [NAN, 10.0], [NAN, 9.0], [NAN, 11.0], 40.0)
    assert "not measured at width 64" in part and "not at the edge of stability" in part
    # no threshold applies (Adam without the preconditioned operator): no claim either
    none = sr.stability_sentence([64], [10.0], [9.0], [11.0], None, no_threshold="Adam")
    assert "no stability threshold applies (Adam)" in none and "edge of stability" not in none


def test_kernel_sentence_separates_shape_and_scale() -> None:
    text = sr.kernel_sentence("l2", [64, 128], [1.1, 0.8], [0.93, 0.99])
    assert text == (
        "l2: shape agrees (CKA 0.93–0.99; ≥ 0.9) but scale differs "
        "(relative Frobenius 1.1 at width 64, 0.8 at 128; > 0.1)"
    )
    both = sr.kernel_sentence("l1", [64, 128], [0.05, 0.02], [0.99, 0.999])
    assert "shape agrees" in both and " and scale agrees" in both
    from_on = sr.kernel_sentence("l1", [64, 128, 256], [0.5, 0.08, 0.03], [0.6, 0.95, 0.99])
    assert "shape agrees from width 128 on" in from_on and "scale agrees from width 128" in from_on
    assert sr.kernel_sentence("l1", [64], [NAN], [NAN]) == "l1: not measured"
    assert "agree" not in sr.kernel_sentence("l1", [64], [NAN], [NAN])


def test_limit_sentence_reads_the_slope_against_n_to_the_minus_half() -> None:
    w = [64, 256, 1024]
    d = [0.2, 0.1, 0.05]
    assert "falls like n^−1/2 (within −0.5 ± 0.25)" in sr.limit_sentence(
        "K", w, d, -0.5, -0.6, -0.4
    )
    assert "falls, but faster than n^−1/2" in sr.limit_sentence("K", w, d, -2.0, -2.2, -1.8)
    assert "falls, but slower than n^−1/2" in sr.limit_sentence("K", w, d, -0.1, -0.2, -0.05)
    assert "grows with width" in sr.limit_sentence("K", w, d, 0.5, 0.3, 0.7)
    assert "undetermined" in sr.limit_sentence("K", w, d, -0.5, -1.5, 0.5)
    assert "undetermined" in sr.limit_sentence("K", w, d, -0.5)  # no interval
    assert sr.limit_sentence("K", w, [NAN] * 3, NAN) == "K: not measured"


def test_other_helpers_state_only_what_the_numbers_show() -> None:
    assert sr.fmt(NAN) == "n/a" and sr.fmt(-0.123456) == "−0.123" and sr.span([]) == ""
    assert sr.per_width([16, 32], [0.5, NAN]) == "0.5 at width 16, n/a at 32"
    assert sr.monotone_word([3, 2, 1]) == "decreasing in width"
    assert sr.monotone_word([1, 3, 2]) == "not monotone in width"
    assert sr.loglog_slope([1, 4, 16], [1, 0.5, 0.25]) == pytest.approx(-0.5)
    assert np.isnan(sr.loglog_slope([1, 4], [1, NAN]))
    assert sr.trend_sentence("W1", [16, 32], [NAN, NAN]) == "W1: not measured"
    assert "falls" not in sr.trend_sentence("W1", [16, 32], [0.1, 0.2])
    # successive differences: where the verdict's tolerance holds
    s = sc.successive_sentence("loss", ["16-32", "32-64", "64-128"], [0.2, 0.04, 0.01], 0.05)
    assert s == (
        "loss: 0.2 at 16-32, 0.04 at 32-64, 0.01 at 64-128 "
        "(decreasing in width; ≤ 0.05 from pair 32-64 on)"
    )
    assert "> 0.05 at every pair" in sc.successive_sentence("x", ["a", "b"], [0.1, 0.2], 0.05)
    assert sc.successive_sentence("x", ["a"], [NAN], 0.05) == "x: not measured"
    # loss curves: "wider is better" is counted, not asserted
    loss = sc.loss_sentence("Test loss", [16, 32], [0.2, 0.1], 20, 3, 4)
    assert "lower at every wider width at 3 of the 4 recorded steps after step 0" in loss
    assert (
        sc.loss_sentence("Test loss", [16], [NAN], 20, 0, 0)
        == "Test loss at step 20: not measured."
    )
    mean = xr.DataArray(
        [[1.0, 0.7, 0.5], [2.0, 0.8, 0.4]], dims=("width", "test_step"),
        coords={"width": [32, 16], "test_step": [0, 5, 10]},
    )  # fmt: skip
    assert sc.wider_is_better(mean, "test_step") == (1, 2)  # step 0 is not counted
    tp = sr.task_power_sentence([16, 32], [0.1, 0.3], [0.5, 0.2], 2, (0, 20))
    assert tp.startswith("C(2) from step 0 to step 20: 0.1 → 0.5 at width 16, 0.3 → 0.2 at 32")
    assert "rises at width 16; falls at width 32" in tp


def test_reference_slopes_helper() -> None:
    assert slope_label(-0.5) == "∝ n^−1/2" and slope_label(-1.0) == "∝ n^−1"
    fig, axes = new_figure(1, 1)
    ax = axes[0, 0]
    ax.plot([16, 32, 64], [1.0, 0.9, 0.8])
    ax.set_xscale("log")
    ax.set_yscale("log")
    lines = reference_slopes(ax, [16, 32, 64], 1.0)
    assert [ln.get_gid() for ln in lines] == ["reference_slope_-0.5", "reference_slope_-1"]
    for ln, s in zip(lines, (-0.5, -1.0)):
        x, y = ln.get_xdata(), ln.get_ydata()
        assert x[0] == 16 and x[-1] == 64 and y[0] == 1.0  # anchored at the narrowest width
        np.testing.assert_allclose(y, (x / 16) ** s)
        assert ln.get_zorder() < 2 and ln.get_color() == "0.55"  # grey, beneath the data
    lo, hi = ax.get_ylim()
    assert lo <= 0.5 / 1.3 * 1.0001 and hi >= 1.0  # the n^-1/2 line is in view, whole
    assert reference_slopes(ax, [16], 1.0) == [] and reference_slopes(ax, [16, 32], NAN) == []


# -- a tiny real MLP study: captions quote the CSVs -----------------------------------

LR, MOMENTUM = 0.1, 0.9
STUDY = {
    "widths": [16, 32, 64],
    "seeds": 3,
    "steps": 20,
    "optimizer": {"name": "sgd", "lr": LR, "momentum": MOMENTUM},
    "probes": {
        "train_loss": {"every": 1},
        "test": {"every": 5},
        "kernels": {"at": ["init", "end"], "points": 8},
        "preacts": {"at": ["init", "end"], "bins": 20},
        "sharpness": {"every": 5, "batch_points": 16, "iters": 12, "tol": 0.01},
    },
}


def _run(root: Path, name: str, **overrides) -> Path:
    out = root / name
    raw = tiny_spec_dict(out, name=name, **overrides)
    raw["checkpoint_every"] = raw["steps"]
    widthwise.run(widthwise.spec.validate_spec(raw, name), progress=False)
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("captions")
    study = _run(root, "tiny_captions", **STUDY)
    page = build_report(study, root / "report", coord_check=False)
    return page.parent, page.read_text(encoding="utf-8")


def _section_text(page: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}"[^>]*>\s*<h2>.*?</h2>\s*<p>(.*?)</p>', page, re.S)
    assert m, sid
    import html

    return html.unescape(m.group(1))


def _caption(page: str, panel: str) -> str:
    import html

    m = re.search(rf'<figure id="fig-{panel}">.*?<figcaption>(.*?)</figcaption>', page, re.S)
    assert m, panel
    return html.unescape(m.group(1))


def _num(s: str) -> float:
    return float(s.replace("−", "-"))


def _per_width(segment: str) -> dict[int, float]:
    """{width: value} of a ``per_width`` list ('0.2 at width 16, 0.1 at 32')."""
    return {int(w): _num(v) for v, w in re.findall(r"([−\d.e+]+) at (?:width )?(\d+)", segment)}


def _same(quoted: float, value: float) -> None:
    """The caption's 3 significant digits are the CSV's value."""
    assert sr.fmt(value) == sr.fmt(quoted), (quoted, value)


def test_sharpness_caption_quotes_the_plateau_of_the_csv(report) -> None:
    out, page = report
    text = _section_text(page, "sharpness")
    plateau = pd.read_csv(out / "csv" / "sharpness_plateau.csv").set_index("width")
    top = pd.read_csv(out / "csv" / "sharpness.csv")
    # the plateau is the seed mean of the per-seed mean over the last 20 % of the steps
    steps = sorted(top.sharpness_step.unique())
    window = steps[-int(np.ceil(0.2 * len(steps))) :]
    tail = top[top.sharpness_step.isin(window)]
    recomputed = tail.groupby(["width", "seed"]).sharpness_lr.mean().groupby("width").mean()
    np.testing.assert_allclose(plateau.plateau.loc[recomputed.index], recomputed, rtol=1e-6)
    m = re.search(r"Plateau ([−\d.e+]+)(?:–([−\d.e+]+))? over the last 20 %", text)
    assert m, text
    lo, hi = _num(m.group(1)), _num(m.group(2) or m.group(1))
    _same(lo, plateau.plateau.min())
    _same(hi, plateau.plateau.max())
    assert f"steps {window[0]}–{window[-1]}" in text or f"step {window[0]}" in text
    ci = re.search(r"95 % intervals over seeds ([−\d.e+]+)–([−\d.e+]+)", text)
    _same(_num(ci.group(1)), plateau.lo.min())
    _same(_num(ci.group(2)), plateau.hi.max())
    # momentum: the threshold that applies is (2 + 2β)/lr; the verdict follows the numbers
    thr = (2 + 2 * MOMENTUM) / LR
    assert f"(2 + 2β)/lr = {sr.fmt(thr)}" in text
    if (plateau.hi < 0.9 * thr).all():
        assert "not at the edge of stability" in text
    assert "settles near" not in text


def test_kernel_captions_quote_the_distance_csvs(report) -> None:
    out, page = report
    text = _section_text(page, "kernels")
    frob = pd.read_csv(out / "csv" / "kernel_frobenius_to_widest.csv")
    cka = pd.read_csv(out / "csv" / "kernel_cka_to_widest.csv")
    last = frob.kernels_step.max()
    assert f"At step {last}, against the widest (64)" in text
    assert "converge" not in text
    for layer in frob.kernels_layer.unique():
        seg = re.search(rf"{layer}: shape (.*?)(?:; l\d+: |\. Shape:)", text).group(1)
        f = frob[(frob.kernels_step == last) & (frob.kernels_layer == layer) & (frob.width < 64)]
        quoted = _per_width(seg.split("relative Frobenius ")[1])
        assert sorted(quoted) == sorted(f.width)
        for w, v in zip(f.width, f.relative_frobenius):
            _same(quoted[w], v)
        c = cka[(cka.kernels_step == last) & (cka.kernels_layer == layer) & (cka.width < 64)]
        assert f"CKA {sr.span(c.cka.values)}" in seg
        agrees = (c.cka >= sr.CKA_AGREES).all()
        assert seg.startswith("agrees (CKA") if agrees else "agrees (CKA" not in seg
    # the limit panel: the distances at init quoted from kernel_limit_distance.csv
    cap = _caption(page, "kernel_limit")
    dist = pd.read_csv(out / "csv" / "kernel_limit_distance.csv")
    slope = pd.read_csv(out / "csv" / "kernel_limit_slope.csv").set_index("kernel")
    for name, rows in dist.groupby("kernel"):
        seg = re.search(rf"{re.escape(name)}: (.*?); log-log slope ([−\d.e+]+)", cap)
        quoted = _per_width(seg.group(1))
        for w, v in zip(rows.width, rows.distance_to_limit):
            _same(quoted[w], v)
        _same(_num(seg.group(2)), slope.slope[name])


def test_every_section_text_is_free_of_fixed_claims(report) -> None:
    _, page = report
    for sid in re.findall(r'<section id="([a-z_]+)"', page):
        if sid in ("summary", "horizon"):  # definitions (and another module's section)
            continue
        text = _section_text(page, sid)
        for claim in ("converge", "settles near", "follow the same trajectory", "predicts one"):
            assert claim not in text, (sid, claim)


def _gids(svg: Path) -> set[str]:
    return {el.get("id") for el in ET.parse(svg).getroot().iter() if el.get("id")}


def test_reference_slopes_on_the_against_width_panels(report) -> None:
    out, _ = report
    for name in ("distance_to_widest", "bias_variance", "preact_histograms", "kernel_limit"):
        gids = _gids(out / "figures" / f"{name}.svg")
        assert {"reference_slope_-0.5", "reference_slope_-1"} <= gids, name
        svg = (out / "figures" / f"{name}.svg").read_text()
        # labelled in the legend, in mathtext (the SVG keeps each text's source)
        assert "$\\propto n^{-1/2}$" in svg and "$\\propto n^{-1}$" in svg


def test_reference_slopes_are_anchored_at_the_narrowest_width() -> None:
    rng = np.random.default_rng(0)
    single = xr.DataArray(
        rng.uniform(0.1, 1.0, (3, 2, 2)), dims=("width", "seed", "test_step"),
        coords={"width": [16, 32, 64], "test_step": [0, 10]},
    )  # fmt: skip
    fig = fig_curves.distance_to_widest(single, single.mean("seed"))
    ax = [a for a in fig.axes if a.get_xlabel() == "width"][0]
    ref = {ln.get_gid(): ln for ln in ax.get_lines() if ln.get_gid()}
    anchor = float(single.sel(width=16).isel(test_step=-1).mean())
    for gid, s in (("reference_slope_-0.5", -0.5), ("reference_slope_-1", -1.0)):
        x, y = ref[gid].get_xdata(), ref[gid].get_ydata()
        assert (x[0], x[-1]) == (16, 32)  # the widest (distance 0) is not drawn
        np.testing.assert_allclose(y, anchor * (x / 16) ** s)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert slope_math(-0.5) in labels and slope_math(-1.0) in labels
    assert slope_math(-0.5) == "$\\propto n^{-1/2}$"
    # variance vs width: anchored at the narrowest width's variance
    final = xr.Dataset(
        {k: ("width", v) for k, v in {
            "single_loss": [3.0, 2.0, 1.5], "ensemble_loss": [2.0, 1.5, 1.2],
            "variance_gap": [1.0, 0.5, 0.3], "bias_gap": [0.8, 0.3, 0.0],
            "variance": [0.4, 0.2, 0.1], "bias": [0.2, 0.05, 0.0],
        }.items()},
        coords={"width": [16, 32, 64]},
    )  # fmt: skip
    fig = fig_fits.bias_variance(final)
    ax = [a for a in fig.axes if a.get_title() == "variance and bias vs width"][0]
    line = [ln for ln in ax.get_lines() if ln.get_gid() == "reference_slope_-1"][0]
    np.testing.assert_allclose(line.get_ydata()[[0, -1]], [0.4, 0.1])  # 0.4 · (64/16)^-1


# -- the analytic infinite-width kernels as the "limit" line --------------------------


@pytest.fixture(scope="module")
def wide_init(tmp_path_factory: pytest.TempPathFactory) -> xr.Dataset:
    """widths 64, 256, 1024, 3 seeds, one step: the kernels at init are what counts."""
    root = tmp_path_factory.mktemp("limit")
    study = _run(
        root,
        "tiny_limit",
        widths=[64, 256, 1024],
        seeds=3,
        steps=1,
        probes={"train_loss": {"every": 1}, "kernels": {"at": ["init"], "points": 16}},
    )
    return widthwise.open_study(study)


def test_limit_kernel_distance_falls_with_width(wide_init: xr.Dataset) -> None:
    dist, slope, notes = sr.limit_distances(wide_init)
    assert notes == [] or all("entk" in n for n in notes)
    assert list(dist.width.values) == [64, 256, 1024]
    assert list(dist.kernel.values) == ["feature kernel l1", "feature kernel l2"]
    for k in dist.kernel.values:
        d = dist.sel(kernel=k).values
        assert (np.diff(d) < 0).all(), (k, d)  # falls with width
        est = float(slope.estimate.sel(kernel=k))
        assert -1.0 < est < -0.25, (k, est)  # like n^-1/2 (seed means of 3)
        np.testing.assert_allclose(est, sr.loglog_slope(dist.width.values, d), rtol=1e-6)
    sec = sr.kernels_section(wide_init)
    panel = {p.name: p for p in sec.panels}["kernel_limit"]
    for k in dist.kernel.values:
        assert f"{k}: {sr.per_width(dist.width.values, dist.sel(kernel=k).values)}" in (
            panel.caption
        )
    ax = panel.figure.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert {ln.get_gid() for ln in ax.get_lines()} >= {"reference_slope_-0.5"}


def test_no_limit_is_said_in_one_line(wide_init: xr.Dataset) -> None:
    spec = json.loads(wide_init.attrs["spec"])
    cnn = wide_init.assign_attrs(spec=json.dumps({**spec, "model": {"family": "cnn"}}))
    dist, slope, notes = sr.limit_distances(cnn)
    assert dist is None and slope is None
    assert notes == ["No infinite-width limit kernels: limit kernels exist for the mlp family "
                     "only, not 'cnn'."]  # fmt: skip
    sec = sr.kernels_section(cnn)
    assert "kernel_limit" not in {p.name for p in sec.panels} and sec.notes == notes
    # sp: the feature kernels have a limit, the eNTK does not (it grows with width)
    sp = wide_init.assign_attrs(
        spec=json.dumps({**spec, "parameterization": {**spec["parameterization"], "name": "sp"}})
    )
    dist, _, notes = sr.limit_distances(sp)
    assert dist is not None and len(notes) == 1
    assert notes[0].startswith("No infinite-width limit for entk") and "width" in notes[0]
    # a kernels schedule without step 0
    late = wide_init.assign_coords(kernels_step=wide_init.kernels_step + 1)
    _, _, notes = sr.limit_distances(late)
    assert notes and "did not record step 0" in notes[0]
