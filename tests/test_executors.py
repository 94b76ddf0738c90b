"""Executors: processes, Ray and Slurm (through submitit) equal ``local`` bit for bit.

Every executor here runs its workers with one torch thread, like this module (the
``single_thread`` fixture), so the arithmetic is the same everywhere. Parts of one
study may run under different executors: the result equals one uninterrupted run.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import xarray as xr
from conftest import tiny_spec_dict, write_spec
from rich.console import Console
from test_resume import assert_identical_results, interrupt_at

import widthwise
from widthwise.cli import main
from widthwise.errors import UserError
from widthwise.executors import EXECUTORS, executor_override
from widthwise.job import WidthJob, run_job
from widthwise.progress import last_train_loss, study_progress
from widthwise.spec import load_spec
from widthwise.store.lock import WidthLock
from widthwise.store.study_dir import StudyDir
from widthwise.store.width_dir import WidthDir
from widthwise.study import build_stream, dry_run

pytestmark = pytest.mark.usefixtures("single_thread")

PROCESSES = {"name": "processes", "options": {"workers": 2, "threads_per_run": 1}}
SLURM_LOCAL = {"name": "slurm", "options": {"cluster": "local", "threads_per_run": 1}}


@pytest.fixture(scope="module")
def reference(single_thread: None, tmp_path_factory: pytest.TempPathFactory) -> xr.Dataset:
    """The tiny study, uninterrupted, under ``local``."""
    root = tmp_path_factory.mktemp("reference")
    out = widthwise.run(load_spec(write_spec(root / "tiny.yaml", tiny_spec_dict(root / "study"))))
    return widthwise.open_study(out)


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich wraps to $COLUMNS; wide enough that no line is wrapped."""
    monkeypatch.setenv("COLUMNS", "250")


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def interrupted_locally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, width: int, step: int, **spec: Any
) -> Path:
    """A study whose ``local`` run was interrupted once ``width`` took ``step`` updates."""
    spec_path = write_spec(tmp_path / "tiny.yaml", tiny_spec_dict(tmp_path / "study", **spec))
    with monkeypatch.context() as m:
        interrupt_at(m, width, step)
        assert main(["run", str(spec_path), "--quiet"]) == 130
    status = WidthDir(tmp_path / "study" / f"width_{width:05d}").read_status()
    assert status["state"] == "interrupted" and status["step"] == step
    return spec_path


# -- processes -------------------------------------------------------------------


