"""SIGTERM (kill, timeout, systemd, Docker, Slurm preemption) is handled like Ctrl-C.

The current width records that it was interrupted, its lock is released, one line
says how to resume, the exit code is 143; the next run resumes from the last
checkpoint to the numbers of an uninterrupted run. No traceback at any moment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr
from conftest import tiny_spec_dict, write_spec

import widthwise
from widthwise.store import WidthDir

SPEC = {"widths": [16], "steps": 400, "checkpoint_every": 50, "probes": {"train_loss": {}}}


def _spawn(spec: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "widthwise", "run", str(spec), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for(predicate, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_sigterm_mid_run_is_an_interrupt_and_resumes(tmp_path: Path) -> None:
    ref = widthwise.run(
        widthwise.load_spec(
            write_spec(tmp_path / "ref.yaml", tiny_spec_dict(tmp_path / "ref", **SPEC))
        )
    )
    spec = write_spec(tmp_path / "s.yaml", tiny_spec_dict(tmp_path / "study", **SPEC))
    wd = WidthDir(tmp_path / "study" / "width_00016")
    child = _spawn(spec)
    # past the first checkpoint, mid-run
    _wait_for(lambda: wd.read_status().get("step", 0) >= 50 or child.poll() is not None)
    assert child.poll() is None, child.communicate()
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 143, (out, err)
    assert err.strip().splitlines() == ["stopped by SIGTERM; run the same command again to resume"]
    assert "Traceback" not in out + err
    assert not (wd.path / "lock").exists()  # released
    status = wd.read_status()
    assert status["state"] == "interrupted" and status["error"].startswith("interrupted")
    assert 0 < status["step"] < 400
    again = _spawn(spec)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    xr.testing.assert_equal(
        widthwise.open_study(tmp_path / "study").train_loss, widthwise.open_study(ref).train_loss
    )


@pytest.mark.parametrize("delay", [0.05, 0.5, 1.0, 1.4, 1.7, 2.2, 3.0])
def test_sigterm_during_start_up_leaves_no_traceback(tmp_path: Path, delay: float) -> None:
    spec = write_spec(tmp_path / "s.yaml", tiny_spec_dict(tmp_path / "study", **SPEC))
    child = _spawn(spec)
    time.sleep(delay)
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=120)
    assert "Traceback" not in out + err, err
    # killed before widthwise handled signals (-15, nothing written yet) or handled (143)
    assert child.returncode in (-signal.SIGTERM, 143, 0), (child.returncode, err)
    assert len(err.strip().splitlines()) <= 1, err
    lock = tmp_path / "study" / "width_00016" / "lock"
    assert not lock.exists()
