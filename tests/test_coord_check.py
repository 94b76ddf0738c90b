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


def test_coord_check_shape(mup_check: xr.DataArray) -> None:
    assert mup_check.dims == ("width", "layer", "step")
    assert list(mup_check.width.values) == WIDTHS
    assert list(mup_check.layer.values) == ["l1", "l2", "out"]
    assert list(mup_check.step.values) == [0, 1, 2, 3]
    assert np.isfinite(mup_check.values).all()
    # zero readout: the output is exactly 0 at init and not after training
    assert (mup_check.sel(layer="out", step=0) == 0).all()
    assert (mup_check.sel(layer="out", step=3) > 0.1).all()


@pytest.mark.parametrize("layer", ["l1", "l2", "out"])
def test_mup_activations_flat_in_width(mup_check: xr.DataArray, layer: str) -> None:
    v = mup_check.sel(layer=layer, step=3).values
    assert v.max() / v.min() < 1.3, (layer, v)


def test_sp_output_and_hidden_grow_with_width(sp_check: xr.DataArray) -> None:
    out = sp_check.sel(layer="out", step=3).values
    assert (np.diff(out) > 0).all(), out
    assert out[-1] / out[0] > 10, out  # measured ×42
    l2 = sp_check.sel(layer="l2", step=3).values
    assert l2[-1] / l2[0] > 2.5, l2  # measured ×5.4
    # the input layer has a fixed fan-in: flat even in sp
    l1 = sp_check.sel(layer="l1", step=3).values
    assert l1.max() / l1.min() < 1.3, l1


def test_sp_and_mup_agree_at_init_on_hidden_layers(
    sp_check: xr.DataArray, mup_check: xr.DataArray
) -> None:
    """Same seeds, same init of input and hidden weights: identical until training."""
    for layer in ("l1", "l2"):
        np.testing.assert_array_equal(
            sp_check.sel(layer=layer, step=0).values, mup_check.sel(layer=layer, step=0).values
        )