def test_local_interrupted_then_processes_finishes(
    reference: xr.Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two worker processes resume width 16 and run width 32: equal to one local run."""
    spec_path = interrupted_locally(tmp_path, monkeypatch, width=16, step=7)
    argv = ["run", str(spec_path), "--executor", "processes", "--workers", "2", "--quiet"]
    assert main(argv) == 0
    out = tmp_path / "study"
    assert_identical_results(widthwise.open_study(out), reference)
    assert not list(out.rglob("lock"))
    # a second run finds everything done and touches nothing
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert widthwise.run(load_spec(spec_path), executor=PROCESSES) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


# -- ray -------------------------------------------------------------------------


def test_ray_resumes_a_local_run_bit_for_bit(
    reference: xr.Dataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A real local Ray instance (2 CPUs) resumes width 16 and runs width 32."""
    ray = pytest.importorskip("ray")  # the dev extra installs it; skip cleanly without
    spec_path = interrupted_locally(tmp_path, monkeypatch, width=16, step=7)
    capsys.readouterr()
    assert not ray.is_initialized()
    assert main(["run", str(spec_path), "--executor", "ray", "--workers", "2", "--quiet"]) == 0
    assert not ray.is_initialized()  # the instance it started is shut down again
    out = capsys.readouterr().out
    assert "(executor ray)" in out
    ds = widthwise.open_study(tmp_path / "study")
    assert_identical_results(ds, reference)
    # wall time accumulates over the local session and the Ray session
    assert float(ds.wall_time.sel(width=16)) > 0


# -- slurm (submitit) ------------------------------------------------------------


def test_slurm_through_submitit_local_equals_local(reference: xr.Dataset, tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    spec = load_spec(write_spec(tmp_path / "tiny.yaml", tiny_spec_dict(tmp_path / "study")))
    out = widthwise.run(spec, executor=SLURM_LOCAL)
    assert_identical_results(widthwise.open_study(out), reference)
    # one array submission, its logs in <out>/slurm
    logs = sorted(p.name for p in (out / "slurm").glob("*_log.out"))
    assert len(logs) == 2, logs


def test_slurm_dry_run_prints_the_array_job_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("submitit")
    out = tmp_path / "study"
    executor = {
        "name": "slurm",
        "options": {
            "partition": "gpu",
            "time_min": 90,
            "gpus_per_run": 1,
            "cpus_per_run": 4,
            "mem_gb": 16,
            "array_parallelism": 1,
            "setup": ["module load cuda"],
            "additional_parameters": {"account": "myproj"},
        },
    }
    spec_path = write_spec(tmp_path / "tiny.yaml", tiny_spec_dict(out, executor=executor))
    assert main(["run", str(spec_path), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert not out.exists()  # nothing written, not even the study directory
    lines = text.splitlines()
    assert lines[0] == f"dry run: tiny → {out} (2 of 2 widths to run; nothing written)"
    assert "width    16: run (20 steps)" in lines and "width    32: run (20 steps)" in lines
    assert "would submit one array job of 2 tasks (0 → width 16, 1 → width 32):" in lines
    for flag in (
        "#SBATCH --array=0-1%1",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=90",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=16GB",
        "#SBATCH --account=myproj",
        "#SBATCH --job-name=widthwise-tiny",
        f"#SBATCH --output={out / 'slurm'}/%A_%a_0_log.out",
        "module load cuda",
    ):
        assert flag in lines, flag
    assert any(line.startswith("srun ") and "submitit.core._submit" in line for line in lines)


def test_dry_run_after_a_partial_run_plans_skip_and_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("submitit")
    spec_path = interrupted_locally(tmp_path, monkeypatch, width=32, step=13)
    out = tmp_path / "study"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    text = dry_run(load_spec(spec_path), executor="slurm")
    assert "width    16: skip (done)" in text
    assert "width    32: resume from its last checkpoint (13 of 20 steps reached)" in text
    assert "would submit one job (0 → width 32):" in text
    assert "#SBATCH --array" not in text  # a single run is a plain job
    assert "nothing written" in text and "(1 of 2 widths to run" in text
    plan = dry_run(load_spec(spec_path), executor=PROCESSES)
    assert "executor processes: 1 worker process, 1 torch thread per run" in plan
    assert "would submit" not in plan
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert not (out / "slurm").exists()


def test_slurm_without_slurm_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("submitit")
    monkeypatch.setattr("shutil.which", lambda name: None)
    out = tmp_path / "study"
    spec_path = write_spec(tmp_path / "tiny.yaml", tiny_spec_dict(out))
    assert main(["run", str(spec_path), "--executor", "slurm", "--quiet"]) == 2
    line = one_error_line(capsys)
    assert line.startswith("error: executor slurm: no Slurm here (sbatch not found); use --dry-run")
    assert not out.exists()


def test_unreachable_ray_address_is_one_line_in_seconds_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("ray")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "study"
    spec_path = write_spec(tmp_path / "tiny.yaml", tiny_spec_dict(out))
    argv = ["run", str(spec_path), "--executor", "ray", "--address", f"127.0.0.1:{port}"]
    assert main([*argv, "--quiet"]) == 2
    line = one_error_line(capsys)
    assert line.startswith(
        f"error: executor.options.address: cannot reach the Ray head at '127.0.0.1:{port}'"
    )
    assert not out.exists()


@pytest.mark.parametrize("scheme", ["ray://", ""], ids=["client", "gcs"])
def test_ray_address_that_is_not_a_ray_head_is_one_line_and_writes_nothing(
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    scheme: str,
) -> None:
    """A port that accepts connections but never answers as a Ray head (ray.init would
    retry for minutes, printing ~20 lines of its own log): one line, in seconds."""
    pytest.importorskip("ray")
    import socket
    import time

    import widthwise.executors.ray_tasks as ray_tasks

    monkeypatch.setattr(ray_tasks, "PREFLIGHT_TIMEOUT_S", 0.5)
    out = tmp_path / "study"
    spec_path = write_spec(tmp_path / "tiny.yaml", tiny_spec_dict(out))
    with socket.socket() as silent:  # accepts (the kernel's backlog), never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"{scheme}127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        code = main(["run", str(spec_path), "--executor", "ray", "--address", address, "--quiet"])
        took = time.monotonic() - start
    assert code == 2
    err = capfd.readouterr().err.strip().splitlines()  # fd 2 too: Ray's C++ core writes there
    assert err == [
        f"error: executor.options.address: cannot reach the Ray head at {address!r} (no answer "
        "within 0.5 s: not a Ray head); check the address, or omit it for a local instance"
    ]
    assert took < 10, took
    assert not out.exists()


def test_ray_auto_without_a_cluster_is_one_line_and_writes_nothing(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray"))  # no instance of this machine's
    out = tmp_path / "study"
    spec_path = write_spec(tmp_path / "tiny.yaml", tiny_spec_dict(out))
    argv = ["run", str(spec_path), "--executor", "ray", "--address", "auto", "--quiet"]
    assert main(argv) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "error: executor.options.address: 'auto' finds no Ray cluster ("
    ), err
    assert not out.exists()


# -- errors and options ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "module", "extra"), [("ray", "ray", "ray"), ("slurm", "submitit", "slurm")]
)
def test_missing_extra_is_one_line_and_writes_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    module: str,
    extra: str,
) -> None:
    real = importlib.util.find_spec

    def find_spec(mod: str, *args: Any, **kwargs: Any) -> Any:
        return None if mod == module else real(mod, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    out = tmp_path / "study"
    spec_path = write_spec(tmp_path / "spec.yaml", tiny_spec_dict(out, executor=name))
    assert main(["run", str(spec_path), "--quiet"]) == 2
    assert one_error_line(capsys) == (
        f"error: {spec_path}: executor.name: {name!r} needs the {extra} extra: "
        f"pip install 'widthwise[{extra}]'"
    )
    assert not out.exists()
    # the same through --executor on a spec that says local
    local_path = write_spec(tmp_path / "local.yaml", tiny_spec_dict(out))
    assert main(["run", str(local_path), "--executor", name, "--quiet"]) == 2
    assert f"needs the {extra} extra" in one_error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--executor", "processes", "--address", "auto"], "--address: only the ray executor"),
        (["--workers", "3"], "--workers: the local executor runs one width at a time"),
        (
            ["--executor", "nope"],
            "executor.name: unknown executor 'nope'; allowed: local, processes, ray, slurm",
        ),
        (["--workers", "0"], "expected a whole number >= 1"),
    ],
)
def test_bad_executor_flags_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    out = tmp_path / "study"
    spec_path = write_spec(tmp_path / "tiny.yaml", tiny_spec_dict(out))
    assert main(["run", str(spec_path), "--quiet", *argv]) == 2
    assert message in one_error_line(capsys)
    assert not out.exists()


def test_bad_executor_option_names_the_key(tmp_path: Path) -> None:
    spec = tiny_spec_dict(tmp_path / "s", executor={"name": "processes", "options": {"wrkers": 2}})
    with pytest.raises(UserError, match=r"executor\.options\.wrkers: unknown key"):
        load_spec(write_spec(tmp_path / "bad.yaml", spec))


def test_executor_override() -> None:
    spec_ex = {"name": "processes", "options": {"workers": 4, "start_method": "fork"}}
    assert executor_override(spec_ex, workers=2) == {
        "name": "processes",
        "options": {"workers": 2, "start_method": "fork"},
    }
    assert executor_override(spec_ex, "ray", workers=3) == {
        "name": "ray",
        "options": {"num_cpus": 3},
    }
    assert executor_override("ray", address="auto") == {
        "name": "ray",
        "options": {"address": "auto"},
    }
    assert executor_override(None, "slurm", workers=8) == {
        "name": "slurm",
        "options": {"array_parallelism": 8},
    }
    assert executor_override(None) == {"name": "local", "options": {}}
    assert EXECUTORS.names() == ["local", "processes", "ray", "slurm"]


def test_a_job_on_a_busy_width_returns_the_refusal(reference: xr.Dataset, tmp_path: Path) -> None:
    """What a remote worker sends back when another writer holds its width."""
    spec = load_spec(write_spec(tmp_path / "tiny.yaml", tiny_spec_dict(tmp_path / "study")))
    stream = build_stream(spec)
    study = StudyDir(tmp_path / "study")
    study.prepare(spec, spec.hash(), stream.probe_set(32), stream.describe())
    spec_json = spec.model_dump(mode="json")
    wd = study.width_dir(16).path
    with WidthLock(wd):
        res = run_job(WidthJob(spec_json, 16, str(study.path), "cpu", 1))
    assert res["state"] == "error" and res["error_type"] == "StoreError"
    assert res["error"].startswith(f"{wd}: being written by pid ")
    assert not wd.exists()  # nothing written by the refused job
    # a finished width is returned as it is, without locking or touching it
    ref_out = Path(json.loads(reference.attrs["spec"])["out"])
    ref_json = load_spec(ref_out / "spec.yaml").model_dump(mode="json")
    with WidthLock(ref_out / "width_00016"):
        assert run_job(WidthJob(ref_json, 16, str(ref_out), "cpu", 1))["state"] == "done"
    # a job of another spec's study is stale and refused
    other = {**spec_json, "steps": 21}
    res = run_job(WidthJob(other, 16, str(study.path), "cpu", 1))
    assert res["state"] == "error" and "this job is stale" in res["error"]


def test_progress_follows_runs_elsewhere_from_the_store(reference: xr.Dataset) -> None:
    """Coarse bars for remote runs: step and last training loss read from the store."""
    out = Path(json.loads(reference.attrs["spec"])["out"])
    loss = last_train_loss(out / "width_00032")
    assert loss == pytest.approx(float(reference.train_loss.sel(width=32).isel(step=-1).mean()))
    assert math.isnan(last_train_loss(out / "width_09999"))
    buf = io.StringIO()
    console = Console(file=buf, width=150, force_terminal=False)
    with study_progress(True, console) as bars:
        bars.finished(16, 20, last_train_loss(out / "width_00016"))
        watch = bars.watch(32, 20)
        assert watch is not None
        watch(15, loss, "running")
    text = buf.getvalue()
    assert "width    16 (done)" in text and "20/20" in text
    assert "width    32 (running)" in text and "15/20" in text and f"loss {loss:.4g}" in text
    with study_progress(False) as quiet:
        assert quiet.watch(32, 20) is None and quiet.for_width(32, 20) is None


def test_import_flag_reaches_remote_workers_only() -> None:
    from widthwise.executors import executor_override

    spec_value = {"name": "processes", "options": {"workers": 2, "imports": ["a"]}}
    merged = executor_override(spec_value, imports=["b", "a"])
    assert merged == {"name": "processes", "options": {"workers": 2, "imports": ["a", "b"]}}
    assert executor_override(None, imports=["b"]) == {"name": "local", "options": {}}
