"""The consistency horizon of a whole study: numbers, sentence, report section, `show`.

Synthetic studies have known horizons (losses equal to the widest's up to a chosen
step, 30 % above it after), so the sentence is checked word for word; a tiny real
study checks that every recorded quantity is judged, that the report leads with the
horizon (figure and CSV) and that ``widthwise show`` prints the same sentence.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import tiny_spec_dict

import widthwise
from widthwise import analysis as wa
from widthwise.analysis import AnalysisError
from widthwise.analysis.study_horizon import horizon_summary, study_horizons
from widthwise.cli import main
from widthwise.report import build_report
from widthwise.report.fig_horizon import horizon as horizon_figure

WIDTHS = [64, 128, 256, 512]
STEPS = np.arange(0, 200)  # every step, as the training loss
TEST_STEPS = np.arange(0, 201, 10)  # every 10 steps and the end, as the test probe
AGREE_UNTIL = {64: 0, 128: 50, 256: 120}  # 64: only the initial network agrees
SENTENCE = (
    "Training-loss curves agree with the widest (width 512) within 5% from step 1 up to "
    "step 50 at width 128 and up to step 120 at width 256; width 64 never agrees."
)


def _curves(steps: np.ndarray, seeds: int, rng: np.random.Generator) -> np.ndarray:
    """(width, seed, step) losses: the widest's curve, ×1.3 after each width's horizon;
    step 0 is the same number for every member (as with readout_zero_init)."""
    x = np.broadcast_to(2.0 - steps / 400, (len(WIDTHS), seeds, len(steps))).copy()
    for i, w in enumerate(WIDTHS[:-1]):
        x[i, :, steps > AGREE_UNTIL[w]] *= 1.3
    x *= 1 + 0.005 * rng.normal(size=x.shape)
    x[:, :, steps == 0] = 2.0
    return x


def synthetic_study(seeds: int = 8, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    train = _curves(STEPS, seeds, rng)
    test = _curves(TEST_STEPS, seeds, rng)
    # logits: the widest's function plus a width-dependent offset (1 / sqrt(width))
    f = np.sin(np.linspace(0, 3, 16))
    offset = np.array([0.4, 0.2, 0.01, 0.0])[:, None, None, None]
    noise = 0.01 * rng.normal(size=(len(WIDTHS), seeds, len(TEST_STEPS), 16))
    logits = (f + offset + noise)[..., None]
    coords = {"width": WIDTHS, "seed": np.arange(seeds), "step": STEPS, "test_step": TEST_STEPS}
    return xr.Dataset(
        {
            "train_loss": (("width", "seed", "step"), train),
            "test_loss": (("width", "seed", "test_step"), test),
            "test_logits": (("width", "seed", "test_step", "point", "output"), logits),
        },
        coords=coords,
    )


# -- synthetic studies with known horizons -----------------------------------------------


def test_known_horizons_per_quantity():
    h = study_horizons(synthetic_study(), n_boot=300)
    assert h["horizon"].dims == ("quantity", "width")
    assert list(h.quantity.values) == ["train loss", "test loss", "ensemble test logits"]
    assert list(h.width.values) == [64, 128, 256]  # the widest is the reference
    assert h.attrs["reference_width"] == 512 and h.attrs["tolerance"] == 0.05
    assert h.attrs["start"] == 1
    assert h["horizon"].sel(quantity="train loss").values.tolist() == [-1, 50, 120]
    assert h["horizon_hi"].sel(quantity="train loss").values.tolist() == [-1, 50, 120]
    assert h["stop_step"].sel(quantity="train loss").values.tolist() == [1, 51, 121]
    # the test loss is judged on its own steps (10, 20, ...): the same horizons
    assert h["horizon"].sel(quantity="test loss").values.tolist() == [-1, 50, 120]
    assert h["first_step"].values.tolist() == [1, 10, 10]
    assert h["last_step"].values.tolist() == [199, 200, 200]
    assert h["step_dim"].values.tolist() == ["step", "test_step", "test_step"]
    # logits: 64 and 128 are 40 % and 20 % off at every step, 256 within 1 %
    logit = h.sel(quantity="ensemble test logits")
    assert logit["horizon"].values.tolist() == [-1, -1, 200]
    assert logit["reaches_end"].values.tolist() == [False, False, True]
    assert str(h["sentence"].sel(quantity="train loss").item()) == SENTENCE
    assert str(h["sentence"].sel(quantity="test loss").item()) == (
        "Test-loss curves agree with the widest (width 512) within 5% from step 10 up to "
        "step 50 at width 128 and up to step 120 at width 256; width 64 never agrees."
    )


def test_dual_is_the_narrowest_agreeing_width_per_step():
    h = study_horizons(synthetic_study(), n_boot=300)
    mw = h["min_width"].sel(quantity="train loss")
    assert mw.sel(step=30).item() == 128 and mw.sel(step=50).item() == 128
    assert mw.sel(step=51).item() == 256 and mw.sel(step=120).item() == 256
    assert np.isnan(mw.sel(step=121).item())  # no compared width agrees any more
    # the union of steps: the training loss has 1..199, the test loss 10..200
    assert h.step.values.tolist() == list(range(1, 201))
    rec = h["recorded"]
    assert rec.sel(quantity="train loss").sum().item() == 199
    assert rec.sel(quantity="test loss").values.nonzero()[0].tolist() == list(range(9, 200, 10))
    assert np.isnan(h["min_width"].sel(quantity="test loss", step=15).item())  # not recorded


def test_summary_is_the_loss_sentence():
    ds = synthetic_study()
    assert horizon_summary(ds, n_boot=300) == SENTENCE
    # without the training loss, the test loss speaks
    assert horizon_summary(ds.drop_vars("train_loss"), n_boot=300).startswith(
        "Test-loss curves agree with the widest (width 512) within 5% from step 10"
    )
    assert horizon_summary(ds.isel(width=[0])) == ""  # nothing to compare
    assert horizon_summary(ds[["test_logits"]]) == ""  # no loss


def test_step_zero_is_skipped_because_identical_members_say_nothing():
    h = study_horizons(synthetic_study(), start=0, quantities=("train loss",), n_boot=300)
    row = h.sel(quantity="train loss")
    assert row["horizon"].values.tolist() == [-1, -1, -1]
    assert set(row["stop_reason"].values.tolist()) == {"no seed variation"}


def test_tolerance_is_applied_to_the_interval():
    # a 30 % gap is within a 35 % tolerance: every width agrees over the whole run
    h = study_horizons(synthetic_study(), tol=0.35, quantities=("train loss",), n_boot=300)
    assert h["reaches_end"].sel(quantity="train loss").values.all()
    assert "over the whole run (to step 199) at widths 64, 128 and 256" in str(h["sentence"].item())


def test_bad_input_names_the_problem():
    ds = synthetic_study()
    with pytest.raises(AnalysisError, match="Unknown quantities"):
        study_horizons(ds, quantities=("loss",))
    with pytest.raises(AnalysisError, match="at least 2 widths"):
        study_horizons(ds.isel(width=[0]))
    with pytest.raises(AnalysisError, match="recorded none"):
        study_horizons(ds[["train_loss"]], quantities=("test loss",))


def test_figure_draws_every_quantity_and_never():
    from matplotlib.figure import Figure

    fig = horizon_figure(study_horizons(synthetic_study(), n_boot=100))
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    left = fig.axes[0]
    assert left.get_xscale() == "log" and left.get_yscale() == "log"
    assert "never" in [t.get_text() for t in left.get_yticklabels()]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["train loss", "test loss", "ensemble test logits"]


# -- a tiny real study ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory, single_thread) -> Path:
    out = tmp_path_factory.mktemp("horizon_study")
    raw = tiny_spec_dict(
        out,
        name="tiny_horizon",
        widths=[16, 32, 64],
        seeds=3,
        steps=20,
        probes={
            "train_loss": {"every": 1},
            "test": {"every": 5},
            "kernels": {"every": 10, "points": 8},
        },
    )
    raw["checkpoint_every"] = 20
    widthwise.run(widthwise.spec.validate_spec(raw, "tiny_horizon"), progress=False)
    return out


def test_real_study_judges_every_recorded_quantity(study):
    ds = widthwise.open_study(study)
    h = study_horizons(ds)
    assert list(h.quantity.values) == [
        "train loss",
        "test loss",
        "ensemble test logits",
        "feature kernel l1",
        "feature kernel l2",
    ]
    assert list(h.width.values) == [16, 32] and h.attrs["reference_width"] == 64
    t, est, hi = (h[k].values for k in ("horizon", "horizon_estimate", "horizon_hi"))
    assert (t <= est).all() and (est <= hi).all() and (hi <= h["last_step"].values[:, None]).all()
    # the same numbers as the analysis functions it is made of
    own = wa.consistency_horizon(wa.loss_gap_to_widest(ds.train_loss), start=1)
    for k in ("horizon", "horizon_hi", "stop_step"):
        assert h[k].sel(quantity="train loss").values.tolist() == own[k].values.tolist()
    assert str(h["sentence"].sel(quantity="train loss").item()) == wa.horizon_sentence(
        own, quantity="training-loss curves"
    )
    # kernels at steps 0, 10, 20: judged from step 10 on
    assert h["first_step"].sel(quantity="feature kernel l1").item() == 10


def test_report_leads_with_the_horizon(study, tmp_path):
    page = build_report(study, tmp_path, coord_check=False).read_text(encoding="utf-8")
    ids = re.findall(r'<section id="([a-z_]+)"', page)
    assert ids[0] == "horizon" and ids[1] == "summary"
    assert (tmp_path / "figures" / "horizon.png").is_file()
    assert (tmp_path / "figures" / "horizon.svg").is_file()
    sentence = horizon_summary(widthwise.open_study(study))
    assert "training-loss curves agree with the widest (width 64)" in sentence.lower()
    caption = re.search(r'<figure id="fig-horizon">.*?<figcaption>(.*?)</figcaption>', page, re.S)
    assert caption and caption.group(1) == sentence.replace("'", "&#x27;")
    # the CSV holds the plotted horizons, one row per (quantity, width)
    h = study_horizons(widthwise.open_study(study))
    df = pd.read_csv(tmp_path / "csv" / "horizon.csv")
    assert len(df) == h.sizes["quantity"] * h.sizes["width"]
    got = df.set_index(["quantity", "width"])["horizon"].sort_index()
    want = h["horizon"].to_series().sort_index()
    assert got.tolist() == want.tolist()
    dual = pd.read_csv(tmp_path / "csv" / "consistent_width.csv")
    assert set(dual.columns) >= {"quantity", "step", "min_width"}
    assert len(dual) == int(h["recorded"].sum())


def test_show_prints_the_sentence(study, capsys):
    assert main(["show", str(study)]) == 0
    out = capsys.readouterr().out
    sentence = horizon_summary(widthwise.open_study(study))
    assert " ".join(sentence.split()) in " ".join(out.split())
    # below the table
    assert out.index(sentence.split()[0]) > out.index("wall time")
