"""``ray``: one Ray task per width run, on a local Ray instance or an existing cluster."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
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
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
"""An HTTP/2 client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS and its
client server both are) answers with a SETTINGS frame of its own."""
SETTINGS_FRAME = 0x04


def grpc_problem(host: str, port: int, timeout: float | None = None) -> str:
    """Why ``host:port`` is not a gRPC server (``""`` when it answers like one): refused,
    unreachable, silent within ``timeout`` (default :data:`PREFLIGHT_TIMEOUT_S`), or
    answering something else. Takes at most about twice ``timeout``, where ``ray.init``
    would retry for minutes."""
    timeout = PREFLIGHT_TIMEOUT_S if timeout is None else timeout
    try:
        conn = socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        return err.strerror or str(err) or type(err).__name__
    with conn:
        try:
            conn.settimeout(timeout)
            conn.sendall(HTTP2_PREFACE)
            head = b""
            while len(head) < 9:
                chunk = conn.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
        except TimeoutError:
            return f"no answer within {timeout:g} s: not a Ray head"
        except OSError as err:
            return err.strerror or str(err) or type(err).__name__
    if len(head) < 9 or head[3] != SETTINGS_FRAME:
        return "it answers, but not as a Ray head (no gRPC)"
    return ""


def _auto_address() -> str | None:
    """The address ``address: auto`` resolves to (``RAY_ADDRESS``, or the Ray instance
    started on this machine); a one-line UserError when there is none."""
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # another Ray version: let ray.init resolve it
        return None
    try:
        with _quiet():
            return canonicalize_bootstrap_address("auto")
    except ConnectionError as err:
        first = str(err).strip().split(". ")[0]
        raise UserError(
            f"executor.options.address: 'auto' finds no Ray cluster ({first}); start one "
            "(ray start --head) or omit the address for a local instance"
        ) from None
    except Exception:  # noqa: BLE001  (a private API: any surprise leaves it to ray.init)
        return None


@contextlib.contextmanager
def _quiet() -> Iterator[list[str]]:
    """Ray's own log output (Python logging, warnings, and what its C++ core writes to
    file descriptor 2) goes to a buffer during the block: a failed connection is our one
    line, not Ray's retries. The captured lines are yielded for the caller to replay
    when the block succeeds."""
    captured: list[str] = []
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (embedded): Python-level silence only
        saved = None
    with (
        tempfile.TemporaryFile() as buf,
        warnings.catch_warnings(),
        contextlib.redirect_stderr(open(os.devnull, "w")),  # noqa: SIM115  (closed below)
    ):
        warnings.simplefilter("ignore")
        ray_logger = logging.getLogger("ray")
        level = ray_logger.level
        ray_logger.setLevel(logging.ERROR)
        if saved is not None:
            os.dup2(buf.fileno(), 2)
        try:
            yield captured
        finally:
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
            ray_logger.setLevel(level)
            sys.stderr.close()
            buf.seek(0)
            captured += buf.read().decode(errors="replace").splitlines()


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
        """An ``address`` whose head cannot be reached, or that does not answer like a Ray
        head (gRPC), fails in seconds with one line, before anything is written
        (``ray.init`` would retry for minutes, printing its own log lines);
        ``address: auto`` without a cluster to find likewise."""
        address = getattr(options, "address", None)
        if address == "auto":
            address = _auto_address() or address
        hostport = _head_hostport(address) if address else None
        if hostport is None:
            return
        problem = grpc_problem(*hostport)
        if problem:
            shown = getattr(options, "address", None)
            resolved = f" (resolved to {address})" if address != shown else ""
            raise UserError(
                f"executor.options.address: cannot reach the Ray head at {shown!r}{resolved} "
                f"({problem}); check the address, or omit it for a local instance"
            )

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
                with _quiet() as captured:  # Ray's retries are not the user's to read
                    ray.init(address=opts.address, logging_level=logging.WARNING, **kwargs)
            except (ConnectionError, ValueError, RuntimeError, TimeoutError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise UserError(
                    f"executor.options.address: cannot join the Ray cluster at "
                    f"{opts.address!r}: {first}"
                ) from None
            for line in captured:  # connected: what Ray said is worth seeing
                print(line, file=sys.stderr)
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
