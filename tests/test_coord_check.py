"""Oracle: the coordinate check (Yang et al. 2022) of a depth-3 ReLU MLP.

Setup: widths 64..1024 (base 64), 4 seeds, Adam lr 3e-2, 3 steps, batch 32, on the
Gegenbauer stream (D = 16, degree 1), 128 probe points.

Theory. Under ``mup`` every layer's coordinates stay Θ(1) after training steps,
so mean |activation| is flat in width. The readout starts at zero
(``readout_zero_init``, mup's recommended readout init): with the default init
the output's initial part, which shrinks like 1/√m, would still be visible after
3 steps at the narrow widths. Under ``sp`` with Adam, a weight with a width-sized
fan-in moves each entry by ~lr, so its contribution grows like width: the output
and the hidden layer ``l2`` grow, while ``l1`` (fan-in D = 16, fixed) does not.

Measured (data seed 0; data seeds 1-2 agree within ~20%), max/min over widths:
mup l1 1.01, l2 1.14, out 1.11; sp out ×42 (1.06 → 44.3, increasing), l2 ×5.4
(width 1024 / width 64), l1 1.04.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from widthwise.analysis.coordinates import coord_sentence, coord_slopes
from widthwise.coordinate_check import coord_check
from widthwise.spec import validate_spec

pytestmark = pytest.mark.quick

WIDTHS = [64, 128, 256, 512, 1024]


def _check(param: dict) -> xr.DataArray:
    spec = validate_spec(
        {
            "name": "coord",
            "model": {"family": "mlp", "options": {"depth": 3, "activation": "relu"}},
            "widths": WIDTHS,
            "base_width": 64,
            "seeds": 4,
            "parameterization": param,
            "optimizer": {"name": "adam", "lr": 3e-2},
            "steps": 3,
            "batch_size": 32,
            "data": {"stream": "gegenbauer", "seed": 0, "options": {"dim": 16, "degree": 1}},
            "device": "cpu",
        }
    )
    return coord_check(spec, steps=3, points=128)


@pytest.fixture(scope="module")
def mup_check() -> xr.DataArray:
    return _check({"name": "mup", "readout_zero_init": True})


@pytest.fixture(scope="module")
def sp_check() -> xr.DataArray:
    return _check({"name": "sp"})


LAYERS = ["preact/l1", "act/l1", "preact/l2", "act/l2", "output"]


def test_coord_check_shape(mup_check: xr.DataArray) -> None:
    assert mup_check.dims == ("width", "seed", "layer", "step")
    assert list(mup_check.width.values) == WIDTHS
    assert list(mup_check.seed.values) == [0, 1, 2, 3]
    assert list(mup_check.layer.values) == LAYERS
    assert list(mup_check.kind.values) == [
        "preactivation", "activation", "preactivation", "activation", "output"
    ]  # fmt: skip
    assert list(mup_check.step.values) == [0, 1, 2, 3]
    assert np.isfinite(mup_check.values).all()
    # zero readout: the output is exactly 0 at init and not after training
    assert (mup_check.sel(layer="output", step=0) == 0).all()
    assert (mup_check.sel(layer="output", step=3) > 0.1).all()


@pytest.mark.parametrize("layer", LAYERS)
def test_mup_activations_flat_in_width(mup_check: xr.DataArray, layer: str) -> None:
    v = mup_check.sel(layer=layer, step=3).mean("seed").values
    assert v.max() / v.min() < 1.3, (layer, v)


def test_sp_output_and_hidden_grow_with_width(sp_check: xr.DataArray) -> None:
    final = sp_check.sel(step=3).mean("seed")
    out = final.sel(layer="output").values
    assert (np.diff(out) > 0).all(), out
    assert out[-1] / out[0] > 10, out  # measured ×42
    l2 = final.sel(layer="act/l2").values
    assert l2[-1] / l2[0] > 2.5, l2  # measured ×5.4
    # the input layer has a fixed fan-in: flat even in sp
    l1 = final.sel(layer="act/l1").values
    assert l1.max() / l1.min() < 1.3, l1


def test_sp_and_mup_agree_at_init_on_hidden_layers(
    sp_check: xr.DataArray, mup_check: xr.DataArray
) -> None:
    """Same seeds, same init of input and hidden weights: identical until training."""
    for layer in LAYERS[:4]:
        np.testing.assert_array_equal(
            sp_check.sel(layer=layer, step=0).values, mup_check.sel(layer=layer, step=0).values
        )


# -- the verdict (widthwise.analysis.coordinates) ----------------------------------------


def test_verdict_flat_under_mup_and_growing_under_sp(
    mup_check: xr.DataArray, sp_check: xr.DataArray
) -> None:
    mup_v = coord_slopes(mup_check)
    assert (mup_v.verdict == "flat").all(), mup_v[["slope", "slope_lo", "slope_hi"]]
    sp_v = coord_slopes(sp_check)
    verdicts = dict(zip(sp_v.layer.values, sp_v.verdict.values))
    # the input layer's fan-in is fixed: flat even in sp; the rest grows (measured ×5-40)
    assert verdicts == {
        "preact/l1": "flat", "act/l1": "flat",
        "preact/l2": "grows", "act/l2": "grows", "output": "grows",
    }, sp_v[["slope", "slope_lo", "slope_hi"]]  # fmt: skip
    assert float(sp_v.slope.sel(layer="output")) > 0.9
    assert "expected under sp" in str(sp_v.hint.sel(layer="output").item())
    assert coord_sentence(mup_v).startswith("Log-log slope of coordinate size in width after 3")


def _synthetic(values: np.ndarray) -> xr.DataArray:
    """(width, seed) sizes at one step of one layer, as coord_check returns them."""
    return xr.DataArray(
        values[:, :, None, None],
        dims=("width", "seed", "layer", "step"),
        coords={"width": WIDTHS, "seed": np.arange(values.shape[1]), "layer": ["h"], "step": [3]},
        attrs={"parameterization": "mup"},
    )


def test_verdict_exact_power_law_and_degenerate_inputs() -> None:
    rng = np.random.default_rng(0)
    w = np.array(WIDTHS, dtype=float)[:, None]
    grows = _synthetic(w**0.5 * np.exp(0.02 * rng.standard_normal((5, 4))))
    g = coord_slopes(grows).sel(layer="h")
    assert abs(float(g.slope) - 0.5) < 0.03 and g.verdict.item() == "grows"
    assert "hidden layer grows" in g.hint.item()  # the hint under mup
    for bad, why in (
        (np.full((5, 4), np.nan), "not finite"),
        (np.zeros((5, 4)), "not finite"),  # a zero readout at init: no log size
        (np.ones((5, 4)), "no seed variation"),  # constant
        (np.ones((5, 1)) + w * 0, "too few seeds"),
    ):
        r = coord_slopes(_synthetic(bad)).sel(layer="h")
        assert r.verdict.item() == "undetermined" and why in r.reason.item(), (bad, r)


def test_noise_is_not_called_flat_or_growing() -> None:
    """Sizes that are i.i.d. noise with a seed spread of 50 %: no confident verdict."""
    decided = 0
    for r in range(30):
        rng = np.random.default_rng(r)
        noisy = _synthetic(np.exp(0.5 * rng.standard_normal((5, 3))))
        v = coord_slopes(noisy, n_boot=300, seed=r).verdict.item()
        decided += v != "undetermined"
    assert decided <= 3, decided


# -- the oracle: mup's get_coord_data on the same weights and batch ----------------------


@pytest.mark.parametrize("param", ["mup", "sp"])
def test_fixed_batch_equals_mup_get_coord_data(param: str) -> None:
    pytest.importorskip("mup")
    import torch
    from mup.coord_check import get_coord_data
    from test_mup_oracle import make_mup_model, make_trainer, spec_for
    from torch import nn
    from torch.nn import functional as F

    widths, lr, steps = [64, 256], 0.05, 3
    spec = spec_for(64, False, {"name": "sgd", "lr": lr}, param, widths=widths, seeds=[0, 1])
    ours = coord_check(spec, steps=steps, fixed_batch=True)
    x, y = (torch.as_tensor(a) for a in make_trainer(spec, 64).stream.batch(0, spec.batch_size))

    class WithLoss(nn.Module):  # mup's dict_in_out: the model returns (loss,)
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor]:
            return (F.mse_loss(self.net(x), y),)

    for width in widths:
        weights = make_trainer(spec_for(width, False, {"name": "sgd", "lr": lr}, param,
                                        widths=widths, seeds=[0, 1]), width).params  # fmt: skip
        for s in (0, 1):

            def model(s: int = s, width: int = width, weights: dict = weights) -> nn.Module:
                net = make_mup_model(width, False) if param == "mup" else _sp_mlp(width)
                with torch.no_grad():
                    for k, p in net.named_parameters():
                        p.copy_(weights[k].detach()[s])
                return WithLoss(net)

            df = get_coord_data(
                {width: model}, [{"x": x, "y": y}], optimizer="sgd", lr=lr, mup=param == "mup",
                nsteps=steps, dict_in_out=True, cuda=False, show_progress=False,
                filter_module_by_name=lambda n: n in ("net.l1", "net.l2", "net.out"),
            )  # fmt: skip
            for module, layer in (("net.l1", "preact/l1"), ("net.l2", "preact/l2"),
                                  ("net.out", "output")):  # fmt: skip
                theirs = df[df.module == module].sort_values("t")["l1"].to_numpy()
                mine = ours.sel(width=width, seed=s, layer=layer).values[:steps]
                np.testing.assert_allclose(mine, theirs, rtol=2e-5, err_msg=f"{width} {layer}")


def _sp_mlp(width: int):
    from test_mup_oracle import D_IN
    from torch import nn
    from torch.nn import functional as F

    class SpMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1 = nn.Linear(D_IN, width, bias=False)
            self.l2 = nn.Linear(width, width, bias=False)
            self.out = nn.Linear(width, 1, bias=False)

        def forward(self, x):
            return self.out(F.relu(self.l2(F.relu(self.l1(x)))))

    return SpMLP()


def test_cli_plot_compare_json_and_bad_flags(
    tmp_path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    import yaml

    from widthwise.cli import main

    raw = {
        "name": "coord",
        "model": {"family": "mlp", "options": {"depth": 3}},
        "widths": [16, 32, 64],
        "seeds": 2,
        "parameterization": {"name": "mup", "readout_zero_init": True},
        "optimizer": {"name": "adam", "lr": 3e-2},
        "steps": 3,
        "batch_size": 16,
        "data": {"stream": "gegenbauer", "seed": 0, "options": {"dim": 8}},
        "device": "cpu",
    }
    spec = tmp_path / "c.yaml"
    spec.write_text(yaml.safe_dump(raw))
    png = tmp_path / "c.png"
    argv = ["coord-check", str(spec), "--compare", "sp", "--fixed-batch", "--stat", "rms"]
    assert main([*argv, "--plot", str(png), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [c["parameterization"] for c in out["checks"]] == ["mup", "sp"]
    assert all(c["fixed_batch"] and c["stat"] == "rms" for c in out["checks"])
    layers = {lay["layer"]: lay for lay in out["checks"][1]["layers"]}
    assert layers["output"]["verdict"] in ("grows", "undetermined")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out["plot"] == str(png)
    for bad, needle in (
        (["--plot", str(tmp_path / "nodir" / "x.png")], "does not exist"),
        (["--plot", str(tmp_path / "x.svg")], "must be a .png"),
        (["--compare", "nonsense"], "nonsense"),
        (["--stat", "max"], "--stat"),
    ):
        code = main(["coord-check", str(spec), *bad])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and needle in err[0], (bad, err)
    assert not (tmp_path / "x.svg").exists() and not (tmp_path / "nodir").exists()
