"""The report: sections exactly for the data a study recorded, images that decode,
a page that references nothing outside itself, CSV of every plotted number, the CLI.

Tiny studies (widths 16-64, a few seeds, ≤ 30 steps) are trained once per session
by :func:`study` and shared with ``test_report_browser.py``.
"""

from __future__ import annotations

import base64
import io
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import tiny_spec_dict
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

import widthwise
import widthwise.spec
from widthwise import analysis as wa
from widthwise.cli import main
from widthwise.report import build_compare, build_report, fig_curves, fig_fits

ALL_SECTIONS = {
    "summary",
    "loss",
    "logits",
    "distance",
    "successive",
    "kernels",
    "preacts",
    "attention",
    "sharpness",
    "bias_variance",
    "power_law",
    "ntk",
    "coord_check",
}
CURVES = {"summary", "loss", "logits", "distance", "successive", "bias_variance", "power_law"}

STUDIES: dict[str, dict[str, Any]] = {
    # widths 16-64, 3 seeds, test logits: every loss/logit section
    "base": {"widths": [16, 32, 64], "seeds": 3, "steps": 20},
    "base_sp": {"widths": [16, 32, 64], "seeds": 3, "steps": 20, "parameterization": "sp"},
    # the representation probes (kernels, preactivations, sharpness, eNTK)
    "probes": {
        "widths": [16, 32, 64],
        "seeds": 2,
        "steps": 20,
        "probes": {
            "train_loss": {"every": 1},
            "test": {"every": 5},
            "kernels": {"every": 10, "points": 8},
            "preacts": {"at": ["init", "end"], "bins": 30},
            "sharpness": {"at": ["init", "end"], "batch_points": 16, "iters": 12, "tol": 0.01},
            "entk": {"at": ["init", "end"], "points": 8},
        },
    },
    # the training loss only, two widths, one seed: almost nothing to show
    "loss_only": {
        "widths": [16, 32],
        "seeds": 1,
        "steps": 10,
        "probes": {"train_loss": {"every": 1}},
    },
    # every member diverges at once: curves are all NaN after step 0
    "diverged": {
        "widths": [16, 32],
        "seeds": 2,
        "steps": 10,
        "model": {"family": "mlp", "options": {"depth": 3, "activation": "tanh"}},
        "optimizer": {"name": "sgd", "lr": 1000.0},
        "probes": {"train_loss": {"every": 1}, "test": {"every": 5}},
    },
    # a one-layer attention family (tests/tiny_attention_family.py)
    "attention": {
        "model": {"family": "tiny_attention", "options": {"heads": 2}},
        "widths": [8, 16, 32],
        "base_width": 8,
        "seeds": 2,
        "steps": 10,
        "data": {"stream": "tiny_seq", "seed": 0, "probe_points": 16},
        "probes": {
            "train_loss": {"every": 1},
            "test": {"every": 5, "logits": False},  # losses but no logits
            "attention": {"at": ["init", "end"], "points": 2},
        },
    },
}
_CACHE: dict[str, Path] = {}


def study(name: str, factory: pytest.TempPathFactory) -> Path:
    """Train the tiny study ``name`` once per session; returns its directory."""
    if name not in _CACHE:
        if name == "attention":
            from tiny_attention_family import register

            register()
        out = factory.mktemp(f"study_{name}")
        raw = tiny_spec_dict(out, name=f"tiny_{name}", **STUDIES[name])
        raw["checkpoint_every"] = raw["steps"]
        spec = widthwise.spec.validate_spec(raw, name)
        widthwise.run(spec, progress=False)
        _CACHE[name] = out
    return _CACHE[name]


_REPORTS: dict[str, Path] = {}


def report_of(name: str, factory: pytest.TempPathFactory) -> Path:
    """report.html of the tiny study ``name`` (coordinate check off), built once per session."""
    if name not in _REPORTS:
        d = study(name, factory)
        _REPORTS[name] = build_report(d, factory.mktemp(f"report_{name}"), coord_check=False)
    return _REPORTS[name]


def section_ids(page: str) -> set[str]:
    return set(re.findall(r'<section id="([a-z_]+)"', page))


DATA_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")


def assert_self_contained(page: str) -> None:
    """No reference to anything outside the page: no URLs, no files, no stylesheets."""
    bare = DATA_URI.sub("data:", page)
    for bad in ("http:", "https:", "//", "<link", "@import", "url(", "<script", "<iframe"):
        assert bad not in bare, f"{bad!r} in the report"
    for attr in re.findall(r'\b(?:src|href|srcset|poster|data)="([^"]*)"', bare):
        assert attr.startswith(("data:", "#")), f"external reference {attr!r}"


def assert_images_decode(page: str) -> int:
    uris = DATA_URI.findall(page)
    for b64 in uris:
        with Image.open(io.BytesIO(base64.b64decode(b64, validate=True))) as img:
            img.load()
            assert img.format == "PNG" and img.width > 100 and img.height > 50
    return len(uris)


