"""The processes executor survives one bad worker, and its workers die with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_processes import always_die, answer, die_once

from widthwise.executors import ExecutorContext
from widthwise.executors.local import ProcessesExecutor, ProcessesOptions, WorkerDied


def _pool(workers: int = 2, retries: int = 1) -> ProcessesExecutor:
    opts = ProcessesOptions(workers=workers, retries=retries, threads_per_run=1)
    return ProcessesExecutor(opts, ExecutorContext(runs=3))


def test_a_killed_worker_is_retried_and_the_others_finish(tmp_path: Path) -> None:
    pool = _pool()
    try:
        flaky = pool.submit(die_once, str(tmp_path / "marker"))
        fine = [pool.submit(answer, i) for i in range(3)]
        assert flaky.result(timeout=120) == "second try"
        assert [f.result(timeout=120) for f in fine] == [0, 2, 4]
    finally:
        pool.shutdown()


def test_a_worker_that_keeps_dying_fails_only_its_own_call() -> None:
    pool = _pool(retries=1)
    try:
        doomed = pool.submit(always_die)
        fine = pool.submit(answer, 21)
        with pytest.raises(WorkerDied, match=r"died 2 time\(s\) \(exit codes \[-9, -9\]\)"):
            doomed.result(timeout=120)
        assert fine.result(timeout=120) == 42
    finally:
        pool.shutdown()


def test_errors_travel_back_intact() -> None:
    pool = _pool()
    try:
        with pytest.raises(TypeError):
            pool.submit(answer, None).result(timeout=120)
    finally:
        pool.shutdown()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_workers_die_with_their_parent(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    here = Path(__file__).parent
    script = (
        f"import sys, time; sys.path.insert(0, {str(here)!r})\n"
        "from helpers_processes import sleep_forever\n"
        "from widthwise.executors import ExecutorContext\n"
        "from widthwise.executors.local import ProcessesExecutor, ProcessesOptions\n"
        "pool = ProcessesExecutor(ProcessesOptions(workers=1), ExecutorContext(runs=1))\n"
        f"pool.submit(sleep_forever, {str(pid_file)!r})\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        t0 = time.monotonic()
        while not pid_file.exists():
            assert time.monotonic() - t0 < 120, "the worker never started"
            time.sleep(0.05)
        child = int(pid_file.read_text())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        t0 = time.monotonic()
        while _alive(child):
            assert time.monotonic() - t0 < 20, f"worker {child} outlived its parent"
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie is dead
    except OSError:
        return False
