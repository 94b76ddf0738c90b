"""Resume: an interrupted study, run again, equals an uninterrupted one bit for bit."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import tiny_spec_dict, write_spec

import widthwise
import widthwise.study
import widthwise.trainer
from widthwise.cli import main
from widthwise.spec import load_spec
from widthwise.store.width_dir import WidthDir

STEPS = 20
CKPT = 5


# one intra-op thread here and in the subprocess: the same arithmetic everywhere
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def reference(single_thread: None, tmp_path_factory: pytest.TempPathFactory) -> xr.Dataset:
    """The uninterrupted tiny study."""
    root = tmp_path_factory.mktemp("reference")
    out = widthwise.run(load_spec(write_spec(root / "tiny.yaml", tiny_spec_dict(root / "study"))))
    return widthwise.open_study(out)


def assert_identical_results(ds: xr.Dataset, ref: xr.Dataset) -> None:
    """Exactly the same numbers, coordinates and metadata (wall time and path aside)."""
    a, b = ds.drop_vars("wall_time"), ref.drop_vars("wall_time")
    for x in (a, b):  # ``spec`` holds ``out``, which differs
        x.attrs = {k: v for k, v in x.attrs.items() if k != "spec"}
    xr.testing.assert_identical(a, b)
    assert ds.attrs["skipped_records"] == 0


def assert_same_checkpoints(out: Path, ref_out: Path, widths: list[int]) -> None:
    for w in widths:
        name = f"width_{w:05d}/checkpoint.pt"
        a = torch.load(out / name, weights_only=True)
        b = torch.load(ref_out / name, weights_only=True)
        assert a["step"] == b["step"]
        for k in b["params"]:
            assert torch.equal(a["params"][k], b["params"][k]), (w, k)


class Interrupt(KeyboardInterrupt):
    pass


def interrupt_at(monkeypatch: pytest.MonkeyPatch, width: int, step: int) -> None:
    """Make ``study.run`` raise (like Ctrl-C) once ``width`` has taken ``step`` updates."""
    real = widthwise.study.run_job

    def run_job(job: Any, on_step: Any = None) -> Any:
        if job.width != width:
            return real(job, on_step=on_step)

        def boom(done: int, total: int, loss: float) -> None:
            if done == step:
                raise Interrupt(f"interrupted at step {step}")

        return real(job, on_step=boom)

    monkeypatch.setattr(widthwise.study, "run_job", run_job)


def count_train_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the step of every training update taken from now on."""
    taken: list[int] = []
    real = widthwise.trainer.EnsembleTrainer.train_step

    def train_step(self: Any) -> Any:
        taken.append(self.step)
        return real(self)

    monkeypatch.setattr(widthwise.trainer.EnsembleTrainer, "train_step", train_step)
    return taken


RANDOM_STEP = random.Random().randint(1, STEPS)


@pytest.mark.parametrize(
    ("width", "step"),
    [(16, 1), (16, CKPT), (16, CKPT + 1), (32, 13), (32, STEPS), (32, RANDOM_STEP)],
    ids=["w16-step1", "w16-at-ckpt", "w16-after-ckpt", "w32-step13", "w32-last", "w32-random"],
)
def test_resume_after_exception(
    reference: xr.Dataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    width: int,
    step: int,
) -> None:
    out = tmp_path / "study"
    spec_path = write_spec(tmp_path / "tiny.yaml", tiny_spec_dict(out))
    with monkeypatch.context() as m:
        interrupt_at(m, width, step)
        assert main(["run", str(spec_path), "--quiet"]) == 130  # the CLI's Ctrl-C exit
    assert "resume" in capsys.readouterr().err
    wd = WidthDir(out / f"width_{width:05d}")
    status = wd.read_status()
    assert status["state"] == "interrupted" and status["step"] == step, status
    # the interrupted study is readable as it stands, and agrees with the reference so far
    partial = widthwise.open_study(out)
    got = partial.train_loss.sel(width=width).dropna("step", how="all")
    assert got.step.values.tolist() == list(range(step))
    xr.testing.assert_equal(got, reference.train_loss.sel(width=width, step=got.step))

    finished_before = {}
    if width == 32:  # width 16 finished before the interruption
        w16 = out / "width_00016"
        finished_before = {p: p.stat().st_mtime_ns for p in w16.rglob("*")}
        wall16 = WidthDir(w16).read_status()["wall_time"]

    taken = count_train_steps(monkeypatch)
    assert main(["run", str(spec_path), "--quiet"]) == 0
    # checkpoints are taken before steps 5, 10, 15: the last one before the interrupt
    resumed_from = (step - 1) // CKPT * CKPT
    expected = list(range(resumed_from, STEPS))
    if width == 16:
        expected += list(range(STEPS))  # width 32 had not started
    assert taken == expected, f"interrupted at {step}: resume must start at {resumed_from}"

    ds = widthwise.open_study(out)
    assert_identical_results(ds, reference)
    assert_same_checkpoints(out, Path(json.loads(reference.attrs["spec"])["out"]), [16, 32])
    assert not list(out.rglob(".tmp-*"))
    if width == 32:  # the finished width was skipped: not a file touched, wall time kept
        assert {p: p.stat().st_mtime_ns for p in w16.rglob("*")} == finished_before
        assert float(ds.wall_time.sel(width=16)) == wall16
    else:
        # wall time accumulates over sessions: at least what the first session saved
        assert float(ds.wall_time.sel(width=16)) > 0