def check_report(page_path: Path, expected: set[str], *, horizon: bool = True) -> str:
    """Every common check of a report directory; returns the page. A study's report
    leads with the consistency horizon (``horizon``); a comparison has none."""
    page = page_path.read_text(encoding="utf-8")
    assert section_ids(page) == expected | ({"horizon"} if horizon else set())
    if horizon:
        assert page.index('<section id="horizon"') < page.index('<section id="summary"')
    assert_self_contained(page)
    n_img = assert_images_decode(page)
    out = page_path.parent
    pngs = sorted((out / "figures").glob("*.png"))
    assert n_img == len(pngs) == len(re.findall(r"<img ", page)) > 0
    for png in pngs:
        svg = png.with_suffix(".svg")
        root = ET.parse(svg).getroot()
        assert root.tag.endswith("svg")
    listed = re.findall(r"<code>csv/([A-Za-z0-9_]+)\.csv</code>", page)
    assert listed and sorted(listed) == sorted(p.stem for p in (out / "csv").glob("*.csv"))
    for name in listed:
        df = pd.read_csv(out / "csv" / f"{name}.csv")
        assert len(df) > 0 and len(df.columns) >= 1, name
    return page


def assert_csv_equals(path: Path, da: xr.DataArray) -> None:
    """The tidy CSV at ``path`` holds ``da``: one row per entry, its dims as columns."""
    df = pd.read_csv(path)
    dims = list(da.dims)
    got = df.set_index(dims)[da.name].sort_index()
    want = da.to_series().reorder_levels(dims).sort_index() if len(dims) > 1 else da.to_series()
    assert list(got.index) == list(want.sort_index().index), path.name
    np.testing.assert_allclose(got.values, want.sort_index().values, rtol=1e-6, err_msg=path.name)


# -- reports of tiny studies -----------------------------------------------------------


def test_base_study_sections_and_files(tmp_path_factory):
    d = study("base", tmp_path_factory)
    page = check_report(build_report(d, coord_check=True), CURVES | {"coord_check"})
    # the summary card states the spec, the verdicts with their tolerance, divergence, time
    for text in (
        "tiny_base",
        "mup",
        "16, 32, 64",
        "tolerance 0.05",
        "diverged members",
        "wall time",
        "test logits",
    ):
        assert text in page
    # the tidy CSV holds the plotted numbers: the training loss of every width/seed/step
    ds = widthwise.open_study(d)
    df = pd.read_csv(d / "report" / "csv" / "train_loss.csv")
    assert set(df.columns) >= {"width", "seed", "step", "train_loss"}
    assert len(df) == ds.train_loss.size
    got = df.set_index(["width", "seed", "step"])["train_loss"].to_xarray()
    np.testing.assert_allclose(got.values, ds.train_loss.values, rtol=1e-7)


def test_probe_study_has_representation_sections(tmp_path_factory):
    page_path = report_of("probes", tmp_path_factory)
    page = check_report(
        page_path, CURVES | {"kernels", "preacts", "sharpness", "ntk", "coord_check"}
    )
    rep = page_path.parent
    # the threshold, labelled in mathtext (the SVG keeps each text's source as a comment)
    assert r"$2/\mathrm{lr}$ = 20" in (rep / "figures" / "sharpness.svg").read_text()
    assert "Skipped (not requested)" in page  # coordinate check: a note, no figure
    assert not (rep / "figures" / "coord_check.png").exists()
    for name in (
        "kernel_grid",
        "kernel_distance",
        "preact_histograms",
        "sharpness",
        "ntk_spectrum",
    ):
        assert (rep / "figures" / f"{name}.png").is_file()
    # the CSVs hold the analysis' numbers of the study's own arrays
    ds = widthwise.open_study(study("probes", tmp_path_factory))
    csv = rep / "csv"
    kernel_dims = ("kernels_point_i", "kernels_point_j")
    frob = wa.relative_frobenius_to_widest(ds.feature_kernel, over=kernel_dims)
    assert_csv_equals(csv / "kernel_frobenius_to_widest.csv", frob)
    assert_csv_equals(
        csv / "kernel_cka_to_widest.csv",
        wa.cka_to_widest(ds.feature_kernel, sample_dims=kernel_dims),
    )
    w1 = wa.wasserstein1_to_widest(
        ds.preact_hist, bin_dim="preacts_bin", edges=ds.preacts_edge, edge_dim="preacts_edge"
    )
    assert_csv_equals(csv / "preact_w1_to_widest.csv", w1)
    top = ds.sharpness_lr.isel(sharpness_eig=0, drop=True)
    assert_csv_equals(csv / "sharpness.csv", top)
    # the final kernels, seed means on points sorted by target: the point coordinates say which
    final = pd.read_csv(csv / "kernel_final.csv")
    assert set(final.columns) >= {"kernels_layer", "width", *kernel_dims, "kernel"}
    row = final.iloc[0]
    want = ds.feature_kernel.isel(kernels_step=-1).mean("seed")
    point = {d: int(row[d]) for d in kernel_dims}
    expected = want.sel(width=row["width"], kernels_layer=row["kernels_layer"], **point)
    assert row["kernel"] == pytest.approx(float(expected), rel=1e-6)


