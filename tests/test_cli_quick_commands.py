"""The quick commands: --version, list and show answer without torch or xarray; their
--quiet and --json output; terminal width; show's table equals the Dataset's."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import tiny_spec_dict, write_spec

import widthwise
import widthwise.study
from widthwise.cli import PIPE_WIDTH, main, make_console

pytestmark = [pytest.mark.quick, pytest.mark.usefixtures("single_thread")]

HEAVY = ("torch", "xarray", "matplotlib", "scipy")


@pytest.fixture(scope="module")
def done_study(tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> Path:
    """A finished tiny study, its horizon sentence cached by ``run`` (as for users)."""
    tmp = tmp_path_factory.mktemp("done")
    path = write_spec(tmp / "tiny.yaml", tiny_spec_dict(tmp / "study"))
    assert main(["run", str(path), "--quiet"]) == 0
    return tmp / "study"


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "widthwise", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def imported_by(args: list[str]) -> list[str]:
    """Which heavy modules ``main(args)`` imports, in a fresh interpreter."""
    probe = (
        "import sys, contextlib, io\n"
        "from widthwise.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        code = main({args!r})\n"
        "    except SystemExit as e:\n"
        "        code = e.code\n"
        "assert code == 0, code\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    return [m for m in out.stdout.strip().split(",") if m]


def test_version() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"widthwise {importlib.metadata.version('widthwise')}\n"
    assert widthwise.__version__ == importlib.metadata.version("widthwise")


@pytest.mark.parametrize(
    "args",
    [["--help"], ["--version"], ["list"], ["list", "--json"], ["list", "--quiet"]],
    ids=["help", "version", "list", "list_json", "list_quiet"],
)
def test_quick_commands_import_no_heavy_module(args: list[str]) -> None:
    assert imported_by(args) == []


def test_show_imports_no_heavy_module_once_cached(done_study: Path) -> None:
    # the run that made the study cached its horizon sentence: show reads only files
    for args in (["show", str(done_study)], ["show", str(done_study), "--json"]):
        assert imported_by(args) == []


def test_list_json_has_every_example_and_its_needs(capsys: pytest.CaptureFixture[str]) -> None:
    from widthwise.calibration import calibrate
    from widthwise.spec import bundled_specs

    calibrate("cpu", None)  # so the examples without threads_per_run have an estimate
    calibrate("cpu", 1)
    assert main(["list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    examples = {e["name"]: e for e in data["examples"]}
    assert set(examples) == set(bundled_specs())
    fields = {"name", "path", "description", "family", "widths", "seeds", "steps", "flops"}
    fields |= {"memory_bytes", "estimated_seconds", "estimate", "per_width", "data"}
    for e in examples.values():
        assert fields <= set(e)
        assert e["flops"] > 0 and e["memory_bytes"] > 0, e["name"]
        assert e["estimated_seconds"] > 0 and e["estimate"].startswith("≈ "), e["name"]
        assert [w["width"] for w in e["per_width"]] == e["widths"]
    fm = examples["offline_label_noise"]["data"]
    assert fm["stream"] == "fashion_mnist"
    assert "apt-get install dataset-fashion-mnist" in fm["how"]
    assert examples["quickstart"]["data"] is None
    assert {"device", "threads", "matmul_flops_per_s", "measured"} <= set(data["calibrations"][0])


def test_list_table_names_data_and_estimates(capsys: pytest.CaptureFixture[str]) -> None:
    from widthwise.calibration import calibrate

    calibrate("cpu", 1)
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "≈ " in out and "estimates for this machine" in out
    assert "offline_label_noise needs Fashion-MNIST" in out
    assert "apt-get install dataset-fashion-mnist" in out
    assert main(["list", "--quiet"]) == 0
    names = capsys.readouterr().out.split()
    assert "quickstart" in names and all(" " not in n for n in names)


def test_show_json_and_quiet(done_study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", str(done_study), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"study", "name", "parameterization", "seeds", "steps", "widths", "done"} <= set(data)
    assert {"horizon", "skipped_records", "summary"} <= set(data)
    assert (data["name"], data["parameterization"], data["seeds"]) == ("tiny", "mup", [0, 1])
    assert data["done"] == 2 and data["summary"] == "tiny: 2 of 2 widths done"
    ds = widthwise.open_study(done_study)
    for i, w in enumerate(data["widths"]):
        assert w["width"] == [16, 32][i] and w["state"] == "done"
        tail = ds.train_loss.values[i, :, -10:].mean(axis=1)
        assert w["train_loss_mean"] == pytest.approx(tail.mean(), rel=1e-12)
        assert w["train_loss_std"] == pytest.approx(tail.std(), rel=1e-12, abs=1e-15)
        assert w["test_loss_mean"] == pytest.approx(ds.test_loss.values[i, :, -1].mean())
        assert w["wall_time"] == pytest.approx(float(ds.wall_time[i]))
        assert w["diverged"] == []
    assert main(["show", str(done_study), "--quiet"]) == 0
    assert capsys.readouterr().out == "tiny: 2 of 2 widths done\n"


@pytest.mark.parametrize("flag", ["--json", "--quiet"])
def test_show_missing_dir_is_one_line(
    tmp_path: Path, flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", str(tmp_path / "nope"), flag]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"error: {tmp_path / 'nope'}: not a widthwise study (no such directory)"
    ]


def test_json_and_quiet_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--json", "--quiet"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--quiet" in err[0] and "--json" in err[0]


def test_console_width_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    assert make_console().width == PIPE_WIDTH  # captured stdout is not a terminal
    monkeypatch.setenv("COLUMNS", "123")
    assert make_console().width == 123 and make_console(stderr=True).width == 123


def interrupted_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
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
    return tmp_path / "study"


def test_narrow_terminal_never_cuts_a_state_word(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    study = interrupted_study(tmp_path, monkeypatch)
    capsys.readouterr()
    monkeypatch.setenv("COLUMNS", "30")
    assert main(["show", str(study)]) == 0
    out = capsys.readouterr().out
    assert "interrupted" in out and "…" not in out
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert any("interrupted" in r for r in rows)


def test_show_reads_the_same_states_and_losses_as_the_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from widthwise.show import read_study
    from widthwise.summary import width_states, width_summary

    study = interrupted_study(tmp_path, monkeypatch)
    # a diverged member and a torn line on top
    status_path = study / "width_00016" / "status.json"
    status = json.loads(status_path.read_text())
    status.pop("crc32", None)  # a hand edit: drop the checksum, or the width reads "unknown"
    status_path.write_text(json.dumps({**status, "diverged_step": [3, -1]}))
    with open(study / "width_00016" / "scalars.jsonl", "a") as f:
        f.write('{"probe": "train_loss", "st')
    view = read_study(study)
    assert [vars(s) for s in view.states] == [vars(s) for s in width_states(study)]
    s = width_summary(widthwise.open_study(study))
    for i, width in enumerate(s.width.values):
        mine = view.losses[int(width)]
        for key in ("train_loss_mean", "train_loss_std", "test_loss_mean", "test_loss_std"):
            np.testing.assert_allclose(mine[key], float(s[key][i]), rtol=1e-12, atol=1e-15)
    (study / "width_00032" / "status.json").unlink()
    assert [vars(s) for s in read_study(study).states] == [vars(s) for s in width_states(study)]


def test_show_constants_match_the_store() -> None:
    from widthwise.bundled import FASHION_MNIST_DIR, bundled_spec_paths
    from widthwise.show import MANIFEST, width_dirname
    from widthwise.spec import bundled_specs
    from widthwise.store import study_dir
    from widthwise.streams import idx

    assert MANIFEST == study_dir.MANIFEST
    assert width_dirname(64) == study_dir.width_dirname(64)
    assert FASHION_MNIST_DIR == idx.FASHION_MNIST_DIR
    assert bundled_spec_paths() == bundled_specs()
