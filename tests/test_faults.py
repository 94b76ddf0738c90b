"""Faults: SIGKILL at random moments, torn and partial files, a full disk, a read-only store.

Each fault must cost at most the work since the last checkpoint, never show up as
data, stop a run with one clear line (exit 2), and leave the store readable and
resumable to exactly the numbers of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import multiprocessing
import os
import random
import shutil
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
from test_resume import KILL_SPEC, assert_identical_results, assert_same_checkpoints

import widthwise
import widthwise.store.files as files
import widthwise.store.width_dir as width_dir_mod
from widthwise.cli import main
from widthwise.errors import StoreError
from widthwise.spec import load_spec
from widthwise.store.lock import lock_holder
from widthwise.store.width_dir import WidthDir
from widthwise.summary import width_states

pytestmark = pytest.mark.usefixtures("single_thread")

KILL_SEED = 20261128  # the kill moments are random, but reproducible
N_KILLS = 8
WIDTHS = KILL_SPEC["widths"]
TOTAL = len(WIDTHS) * KILL_SPEC["steps"]  # train_loss lines of a finished study


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich does not wrap the lines we look for


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and "Traceback" not in err[0]
    return err[0]


def _run_cli(argv: list[str]) -> None:
    """Body of a forked child: the CLI, with its output discarded."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os._exit(main(argv))


def logged_train_steps(out: Path) -> int:
    """train_loss records on disk over all widths (torn ones included): the run's progress."""
    n = 0
    for w in WIDTHS:
        with contextlib.suppress(FileNotFoundError):
            n += (out / f"width_{w:05d}" / "scalars.jsonl").read_bytes().count(b'"train_loss",')
    return n