def test_attention_study_has_attention_section(tmp_path_factory, tmp_path):
    d = study("attention", tmp_path_factory)
    expected = {"summary", "loss", "successive", "power_law", "attention", "coord_check"}
    check_report(build_report(d, tmp_path, coord_check=False), expected)
    assert (tmp_path / "figures" / "attention_grid.png").is_file()
    assert (tmp_path / "figures" / "attention_distance.png").is_file()
    ds = widthwise.open_study(d)
    tv = wa.attention_distance_to_widest(ds.attention, key_dim="key", query_dims="query")
    tv = tv.mean(["attention_point", "head"])
    assert_csv_equals(tmp_path / "csv" / "attention_tv_to_widest.csv", tv)
    # the plotted maps: seed means of the first probe sequence at the last step
    maps = pd.read_csv(tmp_path / "csv" / "attention_maps.csv")
    last = ds.attention.isel(attention_step=-1, attention_point=0).mean("seed")
    got = maps[maps.row == "a1, head 2"].set_index(["width", "query", "key"])["probability"]
    want = last.sel(attention_layer="a1", head=1).to_series()
    np.testing.assert_allclose(got.sort_index().values, want.sort_index().values, rtol=1e-6)


def test_sections_absent_without_data(tmp_path_factory, tmp_path):
    d = study("loss_only", tmp_path_factory)
    page = check_report(
        build_report(d, tmp_path, coord_check=False),
        {"summary", "loss", "successive", "coord_check"},
    )
    # no logits, a single seed, two widths: none of these may appear, even as a title
    for title in (
        "Logit trajectories",
        "Distance to the widest",
        "Bias and variance",
        "Power laws",
        "Feature kernels",
        "Attention maps",
        "eNTK spectrum",
    ):
        assert title not in page


def test_rebuild_removes_stale_files(tmp_path_factory, tmp_path):
    d = study("loss_only", tmp_path_factory)
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "old_figure.png").write_bytes(b"stale")
    build_report(d, tmp_path, coord_check=False)
    assert not (tmp_path / "figures" / "old_figure.png").exists()


def test_compare_overlays_studies(tmp_path_factory, tmp_path):
    a, b = study("base", tmp_path_factory), study("base_sp", tmp_path_factory)
    page = check_report(
        build_compare([a, b], tmp_path),
        {"summary", "loss", "final_loss", "distance"},
        horizon=False,
    )
    assert "mup vs sp" in page  # the differing setting, named in the summary
    df = pd.read_csv(tmp_path / "csv" / "compare_test_loss.csv")
    assert set(df.study) == {"mup", "sp"}


def test_fully_diverged_study_still_reports(tmp_path_factory, tmp_path):
    """Every member diverged (log axes have no positive data): pages render, no crash."""
    d = study("diverged", tmp_path_factory)
    assert (widthwise.open_study(d).diverged_step >= 0).all()
    page = build_report(d, tmp_path / "report", coord_check=False).read_text()
    assert_images_decode(page)
    base = study("base", tmp_path_factory)
    assert_images_decode(build_compare([base, d], tmp_path / "compare").read_text())


# -- command line ----------------------------------------------------------------------


