"""``ray``: one Ray task per width run, on a local Ray instance or an existing cluster."""

from __future__ import annotations

import math
import socket
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from pydantic import BaseModel, Field, model_validator

from widthwise.errors import UserError
from widthwise.executors.base import (
    EXECUTORS,
    ExecutorContext,
    RemoteOptions,
    WidthExecutor,
    require_extra,
)


class RayOptions(RemoteOptions):
    """Options of the ``ray`` executor."""

    threads_per_run: int | None = Field(
        None, gt=0, description="torch threads of each run (default: cpus_per_run, rounded up)"
    )

    address: str | None = Field(
        None,
        description="join this cluster (e.g. auto, ray://head:10001); default: a local instance",
    )
    num_cpus: int | None = Field(
        None, gt=0, description="CPUs of a local instance (default: all); ignored with address"
    )
    cpus_per_run: float = Field(1.0, gt=0, description="CPUs each width's task requests")
    gpus_per_run: float = Field(0.0, ge=0, description="GPUs each width's task requests")
    runtime_env: dict[str, Any] = Field(
        default_factory=dict,
        description="Ray runtime_env of the session, e.g. {working_dir: .} to ship your plug-ins; "
        "runs code: needs --allow-code",
    )
    max_retries: int = Field(
        3, ge=0, description="re-runs of a task whose worker died (it resumes from its checkpoint)"
    )

    @model_validator(mode="before")
    @classmethod
    def _installed(cls, data: Any) -> Any:
        require_extra("ray", "ray", "ray")
        return data


PREFLIGHT_TIMEOUT_S = 5.0
RAY_CLIENT_PORT = 10001
GCS_PORT = 6379


def _head_hostport(address: str) -> tuple[str, int] | None:
    """(host, port) of a Ray head address, or None when it is not host-like (``auto``,
    ``local``: Ray resolves those itself)."""
    rest = address.removeprefix("ray://")
    default = RAY_CLIENT_PORT if address.startswith("ray://") else GCS_PORT
    if address in ("auto", "local") or not rest:
        return None
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    try:
        return host, int(port) if port else default
    except ValueError:
        return None


@EXECUTORS.register(
    "ray",
    options=RayOptions,
    description="one Ray task per width (local instance, or an existing cluster via address)",
)
class RayExecutor(WidthExecutor):
    """Ray tasks requesting ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs each.

    Joins the cluster at ``address`` or starts a local instance (shut down again
    by :meth:`shutdown`); a Ray session the caller already started is used as is.
    Every worker must see the study directory (a shared file system) and have
    widthwise installed. Each run sets ``threads_per_run`` torch threads (default:
    ``cpus_per_run``, rounded up).
    """

    same_host = False

    def __init__(self, options: BaseModel | None, context: ExecutorContext) -> None:
        super().__init__(options or RayOptions(), context)
        self._started = False
        self._remotes: dict[Callable[..., Any], Any] = {}

    @classmethod
    def preflight(cls, options: BaseModel | None) -> None:
        """An ``address`` whose head cannot be reached fails in seconds, before anything is
        written (``ray.init`` would wait for its own connection timeout, minutes)."""
        address = getattr(options, "address", None)
        hostport = _head_hostport(address) if address else None
        if hostport is None:
            return
        host, port = hostport
        try:
            socket.create_connection((host, port), timeout=PREFLIGHT_TIMEOUT_S).close()
        except OSError as err:
            raise UserError(
                f"executor.options.address: cannot reach the Ray head at {address!r} "
                f"({err.strerror or err}); check the address, or omit it for a local instance"
            ) from None

    def threads_per_run(self) -> int:
        opts: RayOptions = self.options  # type: ignore[assignment]
        return opts.threads_per_run or max(1, math.ceil(opts.cpus_per_run))

    def describe(self) -> str:
        opts: RayOptions = self.options  # type: ignore[assignment]
        where = f"cluster at {opts.address}" if opts.address else "a local Ray instance"
        if not opts.address and opts.num_cpus:
            where += f" ({opts.num_cpus} CPUs)"
        return (
            f"ray: one task per width on {where}, {opts.cpus_per_run:g} CPUs and "
            f"{opts.gpus_per_run:g} GPUs per task, {self.threads_per_run()} torch thread(s) per run"
        )

    def _init(self) -> None:
        import ray

        if ray.is_initialized():
            return
        opts: RayOptions = self.options  # type: ignore[assignment]
        kwargs: dict[str, Any] = {"log_to_driver": False}
        if opts.runtime_env:
            kwargs["runtime_env"] = dict(opts.runtime_env)
        if opts.address:
            try:
                ray.init(address=opts.address, **kwargs)
            except (ConnectionError, ValueError, RuntimeError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise UserError(
                    f"executor.options.address: cannot join the Ray cluster at "
                    f"{opts.address!r}: {first}"
                ) from None
        else:
            ray.init(num_cpus=opts.num_cpus, include_dashboard=False, **kwargs)
        self._started = True

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        import ray

        self._init()
        remote = self._remotes.get(fn)
        if remote is None:
            opts: RayOptions = self.options  # type: ignore[assignment]
            remote = ray.remote(fn).options(
                num_cpus=opts.cpus_per_run,
                num_gpus=opts.gpus_per_run,
                max_retries=opts.max_retries,
            )
            self._remotes[fn] = remote
        return remote.remote(*args, **kwargs).future()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False
