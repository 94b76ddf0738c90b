"""``local`` (serial, in this process) and ``processes`` (a local process pool)."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
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

    workers: int = Field(2, gt=0, description="worker processes: widths trained at once")
    start_method: Literal["spawn", "forkserver", "fork"] = Field(
        "spawn", description="how workers start (spawn: safe with torch threads)"
    )


@EXECUTORS.register(
    "processes",
    options=ProcessesOptions,
    description="a pool of local worker processes, one width per worker at a time",
)
class ProcessesExecutor(WidthExecutor):
    """A :class:`concurrent.futures.ProcessPoolExecutor` of ``workers`` processes.

    Each run sets ``threads_per_run`` torch threads (default: the CPU count divided
    by ``workers``, at least 1) so parallel runs do not oversubscribe the cores.
    """

    def __init__(self, options: BaseModel | None, context: ExecutorContext) -> None:
        super().__init__(options or ProcessesOptions(), context)
        opts: ProcessesOptions = self.options  # type: ignore[assignment]
        self._workers = min(opts.workers, max(context.runs, 1))
        self._pool: ProcessPoolExecutor | None = None  # started by the first submit

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
        if self._pool is None:
            opts: ProcessesOptions = self.options  # type: ignore[assignment]
            self._pool = ProcessPoolExecutor(
                max_workers=self._workers,
                mp_context=multiprocessing.get_context(opts.start_method),
            )
        return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)