def test_cli_report_and_compare(tmp_path_factory, tmp_path, capsys):
    d = study("loss_only", tmp_path_factory)
    assert main(["report", str(d), "--out", str(tmp_path / "r"), "--no-coord-check"]) == 0
    assert (tmp_path / "r" / "report.html").is_file()
    assert main(["compare", str(d), str(d), "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "report.html").is_file()


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "{missing}"],
        ["report", "{empty}"],
        ["compare", "{empty}", "{missing}", "--out", "{out}"],
        ["compare", "{empty}", "--out", "{out}"],
        ["report", "{empty}", "--tol", "-1"],
    ],
)
def test_cli_errors_are_one_line(argv, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "out": tmp_path / "o"}
    assert main([a.format(**paths) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_bad_tolerance_is_a_user_error(tmp_path_factory, tmp_path):
    d = study("loss_only", tmp_path_factory)
    with pytest.raises(widthwise.UserError, match="tolerance"):
        build_report(d, tmp_path, tol=0.0)


# -- figure functions are pure: arrays in, a Figure with a width colour bar out ---------


def _curves(widths=(16, 32, 64), seeds=2, steps=5) -> xr.DataArray:
    rng = np.random.default_rng(0)
    vals = np.abs(rng.standard_normal((len(widths), seeds, steps))) + 0.1
    return xr.DataArray(
        vals,
        dims=("width", "seed", "step"),
        coords={"width": list(widths), "step": np.arange(steps)},
    )


def test_figures_have_a_width_colorbar():
    fig = fig_curves.loss_curves(_curves(steps=8), None)
    assert isinstance(fig, Figure)
    (ax,) = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    cbar = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    assert len(cbar) == 1 and cbar[0].get_ylabel() == "width"
    assert [t.get_text() for t in cbar[0].get_yticklabels()] == ["16", "32", "64"]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_xlabel() and ax.get_ylabel()
    # colours ordered by width: darker (lower luminance) for narrower
    lum = [np.dot(line.get_color()[:3], [0.299, 0.587, 0.114]) for line in ax.get_lines()]
    assert lum == sorted(lum)


def test_figures_single_width_and_nan_members():
    da = _curves(widths=(32,), steps=8)
    da[0, 0, 2:] = np.nan  # a diverged member
    fig = fig_curves.loss_curves(da, da.rename(step="test_step"))
    panels = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert [a.get_title() for a in panels] == ["training loss (minibatch)", "test loss (probe set)"]
    # one line per panel: the mean over the members still alive, step 0 off the log axis
    alive_mean = np.nanmean(da.isel(width=0).values, axis=0)
    for ax in panels:
        (line,) = ax.get_lines()
        np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3, 4, 5, 6, 7])
        np.testing.assert_allclose(line.get_ydata(), alive_mean[1:])
    np.testing.assert_allclose(alive_mean[2:], da.isel(width=0, seed=1).values[2:])

    data = _curves().isel(step=0)
    curve = xr.DataArray([1.0, 0.5], dims="width", coords={"width": [16, 32]})
    fit = widthwise.analysis.power_law_fit(data)
    fig = fig_fits.power_law({"t": (data, fit, curve)})
    (ax,) = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert ax.get_title() == "t" and ax.get_xscale() == "log" and ax.get_yscale() == "log"
    (fit_line,) = [ln for ln in ax.get_lines() if ln.get_marker() == "None"]
    np.testing.assert_array_equal(fit_line.get_xdata(), [16, 32])
    np.testing.assert_allclose(fit_line.get_ydata(), [1.0, 0.5])
    keys = [t.get_text() for t in ax.get_legend().get_texts()]
    assert fig_fits.FIT_LABEL in keys
    # one marker per width at the seed mean
    means = sorted(
        (float(ln.get_xdata()[0]), float(ln.get_ydata()[0]))
        for ln in ax.get_lines()
        if ln.get_marker() == "o"
    )
    expected = [(float(w), float(data.sel(width=w).mean())) for w in (16, 32, 64)]
    np.testing.assert_allclose(means, expected)
    # no c line at c = 0 (off the log axis), nor a key for it
    assert float(fit.c) == 0 and not any(k.startswith(fig_fits.C_LABEL) for k in keys)
    assert ax.get_legend().get_title().get_text() == fig_fits.fit_label(fit)
    assert "R² = 0.036" in fig_fits.fit_label(fit)  # the fit's own R²


# -- sequence studies: (point, position) samples are folded into one point dim --------


def _sequence_study(widths=(16, 32, 64), seeds=2, steps=3, points=4, seq=5, vocab=7):
    rng = np.random.default_rng(1)
    dims = ("width", "seed", "test_step", "point", "position", "output")
    shape = (len(widths), seeds, steps, points, seq, vocab)
    coords = {"width": list(widths), "seed": np.arange(seeds), "test_step": np.arange(steps)}
    ds = xr.Dataset(
        {
            "test_logits": (dims, rng.standard_normal(shape).astype(np.float32)),
            "test_label": (("point", "position"), rng.integers(0, vocab, (points, seq))),
            "test_loss": (dims[:3], rng.uniform(1, 2, shape[:3])),
            "diverged_step": (("width", "seed"), np.full((len(widths), seeds), -1)),
            "status": (("width",), ["done"] * len(widths)),
            "wall_time": (("width",), np.ones(len(widths))),
        },
        coords={**coords, "point": np.arange(points)},
    )
    ds.attrs = {"name": "seq", "parameterization": "mup", "spec": '{"loss": "cross_entropy"}'}
    return ds


