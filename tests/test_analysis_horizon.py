"""The consistency horizon t*(n), its dual and the sentence that states them."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from widthwise.analysis import AnalysisError
from widthwise.analysis.horizon import consistency_horizon, consistent_width, horizon_sentence
from widthwise.analysis.verdict import loss_gap_to_widest, successive_gap, verdict

pytestmark = pytest.mark.quick

WIDTHS = [64, 128, 256, 512, 1024]
STEPS = np.arange(0, 400, 2)  # recorded every 2 steps: horizons are step values, not indices
AGREE_UNTIL = {64: -1, 128: 50, 256: 180, 512: 398}


def _study(agree_until=AGREE_UNTIL, seeds=8, noise=0.005, seed=0):
    """Loss curves equal to the widest's up to a known step, 30 % above it afterwards."""
    rng = np.random.default_rng(seed)
    base = 2.0 - STEPS / 400
    x = np.broadcast_to(base, (len(WIDTHS), seeds, len(STEPS))).copy()
    for i, w in enumerate(WIDTHS[:-1]):
        x[i, :, agree_until[w] < STEPS] *= 1.3
    x *= 1 + noise * rng.normal(size=x.shape)
    return xr.DataArray(x, dims=("width", "seed", "step"), coords={"width": WIDTHS, "step": STEPS})


def _hand(est, lo, hi, n_seeds=None, widths=(64, 128), steps=(0, 10, 20, 30)):
    """A verdict Dataset (width, step) from hand-written estimate / lo / hi rows."""
    shape = (len(widths), len(steps))
    ds = xr.Dataset(
        {
            k: (("width", "step"), np.asarray(v, float).reshape(shape))
            for k, v in (("estimate", est), ("lo", lo), ("hi", hi))
        },
        coords={"width": list(widths), "step": list(steps)},
    )
    ds["n_seeds"] = (("width", "step"), np.full(shape, 8.0) if n_seeds is None else n_seeds)
    ds["seed_varies"] = (("width", "step"), np.ones(shape, bool))
    out = verdict(ds, 0.1)
    out.attrs.update(reference_width=256, relative=1, dim="width")
    return out


def test_horizon_is_recovered_exactly_and_stated():
    v = loss_gap_to_widest(_study(), tol=0.05, n_boot=300)
    h = consistency_horizon(v)
    assert h["horizon"].dims == ("width",) and list(h.width.values) == WIDTHS[:-1]
    assert h["horizon"].values.tolist() == [-1, 50, 180, 398]
    assert h["horizon_hi"].values.tolist() == [-1, 50, 180, 398]
    assert h["reaches_end"].values.tolist() == [False, False, False, True]
    assert h["stop_step"].values.tolist() == [0, 52, 182, -1]
    assert h["stop_verdict"].values.tolist() == ["not consistent"] * 3 + [""]
    assert h.attrs["last_step"] == 398 and h.attrs["reference_width"] == 1024
    assert horizon_sentence(h) == (
        "Loss curves agree with the widest (width 1024) within 5% up to step 50 at width 128, "
        "up to step 180 at width 256 and over the whole run (to step 398) at width 512; "
        "width 64 never agrees."
    )


def test_the_dual_smallest_consistent_width_per_step():
    v = loss_gap_to_widest(_study(), tol=0.05, n_boot=300)
    d = consistent_width(v)
    assert d["min_width"].dims == ("step",)
    got = d["min_width"].sel(step=[0, 50, 52, 180, 182, 398]).values.tolist()
    assert got == [128.0, 128.0, 256.0, 256.0, 512.0, 512.0]
    later = {64: 398, 128: 398, 256: 398, 512: -1}  # only the next-to-widest disagrees
    none = consistent_width(loss_gap_to_widest(_study(later), tol=0.05, n_boot=100))
    assert np.isnan(none["min_width"].sel(step=100))


def test_every_width_agrees_or_none_does():
    allw = {w: 398 for w in WIDTHS[:-1]}
    h = consistency_horizon(loss_gap_to_widest(_study(allw), n_boot=100))
    assert h["reaches_end"].all()
    assert horizon_sentence(h, quantity="test losses") == (
        "Test losses agree with the widest (width 1024) within 5% over the whole run "
        "(to step 398) at widths 64, 128, 256 and 512."
    )
    nonew = {w: -1 for w in WIDTHS[:-1]}
    h = consistency_horizon(loss_gap_to_widest(_study(nonew), n_boot=100))
    assert (h["horizon"] == -1).all()
    assert horizon_sentence(h) == (
        "Loss curves never agree with the widest (width 1024) within 5% at widths 64, 128, "
        "256 and 512."
    )


