"""The executor interface: ``concurrent.futures`` executors that run per-width jobs.

An executor is a registry entry (:data:`EXECUTORS`) whose object is a
:class:`WidthExecutor` subclass built as ``cls(options, context)``; ``options`` is
the entry's validated options model (``executor.options`` in the spec) and
``context`` says which study it serves. ``submit(fn, *args)`` returns a
:class:`concurrent.futures.Future`; ``submit_runs`` submits many at once (Slurm
makes one array job of them).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from widthwise.errors import UserError
from widthwise.registry import Registry

EXECUTORS: Registry[type[WidthExecutor]] = Registry("executor")
"""Executors by name: ``local``, ``processes``, ``ray``, ``slurm``."""


@dataclass(frozen=True)
class ExecutorContext:
    """What an executor may need to know about the study it runs."""

    study_path: Path | None = None
    """Absolute study directory (shared by every worker)."""
    name: str = "study"
    """The study's name (job names)."""
    runs: int = 1
    """How many width runs will be submitted."""


class ExecutorOptions(BaseModel):
    """Options every executor has."""

    model_config = ConfigDict(extra="forbid")

    threads_per_run: int | None = Field(
        None, gt=0, description="torch intra-op threads of each run (default: the executor's)"
    )


def require_extra(module: str, name: str, extra: str) -> None:
    """Raise a one-line UserError when an optional engine is not installed."""
    if importlib.util.find_spec(module) is None:
        raise UserError(f"{name!r} needs the {extra} extra: pip install 'widthwise[{extra}]'")


class RemoteOptions(ExecutorOptions):
    """Options of executors whose runs execute in other processes."""

    imports: list[str] = Field(
        default_factory=list,
        description="modules each worker imports first (registering your own families, streams); "
        "runs code: needs --allow-code unless given by --import",
    )


class WidthExecutor(Executor):
    """Base of every executor: ``concurrent.futures.Executor`` plus what a study needs.

    Subclasses set ``in_process`` (calls run in this process: live progress
    callbacks work) and ``same_host`` (runs execute on this machine: the device is
    resolved here), and implement :meth:`submit`.
    """

    in_process: ClassVar[bool] = False
    same_host: ClassVar[bool] = True

    def __init__(self, options: BaseModel | None, context: ExecutorContext) -> None:
        self.options = options
        self.context = context

    @classmethod
    def preflight(cls, options: BaseModel | None) -> None:
        """Checks that need the environment (run before anything is written)."""

    def threads_per_run(self) -> int | None:
        """torch threads each run sets (None: leave the process's setting)."""
        return getattr(self.options, "threads_per_run", None)

    def imports(self) -> list[str]:
        """Modules a worker imports before it builds a run."""
        return list(getattr(self.options, "imports", []))

    def describe(self) -> str:
        """One line: the executor and its settings."""
        return type(self).__name__

    def submit_runs(self, fn: Callable[..., Any], argsets: Sequence[tuple]) -> list[Future]:
        """Submit ``fn(*args)`` for every args tuple; one Future each, in order."""
        return [self.submit(fn, *args) for args in argsets]

    def submission_text(self, fn: Callable[..., Any], argsets: Sequence[tuple]) -> str | None:
        """What :meth:`submit_runs` would submit, for ``--dry-run`` (None: nothing to show)."""
        return None
