"""examples/paper/checks.py: the interval checks behind the paper claims' verdicts.

On synthetic (width, seed, point) data with a known width effect the checks pass; on
noise without a width effect they pass at most at the rate the 95 % interval allows;
on NaN and constant data they are "undetermined", never "pass". The claims themselves
(on real studies, with noise, NaN and constant inputs too) are in tests/test_repro.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "paper"))

import checks as ck  # noqa: E402

WIDTHS = [64, 128, 256, 512, 1024]


def logits(rng: np.random.Generator, *, effect: float, seeds: int = 6, points: int = 64):
    """f(n, s, x) = g(x) + effect·h(x)/√n + seed noise/√n: the ensemble converges as n^-1/2."""
    g = rng.standard_normal(points)
    h = rng.standard_normal(points)
    n = np.asarray(WIDTHS, dtype=float)[:, None, None]
    noise = rng.standard_normal((len(WIDTHS), seeds, points))
    f = g + effect * h / np.sqrt(n) + noise / np.sqrt(n)
    return xr.DataArray(
        f[..., None],
        dims=("width", "seed", "point", "output"),
        coords={"width": WIDTHS, "seed": np.arange(seeds)},
    )


def slope_check(x: xr.DataArray) -> ck.Check:
    stat = ck.slope_of(lambda z: ck.distance_to_widest(z, ("point", "output")))
    iv = ck.boot(x, stat, sample_dims=("point", "output"), n_boot=200)
    return ck.compare("distance falls with width", iv, "<", 0.0)


def test_slope_passes_with_a_width_effect() -> None:
    rng = np.random.default_rng(0)
    c = slope_check(logits(rng, effect=3.0))
    assert c.result == "pass", (c.value, c.margin)
    est = float(c.value.split()[0])
    n = np.asarray(WIDTHS[:-1], dtype=float)
    law = np.polyfit(np.log(n), np.log(n**-0.5 - WIDTHS[-1] ** -0.5), 1)[0]
    assert est == pytest.approx(law, abs=0.15)  # the deterministic part, seed noise around it


def test_slope_on_noise_rarely_passes() -> None:
    """Seed noise the same at every width: no width effect, the check must not pass."""
    rng = np.random.default_rng(1)
    passes = 0
    for _ in range(20):
        f = logits(rng, effect=0.0)
        g = f.isel(width=0, drop=True)
        flat = (
            g.mean("seed") + 0.1 * xr.DataArray(rng.standard_normal(f.shape), dims=f.dims)
        ).assign_coords(width=WIDTHS)
        passes += slope_check(flat).passed
    assert passes <= 2


@pytest.mark.parametrize("mode", ["nan", "constant"])
def test_nan_and_constant_are_undetermined(mode: str) -> None:
    f = logits(np.random.default_rng(2), effect=3.0)
    bad = f * np.nan if mode == "nan" else xr.full_like(f, 0.5)
    c = slope_check(bad)
    assert c.result == "undetermined", (c.value, c.margin)


def test_a_diverged_member_is_left_out_not_fatal() -> None:
    f = logits(np.random.default_rng(3), effect=3.0)
    f[0, 0, 5, 0] = np.nan
    assert slope_check(f).result == "pass"


def interval(est, lo, hi, **kw) -> xr.Dataset:
    ds = xr.Dataset({"estimate": xr.DataArray(est), "lo": xr.DataArray(lo), "hi": xr.DataArray(hi)})
    for k, v in kw.items():
        ds[k] = xr.DataArray(v)
    return ds


@pytest.mark.parametrize(
    ("op", "est", "lo", "hi", "result"),
    [
        ("<", 0.02, 0.01, 0.04, "pass"),
        ("<", 0.06, 0.051, 0.08, "fail"),
        ("<", 0.04, 0.03, 0.06, "undetermined"),
        (">", 0.9, 0.8, 0.95, "pass"),
        (">", 0.4, 0.3, 0.45, "fail"),
        ("<", np.nan, 0.01, 0.02, "undetermined"),
        ("<", 0.01, 0.0, np.inf, "undetermined"),
    ],
)
def test_compare_decides_on_the_interval(op, est, lo, hi, result) -> None:
    thr = 0.05 if op == "<" else 0.5
    c = ck.compare("x", interval(est, lo, hi), op, thr)
    assert c.result == result


def test_compare_every_entry_and_seed_guards() -> None:
    iv = xr.Dataset(
        {
            "estimate": ("width", [0.01, 0.02]),
            "lo": ("width", [0.0, 0.06]),
            "hi": ("width", [0.02, 0.09]),
        },
        coords={"width": [64, 128]},
    )
    assert ck.compare("x", iv, "<", 0.05).result == "fail"  # one width beyond suffices
    iv2 = interval(0.01, 0.0, 0.02, n_seeds=1)
    assert ck.compare("x", iv2, "<", 0.05).result == "undetermined"
    iv3 = interval(0.01, 0.0, 0.02, seed_varies=False)
    assert ck.compare("x", iv3, "<", 0.05).result == "undetermined"


def test_all_of_and_verdict() -> None:
    p, u, f = (ck.Check("c", "v", r) for r in ("pass", "undetermined", "fail"))
    assert ck.all_of("t", [p, p]).result == "pass"
    assert ck.all_of("t", [p, u]).result == "undetermined"
    assert ck.all_of("t", [u, f]).result == "fail"
    assert ck.verdict_of([p, p]) == "reproduced"
    assert ck.verdict_of([p, u]) == "partly"
    assert ck.verdict_of([u, f]) == "not at this scale"


def test_log_slope_exact() -> None:
    n = np.asarray(WIDTHS, dtype=float)
    y = xr.DataArray(3.0 * n**-0.5, dims="width", coords={"width": WIDTHS})
    assert float(ck.log_slope(y)) == pytest.approx(-0.5, abs=1e-12)
    assert np.isnan(float(ck.log_slope(y.where(y.width != 256, 0.0))))


def test_successive_distance_matches_a_loop() -> None:
    f = logits(np.random.default_rng(4), effect=1.0)
    d = ck.successive_distance(f, ("point", "output"))
    m = f.mean("seed").values[..., 0]
    want = [
        np.sqrt(np.mean((m[i + 1] - m[i]) ** 2)) / np.sqrt(np.mean(m[i + 1] ** 2))
        for i in range(len(WIDTHS) - 1)
    ]
    np.testing.assert_allclose(d.values, want, rtol=1e-12)
    assert list(d.width.values) == WIDTHS[:-1]