def test_sequence_samples_are_folded_into_points():
    from widthwise.report.build import study_sections
    from widthwise.report.section import FLAT, flatten_samples

    ds = _sequence_study()
    flat = flatten_samples(ds)
    assert flat.test_logits.dims == ("width", "seed", "test_step", "point", "output")
    assert flat.test_label.dims == ("point",) and flat.sizes["point"] == 4 * 5
    assert flat.attrs[FLAT] == "point, position"
    # (sequence 1, position 2) is flattened point 1 * 5 + 2
    np.testing.assert_array_equal(
        flat.test_logits.isel(point=7).values, ds.test_logits.isel(point=1, position=2).values
    )
    ids = [s.id for s in study_sections(ds)]
    assert ids == [
        "horizon",
        "summary",
        "loss",
        "logits",
        "distance",
        "successive",
        "bias_variance",
        "power_law",
    ]


def test_attention_distance_with_one_moving_step_is_drawn_against_width() -> None:
    """Attention at init (uniform maps: distance 0) and the end gives one point per width
    on a log axis; the figure then plots the final distance against width."""
    from widthwise.report.fig_repr import attention_distance

    tv = xr.DataArray(
        np.array([[[0.0, 0.0], [0.3, 0.4]], [[0.0, 0.0], [0.2, 0.3]], [[0.0, 0.0], [0.0, 0.0]]]),
        dims=("width", "attention_step", "attention_layer"),
        coords={"width": [16, 32, 64], "attention_step": [0, 600], "attention_layer": ["b1", "b2"]},
    )
    ax = attention_distance(tv).axes[0]
    assert ax.get_xlabel() == "width"
    lines = [ln for ln in ax.get_lines() if ln.get_label() in ("b1", "b2")]
    assert [list(ln.get_xdata()) for ln in lines] == [[16, 32], [16, 32]]
    np.testing.assert_allclose(lines[0].get_ydata(), [0.3, 0.2])
    np.testing.assert_allclose(lines[1].get_ydata(), [0.4, 0.3])
    moving = tv.copy()
    moving[:2, 0] = 0.1  # two steps with a distance: a curve over training
    assert attention_distance(moving).axes[0].get_xlabel() != "width"


# -- figures a reader can trust: markers where little was measured, one colour per width,
#    legends off the data, labelled log axes, zeros shown -------------------------------


def _panels(fig: Figure) -> list:
    return [a for a in fig.axes if a.get_label() != "<colorbar>"]


def _rgb(c) -> tuple:
    from matplotlib.colors import to_rgb

    c = np.asarray(c, dtype=object if isinstance(c, str) else float)
    if c.ndim == 2:
        c = c[0]
    return tuple(np.round(to_rgb(tuple(c) if c.ndim else str(c)), 4))


def _width_colours(figs) -> dict[str, set]:
    """gid 'width=n' → the colours of every artist drawn for width n in ``figs``."""
    from collections import defaultdict

    from matplotlib.collections import LineCollection

    out: dict[str, set] = defaultdict(set)
    for fig in figs:
        for ax in _panels(fig):
            for art in [*ax.get_lines(), *ax.collections]:
                gid = str(art.get_gid() or "")
                if not gid.startswith("width="):
                    continue
                if isinstance(art, (Line2D, LineCollection)):
                    colour = art.get_color()
                else:
                    colour = art.get_facecolor()
                out[gid.split()[0]].add(_rgb(colour))
    return out


def _legends(fig: Figure) -> list:
    from matplotlib.legend import Legend

    legs = list(fig.legends)
    for ax in fig.axes:
        legs += [c for c in ax.get_children() if isinstance(c, Legend)]
    return legs


def _points_under_legends(fig: Figure) -> list[tuple[str, str]]:
    """(legend text, axes title) for every data point (line vertex, marker, error-bar
    end, scatter point) drawn inside an axes that lies within a legend's box, in display
    coordinates after the figure is laid out as it is saved."""
    from matplotlib.collections import LineCollection, PathCollection

    fig.savefig(io.BytesIO(), format="png")
    fig.draw_without_rendering()
    renderer = fig._get_renderer()
    bad = []
    for leg in _legends(fig):
        box = leg.get_window_extent(renderer)
        for ax in _panels(fig):
            pts = []
            for line in ax.get_lines():
                pts.append(line.get_transform().transform(np.asarray(line.get_xydata(), float)))
            for coll in ax.collections:
                if isinstance(coll, LineCollection):
                    for seg in coll.get_segments():
                        pts.append(coll.get_transform().transform(np.asarray(seg, float)))
                elif isinstance(coll, PathCollection) and len(coll.get_offsets()):
                    pts.append(coll.get_offset_transform().transform(coll.get_offsets()))
            if not pts:
                continue
            xy = np.vstack([p for p in pts if len(p)])
            xy = xy[np.isfinite(xy).all(1)]
            a = ax.bbox
            shown = (
                (xy[:, 0] >= a.x0) & (xy[:, 0] <= a.x1) & (xy[:, 1] >= a.y0) & (xy[:, 1] <= a.y1)
            )
            under = (xy[:, 0] > box.x0) & (xy[:, 0] < box.x1)
            under &= (xy[:, 1] > box.y0) & (xy[:, 1] < box.y1)
            if (shown & under).any():
                texts = [t.get_text() for t in leg.get_texts()] or [leg.get_title().get_text()]
                bad.append((texts[0], ax.get_title()))
    return bad


