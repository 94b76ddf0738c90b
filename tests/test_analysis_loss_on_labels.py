"""The analysis computes the loss the study trained with, for every stream kind × loss.

Tiny real studies (3 steps, a few probe points): ``probe_loss(ds.test_logits, target)``
reproduces the logged ``test_loss`` to float rounding, and so do ``bias_variance``,
``ensemble_size_curve`` and what the report feeds them. Asking for a loss the study did
not train with, or one its targets cannot give, is a one-line error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from conftest import tiny_spec_dict

import widthwise
from widthwise import analysis as wa
from widthwise.errors import SpecError, UserError
from widthwise.losses import IGNORE_INDEX
from widthwise.report.section import flatten_samples, loss_kind, target_of

pytestmark = [pytest.mark.quick, pytest.mark.usefixtures("single_thread")]

RTOL = 1e-6
TRANSFORMER = {"family": "transformer", "options": {"depth": 1, "heads": 2}}
TEXT = {"stream": "text", "seed": 0, "options": {"seq_len": 8}, "probe_points": 4}
MASKED = {**TEXT, "options": {"seq_len": 8, "objective": "masked", "mask_prob": 0.3}}
GEGENBAUER = {"stream": "gegenbauer", "seed": 0, "options": {"dim": 8}, "probe_points": 12}
TEACHER = {"stream": "teacher", "seed": 0, "options": {}, "probe_points": 12}
MNIST1D = {"stream": "mnist1d", "seed": 0, "options": {}, "probe_points": 12}

# name: (spec overrides, the loss it trains with, the stored target variable)
CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    "regression_mse": ({"data": GEGENBAUER}, "mse", "test_target"),
    "regression_mse_explicit": ({"data": GEGENBAUER, "loss": "mse"}, "mse", "test_target"),
    "classification_ce": ({"data": TEACHER}, "cross_entropy", "test_label"),
    "classification_mse": ({"data": TEACHER, "loss": "mse"}, "mse", "test_label"),
    "mnist1d_mse": ({"data": MNIST1D, "loss": "mse"}, "mse", "test_label"),
    "text_ce": ({"model": TRANSFORMER, "data": TEXT}, "cross_entropy", "test_label"),
    "text_mse": ({"model": TRANSFORMER, "data": TEXT, "loss": "mse"}, "mse", "test_label"),
    "masked_ce": ({"model": TRANSFORMER, "data": MASKED}, "cross_entropy", "test_label"),
}
_STUDIES: dict[str, Path] = {}


def run_tiny(name: str, overrides: dict[str, Any], root: Path) -> Path:
    raw = tiny_spec_dict(
        root / name,
        name=name,
        widths=[8, 16],
        seeds=2,
        steps=3,
        batch_size=4,
        probes={"train_loss": {"every": 1}, "test": {"every": 3}},
        checkpoint_every=3,
        **overrides,
    )
    return widthwise.run(widthwise.spec.validate_spec(raw, name))


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loss_on_labels")
    return {name: run_tiny(name, ov, root) for name, (ov, _, _) in CASES.items()}


def assert_close(a: xr.DataArray, b: xr.DataArray) -> None:
    a, b = xr.align(a, b, join="exact")
    a = a.transpose(*b.dims)
    np.testing.assert_array_equal(np.isnan(a.values), np.isnan(b.values))
    np.testing.assert_allclose(a.values, b.values, rtol=RTOL, atol=0)


def test_ignore_index_is_the_trainers() -> None:
    import importlib

    assert importlib.import_module("widthwise.analysis.bias_variance").IGNORE_INDEX == IGNORE_INDEX


@pytest.mark.parametrize("name", list(CASES))
def test_probe_loss_reproduces_the_logged_test_loss(studies: dict[str, Path], name: str) -> None:
    _, loss, var = CASES[name]
    ds = widthwise.open_study(studies[name])
    assert ds.attrs["loss"] == loss and ds[var].attrs["loss"] == loss
    assert np.issubdtype(ds[var].dtype, np.integer) == (var == "test_label")
    measured = wa.probe_loss(ds.test_logits, ds[var])
    assert_close(measured, ds.test_loss)
    assert_close(wa.probe_loss(ds.test_logits, ds[var], loss=loss), ds.test_loss)
    if name == "masked_ce":
        assert (ds.test_label == IGNORE_INDEX).any()  # positions without a loss exist

    # bias/variance and ensemble sizes build on the same loss: size 1 = single networks
    bv = wa.bias_variance(ds.test_logits, ds[var])
    assert bv.attrs["loss"] == loss
    assert_close(bv.single_loss, ds.test_loss.mean("seed"))
    last = ds.test_logits.isel(test_step=-1)
    sizes = wa.ensemble_size_curve(last, ds[var])
    assert_close(
        sizes.sel(ensemble_size=1, drop=True), ds.test_loss.isel(test_step=-1).mean("seed")
    )
    assert_close(sizes.sel(ensemble_size=2, drop=True), bv.ensemble_loss.isel(test_step=-1))
    if loss == "mse":  # the decomposition is exact for mse, one-hot targets included
        assert_close(bv.ensemble_loss + bv.variance, bv.single_loss)

    # what the report feeds the analysis (sequences folded into points) gives the same
    flat = flatten_samples(ds)
    assert loss_kind(flat) == loss
    report_bv = wa.bias_variance(flat.test_logits, target_of(flat))
    assert_close(report_bv.single_loss, ds.test_loss.mean("seed"))


def test_mse_on_labels_is_the_one_hot_mse(studies: dict[str, Path]) -> None:
    """The number the tester measured: one-hot MSE, not cross-entropy nor (f − label)²."""
    ds = widthwise.open_study(studies["classification_mse"])
    f = ds.test_logits.values  # (width, seed, step, point, output)
    onehot = np.eye(f.shape[-1])[ds.test_label.values]
    expected = ((f - onehot) ** 2).mean(axis=(-2, -1))
    np.testing.assert_allclose(wa.probe_loss(ds.test_logits, ds.test_label).values, expected)
    ce = wa.probe_loss(ds.test_logits, ds.test_label.assign_attrs(loss="cross_entropy"))
    assert not np.allclose(ce.values, expected)  # what a wrong loss would have given


def one_line_error(excinfo: pytest.ExceptionInfo[Exception], *needles: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg and isinstance(excinfo.value, UserError), msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_a_loss_that_contradicts_the_study_is_an_error(studies: dict[str, Path]) -> None:
    ds = widthwise.open_study(studies["classification_mse"])
    for fn in (wa.probe_loss, wa.bias_variance, wa.ensemble_size_curve):
        with pytest.raises(UserError) as err:
            fn(ds.test_logits, ds.test_label, loss="cross_entropy")
        one_line_error(err, "'loss'", "'cross_entropy'", "'mse'", "allowed")
    ce = widthwise.open_study(studies["classification_ce"])
    with pytest.raises(UserError) as err:
        wa.probe_loss(ce.test_logits, ce.test_label, loss="mse")
    one_line_error(err, "'loss'", "'mse'", "'cross_entropy'", "allowed")
    with pytest.raises(UserError) as err:
        wa.probe_loss(ce.test_logits, ce.test_label, loss="hinge")  # type: ignore[arg-type]
    one_line_error(err, "'loss'", "'hinge'", "'mse'", "'cross_entropy'")


def test_cross_entropy_on_real_targets_is_an_error(studies: dict[str, Path]) -> None:
    ds = widthwise.open_study(studies["regression_mse"])
    with pytest.raises(UserError) as err:  # against the study's recorded loss
        wa.probe_loss(ds.test_logits, ds.test_target, loss="cross_entropy")
    one_line_error(err, "'loss'", "'cross_entropy'", "'mse'")
    plain, logits = ds.test_target.copy(), ds.test_logits.copy()
    plain.attrs, logits.attrs = {}, {}
    with pytest.raises(UserError) as err:  # arrays that carry no study loss
        wa.probe_loss(logits, plain, loss="cross_entropy")
    one_line_error(err, "'loss'", "'cross_entropy'", "integer class labels", "'mse'")
    cls = widthwise.open_study(studies["classification_ce"])
    real = cls.test_label.astype(np.float64)  # real values without an output dim, C outputs
    real.attrs = {}
    with pytest.raises(UserError) as err:
        wa.probe_loss(cls.test_logits.assign_attrs(loss=None), real)
    one_line_error(err, "'target'", "'output'", "outputs")


def test_spec_and_trainer_refuse_what_cannot_train(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as err:  # cross-entropy on a regression stream
        widthwise.spec.validate_spec(
            tiny_spec_dict(tmp_path / "a", loss="cross_entropy", data=GEGENBAUER), "x"
        )
    one_line_error(err, "loss", "cross_entropy", "mse")
    # mse on masked tokens: positions without a label have no one-hot target
    with pytest.raises(UserError) as err:
        run_tiny("masked_mse", {"model": TRANSFORMER, "data": MASKED, "loss": "mse"}, tmp_path)
    one_line_error(err, "loss: mse", f"{IGNORE_INDEX}", "allowed there: cross_entropy")