def test_rerun_of_finished_study_changes_nothing(
    reference: xr.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = Path(json.loads(reference.attrs["spec"])["out"])
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    taken = count_train_steps(monkeypatch)
    assert widthwise.run(load_spec(out / "spec.yaml")) == out
    assert taken == []
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    ds = widthwise.open_study(out)
    assert ds.status.values.tolist() == ["done", "done"]
    np.testing.assert_array_equal(ds.wall_time.values, reference.wall_time.values)


def test_resume_after_crash_while_checkpointing(
    reference: xr.Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash during a checkpoint write leaves the previous checkpoint; resume uses it."""
    out = tmp_path / "study"
    spec = load_spec(write_spec(tmp_path / "tiny.yaml", tiny_spec_dict(out)))
    real = WidthDir.save_checkpoint
    calls = []

    def save_checkpoint(self: WidthDir, state: dict[str, Any]) -> None:
        calls.append(int(state["step"]))
        if len(calls) == 3:  # the checkpoint at step 15 of width 16
            raise Interrupt("killed while writing the checkpoint")
        real(self, state)

    with monkeypatch.context() as m:
        m.setattr(WidthDir, "save_checkpoint", save_checkpoint)
        with pytest.raises(Interrupt):
            widthwise.run(spec)
    assert calls == [5, 10, 15]
    assert torch.load(out / "width_00016/checkpoint.pt", weights_only=True)["step"] == 10
    taken = count_train_steps(monkeypatch)
    widthwise.run(spec)
    assert taken == list(range(10, STEPS)) + list(range(STEPS))
    assert_identical_results(widthwise.open_study(out), reference)


# -- SIGKILL of a real process ---------------------------------------------------

KILL_SPEC = {
    "widths": [32, 64],
    "steps": 200,
    "checkpoint_every": 20,
    "probes": {"train_loss": {"every": 1}, "test": {"every": 20}},
}


def test_resume_after_sigkill(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    ref_out, out = tmp_path / "reference", tmp_path / "killed"
    spec_path = write_spec(tmp_path / "long.yaml", tiny_spec_dict(out, **KILL_SPEC))
    proc = subprocess.Popen(
        [sys.executable, "-m", "widthwise", "run", str(spec_path), "--out", str(out), "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(out.glob("width_*/checkpoint.pt")):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.005)
        time.sleep(random.uniform(0.0, 0.1))  # somewhere after the first checkpoint
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    statuses = [WidthDir(out / f"width_{w:05d}").read_status().get("state") for w in (32, 64)]
    assert "done" not in statuses[1:], statuses  # killed before the study finished

    # the uninterrupted reference, in this process with the same thread count
    ref = widthwise.open_study(widthwise.run(load_spec(spec_path), out=ref_out))
    # what the killed run left is readable and a prefix of the reference
    partial = widthwise.open_study(out)
    logged = partial.train_loss.sel(width=32).dropna("step", how="all")
    assert logged.sizes["step"] >= KILL_SPEC["checkpoint_every"]
    xr.testing.assert_equal(logged, ref.train_loss.sel(width=32, step=logged.step))

    assert main(["run", str(spec_path), "--out", str(out), "--quiet"]) == 0
    ds = widthwise.open_study(out)
    assert ds.status.values.tolist() == ["done", "done"]
    assert_identical_results(ds, ref)
    assert_same_checkpoints(out, ref_out, [32, 64])