@pytest.fixture(scope="module")
def kill_reference(single_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted KILL_SPEC study (in this process: same thread count as the children)."""
    root = tmp_path_factory.mktemp("kill_reference")
    spec = load_spec(write_spec(root / "s.yaml", tiny_spec_dict(root / "study", **KILL_SPEC)))
    return widthwise.run(spec)


# -- SIGKILL at random moments ------------------------------------------------------


def test_sigkill_loop_resumes_to_identical_results(kill_reference: Path, tmp_path: Path) -> None:
    """A running study is SIGKILLed at N_KILLS random moments, restarted after each kill,
    and finally finished: its dataset and checkpoints equal the uninterrupted run's.

    The children are forked from this process (torch already imported: no interpreter
    start-up per kill) and run the real CLI; the kill is the kernel's SIGKILL, which
    leaves whatever the child was writing (scalar line, npz, checkpoint, status, lock)
    as it was. Kill moments: a progress target (train_loss records on disk) drawn from
    a seeded RNG, plus a random delay of up to 20 ms after it is reached.
    """
    ref = widthwise.open_study(kill_reference)
    out = tmp_path / "study"
    spec_path = write_spec(tmp_path / "s.yaml", tiny_spec_dict(out, **KILL_SPEC))
    argv = ["run", str(spec_path), "--quiet"]
    rng = random.Random(KILL_SEED)
    targets = sorted(rng.sample(range(5, TOTAL - 40), N_KILLS))
    ctx = multiprocessing.get_context("fork")
    kills, saw_running, lost = 0, False, []
    for target in targets:
        child = ctx.Process(target=_run_cli, args=(argv,))
        child.start()
        try:
            deadline = time.monotonic() + 60
            while logged_train_steps(out) < target:
                assert child.is_alive(), f"the run ended (exit {child.exitcode}) before {target}"
                assert time.monotonic() < deadline, f"no progress to {target} within 60 s"
                time.sleep(0.001)
            if not saw_running:  # the live writer is visible to `show` while it runs
                states = {s.width: s for s in width_states(out)}
                running = [s for s in states.values() if s.state == "running"]
                if running:
                    assert running[0].holder is not None
                    assert running[0].holder["pid"] == child.pid
                    saw_running = True
            time.sleep(rng.uniform(0.0, 0.02))
            assert child.is_alive(), "the run finished before it could be killed"
            os.kill(child.pid, signal.SIGKILL)
            child.join(30)
            assert child.exitcode == -signal.SIGKILL
            kills += 1
        finally:
            if child.is_alive():
                child.kill()
                child.join()
        # after each kill: readable, nothing logged disagrees with the reference, no live writer
        partial = widthwise.open_study(out)
        for var in ("train_loss", "test_loss", "test_logits"):
            if var not in partial:
                continue
            got = partial[var]
            want = ref[var].sel(
                {d: got[d] for d in got.dims if d in ("width", "step", "test_step")}
            )
            both = np.isfinite(got.values)
            np.testing.assert_array_equal(got.values[both], want.values[both])
        states = width_states(out)
        assert {s.state for s in states} <= {"done", "interrupted", "not started", "unknown"}
        assert all(lock_holder(out / f"width_{w:05d}") is None for w in WIDTHS)
        for st in states:  # at most the work since the last checkpoint is lost
            if st.state != "interrupted":
                continue
            logged = int(partial.train_loss.sel(width=st.width).notnull().sum("step")[0])
            ckpt = out / f"width_{st.width:05d}" / "checkpoint.pt"
            saved = torch.load(ckpt, weights_only=True)["step"] if ckpt.exists() else 0
            assert 0 <= logged - saved <= KILL_SPEC["checkpoint_every"], (st, logged, saved)
            lost.append(logged - saved)
    assert kills == N_KILLS >= 5
    assert len(lost) >= N_KILLS - 1 and max(lost) > 0  # kills landed mid-width, work was redone
    assert saw_running, "never saw the live writer's lock"
    assert main(argv) == 0
    ds = widthwise.open_study(out)
    assert ds.status.values.tolist() == ["done", "done"]
    assert_identical_results(ds, ref)
    assert_same_checkpoints(out, kill_reference, WIDTHS)
    assert not list(out.rglob(".tmp-*"))
    assert not list(out.rglob("lock"))  # the final run took over the stale locks and removed them


# -- injected torn and partial files -----------------------------------------------


@pytest.fixture(scope="module")
def finished(single_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny study (widths 16, 32; 20 steps; test every 5); do not modify."""
    root = tmp_path_factory.mktemp("finished")
    return widthwise.run(load_spec(write_spec(root / "s.yaml", tiny_spec_dict(root / "study"))))


@pytest.fixture
def copy(finished: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(finished, dst)
    return dst


def test_injected_faults_are_detected_never_data(
    finished: Path, copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = widthwise.open_study(finished)
    w16, w32 = copy / "width_00016", copy / "width_00032"
    log = w16 / "scalars.jsonl"
    good = log.read_bytes().splitlines(keepends=True)[3]
    with open(log, "ab") as f:
        f.write(b'{"probe":"train_loss","step":3,"vars":{"train_loss":[1e9,1e9]}}\n'[:-1])
    with open(w32 / "scalars.jsonl", "ab") as f:  # each of these is skipped and counted
        f.write(b'{"probe":"train_loss","step":7,"vars":{"train_loss":[1.0]}}\n')  # 1 of 2 seeds
        f.write(b'{"probe":"train_loss","step":8,"vars":{"train_loss":"12"}}\n')  # not a list
        f.write(b'{"probe":7,"step":8,"vars":{}}\n')  # not a probe name
        f.write(good.replace(b"{", b"[", 1))  # corrupt
    tests = w16 / "arrays" / "test"
    (tests / "000000010.npz").write_bytes((tests / "000000010.npz").read_bytes()[:200])
    (tests / "000000015.npz").write_bytes(b"")  # zero bytes
    np.savez(tests / "000000005.npz", test_logits=np.ones((3, 32, 1)))  # wrong seed count
    np.savez(w32 / "arrays" / "test" / "000000005.npz", test_logits=np.ones((2, 32)))  # wrong ndim
    (copy / "width_00032" / "arrays" / "test" / ".tmp-000000020.npz.77").write_bytes(b"PK")
    ds = widthwise.open_study(copy)
    assert ds.attrs["skipped_records"] == 9
    assert ds.train_loss.max() < 1e9  # the torn record's value is nowhere
    assert ds.step.values.tolist() == ref.step.values.tolist()
    xr.testing.assert_equal(ds.train_loss, ref.train_loss)
    holes = {(16, 5), (16, 10), (16, 15), (32, 5)}
    for w in (16, 32):
        for t in ref.test_step.values.tolist():
            got = ds.test_logits.sel(width=w, test_step=t).values
            if (w, t) in holes:
                assert np.isnan(got).all(), (w, t)  # never zeros, never the injected ones
            else:
                np.testing.assert_array_equal(got, ref.test_logits.sel(width=w, test_step=t))
    # a dims.json that is not {var: ["seed", ...]} makes the probe's arrays unreadable, not wrong
    (w32 / "arrays" / "test" / "dims.json").write_text('{"test_logits": ["point", "seed"]}')
    ds = widthwise.open_study(copy)
    assert np.isnan(ds.test_logits.sel(width=32).values).all()
    np.testing.assert_array_equal(ds.test_loss.values, ref.test_loss.values)  # scalar log intact
    # show still works and says what was skipped
    assert main(["show", str(copy)]) == 0
    shown = capsys.readouterr().out
    assert "torn or partial records" in shown


def test_torn_status_and_checkpoint_of_a_killed_width(
    finished: Path, copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """status.json garbage → unknown; a partial checkpoint is detected and the width
    resumes from the previous one, saying so in one line, to the uninterrupted numbers."""
    ref = widthwise.open_study(finished)
    w32 = copy / "width_00032"
    (w32 / "status.json").write_bytes(b'{"state": "runn')
    states = {s.width: s for s in width_states(copy)}
    assert states[16].state == "done" and states[32].state == "unknown"
    assert main(["show", str(copy)]) == 0
    assert "32: unknown" in capsys.readouterr().out
    ckpt = w32 / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    spec = copy / "spec.yaml"
    assert main(["run", str(spec), "--out", str(copy), "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # the recovery is said, in one line
    assert str(ckpt) in err[0] and "damaged checkpoint" in err[0]
    assert "resumed from checkpoint.prev.pt" in err[0]
    xr.testing.assert_equal(
        widthwise.open_study(copy).drop_vars("wall_time"), ref.drop_vars("wall_time")
    )


# -- failed writes: full disk ---------------------------------------------------------


def enospc(path: Any = "x") -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_disk_full_stops_with_one_line_and_a_failed_status(
    finished: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An array write fails with ENOSPC at step 10 of width 32: the run stops (exit 2, one
    line), the width is `failed` with the reason, the store stays readable, the lock is
    released, and the next run resumes to the uninterrupted numbers."""
    ref = widthwise.open_study(finished)
    out = tmp_path / "study"
    spec = write_spec(tmp_path / "s.yaml", tiny_spec_dict(out))
    real = width_dir_mod.atomic_write_npz

    def full(path: Path, arrays: dict[str, np.ndarray]) -> None:
        if "width_00032" in str(path) and path.name == "000000010.npz":
            tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
            tmp.write_bytes(b"PK\x03\x04 half")  # what a full disk leaves
            raise enospc(tmp)
        real(path, arrays)

    with monkeypatch.context() as m:
        m.setattr(width_dir_mod, "atomic_write_npz", full)
        assert main(["run", str(spec), "--quiet"]) == 2
    line = one_error_line(capsys)
    assert line.startswith("error: out: writing ") and "No space left on device" in line
    assert "width_00032" in line and "resumes" in line
    status = WidthDir(out / "width_00032").read_status()
    assert status["state"] == "failed" and status["step"] == 10
    assert status["error"].startswith("write failed: No space left on device")
    assert lock_holder(out / "width_00032") is None and not (out / "width_00032" / "lock").exists()
    partial = widthwise.open_study(out)  # readable: everything before the failure
    assert partial.status.values.tolist() == ["done", "failed"]
    got = partial.train_loss.sel(width=32).dropna("step")
    xr.testing.assert_equal(got, ref.train_loss.sel(width=32, step=got.step))
    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "width 32: failed at step 10/20: write failed: No space left on device" in shown
    assert main(["run", str(spec), "--quiet"]) == 0  # space again: resume
    assert_identical_results(widthwise.open_study(out), ref)
    assert not list(out.rglob(".tmp-*"))


def test_disk_completely_full_mid_line(
    finished: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every write fails from step 7 on, the scalar line half written: still one line and
    exit 2; the status cannot say `failed`, so `show` calls the width interrupted; the torn
    line is not data; the next run resumes to the uninterrupted numbers."""
    ref = widthwise.open_study(finished)
    out = tmp_path / "study"
    spec = write_spec(tmp_path / "s.yaml", tiny_spec_dict(out, widths=[16]))
    real_append, real_bytes = files.LineLog.append, files.atomic_write_bytes
    full = {"on": False}

    def append(self: files.LineLog, record: dict[str, Any]) -> None:
        if record.get("step") == 7 and record["probe"] == "train_loss":
            full["on"] = True
        if full["on"]:
            self._f.write(json.dumps(record)[:10])  # the disk took half the line
            self._f.flush()
            raise enospc(self.path)
        real_append(self, record)

    def write_bytes(path: Path, data: bytes) -> None:
        if full["on"]:
            raise enospc(path)
        real_bytes(path, data)

    with monkeypatch.context() as m:
        m.setattr(files.LineLog, "append", append)
        m.setattr(files, "atomic_write_bytes", write_bytes)
        m.setattr(width_dir_mod, "atomic_write_bytes", write_bytes)
        assert main(["run", str(spec), "--quiet"]) == 2
    line = one_error_line(capsys)
    assert "No space left on device" in line and "scalars.jsonl" in line
    state = width_states(out)[0]
    assert state.state == "interrupted" and state.step == 5  # the status of the checkpoint
    partial = widthwise.open_study(out)
    assert partial.attrs["skipped_records"] == 1  # the torn line
    assert partial.train_loss.dropna("step").step.values.tolist() == list(range(7))
    assert main(["run", str(spec), "--quiet"]) == 0
    xr.testing.assert_equal(widthwise.open_study(out).train_loss, ref.train_loss.sel(width=[16]))


# -- read-only output directory -----------------------------------------------------


def test_read_only_store_simulated(
    finished: Path, copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """EROFS from every write (how the kernel answers on a read-only mount), in-process:
    works for any user. Resuming a store that cannot be written is one line, exit 2, and
    changes nothing."""
    shutil.rmtree(copy / "width_00032")  # an unfinished width that the run must write

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(copy / "width_00032"))

    before = sorted(str(p) for p in copy.rglob("*"))
    with monkeypatch.context() as m:
        m.setattr(Path, "mkdir", refuse)  # the lock and the width dir are made first
        assert main(["run", str(copy / "spec.yaml"), "--out", str(copy), "--quiet"]) == 2
    line = one_error_line(capsys)
    assert line == f"error: out: cannot write {copy / 'width_00032'}: Read-only file system"
    assert sorted(str(p) for p in copy.rglob("*")) == before
    assert main(["show", str(copy)]) == 0
    assert "32 │ not started" in capsys.readouterr().out


READ_ONLY_DRIVER = """
import contextlib, io, os, sys
from pathlib import Path
from widthwise.cli import main
ro, log = Path(os.environ["RO"]), Path(os.environ["LOG"])
calls = {
    "resume": ["run", f"{ro}/study/spec.yaml", "--out", f"{ro}/study", "--quiet"],
    "new": ["run", f"{ro}/study/spec.yaml", "--out", f"{ro}/new/study", "--quiet"],
    "show": ["show", f"{ro}/study"],
}
for name, argv in calls.items():
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    (log / f"{name}.rc").write_text(str(rc))
    (log / f"{name}.out").write_text(out.getvalue())
    (log / f"{name}.err").write_text(err.getvalue())
"""
READ_ONLY_MOUNT = (
    'mount --bind "$RO" "$RO" && mount -o remount,ro,bind "$RO" || exit 99; exec "$PY" -c "$DRIVER"'
)


def test_read_only_store_for_real(finished: Path, tmp_path: Path) -> None:
    """A really read-only directory. chmod does not stop root, so as root the study is
    bind-mounted read-only in a private mount namespace (``unshare -m``; the kernel then
    answers EROFS to root too, and nothing outside the namespace sees the mount); as any
    other user a ``chmod -R a-w`` does it. Resuming is one line and exit 2, a new study
    under it is refused before anything is written, ``show`` still reads it."""
    ro, log = tmp_path / "ro", tmp_path / "log"
    log.mkdir()
    shutil.copytree(finished, ro / "study")
    shutil.rmtree(ro / "study" / "width_00032")
    (ro / "new").mkdir()
    before = {str(p): p.stat().st_mtime_ns for p in ro.rglob("*")}
    env = {
        **os.environ,
        "RO": str(ro),
        "LOG": str(log),
        "PY": sys.executable,
        "DRIVER": READ_ONLY_DRIVER,
        "OMP_NUM_THREADS": "1",
        "COLUMNS": "200",
    }
    if os.geteuid() == 0:
        if shutil.which("unshare") is None:
            pytest.skip("root without unshare: cannot make a directory read-only for root")
        proc = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", READ_ONLY_MOUNT],
            env=env,
            capture_output=True,
            timeout=300,
        )
        if proc.returncode == 99 or b"unshare failed" in proc.stderr:
            pytest.skip(f"cannot mount read-only here: {proc.stderr.decode()[:200]}")
        why = "Read-only file system"
    else:
        for p in [ro, *ro.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
        try:
            proc = subprocess.run(
                [sys.executable, "-c", READ_ONLY_DRIVER], env=env, capture_output=True, timeout=300
            )
        finally:
            for p in [ro, *ro.rglob("*")]:
                p.chmod(p.stat().st_mode | 0o200)
        why = "Permission denied"
    assert proc.returncode == 0, proc.stderr.decode()
    rc = {k: int((log / f"{k}.rc").read_text()) for k in ("resume", "new", "show")}
    err = {k: (log / f"{k}.err").read_text().splitlines() for k in ("resume", "new", "show")}
    assert rc == {"resume": 2, "new": 2, "show": 0}, (rc, err)
    assert err["resume"] == [f"error: out: cannot write {ro / 'study' / 'width_00032'}: {why}"]
    assert len(err["new"]) == 1 and err["new"][0].startswith(
        f"error: out: cannot write to {ro / 'new'}"
    )
    assert ("read-only file system" if why.startswith("Read") else "permission denied") in err[
        "new"
    ][0]
    assert "32 │ not started" in (log / "show.out").read_text()
    assert "16 │ done" in (log / "show.out").read_text()
    assert {str(p): p.stat().st_mtime_ns for p in ro.rglob("*")} == before  # nothing written


def test_unwritable_width_dir_is_a_store_error(tmp_path: Path) -> None:
    """The one-line StoreError comes from the lock too (before any status is written)."""
    blocker = tmp_path / "study"
    blocker.write_text("a file where the width dir should go\n")
    from widthwise.store.lock import writer_lock

    match = r"^out: cannot write .*width_00016: Not a directory$"
    with pytest.raises(StoreError, match=match), writer_lock(blocker / "width_00016"):
        pass
    assert blocker.read_text() == "a file where the width dir should go\n"
