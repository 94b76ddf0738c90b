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
        # the study is named with the first run's pid (it holds <out>/lock while it runs)
        assert err[0].startswith(
            f"error: out: another widthwise run is writing {out} (pid {first.pid} on host "
            f"{socket.gethostname()} since "
        ), err
        assert err[0].endswith("); wait for it or pass another --out"), err
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


# -- two runs started at the same instant --------------------------------------------

RACES = 3
"""Repetitions of the simultaneous start (the children are forked, so both reach the study
directory within microseconds of each other)."""


def _race_child(argv: list[str], go: int, err_path: str) -> None:
    """Body of a forked child: wait for the start signal, run the CLI, exit with its code."""
    out = os.open(os.devnull, os.O_WRONLY)
    err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(err, 2)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115  (pytest's capture is not fd 2)
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    os.read(go, 1)  # both children block here until the parent writes two bytes
    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def test_two_runs_started_at_the_same_instant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ``widthwise run`` on one new --out at once: one writes the study, the other
    says in one line that it is being written (exit 2) or, had the first finished, finds
    it done (exit 0); never a misleading "No such file or directory". The data equal a
    single run's."""
    import multiprocessing

    from test_resume import assert_identical_results

    import widthwise.store.lock as lock_module

    # the loser waits for the lock 0.1 s (not 0.5 s) before it gives up: well within the
    # time the winner holds it, so the refusal is what the race exercises
    monkeypatch.setattr(lock_module, "_RETRY_S", 0.01)
    spec = tiny_spec_dict(tmp_path / "unused", steps=60, checkpoint_every=20)
    ref_path = write_spec(tmp_path / "ref.yaml", {**spec, "out": str(tmp_path / "ref")})
    ref = widthwise.open_study(widthwise.run(ref_path))
    ctx = multiprocessing.get_context("fork")
    outcomes = []
    for rep in range(RACES):
        out = tmp_path / f"race{rep}"
        spec_path = write_spec(tmp_path / f"race{rep}.yaml", {**spec, "out": str(out)})
        argv = ["run", str(spec_path), "--quiet"]
        go_read, go_write = os.pipe()
        errs = [tmp_path / f"race{rep}.{i}.err" for i in range(2)]
        children = [ctx.Process(target=_race_child, args=(argv, go_read, str(e))) for e in errs]
        for child in children:
            child.start()
        os.write(go_write, b"go")
        for child in children:
            child.join(timeout=120)
            assert child.exitcode is not None, "a run did not finish within 120 s"
        os.close(go_read)
        os.close(go_write)
        codes = [c.exitcode for c in children]
        lines = [e.read_text().strip().splitlines() for e in errs]
        assert 0 in codes and set(codes) <= {0, 2}, (codes, lines)
        for code, err, other in zip(codes, lines, reversed(children)):
            if code == 2:  # the loser names the winner
                assert err == [
                    f"error: out: another widthwise run is writing {out} (pid {other.pid} on "
                    f"host {socket.gethostname()} since {err[0].split(' since ')[1]}"
                ], err
                assert err[0].endswith("); wait for it or pass another --out"), err
            else:
                assert err == [], err
        outcomes.append(tuple(sorted(codes)))
        ds = widthwise.open_study(out)
        assert ds.status.values.tolist() == ["done", "done"]
        assert_identical_results(ds, ref)
        assert not list(out.rglob(LOCK_NAME))
    assert (0, 2) in outcomes, outcomes  # the race was run, not just two runs in a row
