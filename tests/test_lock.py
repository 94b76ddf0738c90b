"""One writer per width directory: live holders refuse, dead holders' locks are cleared."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_spec_dict, write_spec

import widthwise
from widthwise.cli import main
from widthwise.errors import StoreError
from widthwise.store.lock import LOCK_NAME, WidthLock, lock_holder

pytestmark = pytest.mark.usefixtures("single_thread")

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

HOLD = """
import sys, time
from widthwise.store.lock import WidthLock
lock = WidthLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def hold_lock(width_dir: Path) -> subprocess.Popen[str]:
    """A subprocess that takes the lock of ``width_dir`` and keeps it until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(width_dir)], env=ENV, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_acquire_release_and_holder(tmp_path: Path) -> None:
    wd = tmp_path / "width_00016"
    assert lock_holder(wd) is None
    with WidthLock(wd) as lock:
        assert lock.held
        info = json.loads((wd / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        assert time.strptime(info["since"], "%Y-%m-%dT%H:%M:%SZ")
        assert lock_holder(wd) == info
        # a second writer, even in this process, is refused with the holder's name
        with pytest.raises(StoreError) as err:
            WidthLock(wd).acquire()
        msg = str(err.value)
        assert msg.startswith(f"{wd}: being written by pid {os.getpid()} on host ")
        assert info["since"] in msg and "\n" not in msg
    assert not lock.held
    assert lock_holder(wd) is None
    assert not wd.exists()  # the lock made the directory and leaves no empty one behind


def test_release_keeps_a_directory_with_files(tmp_path: Path) -> None:
    wd = tmp_path / "w"
    wd.mkdir()
    (wd / "status.json").write_text("{}")
    lock = WidthLock(wd).acquire()
    lock.release()
    lock.release()  # idempotent
    assert sorted(p.name for p in wd.iterdir()) == ["status.json"]


def test_live_holder_in_another_process_is_refused(tmp_path: Path) -> None:
    wd = tmp_path / "w"
    proc = hold_lock(wd)
    try:
        holder = lock_holder(wd)
        assert holder is not None and holder["pid"] == proc.pid
        with pytest.raises(StoreError, match=f"being written by pid {proc.pid} on host"):
            WidthLock(wd).acquire()
    finally:
        kill(proc)
    # the killed holder left its lock file: stale, so it is cleared and taken over
    assert json.loads((wd / LOCK_NAME).read_text())["pid"] == proc.pid
    assert lock_holder(wd) is None
    with WidthLock(wd):
        assert json.loads((wd / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert lock_holder(wd)["pid"] == os.getpid()
    assert not (wd / LOCK_NAME).exists()


def test_stale_lock_left_by_a_dead_process_does_not_block_a_run(tmp_path: Path) -> None:
    out = tmp_path / "study"
    spec_path = write_spec(tmp_path / "tiny.yaml", tiny_spec_dict(out))
    assert main(["run", str(spec_path), "--quiet"]) == 0
    wd = out / "width_00032"
    shutil.rmtree(wd)  # as if width 32 had never started ...
    proc = hold_lock(wd)
    kill(proc)  # dies holding it: the file stays behind with its pid
    assert (wd / LOCK_NAME).exists() and lock_holder(wd) is None
    assert main(["run", str(spec_path), "--quiet"]) == 0
    ds = widthwise.open_study(out)
    assert ds.status.values.tolist() == ["done", "done"]
    assert ds.attrs["skipped_records"] == 0
    assert not (wd / LOCK_NAME).exists()  # cleared, and removed on release


def test_second_concurrent_run_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two ``widthwise run`` of one study at once: the second ends with one line, exit 2."""
    out = tmp_path / "study"
    long = {"widths": [32, 64], "steps": 400, "checkpoint_every": 100}
    spec_path = write_spec(tmp_path / "long.yaml", tiny_spec_dict(out, **long))
    first = subprocess.Popen(
        [sys.executable, "-m", "widthwise", "run", str(spec_path), "--quiet"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while lock_holder(out / "width_00032") is None:
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            assert time.monotonic() < deadline, "the first run never locked width 32"
            time.sleep(0.01)
        assert main(["run", str(spec_path), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        # width 32 (or 64, if 32 finished meanwhile) is named with the first run's pid
        assert err[0].startswith(f"error: {out}{os.sep}width_000"), err
        assert f": being written by pid {first.pid} on host {socket.gethostname()}" in err[0]
        assert first.wait(timeout=120) == 0, first.stderr.read() if first.stderr else ""
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    ds = widthwise.open_study(out)
    assert ds.status.values.tolist() == ["done", "done"]
    assert not list(out.rglob(LOCK_NAME))


def test_fallback_without_flock_uses_the_recorded_pid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a file system without flock, a live recorded pid refuses and a dead one does not."""

    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    wd = tmp_path / "w"
    wd.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        info = {"pid": sleeper.pid, "host": socket.gethostname(), "since": "2026-01-01T00:00:00Z"}
        (wd / LOCK_NAME).write_text(json.dumps(info))
        assert lock_holder(wd) == info
        with pytest.raises(StoreError, match=f"being written by pid {sleeper.pid}"):
            WidthLock(wd).acquire()
        (wd / LOCK_NAME).write_text(json.dumps({**info, "pid": dead.pid}))
        assert lock_holder(wd) is None
        with WidthLock(wd):
            assert json.loads((wd / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_unwritable_directory_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreError, match=r"^out: cannot write .*file/width_00016: "):
        WidthLock(tmp_path / "file" / "width_00016").acquire()
