"""Command-line overrides: --steps, --widths, --seeds and --set KEY.PATH=VALUE."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import tiny_spec_dict, write_spec

from widthwise.cli import main
from widthwise.errors import SpecError
from widthwise.overrides import apply_overrides, parse_set, parse_widths


@pytest.mark.quick
def test_parse_set_reads_yaml_values() -> None:
    assert parse_set("optimizer.lr=0.05") == (["optimizer", "lr"], 0.05)
    assert parse_set("widths=[64, 128]") == (["widths"], [64, 128])
    assert parse_set("probes.kernels.every=10") == (["probes", "kernels", "every"], 10)
    assert parse_set("name=abc") == (["name"], "abc")
    for bad in ("optimizer.lr", "=3", "a..b=1", "x=" + "[" * 20 + "]" * 20):
        with pytest.raises(SpecError, match="^--set"):
            parse_set(bad)


@pytest.mark.quick
def test_apply_overrides_copies_and_expands_names() -> None:
    raw = {"parameterization": "mup", "optimizer": {"name": "sgd", "lr": 0.1}, "steps": 5}
    out = apply_overrides(
        raw, ["parameterization.sigma=2.0", "optimizer.lr=0.2"], steps=9, widths=[8, 16]
    )
    assert out == {
        "parameterization": {"name": "mup", "sigma": 2.0},
        "optimizer": {"name": "sgd", "lr": 0.2},
        "steps": 9,
        "widths": [8, 16],
    }
    assert raw["optimizer"]["lr"] == 0.1  # the input is not changed
    with pytest.raises(SpecError, match="steps is not a mapping"):
        apply_overrides(raw, ["steps.x=1"])
    assert parse_widths("64,128") == [64, 128]
    with pytest.raises(SpecError, match="--widths"):
        parse_widths("64,abc")


def test_cli_overrides_are_recorded_in_the_study(tmp_path: Path) -> None:
    out = tmp_path / "study"
    path = write_spec(tmp_path / "s.yaml", tiny_spec_dict(out))
    argv = ["run", str(path), "--quiet", "--steps", "6", "--widths", "8,16", "--seeds", "1"]
    assert main([*argv, "--set", "optimizer.lr=0.05"]) == 0
    stored = yaml.safe_load((out / "spec.yaml").read_text())
    assert (stored["steps"], stored["widths"], stored["seeds"]) == (6, [8, 16], 1)
    assert stored["optimizer"]["lr"] == 0.05
    # the same overrides resume (nothing to do); other ones are another study
    assert main([*argv, "--set", "optimizer.lr=0.05"]) == 0
    assert main([*argv, "--set", "optimizer.lr=0.07"]) == 2


@pytest.mark.quick
@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--set", "optimizer.lrr=0.1"], "optimizer.lrr"),
        (["--set", "steps=many"], "steps"),
        (["--steps", "0"], "steps"),
        (["--widths", "8,x"], "--widths"),
        (["--set", "nokey"], "--set"),
    ],
)
def test_bad_overrides_are_the_specs_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], needle: str
) -> None:
    out = tmp_path / "study"
    path = write_spec(tmp_path / "s.yaml", tiny_spec_dict(out))
    assert main(["run", str(path), "--quiet", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], err
    assert not out.exists()
