"""The sharpness probe's arrays reach the trackers: the top eigenvalue of each operator,
its trace and the per-layer (block) values, as ``<var>/mean`` and ``<var>/seed_<id>``."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_spec_dict, write_spec

import widthwise
from widthwise.trackers.base import Study

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated"),
]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, single_thread: None):
    root = tmp_path_factory.mktemp("trackers_sharpness")
    probes = {
        "train_loss": {"every": 1},
        "sharpness": {"steps": [0, 5, 10], "k": 2, "trace": True, "blocks": "layer"},
    }
    spec = tiny_spec_dict(root / "study", steps=10, widths=[16], probes=probes)
    out = widthwise.run(write_spec(root / "tiny.yaml", spec))
    return Study(out), widthwise.open_study(out)


def test_sharpness_trace_and_blocks_are_mirrored(study):
    tracked, ds = study
    assert set(ds.sharpness_layer.values) == {"l1", "l2", "out"}
    for ws in tracked.widths:
        steps = ds.sharpness_step.values
        for var, da in (
            ("sharpness", ds.sharpness.isel(sharpness_eig=0)),
            ("sharpness_lr", ds.sharpness_lr.isel(sharpness_eig=0)),
            ("sharpness_trace", ds.sharpness_trace),
            ("sharpness_lr_trace_se", ds.sharpness_lr_trace_se),
            ("sharpness_block_top/l2", ds.sharpness_block_top.sel(sharpness_layer="l2")),
            (
                "sharpness_lr_block_trace/out",
                ds.sharpness_lr_block_trace.sel(sharpness_layer="out"),
            ),
        ):
            one = da.sel(width=ws.width)
            mean = ws.series[f"{var}/mean"]
            assert sorted(mean) == [int(s) for s in steps], var
            np.testing.assert_allclose(
                [mean[int(s)] for s in steps], one.mean("seed").values, rtol=1e-6
            )
            for seed in ds.seed.values:
                got = ws.series[f"{var}/seed_{int(seed)}"]
                want = one.sel(seed=seed).values
                np.testing.assert_allclose([got[int(s)] for s in steps], want, rtol=1e-6)
        assert not any(k.startswith("sharpness_density") for k in ws.series)
        assert "train_loss/mean" in ws.series  # the scalar log as before
