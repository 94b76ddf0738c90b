"""``widthwise describe SPEC``: every tensor's role and rule before a run (docs/cli.md).

Oracle: the muP table of Tensor Programs V (Yang et al. 2022, Table 3, SGD): at width
multiplier m = n / n_base, input weights train at lr·m, hidden at lr, the readout has
forward multiplier 1/m and lr·m on its raw tensor; init std σ/√fan_in; under SP every
multiplier and lr scale is 1. Parameter counts: the MLP's closed form.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import tiny_spec_dict, write_spec

from widthwise.cli import main

pytestmark = pytest.mark.quick


def _spec(tmp_path: Path, parameterization: str) -> Path:
    spec = tiny_spec_dict(
        tmp_path / "never-written",
        widths=[32, 128],
        base_width=32,
        model={"family": "mlp", "options": {"depth": 3, "bias": False}},
        parameterization={"name": parameterization, "sigma": 1.0},
    )
    return write_spec(tmp_path / f"{parameterization}.yaml", spec)


def _describe(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["describe", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_mup_rules_are_tensor_programs_v_table_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _spec(tmp_path, "mup")
    info = _describe(capsys, str(path), "--width", "128")
    rows = {r["name"]: r for r in info["tensors"]}
    d = info["tensors"][0]["shape"][1]  # the stream's input dim
    assert [r["role"] for r in info["tensors"]] == ["input", "hidden", "output"]
    assert rows["l1.weight"]["lr_scale"] == pytest.approx(4.0)
    assert rows["l2.weight"]["lr_scale"] == pytest.approx(1.0)
    assert rows["out.weight"]["multiplier"] == pytest.approx(0.25)
    assert rows["out.weight"]["lr_scale"] == pytest.approx(4.0)
    assert rows["l2.weight"]["init_std"] == pytest.approx(1 / math.sqrt(128))
    assert rows["l1.weight"]["init_std"] == pytest.approx(1 / math.sqrt(d))
    out = info["tensors"][2]["shape"][0]
    assert info["params_per_width"] == {str(n): d * n + n * n + n * out for n in (32, 128)}
    assert not (tmp_path / "never-written").exists()
    # at the base width muP is SP's lr: every scale 1
    base = _describe(capsys, str(path))
    assert base["width"] == 32
    assert all(r["lr_scale"] == pytest.approx(1.0) for r in base["tensors"])


def test_sp_has_no_width_scaling(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = _describe(capsys, str(_spec(tmp_path, "sp")), "--width", "128")
    for r in info["tensors"]:
        assert r["multiplier"] == pytest.approx(1.0) and r["lr_scale"] == pytest.approx(1.0)


def test_table_names_every_tensor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["describe", str(_spec(tmp_path, "mup")), "--width", "128"]) == 0
    out = capsys.readouterr().out
    for needle in ("l1.weight", "hidden", "0.25", "parameters of one member by width"):
        assert needle in out
    assert "attention" not in out  # an MLP has none


def test_module_family_shows_inferred_roles_and_ties(capsys: pytest.CaptureFixture[str]) -> None:
    info = _describe(capsys, "module_nanogpt")
    rows = {r["name"]: r for r in info["tensors"]}
    wte = next(r for n, r in rows.items() if n.endswith("wte.weight"))
    assert wte["role"] == "input" and "tied" in wte["source"] and "lm_head" in wte["source"]
    assert any(r["role"] == "hidden" and r["source"] == "inferred" for r in rows.values())
    assert info["network"]["attention"] is True


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--width", "0"], "--width"), (["--width", "x"], "--width")],
)
def test_bad_width_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    assert main(["describe", str(_spec(tmp_path, "mup")), *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and ">= 1" in lines[0]


def test_unknown_spec_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["describe", "no-such-spec.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-spec.yaml" in err[0]


def test_a_depth_study_is_described_at_one_depth(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--depth picks the depth (default the first); depth-muP's branch multiplier there is
    √(base_depth / depth) (Tensor Programs VI): 1/2 at depth 4 over base 1."""
    spec = tiny_spec_dict(
        tmp_path / "never-written",
        model={"family": "transformer", "options": {"heads": 2}},
        depths=[1, 4],
        depth_mup={"base_depth": 1},
        data={"stream": "periodic_tokens", "seed": 0},
        optimizer={"name": "adam", "lr": 0.01},
    )
    path = write_spec(tmp_path / "d.yaml", spec)
    info = _describe(capsys, str(path), "--depth", "4")
    rows = {r["name"]: r for r in info["tensors"]}
    assert "b4.attn.proj.weight" in rows and "b5.attn.proj.weight" not in rows
    base = _describe(capsys, str(path))
    assert "b2.attn.proj.weight" not in {r["name"] for r in base["tensors"]}
    ratio = rows["b4.attn.proj.weight"]["multiplier"] / next(
        r["multiplier"] for r in base["tensors"] if r["name"] == "b1.attn.proj.weight"
    )
    assert ratio == pytest.approx(0.5)
    assert main(["describe", str(path), "--depth", "3"]) == 2
    assert "not one of the spec's depths [1, 4]" in capsys.readouterr().err
