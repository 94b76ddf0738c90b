"""Learning-rate transfer (widthwise.analysis.transfer; μTransfer, Yang et al. 2022).

Oracles: a loss that is an exact parabola in log lr has its vertex as optimum (to
rounding); the verdict must be "transfers" only where the optimum truly stays, "does
not transfer" where it moves by ×16, and never "transfers" on noise, NaN or constant
losses. The report and ``widthwise compare`` on real sweep studies (mup vs sp).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import tiny_spec_dict, write_spec

import widthwise.analysis as wa
from widthwise.analysis import AnalysisError
from widthwise.cli import main

GRID = 2.0 ** np.arange(-8, 1)  # 9 points, ×2 apart
WIDTHS = [64, 256, 1024]


def losses(optima: dict[int, float], *, seeds: int = 6, noise: float = 0.02, rng_seed: int = 0):
    """(width, lr, seed): (ln lr − ln opt_w)² + 0.5 + seed-level noise (lr-dependent)."""
    rng = np.random.default_rng(rng_seed)
    x = np.log(GRID)
    vals = np.stack(
        [
            (x[:, None] - np.log(optima[w])) ** 2
            + 0.5
            + noise * rng.standard_normal((len(GRID), seeds))
            for w in optima
        ]
    )
    return xr.DataArray(
        vals,
        dims=("width", "lr", "seed"),
        coords={"width": list(optima), "lr": GRID, "seed": np.arange(seeds)},
    )


def test_exact_parabola_gives_its_vertex() -> None:
    true = {w: 0.0123 for w in WIDTHS}  # between grid points
    opt = wa.optimal_lr(losses(true, noise=0.0, seeds=3))
    np.testing.assert_allclose(opt["optimum"].values, 0.0123, rtol=1e-12)
    assert not opt["at_edge"].any()
    # no seed variation: the interval is the point, and the verdict cannot be made
    v = wa.transfer_verdict(opt)
    assert (v["verdict"] == "undetermined").all()
    assert set(v["reason"].values) == {"no seed variation"}


def test_optimum_that_stays_transfers_and_one_that_moves_does_not() -> None:
    stays = wa.transfer_verdict(wa.optimal_lr(losses({w: 0.02 for w in WIDTHS})))
    assert (stays["verdict"] == "transfers").all(), stays["reason"].values
    ends = stays.sel(pair="64-1024")
    assert abs(float(ends["factor"]) - 1) < 0.1
    assert (
        0.8 < float(ends["factor_lo"]) <= float(ends["factor"]) <= float(ends["factor_hi"]) < 1.25
    )

    # SP-like drift: optimum ∝ 1/width, ×1/16 from 64 to 1024
    moves = wa.transfer_verdict(wa.optimal_lr(losses({w: 0.5 * 64 / w for w in WIDTHS})))
    ends = moves.sel(pair="64-1024")
    assert str(ends["verdict"].item()) == "does not transfer"
    np.testing.assert_allclose(float(ends["factor"]), 1 / 16, rtol=0.1)
    assert float(ends["factor_hi"]) < 0.5
    sentence = wa.transfer_sentence(moves)
    assert "does not transfer" in sentence and "64 to 1024" in sentence


def test_noise_never_transfers_confidently() -> None:
    transfers = 0
    for r in range(40):
        rng = np.random.default_rng(100 + r)
        noise = xr.DataArray(
            rng.standard_normal((2, len(GRID), 4)),
            dims=("width", "lr", "seed"),
            coords={"width": [64, 1024], "lr": GRID, "seed": np.arange(4)},
        )
        v = wa.transfer_verdict(wa.optimal_lr(noise, n_boot=300, seed=r), pairs=("ends",))
        transfers += int((v["verdict"] == "transfers").sum())
    assert transfers <= 2, transfers  # at most 5 % of 40 draws


@pytest.mark.parametrize("kind", ["nan", "constant", "inf"])
def test_degenerate_inputs_give_no_verdict(kind: str) -> None:
    base = losses({w: 0.02 for w in WIDTHS})
    if kind == "nan":
        bad = base.where(base.width != 1024)  # one width never measured
    elif kind == "constant":
        bad = xr.full_like(base, 0.7)
    else:
        bad = xr.full_like(base, np.inf)  # every member diverged
    v = wa.transfer_verdict(wa.optimal_lr(bad))
    touched = v.sel(pair=[p for p in v.pair.values if kind != "nan" or "1024" in p])
    assert (touched["verdict"] == "undetermined").all(), touched["reason"].values


def test_edge_and_diverged_points() -> None:
    base = losses({64: 0.02, 256: 0.02, 1024: 10.0})  # 1024's optimum beyond the grid
    opt = wa.optimal_lr(base)
    assert bool(opt["at_edge"].sel(width=1024)) and opt["edge"].sel(width=1024).item() == "high"
    v = wa.transfer_verdict(opt)
    assert str(v.sel(pair="64-1024")["verdict"].item()) == "undetermined"
    assert "edge" in str(v.sel(pair="64-1024")["reason"].item())

    # a diverged member makes its grid point +inf for the seed mean, not a missing value
    div = xr.zeros_like(base, dtype=bool)
    div.loc[{"width": 64, "lr": GRID[-1], "seed": 0}] = True
    opt = wa.optimal_lr(base.assign_coords(diverged=div))
    assert np.isposinf(float(opt["loss_mean"].sel(width=64, lr=GRID[-1])))
    assert int(opt["n_diverged"].sel(width=64, lr=GRID[-1])) == 1
    np.testing.assert_allclose(float(opt["optimum"].sel(width=64)), 0.02, rtol=0.3)


def test_bad_arguments() -> None:
    with pytest.raises(AnalysisError, match="tol_factor"):
        wa.transfer_verdict(wa.optimal_lr(losses({64: 0.02, 256: 0.02})), tol_factor=1.0)
    with pytest.raises(AnalysisError, match="scale"):
        wa.optimal_lr(losses({64: 0.02}), scale="cubic")  # type: ignore[arg-type]
    with pytest.raises(AnalysisError, match="2 widths"):
        wa.transfer_verdict(wa.optimal_lr(losses({64: 0.02})))


@pytest.fixture(scope="module")
def sweep_studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("transfer")
    out = {}
    for p in ("mup", "sp"):
        spec = tiny_spec_dict(
            root / p,
            name=f"tr_{p}",
            widths=[32, 128],
            seeds=2,
            steps=20,
            parameterization={"name": p},
            optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9},
            probes={"train_loss": {"every": 1}, "test": {"every": 10}},
            checkpoint_every=10,
            sweep={"lr": [0.01, 0.03, 0.1, 0.3, 3.0]},
        )
        assert main(["run", str(write_spec(root / f"{p}.yaml", spec)), "--quiet"]) == 0
        out[p] = root / p
    return out


def test_loss_at_and_tuned_point_on_a_study(sweep_studies: dict[str, Path]) -> None:
    ds = widthwise_open(sweep_studies["mup"])
    loss = wa.loss_at(ds)
    assert loss.dims == ("width", "lr", "seed")
    np.testing.assert_allclose(
        loss.values, ds.train_loss.isel(step=slice(-10, None)).mean("step").values
    )
    assert bool(loss["diverged"].sel(lr=3.0).all())  # lr=3 diverges for every member
    point = wa.tuned_point(ds)
    mean = loss.where(~loss["diverged"]).mean("seed").sel(width=128)
    assert point == {"lr": float(mean.idxmin("lr"))}
    at = wa.select_point(ds, point)
    assert "lr" not in at.dims and at.attrs["sweep_point"] == point
    assert json.loads(at.attrs["spec"])["optimizer"]["lr"] == point["lr"]
    assert "sweep" not in json.loads(at.attrs["spec"])


def widthwise_open(path: Path) -> xr.Dataset:
    import widthwise

    return widthwise.open_study(path)


def test_report_and_compare_show_transfer(sweep_studies: dict[str, Path], tmp_path: Path) -> None:
    assert main(["report", str(sweep_studies["mup"]), "--out", str(tmp_path / "r")]) == 0
    page = (tmp_path / "r" / "report.html").read_text()
    assert 'id="transfer"' in page and "Other sections show lr = " in page
    assert (tmp_path / "r" / "figures" / "transfer.png").stat().st_size > 10_000
    cmp = tmp_path / "c"
    assert (
        main(["compare", str(sweep_studies["mup"]), str(sweep_studies["sp"]), "--out", str(cmp)])
        == 0
    )
    page = (cmp / "report.html").read_text()
    assert "Learning-rate transfer" in page and "the optimal lr moves by" in page
    assert (cmp / "figures" / "compare_transfer.png").exists()


def test_collapsed_members_far_from_the_optimum_keep_the_interval() -> None:
    """At a large lr every member may collapse to one constant-output loss (dead ReLUs:
    the same batches give the same loss): no seed spread there, but the optimum is
    decided elsewhere and keeps its interval (measured on examples/transfer)."""
    base = losses({64: 0.02, 1024: 0.02})
    collapsed = base.copy()
    collapsed.loc[{"lr": GRID[-2:]}] = 9.0  # identical for every seed and width
    opt = wa.optimal_lr(collapsed)
    assert np.isfinite(opt["optimum_lo"]).all() and opt["seed_varies"].all()
    ref = wa.optimal_lr(base)
    np.testing.assert_allclose(opt["optimum"], ref["optimum"], rtol=1e-12)
    v = wa.transfer_verdict(opt)
    assert (v["verdict"] == "transfers").all(), v["reason"].values
    # but no spread at the optimum itself is still no interval
    flat = base.copy()
    flat.loc[{"width": 64}] = base.sel(width=64).mean("seed")
    assert np.isnan(float(wa.optimal_lr(flat)["optimum_lo"].sel(width=64)))


def test_basin_spans_a_flat_valley() -> None:
    x = np.log2(GRID)  # -8 … 0
    curve = np.where((x >= -6) & (x <= -2), 0.5, 0.5 + 0.1 * np.minimum(abs(x + 6), abs(x + 2)))
    rng = np.random.default_rng(1)
    vals = curve[None, :, None] * (1 + 0.001 * rng.standard_normal((2, len(GRID), 4)))
    da = xr.DataArray(
        vals, dims=("width", "lr", "seed"),
        coords={"width": [64, 1024], "lr": GRID, "seed": np.arange(4)},
    )  # fmt: skip
    opt = wa.optimal_lr(da)
    np.testing.assert_allclose(opt["basin_lo"], 2.0**-6)
    np.testing.assert_allclose(opt["basin_hi"], 2.0**-2)
    assert "at lr 0.0156–0.25 at width 64" in wa.transfer_sentence(wa.transfer_verdict(opt))


def test_a_grid_with_zero_is_drawn_on_a_linear_axis() -> None:
    """A momentum (or weight decay) grid holds 0: the optimum is fitted on a linear scale
    and the figure draws it so, the star on its curve (a log axis would drop the 0)."""
    import warnings

    from widthwise.report import fig_transfer

    grid = np.array([0.0, 0.5, 0.8, 0.9, 0.95])
    rng = np.random.default_rng(0)
    vals = np.stack(
        [(grid[:, None] - c) ** 2 + 0.3 + 0.01 * rng.standard_normal((5, 4)) for c in (0.7, 0.8)]
    )
    da = xr.DataArray(
        vals,
        dims=("width", "momentum", "seed"),
        coords={"width": [64, 256], "momentum": grid, "seed": np.arange(4)},
    )
    opt = wa.optimal_lr(da, dim="momentum")
    assert opt.attrs["scale"] == "linear"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns of a non-positive log xlim
        fig = fig_transfer.transfer({"final": (da, opt)}, dim="momentum", tol_factor=2.0)
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear" and ax.get_xlim()[0] < 0 < ax.get_xlim()[1]
    assert ax.get_xlabel() == "SGD momentum"
    stars = [ln for ln in ax.lines if ln.get_marker() == "*"]
    assert len(stars) == 2
    for star, w in zip(stars, (64, 256)):
        np.testing.assert_allclose(star.get_xdata()[0], float(opt["optimum"].sel(width=w)))