def test_undetermined_widths_say_why():
    x = _study()
    x[0, 1:] = np.nan  # width 64: a single finite seed
    x[3, 1:, 100:] = np.nan  # width 512: all but one seed diverge at step 200
    v = loss_gap_to_widest(x, n_boot=200)
    h = consistency_horizon(v)
    assert h["horizon"].values.tolist() == [-1, 50, 180, 198]
    assert h["stop_reason"].values.tolist()[::3] == ["too few seeds", "too few seeds"]
    assert horizon_sentence(h) == (
        "Loss curves agree with the widest (width 1024) within 5% up to step 50 at width 128, "
        "up to step 180 at width 256 and up to step 198 (undetermined at step 200: too few "
        "seeds) at width 512; width 64 is undetermined at step 0 (too few seeds)."
    )
    x[:-1] = np.nan
    only = consistency_horizon(loss_gap_to_widest(x, n_boot=50))
    assert horizon_sentence(only).startswith(
        "Whether loss curves agree with the widest (width 1024) within 5% is undetermined at "
        "step 0 at widths 64, 128, 256 and 512 (too few seeds)"
    )


def test_pessimistic_and_optimistic_horizons_by_hand():
    nan = np.nan
    v = _hand(  # tol 0.1; width 64 straddles from step 20, width 128 is refuted at step 10
        est=[0.02, 0.03, 0.09, 0.2, 0.02, 0.3, 0.02, 0.02],
        lo=[0.0, 0.0, 0.05, 0.15, 0.0, 0.2, 0.0, 0.0],
        hi=[0.05, 0.08, 0.14, 0.3, 0.05, 0.4, 0.05, 0.05],
    )
    h = consistency_horizon(v)
    assert h["horizon"].values.tolist() == [10, 0]
    assert h["horizon_estimate"].values.tolist() == [20, 0]
    assert h["horizon_hi"].values.tolist() == [20, 0]
    assert h["stop_verdict"].values.tolist() == ["undetermined", "not consistent"]
    assert h["ever_consistent"].values.tolist() == [True, True]
    assert (h["horizon"] <= h["horizon_estimate"]).all()
    assert (h["horizon_estimate"] <= h["horizon_hi"]).all()
    assert horizon_sentence(h, quantity="losses") == (
        "Losses agree with the widest (width 256) within 10% up to step 10 (at best step 20) "
        "at width 64 and up to step 0 at width 128."
    )
    late = _hand(
        est=[0.3, 0.02, 0.02, 0.02, 0.3, 0.3, 0.3, 0.3],
        lo=[0.2, 0.0, 0.0, 0.0, 0.2, 0.2, 0.2, 0.2],
        hi=[0.4, 0.05, 0.05, 0.05, 0.4, 0.4, 0.4, 0.4],
    )
    assert horizon_sentence(consistency_horizon(late)) == (
        "Loss curves never agree with the widest (width 256) within 10% at width 128; "
        "width 64 already disagrees at step 0."
    )
    assert horizon_sentence(consistency_horizon(late.isel(width=[0]))) == (
        "Loss curves already disagree with the widest (width 256) within 10% at step 0 at width 64."
    )
    assert horizon_sentence(consistency_horizon(late, start=10)) == (
        "Loss curves agree with the widest (width 256) within 10% from step 10 over the whole "
        "run (to step 30) at width 64; width 128 never agrees."
    )
    nanrow = _hand(est=[nan] * 8, lo=[nan] * 8, hi=[nan] * 8)
    h = consistency_horizon(nanrow)
    assert (h["horizon"] == -1).all() and (h["horizon_hi"] == -1).all()
    assert (h["stop_reason"] == "non-finite values").all()


def test_edge_inputs_and_errors():
    v = _hand(est=[0.02] * 8, lo=[0.0] * 8, hi=[0.05] * 8)
    h = consistency_horizon(v)
    assert horizon_sentence(h.isel(width=[])) == (
        "There is no narrower width to compare with the widest (width 256)."
    )
    layered = xr.concat([h, h], dim="kernels_layer")
    with pytest.raises(AnalysisError, match="select"):
        horizon_sentence(layered)
    with pytest.raises(AnalysisError, match="verdict"):
        consistency_horizon(v[["estimate", "lo", "hi"]])
    two = v.expand_dims(test_step=[0, 1])
    with pytest.raises(AnalysisError, match="step_dim"):
        consistency_horizon(two)
    assert consistency_horizon(two, step_dim="step")["horizon"].dims == ("test_step", "width")
    steps = _study()
    succ = consistency_horizon(successive_gap(steps, n_boot=100))
    assert horizon_sentence(succ).startswith(
        "Loss curves agree with the next wider width within 5% up to step 50 at width 128"
    )
    absolute = v.copy()
    absolute.attrs["relative"] = 0
    assert "within 0.1 " in horizon_sentence(consistency_horizon(absolute))
