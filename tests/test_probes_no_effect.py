"""Probes never change training: trajectories with all probes on equal those with loss probes only."""

from __future__ import annotations

import numpy as np
import yaml
from conftest import tiny_spec_dict
from tiny_attention_family import register

import widthwise

LOSS_PROBES = {"train_loss": {"every": 1}, "test": {"every": 5}}


def run_study(tmp_path, name, probes, **overrides):
    raw = tiny_spec_dict(tmp_path / name, widths=[16, 32], seeds=2, steps=30, probes=probes)
    raw.update(overrides)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return widthwise.open_study(widthwise.run(widthwise.load_spec(path)))


def test_all_probes_leave_the_trajectory_unchanged(tmp_path):
    probes = {
        **LOSS_PROBES,
        "kernels": {"every": 10, "layers": ["l2"], "points": 12},
        "preacts": {"steps": [0, 7, 30], "range": [-3, 3], "bins": 12},
        "sharpness": {"at": ["init", "end"]},
        "entk": {"at": ["init", "end"]},
    }
    base = run_study(tmp_path, "loss_only", LOSS_PROBES)
    full = run_study(tmp_path, "all_probes", probes)
    for var in ("train_loss", "test_loss", "test_logits"):
        assert np.isfinite(base[var].values).all()
        assert np.array_equal(base[var].values, full[var].values), var

    # the probes' variables, with their dims and static coordinates
    k = full["feature_kernel"]
    assert k.dims == (
        "width", "seed", "kernels_step", "kernels_layer", "kernels_point_i", "kernels_point_j"
    )  # fmt: skip
    assert k.shape == (2, 2, 4, 1, 12, 12)
    assert list(full["kernels_step"].values) == [0, 10, 20, 30]
    assert list(full["kernels_layer"].values) == ["l2"]
    h = full["preact_hist"]
    assert h.dims == ("width", "seed", "preacts_step", "preacts_layer", "preacts_bin")
    assert h.shape == (2, 2, 3, 2, 12)
    assert list(full["preacts_layer"].values) == ["l1", "l2"]  # recorded at run time
    np.testing.assert_allclose(full["preacts_edge"].values, np.linspace(-3, 3, 13))
    np.testing.assert_allclose(full["preacts_bin"].values, np.linspace(-2.75, 2.75, 12))
    total = h.sum("preacts_bin") + full["preact_underflow"] + full["preact_overflow"]
    np.testing.assert_array_equal(total.values, full["preact_count"].values)
    points = full.sizes["point"]
    np.testing.assert_array_equal(
        full["preact_count"].sel(width=32).values, np.full((2, 3, 2), 32.0 * points)
    )
    s = full["preact_sample"]
    assert s.dims == (
        "width", "seed", "preacts_step", "preacts_layer", "preacts_point", "preacts_neuron"
    )  # fmt: skip
    assert s.shape[-2:] == (8, 16) and np.isfinite(s.values).all()
    sharp = full["sharpness"]
    assert sharp.dims == ("width", "seed", "sharpness_step", "sharpness_eig")
    assert list(full["sharpness_step"].values) == [0, 30] and np.isfinite(sharp.values).all()
    assert full["entk"].dims[3:] == (
        "entk_point_i",
        "entk_output_i",
        "entk_point_j",
        "entk_output_j",
    )
    assert full["entk"].sizes["entk_point_i"] == points  # 64 asked, all 32 there are


def test_attention_probe_leaves_the_trajectory_unchanged(tmp_path):
    register()
    attn = {
        "model": {"family": "tiny_attention"},
        "data": {"stream": "tiny_seq", "seed": 0, "probe_points": 8},
        "steps": 10,
    }
    base = run_study(tmp_path, "loss_only", LOSS_PROBES, **attn)
    probes = {**LOSS_PROBES, "attention": {"every": 2}, "kernels": {"every": 5}}
    full = run_study(tmp_path, "attention", probes, **attn)
    for var in ("train_loss", "test_loss", "test_logits"):
        assert np.array_equal(base[var].values, full[var].values), var
    assert full["attention"].sizes["attention_step"] == 6
