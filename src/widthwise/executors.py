"""Executors run a study's independent per-width runs (registry :data:`EXECUTORS`).

Every executor has the ``concurrent.futures`` shape: ``submit(fn, *args)`` returns a
Future. ``local`` runs each call at once, in this process (the default; progress
bars and debuggers work). Distributed engines (process pools, Ray, Slurm via
submitit) plug in as further entries.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from widthwise.registry import Registry

T = TypeVar("T")

EXECUTORS: Registry[Callable[..., Executor]] = Registry("executor")


class LocalExecutor(Executor):
    """Runs each submitted call immediately in the calling process, serially."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:
            if isinstance(err, KeyboardInterrupt | SystemExit):
                raise
            future.set_exception(err)
        return future


EXECUTORS.register("local", description="serial, in this process (default)")(LocalExecutor)
