"""Reports are swapped in whole, and never delete files widthwise did not write."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_spec_dict, write_spec

import widthwise
import widthwise.report.build as build_mod
from widthwise.cli import main
from widthwise.report import build_report


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("atomic")
    spec = tiny_spec_dict(root / "study", widths=[16, 32], steps=10, checkpoint_every=5)
    return widthwise.run(widthwise.load_spec(write_spec(root / "s.yaml", spec)))


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_out_with_foreign_files_is_refused_and_untouched(
    study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "plot.png").write_bytes(b"my own figure")
    (out / "notes.txt").write_text("keep me")
    before = _snapshot(out)
    assert main(["report", str(study), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds files widthwise did not write (notes.txt)" in err[0], err
    assert _snapshot(out) == before


def test_a_build_killed_midway_leaves_the_previous_report(
    study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "report"
    build_report(study, out)
    before = _snapshot(out)
    assert "report.html" in before and any(k.startswith("figures/") for k in before)

    def killed(*args: object, **kwargs: object) -> str:
        raise KeyboardInterrupt  # as if the process were stopped while writing

    monkeypatch.setattr(build_mod, "render_html", killed)
    with pytest.raises(KeyboardInterrupt):
        build_report(study, out)
    assert _snapshot(out) == before  # every file as it was, none deleted or replaced
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no temporary left
    monkeypatch.undo()
    build_report(study, out)  # and a rebuild replaces it whole
    assert set(_snapshot(out)) == set(before)
