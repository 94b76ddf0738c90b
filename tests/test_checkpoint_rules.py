"""Checkpoints carry the parameterization rules, and a resume checks them.

A checkpoint whose rules are not the ones the spec gives (edited by hand, or written
by a widthwise version whose rules differ) is refused with one line naming the
tensor, before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_spec_dict, write_spec

import widthwise
from widthwise import __version__
from widthwise.cli import main
from widthwise.store import WidthDir

pytestmark = pytest.mark.quick


@pytest.fixture
def finished(tmp_path: Path) -> Path:
    path = write_spec(tmp_path / "tiny.yaml", tiny_spec_dict(tmp_path / "study"))
    widthwise.run(widthwise.load_spec(path))
    return path


def _unfinish(study: Path, width: int = 16) -> WidthDir:
    """Make ``width`` look like a killed run, so the next run loads its checkpoint."""
    wd = WidthDir(study / f"width_{width:05d}")
    wd.write_status(**{**wd.read_status(), "state": "running"})
    return wd


def _edit(wd: WidthDir, **changes: object) -> dict:
    state = torch.load(wd.checkpoint_path, weights_only=True)
    state.update(changes)
    torch.save(state, wd.checkpoint_path)
    return state


def test_checkpoint_records_rules_and_version(finished: Path) -> None:
    state = torch.load(finished.parent / "study/width_00032/checkpoint.pt", weights_only=True)
    assert state["widthwise_version"] == __version__
    # mup, SGD, m = 32/16 = 2: the readout's multiplier is 1/m and its lr scale m
    assert state["rules"]["out.weight"]["multiplier"] == 0.5
    assert state["rules"]["out.weight"]["lr_scale"] == 2.0
    assert state["rules"]["l2.weight"]["lr_scale"] == 1.0


@pytest.mark.parametrize("version", [__version__, "0.0.1"])
def test_edited_rules_are_refused(
    finished: Path, capsys: pytest.CaptureFixture[str], version: str
) -> None:
    wd = _unfinish(finished.parent / "study")
    state = torch.load(wd.checkpoint_path, weights_only=True)
    rules = {k: {**r, "lr_scale": 123.0} for k, r in state["rules"].items()}
    _edit(wd, rules=rules, widthwise_version=version)
    before = {p: p.stat().st_mtime_ns for p in wd.path.rglob("*")}
    assert main(["run", str(finished), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert str(wd.checkpoint_path) in err[0]
    assert "the rule of tensor 'l1.weight' differs: lr_scale 123.0 in the checkpoint, 1.0" in err[0]
    assert ("written by widthwise 0.0.1" in err[0]) == (version == "0.0.1")
    assert {p: p.stat().st_mtime_ns for p in wd.path.rglob("*")} == before  # nothing written


def test_a_missing_tensor_rule_is_refused(
    finished: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wd = _unfinish(finished.parent / "study")
    state = torch.load(wd.checkpoint_path, weights_only=True)
    rules = dict(state["rules"])
    rules.pop("l2.weight")
    _edit(wd, rules=rules)
    assert main(["run", str(finished), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "tensor 'l2.weight' is missing from the checkpoint" in err


def test_matching_rules_resume(finished: Path) -> None:
    """The unedited checkpoint (rules recomputed equal) resumes and finishes."""
    wd = _unfinish(finished.parent / "study")
    _edit(wd, widthwise_version="0.0.1")  # another version, same rules: allowed
    assert main(["run", str(finished), "--quiet"]) == 0
    assert wd.read_status()["state"] == "done"