def _labelled_ticks(ax, which: str = "y") -> list[str]:
    """The non-empty major tick labels of ``ax`` inside its view."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    lo, hi = sorted(axis.get_view_interval())
    locs = axis.get_majorticklocs()
    labels = axis.get_major_formatter().format_ticks(locs)
    return [t for v, t in zip(locs, labels) if lo <= v <= hi and t]


def _sparse_sharpness(steps=(0, 200, 400), widths=(16, 32, 64), seeds=3) -> xr.DataArray:
    rng = np.random.default_rng(3)
    return xr.DataArray(
        rng.uniform(20, 40, (len(widths), seeds, len(steps))),
        dims=("width", "seed", "sharpness_step"),
        coords={"width": list(widths), "sharpness_step": list(steps)},
    )


def test_a_probe_with_few_steps_draws_markers_with_error_bars_not_bands():
    from matplotlib.collections import LineCollection, PolyCollection

    da = _sparse_sharpness()
    fig = fig_fits.sharpness(da, {r"$2/\mathrm{lr}$ = 40": 40.0}, widths=[16, 32, 64])
    (ax,) = _panels(fig)
    # no band, no line joining the 3 measured steps: one marker per (width, step) with
    # the range over seeds as its error bar
    assert not [c for c in ax.collections if isinstance(c, PolyCollection)]
    data = [ln for ln in ax.get_lines() if str(ln.get_gid()).startswith("width=")]
    assert len(data) == 3 and all(ln.get_linestyle() == "None" for ln in data)
    assert all(ln.get_marker() == "o" and len(ln.get_xdata()) == 3 for ln in data)
    bars = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(bars) == 3  # one set of error bars per width
    seg = bars[0].get_segments()[1]  # width 16, step 200: from the seed min to the max
    np.testing.assert_allclose(sorted(seg[:, 1]), [da[0, :, 1].min(), da[0, :, 1].max()])
    # a linear step axis, ticks at exactly the recorded steps; widths dodged apart
    assert ax.get_xscale() == "linear"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "200", "400"]
    xs = [ln.get_xdata()[1] for ln in data]
    assert xs == sorted(xs) and xs[0] < 200 < xs[-1]
    # the label is formatted math, not raw Λ^½
    fig = fig_fits.sharpness(da, {}, ylabel=r"top eigenvalue of $\Lambda^{1/2} H \Lambda^{1/2}$")
    assert "^½" not in _panels(fig)[0].get_ylabel()
    # six steps or more: lines with bands over seeds
    dense = _sparse_sharpness(steps=tuple(range(0, 60, 10)))
    (ax,) = _panels(fig_fits.sharpness(dense, {}))
    assert [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert all(ln.get_linestyle() == "-" for ln in ax.get_lines() if ln.get_gid())


def test_sparse_kernel_panels_key_layers_by_marker():
    """Kernels at 3 steps: the successive-difference and kernel-distance panels mark each
    layer with its own marker, and their legends show those markers (not lines)."""
    rng = np.random.default_rng(4)
    diff = xr.DataArray(
        rng.uniform(0.05, 0.3, (2, 3, 2)),
        dims=("width", "kernels_step", "kernels_layer"),
        coords={"width": [16, 32], "kernels_step": [0, 10, 20], "kernels_layer": ["l1", "l2"]},
        attrs={"relative": 1},
    )
    fig = fig_curves.successive_differences(
        {"feature kernels": diff}, tol=0.05, widths=[16, 32, 64]
    )
    (ax,) = _panels(fig)
    markers = {ln.get_marker() for ln in ax.get_lines() if str(ln.get_gid()).startswith("width=")}
    assert markers == {"o", "s"}
    (leg,) = fig.legends  # one legend for the figure, below the panels
    handles = {t.get_text(): h for t, h in zip(leg.get_texts(), leg.legend_handles)}
    assert handles["l1"].get_marker() == "o" and handles["l2"].get_marker() == "s"
    assert handles["l1"].get_linestyle() == "None"  # a marker key for markers drawn
    assert handles["tolerance 0.05"].get_linestyle() == "--"


def test_zero_on_a_log_axis_is_a_visible_marker_and_log_ticks_are_labelled():
    """A zero-initialised readout is 0 at step 0: on the coordinate check's log axis it is
    an open marker on the bottom edge, keyed in the legend; every panel labels ≥ 2 ticks."""
    vals = np.array(
        [
            [[0.52, 0.52], [0.50, 0.51], [0.0, 0.06]],
            [[0.55, 0.55], [0.53, 0.53], [0.0, 0.065]],
            [[0.56, 0.56], [0.55, 0.55], [0.0, 0.07]],
        ]
    )  # (width, layer, step)
    da = xr.DataArray(
        vals,
        dims=("width", "layer", "step"),
        coords={"width": [32, 64, 128], "layer": ["l1", "l2", "out"], "step": [0, 1]},
    )
    fig = fig_fits.coord_check(da)
    first, second = _panels(fig)
    zeros = [ln for ln in first.get_lines() if ln.get_gid() == "zero_on_log_axis"]
    assert len(zeros) == 1 and list(zeros[0].get_xdata()) == [32, 64, 128]
    assert zeros[0].get_marker() != "None" and zeros[0].get_markerfacecolor() == "white"
    assert zeros[0].get_markeredgecolor() == "C2"  # the readout's colour
    assert not [ln for ln in second.get_lines() if ln.get_gid() == "zero_on_log_axis"]
    (leg,) = fig.legends
    assert "0 (off the log scale)" in [t.get_text() for t in leg.get_texts()]
    fig.draw_without_rendering()
    for ax in (first, second):
        assert len(_labelled_ticks(ax)) >= 2, _labelled_ticks(ax)
    assert not _points_under_legends(fig)


@pytest.mark.parametrize("view", [(0.5, 0.6), (0.07, 0.18), (0.2, 1.3), (1e-6, 1.0), (3.0, 3000.0)])
def test_log_axes_always_label_two_values(view):
    from widthwise.report.style import log_axis, new_figure

    fig, axes = new_figure(1, 3)
    for ax in axes[0]:
        ax.plot([1, 2], list(view))
        log_axis(ax, "y")
        ax.set_ylim(*view)
    fig.draw_without_rendering()
    for ax in axes[0]:
        labels = _labelled_ticks(ax)
        assert 2 <= len(labels) <= 8, (view, labels)


def test_one_colour_per_width_in_every_panel_of_a_report(tmp_path_factory):
    """Every artist drawn for width n, in every figure of the report (curves, sparse
    markers, bands, against-width markers, successive pairs labelled by their narrower
    width, panels without the widest), has the one colour style.width_colors gives n."""
    from widthwise.report.build import study_sections
    from widthwise.report.style import width_colors

    ds = widthwise.open_study(study("probes", tmp_path_factory))
    figs = [p.figure for s in study_sections(ds) for p in s.panels]
    colours = _width_colours(figs)
    expected = width_colors(ds.width.values.tolist())
    assert set(colours) == {f"width={int(w)}" for w in ds.width.values}
    for w, c in expected.items():
        assert colours[f"width={int(w)}"] == {_rgb(c)}, w
    # every legend of the report sits off the data
    for fig in figs:
        assert not _points_under_legends(fig)


def test_compare_puts_studies_side_by_side_with_one_colour_map():
    from widthwise.report import fig_compare
    from widthwise.report.style import width_colors

    a = _curves(widths=(16, 32, 64), steps=12)
    b = _curves(widths=(32, 64, 128), steps=12) * 2
    fig = fig_compare.overlay_curves(
        {"training loss": {"mup": a, "sp": b}, "test loss": {"mup": a, "sp": b}},
        xdims={"training loss": "step", "test loss": "step"},
        ylabel={"training loss": "MSE", "test loss": "MSE"},
    )
    panels = _panels(fig)
    assert [ax.get_title() for ax in panels] == [
        "mup — training loss",
        "sp — training loss",
        "mup — test loss",
        "sp — test loss",
    ]  # one column per study, one row per quantity
    assert panels[0].get_ylim() == panels[1].get_ylim()  # a row shares its y range
    # one colour per width in both columns: 32 and 64 alike, on the union 16-128
    union = width_colors([16, 32, 64, 128])
    for w, c in _width_colours([fig]).items():
        assert c == {_rgb(union[int(w.split("=")[1])])}, w
    fv = fig_compare.overlay_vs_width(
        {"final": {"mup": a.isel(step=-1), "sp": b.isel(step=-1)}}, ylabel="MSE"
    )
    assert [ax.get_title() for ax in _panels(fv)] == ["mup — final", "sp — final"]
    for w, c in _width_colours([fv]).items():
        assert c == {_rgb(union[int(w.split("=")[1])])}, w
    gids = {ln.get_gid() for ax in _panels(fv) for ln in ax.get_lines()}
    assert {"reference_slope_-0.5", "reference_slope_-1"} <= gids  # against width: slopes
    assert not _points_under_legends(fv)
    # panels that each hold one study (claims.py's muP vs SP): one row, side by side
    single = fig_compare.overlay_curves(
        {"muP, training loss": {"muP": a}, "SP, training loss": {"SP": b}},
        xdims={"muP, training loss": "step", "SP, training loss": "step"},
        ylabel={"muP, training loss": "MSE", "SP, training loss": "MSE"},
    )
    assert [ax.get_title() for ax in _panels(single)] == ["muP, training loss", "SP, training loss"]


def test_compare_report_colours_a_width_alike_in_every_figure(tmp_path_factory):
    from widthwise.report.compare import compare_sections
    from widthwise.report.section import flatten_samples

    dirs = [study("base", tmp_path_factory), study("base_sp", tmp_path_factory)]
    studies = {lab: flatten_samples(widthwise.open_study(d)) for lab, d in zip(("mup", "sp"), dirs)}
    figs = [p.figure for s in compare_sections(studies, dirs) for p in s.panels]
    assert len(figs) >= 3  # loss curves, final loss, distance (without each widest)
    colours = _width_colours(figs)
    assert set(colours) == {"width=16", "width=32", "width=64"}
    assert all(len(c) == 1 for c in colours.values()), colours
    for fig in figs:
        cols = {ax.get_title().split(" — ")[0] for ax in _panels(fig) if ax.axison}
        assert cols == {"mup", "sp"}  # one column per study in every figure
        assert not _points_under_legends(fig)


def test_power_law_fit_box_and_limit_curve_stay_off_the_data():
    rng = np.random.default_rng(5)
    widths = [32, 64, 128, 256, 512, 1024]
    n = np.array(widths, dtype=float)
    data = xr.DataArray(
        (0.25 + 2.0 * n**-0.7)[:, None] * (1 + 0.01 * rng.standard_normal((6, 4))),
        dims=("width", "seed"),
        coords={"width": widths},
    )
    fit = wa.power_law_fit(data)
    grid = np.geomspace(32, 1024, 40)
    curve = xr.DataArray(
        float(fit.a) * grid ** -float(fit.b) + float(fit.c), dims="width", coords={"width": grid}
    )
    steps = np.arange(0, 60, 5)
    limit = xr.Dataset(
        {
            "limit": ("test_step", np.where(steps % 15 == 5, 0.0, 1.0 / (1 + steps))),
            "limit_ci": (("test_step", "bound"), np.stack([0.5 / (1 + steps), 2 / (1 + steps)], 1)),
        },
        coords={"test_step": steps, "bound": ["lo", "hi"]},
    )
    fig = fig_fits.power_law({"test loss": (data, fit, curve)}, limit)
    fit_ax, limit_ax = _panels(fig)
    assert fit_ax.get_legend().get_title().get_text() == fig_fits.fit_label(fit)
    assert not _points_under_legends(fig)  # the box covers neither width 1024 nor c
    # c = 0 at some steps: open markers on the bottom edge, keyed; the rest a line
    zeros = [ln for ln in limit_ax.get_lines() if ln.get_gid() == "zero_on_log_axis"]
    assert list(zeros[0].get_xdata()) == [5, 20, 35, 50]
    assert "$c = 0$ (off the log scale)" in [
        t.get_text() for t in limit_ax.get_legend().get_texts()
    ]


def test_ntk_prediction_panel_states_the_gap_from_the_data():
    widths = [16, 32]
    steps = np.array([0, 10, 20, 40])
    pred = xr.DataArray(
        np.exp(-steps / 10.0)[None, :] * np.ones((2, 1)),
        dims=("width", "test_step"),
        coords={"width": widths, "test_step": steps},
    )
    meas = xr.DataArray(
        np.stack([np.full((3, 4), 0.3), np.full((3, 4), 0.2)]),
        dims=("width", "seed", "test_step"),
        coords={"width": widths, "test_step": steps},
    )
    ens = meas.mean("seed") - 0.01
    eig = xr.DataArray(
        [[3.0, 1.0, 0.1], [3.1, 1.0, 0.1]], dims=("width", "mode"),
        coords={"width": widths, "mode": [1, 2, 3]},
    )  # fmt: skip
    from widthwise.report.fig_repr import ntk_spectrum

    fig = ntk_spectrum(
        eig, None, pred, meas, time_dim="test_step", measured_ensemble=ens, floor=0.25
    )
    title = _panels(fig)[-1].get_legend().get_title().get_text()
    r16, r32 = 0.3 / np.exp(-4.0), 0.2 / np.exp(-4.0)
    assert title.startswith("measured / predicted, step 40:")
    assert f"{r16:.3g}× at width 16" in title and f"{r32:.3g}× at 32" in title
    assert f"seed-mean network: {0.29 / np.exp(-4.0):.3g}×" in title
    labels = [t.get_text() for t in _panels(fig)[-1].get_legend().get_texts()]
    assert "seed-mean network" in labels and "floor 0.25" in labels


def test_figures_namespace_has_every_public_figure():
    from widthwise.report import fig_horizon, fig_repr, figures

    assert figures.horizon is fig_horizon.horizon
    assert figures.kernel_limit_distance is fig_repr.kernel_limit_distance
    for name in figures.__all__:
        assert callable(getattr(figures, name)), name
