"""The ``widthwise`` command line: list, run, show, coord-check, usage errors, --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import tiny_spec_dict, write_spec

import widthwise
import widthwise.study
from widthwise.cli import main
from widthwise.spec import bundled_specs, load_spec

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich wraps to $COLUMNS; wide enough that no cell or path is wrapped."""
    monkeypatch.setenv("COLUMNS", "250")


def table_rows(text: str) -> dict[str, list[str]]:
    """Body rows of a rich table, keyed by their first cell."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            rows[cells[0]] = cells
    return rows


def header(text: str) -> list[str]:
    for line in text.splitlines():
        if line.startswith("┃"):
            return [c.strip() for c in line.strip("┃").split("┃")]
    raise AssertionError(f"no table header in:\n{text}")


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


@pytest.mark.quick
def test_list_shows_bundled_specs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert "quickstart" in rows
    description = yaml.safe_load(bundled_specs()["quickstart"].read_text())["description"]
    assert rows["quickstart"][1] == description.strip().split("\n")[0]
    assert set(rows) == set(bundled_specs())


def expected_cells(ds: Any, i: int) -> tuple[str, str]:
    """train loss (mean of each seed's last 10 steps) and final test loss, mean ± std."""
    tail = ds.train_loss.values[i, :, -10:].mean(axis=1)
    test = ds.test_loss.values[i, :, -1]
    return f"{tail.mean():.3g} ± {tail.std():.1g}", f"{test.mean():.3g} ± {test.std():.1g}"


@pytest.mark.quick
def test_run_then_show(tiny_spec, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tiny_spec(out=str(tmp_path / "ignored"))
    out = tmp_path / "from_flag"
    assert main(["run", str(spec), "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    run_out = capsys.readouterr().out
    assert not (tmp_path / "ignored").exists()  # --out wins over the spec's out
    assert f"Results in {out}" in run_out
    assert "widths [16, 32], 2 seeds, 20 steps" in run_out

    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    cols = header(shown)
    assert cols == [
        "width",
        "status",
        "train loss",
        "test loss",
        "diverged",
        "wall time",
    ]
    assert "tiny (mup, 2 seeds)" in shown
    assert "last 10 logged steps" in shown
    ds = widthwise.open_study(out)
    rows = table_rows(shown)
    assert list(rows) == ["16", "32"]
    for i, width in enumerate([16, 32]):
        train, test = expected_cells(ds, i)
        status = json.loads((out / f"width_{width:05d}" / "status.json").read_text())
        assert rows[str(width)] == [
            str(width),
            "done",
            train,
            test,
            "0/2",
            f"{status['wall_time']:.1f} s",
        ]
    # the run command ends with the same table
    assert table_rows(run_out) == rows


def test_show_counts_diverged_members(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tiny_spec_dict(tmp_path / "study", steps=10)
    spec["optimizer"] = {"name": "sgd", "lr": 1000.0}
    path = write_spec(tmp_path / "hot.yaml", spec)
    assert main(["run", str(path), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["show", str(tmp_path / "study")]) == 0
    rows = table_rows(capsys.readouterr().out)
    ds = widthwise.open_study(tmp_path / "study")
    diverged = (ds.diverged_step.values >= 0).sum(axis=1)
    assert diverged.sum() >= 1, "lr 1000 must blow up some member"
    for i, width in enumerate([16, 32]):
        row = rows[str(width)]
        assert row[4] == f"{diverged[i]}/2"
        if diverged[i] == 2:
            assert row[2] == row[3] == "—"  # no live member, no loss


def test_show_partial_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_spec(tmp_path / "tiny.yaml", tiny_spec_dict(tmp_path / "study"))
    real = widthwise.study.run_job

    def run_job(job: Any, on_step: Any = None) -> Any:
        def stop(done: int, total: int, loss: float) -> None:
            if job.width == 32 and done == 7:
                raise KeyboardInterrupt

        return real(job, on_step=stop)

    with monkeypatch.context() as m:
        m.setattr(widthwise.study, "run_job", run_job)
        assert main(["run", str(path), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err
    assert main(["show", str(tmp_path / "study")]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows["16"][1] == "done"
    assert rows["32"][1] == "interrupted"
    assert rows["32"][5].endswith(" s")
    # a width whose status was never written: unknown, no wall time (not "nan s")
    (tmp_path / "study" / "width_00032" / "status.json").unlink()
    assert main(["show", str(tmp_path / "study")]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows["32"][1] == "unknown"
    assert rows["32"][5] == "—"


def test_coord_check_prints_a_table(tiny_spec, capsys: pytest.CaptureFixture[str]) -> None:
    path = tiny_spec()
    assert main(["coord-check", str(path), "--steps", "2"]) == 0
    shown = capsys.readouterr().out
    assert "mean |coordinate| after 2 steps (mup, 2 seeds, probe inputs)" in shown
    assert header(shown) == ["layer", "width 16", "width 32", "slope [95 %]", "verdict"]
    da = widthwise.coord_check(load_spec(path), steps=2).isel(step=-1).mean("seed")
    rows = table_rows(shown)
    assert list(rows) == [str(v) for v in da.layer.values]
    assert list(rows)[-1] == "output" and "preact/l1" in rows and "act/l1" in rows
    for layer, row in rows.items():
        vals = da.sel(layer=layer).values
        assert row[1:3] == [f"{v:.3g}" for v in vals]
        assert row[4] in ("flat", "grows", "shrinks", "undetermined")
        assert np.all(vals > 0)
    assert "Log-log slope of coordinate size in width after 2 steps (mup)" in shown
    assert not (path.parent / "study").exists()  # coord-check writes no study


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        ([], ["a command is required"]),
        (["--bogus"], ["--bogus"]),
        (["frobnicate"], ["'frobnicate'", "run"]),
        (["run"], ["spec"]),
        (["run", "SPEC", "--bogus"], ["--bogus"]),
        (["list", "--verbose"], ["--verbose"]),
        (["show"], ["dir"]),
        (["coord-check", "SPEC", "--steps", "-1"], ["--steps", "-1"]),
        (["coord-check", "SPEC", "--steps", "three"], ["--steps", "'three'"]),
    ],
    ids=[
        "no_args",
        "bad_flag",
        "bad_command",
        "run_no_spec",
        "run_bad_flag",
        "list_bad_flag",
        "show_no_dir",
        "steps_negative",
        "steps_not_int",
    ],
)
@pytest.mark.quick
def test_usage_errors(
    tiny_spec, argv: list[str], needles: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tiny_spec()
    argv = [str(spec) if a == "SPEC" else a for a in argv]
    assert main(argv) == 2
    line = one_error_line(capsys)
    for needle in needles:
        assert needle in line, line
    assert not (spec.parent / "study").exists()


@pytest.mark.quick
def test_show_missing_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", str(tmp_path / "nope")]) == 2
    assert str(tmp_path / "nope") in one_error_line(capsys)


def test_unavailable_device_is_a_user_error(
    tiny_spec, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    spec = tiny_spec()
    assert main(["run", str(spec), "--device", "cuda", "--quiet"]) == 2
    line = one_error_line(capsys)
    assert "device" in line and "cuda" in line
    assert not (spec.parent / "study").exists()


@pytest.mark.quick
def test_subcommand_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--out" in out and "--device" in out and "--quiet" in out


def test_python_m_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "widthwise", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: widthwise")
    for command in ("run", "show", "list", "coord-check"):
        assert command in proc.stdout
    assert proc.stderr == ""


PLUGIN = """
from widthwise.families import FAMILIES

# the built-in MLP under another name: enough to prove the registry saw this module
FAMILIES.register("plugin_mlp", options=FAMILIES.entry("mlp").options)(FAMILIES.get("mlp"))
"""


def test_run_imports_a_plugin_module_from_the_current_directory(tmp_path: Path) -> None:
    """``--import MODULE`` registers user families for the command line (a fresh
    interpreter: the registries of this test process stay as they are)."""
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    spec = tiny_spec_dict(tmp_path / "study", model={"family": "plugin_mlp"}, steps=4)
    write_spec(tmp_path / "s.yaml", spec)
    cli = [sys.executable, "-m", "widthwise", "run", "s.yaml", "--quiet"]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.run(
            [*cli, *extra], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120
        )

    without = run()
    assert without.returncode == 2
    assert "model.family: unknown family 'plugin_mlp'" in without.stderr
    assert not (tmp_path / "study").exists()
    missing = run("--import", "no_such_plugin")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "error: --import: cannot import 'no_such_plugin': "
        "ModuleNotFoundError: No module named 'no_such_plugin'"
    ]
    ok = run("--import", "my_plugin")
    assert ok.returncode == 0, ok.stderr
    assert widthwise.open_study(tmp_path / "study").attrs["name"] == "tiny"
