"""Executors run a study's independent per-width runs (registry :data:`EXECUTORS`).

Every executor has the ``concurrent.futures`` shape (``submit(fn, *args)`` returns
a Future) and is built from the spec's ``executor: {name, options}``:

- ``local`` — serial, in this process (the default; live progress, debuggers work)
- ``processes`` — a local process pool of ``workers`` processes
- ``ray`` — one Ray task per width (``pip install 'widthwise[ray]'``)
- ``slurm`` — a Slurm array job through submitit (``pip install 'widthwise[slurm]'``)

A new engine is one class registered with ``@EXECUTORS.register(name, options=...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from widthwise.errors import UserError
from widthwise.executors.base import (
    EXECUTORS,
    ExecutorContext,
    ExecutorOptions,
    RemoteOptions,
    WidthExecutor,
    require_extra,
)
from widthwise.executors.local import LocalExecutor, ProcessesExecutor
from widthwise.executors.ray_tasks import RayExecutor
from widthwise.executors.slurm import SlurmExecutor

__all__ = [
    "EXECUTORS",
    "ExecutorContext",
    "ExecutorFlags",
    "ExecutorOptions",
    "LocalExecutor",
    "ProcessesExecutor",
    "RayExecutor",
    "RemoteOptions",
    "SlurmExecutor",
    "WidthExecutor",
    "executor_override",
    "require_extra",
]


def executor_override(
    base: Any,
    name: str | None = None,
    *,
    workers: int | None = None,
    address: str | None = None,
    imports: Sequence[str] = (),
) -> dict[str, Any]:
    """The spec's ``executor`` mapping with command-line choices applied.

    ``base`` is the spec's value (a name, a mapping or None). A different ``name``
    starts from that executor's defaults; ``workers`` sets how many runs go at once
    (processes: ``workers``; slurm: ``array_parallelism``; ray: CPUs of the local
    instance at ``cpus_per_run`` each); ``address`` makes Ray join that cluster;
    ``imports`` (``--import``) are added to a remote executor's ``imports``.
    """
    if isinstance(base, str):
        base = {"name": base}
    base = dict(base or {}) if isinstance(base, dict | None) else base
    if not isinstance(base, dict) or not isinstance(base.get("options") or {}, dict):
        raise UserError(f"executor: expected a name or a mapping {{name, options}}, got {base!r}")
    current = str(base.get("name", "local"))
    options = dict(base.get("options") or {})
    if name is not None and name != current:
        current, options = name, {}
    if workers is not None:
        if workers < 1:
            raise UserError(f"--workers: expected a whole number >= 1, got {workers}")
        if current == "processes":
            options["workers"] = workers
        elif current == "slurm":
            options["array_parallelism"] = workers
        elif current == "ray":
            if address or options.get("address"):
                raise UserError("--workers: a Ray cluster (--address) sizes itself; drop --workers")
            per_run = float(options.get("cpus_per_run", 1.0))
            options["num_cpus"] = max(1, round(workers * per_run))
        elif workers != 1:
            raise UserError(
                f"--workers: the {current} executor runs one width at a time; "
                "use --executor processes (or ray, slurm) to run widths in parallel"
            )
    if address is not None:
        if current != "ray":
            raise UserError(f"--address: only the ray executor joins a cluster, not {current!r}")
        options["address"] = address
    if imports and current != "local":  # workers are fresh interpreters: import there too
        options["imports"] = list(dict.fromkeys([*options.get("imports", []), *imports]))
    return {"name": current, "options": options}


@dataclass(frozen=True)
class ExecutorFlags:
    """Command-line choices of executor (``--executor``, ``--workers``, ``--address``,
    ``--import``), applied to a spec's ``executor`` value by :func:`executor_override`
    — the one place that knows how: ``load_spec(path, executor=flags)`` applies them
    before validation, :func:`widthwise.study.with_executor` to a validated spec."""

    name: str | None = None
    workers: int | None = None
    address: str | None = None
    imports: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.name, self.workers, self.address)) or bool(
            self.imports
        )

    def apply(self, base: Any) -> dict[str, Any]:
        """The executor mapping ``base`` (a name, a mapping or None) with these flags."""
        return executor_override(
            base, self.name, workers=self.workers, address=self.address, imports=self.imports
        )
