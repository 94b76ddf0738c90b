"""Depth-muP (Tensor Programs VI; Bordelon et al. 2023) on the transformer.

Oracles: at depth = base_depth the rules and the training are exactly the plain
parameterization's; at depth L the branch outputs are multiplied by √(base/L) and,
under Adam, every branch tensor's lr by √(base/L); the residual stream's size is flat
in depth (2-16) under depth-muP and grows like √L without it (at init: independent
branches add up).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import write_spec

from widthwise.analysis.coordinates import coord_slopes
from widthwise.cli import main
from widthwise.coordinate_check import coord_check_depths
from widthwise.spec import validate_spec
from widthwise.streams import STREAMS
from widthwise.trainer import EnsembleTrainer

pytestmark = pytest.mark.usefixtures("single_thread")


def raw_spec(depth: int, base: int | None, opt: str = "adam", **extra: Any) -> dict[str, Any]:
    raw = {
        "name": "depth",
        "model": {"family": "transformer", "options": {"depth": depth, "heads": 2}},
        "widths": [32],
        "seeds": 4,
        "parameterization": {"name": "mup", "readout_zero_init": True},
        "optimizer": {"name": opt, "lr": 0.01 if opt == "adam" else 0.1},
        "steps": 3,
        "batch_size": 16,
        "data": {"stream": "periodic_tokens", "seed": 0},
        "device": "cpu",
        **extra,
    }
    if base is not None:
        raw["depth_mup"] = {"base_depth": base}
    return raw


def trainer(raw: dict[str, Any]) -> EnsembleTrainer:
    spec = validate_spec(raw)
    stream = STREAMS.get(spec.data.stream)(spec.data.seed, spec.stream_options())
    return EnsembleTrainer(spec, 32, stream, torch.device("cpu"))


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_branch_rules_at_depth_8_with_base_2(opt: str) -> None:
    plain, scaled = trainer(raw_spec(8, None, opt)).rules, trainer(raw_spec(8, 2, opt)).rules
    f = math.sqrt(2 / 8)
    for name, r in plain.items():
        s = scaled[name]
        out = name.endswith(("attn.proj.weight", "attn.proj.bias", "ff2.weight", "ff2.bias"))
        inside = name.startswith("b") and name.split(".")[0][1:].isdigit()
        assert s.multiplier == pytest.approx(r.multiplier * (f if out else 1.0), rel=1e-15), name
        lr = f if (opt == "adam" and inside) else 1.0
        assert s.lr_scale == pytest.approx(r.lr_scale * lr, rel=1e-15), name
        assert s.init_std == r.init_std, name


def test_at_base_depth_it_is_the_plain_parameterization() -> None:
    a, b = trainer(raw_spec(4, None)), trainer(raw_spec(4, 4))
    assert a.rules == b.rules
    for _ in range(3):
        assert torch.equal(a.train_step(), b.train_step())


def test_residual_stream_flat_in_depth_under_depth_mup_and_growing_without() -> None:
    depths = [2, 4, 8, 16]
    with_ = coord_check_depths(validate_spec(raw_spec(2, 2)), depths, steps=3, points=32)
    without = coord_check_depths(validate_spec(raw_spec(2, None)), depths, steps=3, points=32)
    assert list(with_.depth.values) == depths and "act/last" in with_.layer.values
    at_init = coord_slopes(with_, dim="depth", step=0).sel(layer="act/last")
    assert at_init.verdict.item() == "flat", at_init  # measured +0.004 [-0.09, 0.07]
    grows = coord_slopes(without, dim="depth", step=0).sel(layer="act/last")
    assert grows.verdict.item() == "grows" and 0.35 < float(grows.slope) < 0.7, grows  # 0.60
    trained = coord_slopes(with_, dim="depth")
    for layer in ("act/last", "output"):  # measured +0.027 [-0.03, 0.08], -0.011 [-0.06, 0.04]
        assert trained.verdict.sel(layer=layer).item() == "flat", trained.sel(layer=layer)
    blown = coord_slopes(without, dim="depth")
    assert float(blown.slope.sel(layer="act/last")) > 0.7  # measured +1.03 [0.89, 1.18]
    assert "1/√L" in str(blown.hint.sel(layer="act/last").item())


def test_bad_depth_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mlp = raw_spec(2, 2)
    mlp["model"] = {"family": "mlp", "options": {"depth": 3}}
    mlp["data"] = {"stream": "gegenbauer", "seed": 0}
    for argv, needle in (
        (["run", str(write_spec(tmp_path / "a.yaml", {**mlp, "out": str(tmp_path / "o")}))],
         "depth_mup: family 'mlp' has no residual branches"),
        (["coord-check", str(write_spec(tmp_path / "b.yaml", raw_spec(2, None))), "--depths", "4"],
         "--depths: '4'"),
        (["coord-check", str(write_spec(tmp_path / "c.yaml", {**mlp, "depth_mup": None})),
          "--depths", "2,4"], "--depths: family 'mlp'"),
        (["run", str(write_spec(tmp_path / "d.yaml", raw_spec(2, 0)))], "depth_mup.base_depth"),
    ):  # fmt: skip
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and needle in err[0], (argv, err)
    assert not (tmp_path / "o").exists()


def resnet_spec(base: int | None, order: str = "pre", **options: Any) -> dict[str, Any]:
    raw = {
        "name": "rn",
        "model": {"family": "resnet18_ln", "options": {"order": order, **options}},
        "widths": [8],
        "seeds": 8,
        "parameterization": {"name": "mup"},
        "optimizer": {"name": "adam", "lr": 0.003},
        "steps": 3,
        "batch_size": 8,
        "data": {"stream": "teacher_images", "seed": 0, "options": {"size": 8}},
        "device": "cpu",
    }
    if base is not None:
        raw["depth_mup"] = {"base_depth": base}
    return raw


@pytest.mark.parametrize("order", ["post", "pre"])
def test_resnet_branch_rules(order: str) -> None:
    """L counts the blocks of all stages: depth 2 per stage is ResNet-18 (L = 8)."""

    def rules(raw: dict[str, Any]):
        spec = validate_spec(raw)
        stream = STREAMS.get(spec.data.stream)(spec.data.seed, spec.stream_options())
        return EnsembleTrainer(spec, 8, stream, torch.device("cpu")).rules

    assert rules(resnet_spec(8, order, depth=2)) == rules(resnet_spec(None, order, depth=2))
    plain, scaled = rules(resnet_spec(None, order, depth=4)), rules(resnet_spec(8, order, depth=4))
    last = "norm2" if order == "post" else "conv2"
    f = math.sqrt(8 / 16)
    hit = 0
    for name, r in plain.items():
        s = scaled[name]
        out = name.split(".")[1] == last and name[0] == "s"
        hit += out
        assert s.multiplier == pytest.approx(r.multiplier * (f if out else 1.0), rel=1e-15), name
        inside = name[0] == "s" and name.split(".")[1] in ("conv1", "norm1", "conv2", "norm2")
        assert s.lr_scale == pytest.approx(r.lr_scale * (f if inside else 1.0), rel=1e-15), name
    assert hit == 16 * (2 if order == "post" else 1)  # 16 blocks: gain and bias, or weight


def test_resnet_stream_flat_in_depth_under_depth_mup_and_growing_without() -> None:
    """Pre-activation ResNet (identity stream): the last block's stream is flat in depth
    1-8 blocks per stage under depth-muP and grows without it, after 3 Adam steps
    (measured +0.036 against +0.427; the branch output shrinks like √(L₀/L): −0.59)."""
    depths = [1, 2, 4, 8]
    with_ = coord_check_depths(validate_spec(resnet_spec(4)), depths, steps=3, points=32)
    without = coord_check_depths(validate_spec(resnet_spec(None)), depths, steps=3, points=32)
    flat = coord_slopes(with_, dim="depth").sel(layer="act/last")
    assert flat.verdict.item() == "flat", flat
    grows = coord_slopes(without, dim="depth").sel(layer="act/last")
    assert grows.verdict.item() == "grows" and float(grows.slope) > 0.25, grows
    branch = coord_slopes(with_, dim="depth").sel(layer="preact/last")
    assert branch.verdict.item() == "shrinks" and -0.75 < float(branch.slope) < -0.4, branch


def test_resnet_depth_and_blocks_together_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = {**resnet_spec(None, blocks=[2, 2, 2, 2], depth=3), "out": str(tmp_path / "o")}
    assert main(["run", str(write_spec(tmp_path / "r.yaml", raw))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "both set" in err[0], err
    assert not (tmp_path / "o").exists()
