"""``local`` (serial, in this process) and ``processes`` (a local process pool)."""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.process
import os
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field

from widthwise.executors.base import (
    EXECUTORS,
    ExecutorContext,
    ExecutorOptions,
    RemoteOptions,
    WidthExecutor,
)

T = TypeVar("T")


class LocalOptions(ExecutorOptions):
    """Options of the ``local`` executor."""

    threads_per_run: int | None = Field(
        None,
        gt=0,
        description="torch threads during each run (default: leave this process's setting)",
    )


@EXECUTORS.register("local", options=LocalOptions, description="serial, in this process (default)")
class LocalExecutor(WidthExecutor):
    """Runs each submitted call at once in the calling process, one after another.

    Progress bars follow every step and debuggers work. ``threads_per_run`` unset
    leaves torch's thread count as it is.
    """

    in_process = True

    def __init__(
        self, options: BaseModel | None = None, context: ExecutorContext | None = None
    ) -> None:
        super().__init__(options or LocalOptions(), context or ExecutorContext())

    def describe(self) -> str:
        threads = self.threads_per_run()
        return "local: one width at a time in this process" + (
            f", {threads} torch thread{'s' if threads > 1 else ''}" if threads else ""
        )

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:
            if isinstance(err, KeyboardInterrupt | SystemExit):
                raise
            future.set_exception(err)
        return future


class ProcessesOptions(RemoteOptions):
    """Options of the ``processes`` executor."""

    threads_per_run: int | None = Field(
        None, gt=0, description="torch threads of each run (default: CPUs / workers, at least 1)"
    )

    workers: int = Field(2, gt=0, le=1024, description="worker processes: widths trained at once")
    start_method: Literal["spawn", "forkserver", "fork"] = Field(
        "spawn", description="how workers start (spawn: safe with torch threads)"
    )
    retries: int = Field(
        1, ge=0, le=10, description="re-runs of a width whose worker died (it resumes)"
    )


class WorkerDied(RuntimeError):
    """A width's worker process ended without a result (killed, out of memory, crashed)."""


@EXECUTORS.register(
    "processes",
    options=ProcessesOptions,
    description="local worker processes, one width per worker at a time",
)
class ProcessesExecutor(WidthExecutor):
    """Runs each submitted call in a fresh worker process, ``workers`` at a time.

    Each run sets ``threads_per_run`` torch threads (default: the CPU count divided
    by ``workers``, at least 1) so parallel runs do not oversubscribe the cores. One
    process per call: a worker that dies (SIGKILL, out of memory, a crash) fails only
    its own width, which is run again ``retries`` times (it resumes from its last
    checkpoint) before its future fails with :class:`WorkerDied`; the other widths go
    on. On Linux a worker dies with its parent (``PR_SET_PDEATHSIG``), so a killed
    ``widthwise run`` leaves no orphans writing to the study.
    """

    def __init__(self, options: BaseModel | None, context: ExecutorContext) -> None:
        super().__init__(options or ProcessesOptions(), context)
        opts: ProcessesOptions = self.options  # type: ignore[assignment]
        self._workers = min(opts.workers, max(context.runs, 1))
        self._threads: ThreadPoolExecutor | None = None  # one supervising thread per worker
        self._children: set[multiprocessing.process.BaseProcess] = set()
        self._lock = threading.Lock()
        self._closed = False

    def threads_per_run(self) -> int:
        opts: ProcessesOptions = self.options  # type: ignore[assignment]
        if opts.threads_per_run:
            return opts.threads_per_run
        return max(1, (os.cpu_count() or 1) // opts.workers)

    def describe(self) -> str:
        threads = self.threads_per_run()
        return (
            f"processes: {self._workers} worker process{'es' if self._workers > 1 else ''}, "
            f"{threads} torch thread{'s' if threads > 1 else ''} per run"
        )

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self._workers, thread_name_prefix="widthwise-w")
        return self._threads.submit(self._supervise, fn, args, kwargs)

    def _supervise(self, fn: Callable[..., T], args: tuple, kwargs: dict[str, Any]) -> T:
        """Run ``fn`` in a worker process; again if the worker dies, up to ``retries``."""
        opts: ProcessesOptions = self.options  # type: ignore[assignment]
        ctx = multiprocessing.get_context(opts.start_method)
        codes = []
        for _ in range(opts.retries + 1):
            if self._closed:
                raise WorkerDied("the study was stopped before this width ran")
            receive, send = ctx.Pipe(duplex=False)
            child = ctx.Process(target=_worker_main, args=(send, fn, args, kwargs), daemon=True)
            with self._lock:
                child.start()
                self._children.add(child)
            send.close()
            try:
                outcome = receive.recv() if receive.poll(None) else None
            except (EOFError, OSError):
                outcome = None  # the worker died before it could answer
            finally:
                receive.close()
                child.join()
                with self._lock:
                    self._children.discard(child)
            if outcome is not None:
                ok, value = outcome
                if ok:
                    return value
                raise value
            codes.append(child.exitcode)
        raise WorkerDied(
            f"its worker process died {len(codes)} time(s) (exit codes {codes}); "
            "run the study again to resume it"
        )

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed = not wait or cancel_futures
        if self._closed:
            with self._lock:
                for child in list(self._children):
                    child.terminate()
        if self._threads is not None:
            self._threads.shutdown(wait=wait, cancel_futures=cancel_futures)


def _die_with_parent() -> None:
    """Linux: the kernel sends this process SIGKILL when its parent dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before prctl: do not run orphaned
        os._exit(1)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt()


def _worker_main(send: Any, fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> None:
    """A worker process: run ``fn`` and send ``(True, result)`` or ``(False, error)``."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, _interrupt)  # the parent stopping: record it, then end
    try:
        outcome: tuple[bool, Any] = (True, fn(*args, **kwargs))
    except BaseException as err:  # noqa: BLE001  (every failure travels back to the parent)
        outcome = (False, err)
    try:
        send.send(outcome)
    except Exception as err:  # noqa: BLE001  (an unpicklable result or error)
        send.send((False, RuntimeError(f"{type(err).__name__}: {err}")))
    finally:
        send.close()
