"""``widthwise report --coord-check`` on a module study: the factory is code, so the
check runs only with ``--import MODULE`` or ``--allow-code`` (docs/security.md), and
without them the report says which flag to pass (a fresh process: nothing imported)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_spec

import widthwise
from widthwise.cli import main

TESTS = Path(__file__).parent


def _module_study_spec(tmp_path: Path) -> Path:
    """A tiny study of tests/module_factories.py's MLP, its output in ``tmp_path/study``."""
    spec = {
        "name": "mod",
        "out": str(tmp_path / "study"),
        "model": {"family": "module", "options": {"factory": "module_factories:make_mlp"}},
        "widths": [16, 32],
        "base_width": 16,
        "seeds": 1,
        "steps": 2,
        "batch_size": 8,
        "optimizer": {"name": "sgd", "lr": 0.1},
        "data": {"stream": "gegenbauer", "options": {"dim": 8}, "probe_points": 16},
        "device": "cpu",
    }
    return write_spec(tmp_path / "s.yaml", spec)


def _report(study: Path, *flags: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    out = study / "report"
    cmd = [sys.executable, "-m", "widthwise", "report", str(study), "--coord-check", *flags]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return (out / "report.html").read_text()


def test_report_coord_check_of_a_module_study_needs_import_or_allow_code(tmp_path: Path) -> None:
    path = _module_study_spec(tmp_path)
    assert main(["run", str(path), "--quiet", "--import", "module_factories"]) == 0
    study = tmp_path / "study"
    page = _report(study)
    assert "Skipped: model.options.factory" in page and "--import module_factories" in page
    for flags in (("--import", "module_factories"), ("--allow-code",)):
        page = _report(study, *flags)
        assert "Skipped: model.options.factory" not in page
        assert 'id="coord_check"' in page and "coord_check.png" in page


def test_allow_code_reaches_worker_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--allow-code with the processes executor: a spawned worker does not inherit this
    process's trust, so each job carries the factory modules the caller allowed
    (WidthJob.trusted_factories); before, every width failed with 'pass --allow-code'."""
    monkeypatch.setenv("PYTHONPATH", str(TESTS))  # where the spawned workers find it
    path = _module_study_spec(tmp_path)
    args = ["run", str(path), "--quiet", "--allow-code", "--executor", "processes"]
    assert main([*args, "--workers", "2"]) == 0
    status = widthwise.open_study(tmp_path / "study").status.values.tolist()
    assert status == ["done", "done"]
