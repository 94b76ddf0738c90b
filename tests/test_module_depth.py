"""Depth-muP and depth studies for module families (issue 15 item 4; docs/depth.md).

A module factory takes ``depth=`` (``model.options.depth``, or ``depths: [...]``) and
``model.options.residual`` names its branches: ``branch_out`` (each branch's last
map: forward multiplier × √(L0/L), Adam lr too) and ``branch`` (the rest: Adam lr).
Oracles as for the built-in families (tests/test_depth_mup.py): at L = L0 the plain
parameterization bit for bit; the residual stream's size flat in depth under
depth-muP, growing without it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import write_spec

import widthwise
from widthwise.analysis.coordinates import coord_slopes
from widthwise.cli import main
from widthwise.coordinate_check import coord_check_depths
from widthwise.spec import validate_spec
from widthwise.streams import STREAMS
from widthwise.trainer import EnsembleTrainer

pytestmark = pytest.mark.usefixtures("single_thread")

RESIDUAL = {"branch_out": ["blocks.*.fc2"], "branch": ["blocks.*"]}
# taps: each block's output (the residual stream after it), not the Linear maps inside
BLOCKS = ["blocks.0", "blocks"]  # the first block's output; the stream after the last


def raw_spec(depth: int | None, base: int | None, opt: str = "adam", **extra: Any) -> dict:
    options: dict[str, Any] = {
        "factory": "residual_factories:make_resmlp",
        "residual": RESIDUAL,
        "layers": BLOCKS,
    }
    if depth is not None:
        options["depth"] = depth
    raw = {
        "name": "mdepth",
        "model": {"family": "module", "options": options},
        "widths": [32],
        "seeds": 4,
        "parameterization": {"name": "mup", "readout_zero_init": True},
        "optimizer": {"name": opt, "lr": 0.01 if opt == "adam" else 0.1},
        "steps": 3,
        "batch_size": 16,
        "data": {"stream": "gegenbauer", "seed": 0, "options": {"dim": 8}, "probe_points": 32},
        "device": "cpu",
        **extra,
    }
    if base is not None:
        raw["depth_mup"] = {"base_depth": base}
    return raw


def trainer(raw: dict[str, Any]) -> EnsembleTrainer:
    import residual_factories  # noqa: F401  (imported: its factory is trusted)

    spec = validate_spec(raw)
    stream = STREAMS.get(spec.data.stream)(spec.data.seed, spec.stream_options())
    return EnsembleTrainer(spec, 32, stream, torch.device("cpu"))


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_branch_rules_of_a_module_at_depth_8_with_base_2(opt: str) -> None:
    plain, scaled = trainer(raw_spec(8, None, opt)).rules, trainer(raw_spec(8, 2, opt)).rules
    f = math.sqrt(2 / 8)
    assert set(plain) == set(scaled) and "blocks.7.fc2.weight" in plain
    for name, r in plain.items():
        s = scaled[name]
        out = name.endswith(".fc2.weight")
        inside = name.startswith("blocks.")
        assert s.multiplier == pytest.approx(r.multiplier * (f if out else 1.0)), name
        lr = f if (inside and opt == "adam") else 1.0
        assert s.lr_scale == pytest.approx(r.lr_scale * lr), name
        assert s.init_std == r.init_std


def test_at_base_depth_a_module_is_the_plain_parameterization() -> None:
    a, b = trainer(raw_spec(4, None)), trainer(raw_spec(4, 4))
    assert a.rules == b.rules
    la = torch.stack([a.train_step() for _ in range(3)])
    lb = torch.stack([b.train_step() for _ in range(3)])
    assert torch.equal(la, lb)


def test_module_residual_stream_flat_in_depth_under_depth_mup_and_growing_without() -> None:
    import residual_factories  # noqa: F401

    depths = [2, 4, 8, 16]
    with_ = coord_check_depths(validate_spec(raw_spec(2, 2)), depths, steps=3, points=32)
    without = coord_check_depths(validate_spec(raw_spec(2, None)), depths, steps=3, points=32)
    assert "act/last" in with_.layer.values
    at_init = coord_slopes(with_, dim="depth", step=0).sel(layer="act/last")
    assert at_init.verdict.item() == "flat", at_init
    grows = coord_slopes(without, dim="depth", step=0).sel(layer="act/last")
    assert grows.verdict.item() == "grows" and float(grows.slope) > 0.3, grows
    trained = coord_slopes(with_, dim="depth").sel(layer="act/last")
    assert trained.verdict.item() == "flat", trained
    assert float(coord_slopes(without, dim="depth").slope.sel(layer="act/last")) > 0.3


def test_depth_study_of_a_module_family(tmp_path: Path) -> None:
    raw = raw_spec(None, 2, out=str(tmp_path / "study"), depths=[2, 4], steps=4)
    raw["widths"] = [16, 32]
    raw["seeds"] = 2
    path = write_spec(tmp_path / "s.yaml", raw)
    assert main(["run", str(path), "--quiet", "--import", "residual_factories"]) == 0
    ds = widthwise.open_study(tmp_path / "study")
    assert list(ds.depth.values) == [2, 4]
    assert ds.train_loss.dims[:2] == ("depth", "width")
    assert bool(torch.isfinite(torch.as_tensor(ds.train_loss.values)).all())
    spec4 = validate_spec(
        __import__("yaml").safe_load((tmp_path / "study" / "depth-4" / "spec.yaml").read_text())
    )
    assert spec4.model.options["depth"] == 4


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda r: r["model"]["options"].pop("residual"), "needs model.options.residual"),
        (
            lambda r: r["model"]["options"].update(residual={"branch_out": ["nope.*"]}),
            "model.options.residual.branch_out: 'nope.*' names no tensor",
        ),
        (lambda r: r["model"]["options"].pop("depth"), "needs model.options.depth"),
        (
            lambda r: r["model"]["options"].update(kwargs={"depth": 3}),
            "model.options.kwargs.depth: 3 is set beside model.options.depth",
        ),
    ],
)
def test_bad_module_depth_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: Any, needle: str
) -> None:
    raw = raw_spec(4, 2, out=str(tmp_path / "study"))
    change(raw)
    path = write_spec(tmp_path / "bad.yaml", raw)
    code = main(["run", str(path), "--quiet", "--import", "residual_factories"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert needle in err[0], err[0]
    assert not (tmp_path / "study").exists()
