"""Slurm without a controller, and tasks that vanish without accounting."""

from __future__ import annotations

import os
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import tiny_spec_dict, write_spec

from widthwise.cli import main
from widthwise.errors import StoreError
from widthwise.executors import ExecutorContext
from widthwise.executors import slurm as slurm_mod


def _fake_bin(tmp_path: Path, name: str, body: str) -> None:
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def test_sbatch_without_a_controller_is_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("submitit")
    _fake_bin(tmp_path, "sbatch", "exit 1")
    _fake_bin(
        tmp_path,
        "sinfo",
        'echo "sinfo: error: resolve_ctls_from_dns_srv: res_nsearch error" >&2\n'
        'echo "slurm_load_partitions: Zero Bytes were transmitted or received" >&2\nexit 1',
    )
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "study"
    spec_path = write_spec(tmp_path / "tiny.yaml", tiny_spec_dict(out))
    assert main(["run", str(spec_path), "--executor", "slurm", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(
        "error: executor slurm: sbatch is here but no Slurm controller answers (sinfo exit 1: "
        "sinfo: error: resolve_ctls_from_dns_srv"
    )
    assert not out.exists()


class _Job:
    """A submitit job as seen without accounting: its state stays UNKNOWN."""

    def __init__(self, tmp_path: Path) -> None:
        self.job_id = "4242_0"
        self.state = "UNKNOWN"
        log = tmp_path / "4242_0_log.err"
        log.write_text("step 3\nTraceback (most recent call last):\nMemoryError\n")
        self.paths = SimpleNamespace(stderr=log, result_pickle=tmp_path / "4242_0_result.pkl")

    def done(self) -> bool:
        return False  # what submitit says for UNKNOWN


def _executor(tmp_path: Path) -> slurm_mod.SlurmExecutor:
    pytest.importorskip("submitit")
    opts = slurm_mod.SlurmOptions(folder=str(tmp_path))
    return slurm_mod.SlurmExecutor(opts, ExecutorContext(study_path=tmp_path, runs=1))


def test_a_task_that_left_the_queue_without_a_result_fails_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ex = _executor(tmp_path)
    job, fut = _Job(tmp_path), Future()
    ex._jobs.append((job, fut))
    monkeypatch.setattr(slurm_mod, "_in_queue", lambda job_id: True)
    ex._settle(job, fut)
    assert not fut.done()  # still queued: keep waiting
    monkeypatch.setattr(slurm_mod, "_in_queue", lambda job_id: False)
    ex._settle(job, fut)
    with pytest.raises(StoreError) as info:
        fut.result(timeout=0)
    text = str(info.value)
    assert text.startswith("slurm job 4242_0 left the queue without a result")
    assert "its log ends: step 3 | Traceback (most recent call last): | MemoryError" in text


def test_a_task_with_a_result_file_is_not_declared_dead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ex = _executor(tmp_path)
    job, fut = _Job(tmp_path), Future()
    job.paths.result_pickle.write_bytes(b"x")  # finished: submitit will read it
    ex._jobs.append((job, fut))
    monkeypatch.setattr(slurm_mod, "_in_queue", lambda job_id: False)
    ex._settle(job, fut)
    assert not fut.done()
