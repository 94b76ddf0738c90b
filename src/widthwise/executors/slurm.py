"""``slurm``: width runs as a Slurm array job through submitit.

``cluster: local`` runs the same submission through submitit's local executor
(one subprocess per job), which is how the tests exercise this path without a
cluster. Jobs are requeued by submitit after a timeout and resume from their
last checkpoint.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from widthwise.errors import StoreError, UserError
from widthwise.executors.base import (
    EXECUTORS,
    ExecutorContext,
    RemoteOptions,
    WidthExecutor,
    require_extra,
)


class SlurmOptions(RemoteOptions):
    """Options of the ``slurm`` executor."""

    threads_per_run: int | None = Field(
        None, gt=0, description="torch threads of each run (default: cpus_per_run)"
    )

    partition: str | None = Field(None, description="Slurm partition (default: the cluster's)")
    time_min: int = Field(60, gt=0, description="time limit of each job in minutes")
    gpus_per_run: int = Field(0, ge=0, description="GPUs per job (gpus_per_node)")
    cpus_per_run: int = Field(1, gt=0, description="CPUs per job (cpus_per_task)")
    mem_gb: float | None = Field(None, gt=0, description="memory per job in GB")
    array_parallelism: int = Field(64, gt=0, description="array tasks running at once")
    folder: str | None = Field(
        None, description="submitit folder: scripts, pickles, logs (default <out>/slurm)"
    )
    cluster: Literal["slurm", "local"] = Field(
        "slurm", description="local: run through submitit's local executor (testing)"
    )
    setup: list[str] = Field(
        default_factory=list,
        description="shell lines run before each job (module load ...); runs code: needs "
        "--allow-code",
    )
    additional_parameters: dict[str, Any] = Field(
        default_factory=dict, description="extra #SBATCH flags, e.g. {account: myproj}"
    )
    max_num_timeout: int = Field(3, ge=0, description="requeues after a timeout")

    @model_validator(mode="before")
    @classmethod
    def _installed(cls, data: Any) -> Any:
        require_extra("submitit", "slurm", "slurm")
        return data


class SlurmTask:
    """The callable a Slurm job runs; requeued with the same arguments on timeout."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def checkpoint(self, *args: Any) -> Any:
        """Resubmit unchanged: the run resumes from its last checkpoint in the store."""
        from submitit.core.utils import DelayedSubmission

        return DelayedSubmission(self, *args)


@EXECUTORS.register(
    "slurm",
    options=SlurmOptions,
    description="a Slurm array job through submitit, one task per width",
)
class SlurmExecutor(WidthExecutor):
    """Submits all runs as one array job (a single run as one job) and polls them.

    Each job sets ``threads_per_run`` torch threads (default ``cpus_per_run``). The
    study directory and ``folder`` must be on a file system the nodes share.
    """

    same_host = False
    poll_s = 1.0

    def __init__(self, options: BaseModel | None, context: ExecutorContext) -> None:
        super().__init__(options or SlurmOptions(), context)
        self._executor: Any = None
        self._jobs: list[tuple[Any, Future[Any]]] = []
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def opts(self) -> SlurmOptions:
        return self.options  # type: ignore[return-value]

    @classmethod
    def preflight(cls, options: BaseModel | None) -> None:
        opts = options if isinstance(options, SlurmOptions) else SlurmOptions()
        if opts.cluster != "slurm":
            return
        if shutil.which("sbatch") is None:
            raise UserError(
                "executor slurm: no Slurm here (sbatch not found); use --dry-run to see the "
                "job script, or executor.options.cluster: local to run through submitit locally"
            )
        problem = _controller_problem()
        if problem is not None:
            raise UserError(
                f"executor slurm: sbatch is here but no Slurm controller answers ({problem}); "
                "check the cluster's configuration, or use --dry-run to see the job script"
            )

    def threads_per_run(self) -> int:
        return self.opts.threads_per_run or self.opts.cpus_per_run

    def folder(self) -> Path:
        if self.opts.folder:
            return Path(self.opts.folder).expanduser().absolute()
        base = self.context.study_path or Path("runs") / self.context.name
        return Path(base).absolute() / "slurm"

    def describe(self) -> str:
        o = self.opts
        where = "Slurm" if o.cluster == "slurm" else "submitit's local executor"
        return (
            f"slurm: one array task per width on {where}"
            + (f", partition {o.partition}" if o.partition else "")
            + f", {o.time_min} min, {o.cpus_per_run} CPUs and {o.gpus_per_run} GPUs per task,"
            f" logs in {self.folder()}"
        )

    def _parameters(self) -> dict[str, Any]:
        o = self.opts
        params: dict[str, Any] = {
            "name": f"widthwise-{self.context.name}",
            "timeout_min": o.time_min,
            "cpus_per_task": o.cpus_per_run,
            "gpus_per_node": o.gpus_per_run,
            "nodes": 1,
            "tasks_per_node": 1,
        }
        if o.mem_gb is not None:
            params["mem_gb"] = o.mem_gb
        if o.cluster == "slurm":
            params["slurm_array_parallelism"] = o.array_parallelism
            if o.partition:
                params["slurm_partition"] = o.partition
            if o.additional_parameters:
                params["slurm_additional_parameters"] = dict(o.additional_parameters)
            if o.setup:
                params["slurm_setup"] = list(o.setup)
        elif o.setup:
            params["local_setup"] = list(o.setup)
        return params

    def _engine(self) -> Any:
        if self._executor is None:
            import submitit

            cluster = None if self.opts.cluster == "slurm" else self.opts.cluster
            try:
                ex = submitit.AutoExecutor(
                    folder=self.folder(),
                    cluster=cluster,
                    slurm_max_num_timeout=self.opts.max_num_timeout,
                )
            except RuntimeError as err:
                raise UserError(f"executor slurm: {err}") from None
            ex.update_parameters(**self._parameters())
            self._executor = ex
        return self._executor

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self.submit_runs(fn, [args])[0]

    def submit_runs(self, fn: Callable[..., Any], argsets: Sequence[tuple]) -> list[Future]:
        ex = self._engine()
        job_fn = SlurmTask(fn)
        if len(argsets) > 1:
            with ex.batch():
                pending = [ex.submit(job_fn, *args) for args in argsets]
            jobs = list(pending)
        else:
            jobs = [ex.submit(job_fn, *args) for args in argsets]
        futures: list[Future] = []
        for job in jobs:
            fut: Future[Any] = Future()
            fut.set_running_or_notify_cancel()
            futures.append(fut)
            self._jobs.append((job, fut))
        if self._watcher is None:
            self._watcher = threading.Thread(
                target=self._watch, name="widthwise-slurm", daemon=True
            )
            self._watcher.start()
        return futures

    def _watch(self) -> None:
        """Poll the jobs until shutdown; settle each Future when its job ends."""
        while True:
            for job, fut in list(self._jobs):
                self._settle(job, fut)
            if self._stop.wait(self.poll_s):
                return

    def _settle(self, job: Any, fut: Future[Any]) -> None:
        if fut.done():  # cancelled
            self._jobs.remove((job, fut))
            return
        try:
            finished = job.done()
        except Exception:  # noqa: BLE001  (transient sacct trouble: ask again)
            finished = False
        if not finished and self.opts.cluster == "slurm" and self._vanished(job):
            # no accounting (sacct fails, submitit says UNKNOWN forever), and the task
            # left the queue without writing a result: it died
            self._jobs.remove((job, fut))
            fut.set_exception(
                StoreError(
                    f"slurm job {job.job_id} left the queue without a result"
                    f"{_log_tail(job.paths.stderr)}; logs: {job.paths.stderr}; "
                    "run the study again to resume"
                )
            )
            return
        if not finished:
            return
        self._jobs.remove((job, fut))
        try:
            fut.set_result(job.result())
        except Exception as err:  # noqa: BLE001  (any job failure becomes one line)
            text = str(err).strip()
            last = text.splitlines()[-1] if text else type(err).__name__
            fut.set_exception(
                StoreError(
                    f"slurm job {job.job_id} failed: {last}; logs: {job.paths.stderr}; "
                    "run the study again to resume"
                )
            )

    def _vanished(self, job: Any) -> bool:
        """Whether ``job`` is neither in ``squeue`` nor finished with a result file
        (asked only when its state is not known: accounting is missing or failing)."""
        try:
            state = str(job.state)
        except Exception:  # noqa: BLE001
            state = "UNKNOWN"
        if state not in ("UNKNOWN", "PENDING", "RUNNING", "REQUEUED"):
            return False
        if Path(job.paths.result_pickle).exists():
            return False
        return not _in_queue(str(job.job_id))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop following the jobs. Slurm jobs keep running when the caller is
        interrupted (run the study again to follow or resume them; ``scancel`` stops
        them); jobs of ``cluster: local`` are cancelled with it."""
        if cancel_futures and self.opts.cluster == "local":
            for job, fut in list(self._jobs):
                if not fut.done():
                    with contextlib.suppress(Exception):  # best effort
                        job.cancel(check=False)
                    fut.cancel()
        if wait and not cancel_futures:
            while any(not f.done() for _, f in list(self._jobs)):
                time.sleep(self.poll_s)
        self._stop.set()
        if self._watcher is not None and wait:
            self._watcher.join(timeout=self.poll_s * 5)

    def submission_text(self, fn: Callable[..., Any], argsets: Sequence[tuple]) -> str:
        """The sbatch script submitit would submit (an array job for several runs)."""
        from submitit.slurm.slurm import _make_sbatch_string

        o = self.opts
        folder = self.folder()
        command = " ".join(
            [shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))]
        )
        params: dict[str, Any] = {
            "job_name": f"widthwise-{self.context.name}",
            "time": o.time_min,
            "nodes": 1,
            "ntasks_per_node": 1,
            "cpus_per_task": o.cpus_per_run,
            "gpus_per_node": o.gpus_per_run,
            "array_parallelism": o.array_parallelism,
            "setup": list(o.setup) or None,
            "additional_parameters": dict(o.additional_parameters) or None,
        }
        if o.partition:
            params["partition"] = o.partition
        if o.mem_gb is not None:
            params["mem"] = (
                f"{int(o.mem_gb)}GB" if o.mem_gb == int(o.mem_gb) else f"{int(o.mem_gb * 1024)}MB"
            )
        if len(argsets) > 1:
            params["map_count"] = len(argsets)
        return _make_sbatch_string(command=command, folder=folder, **params)


def _in_queue(job_id: str) -> bool:
    """Whether Slurm still lists the job (True when squeue cannot tell: do not guess)."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%i"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return True
    if out.returncode != 0:
        # an id Slurm no longer knows is an error for squeue: the job left the queue
        return "Invalid job id" not in out.stderr
    return bool(out.stdout.strip())


def _log_tail(path: Any, lines: int = 3) -> str:
    """``: <last lines of the log>`` (folded to one line), or nothing if unreadable."""
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    tail = " | ".join(line.strip() for line in text[-lines:] if line.strip())
    return f" (its log ends: {tail[-300:]})" if tail else ""


def _controller_problem() -> str | None:
    """Why ``sinfo`` cannot reach a Slurm controller (None: it can), in one line."""
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=15, check=False
        )
    except FileNotFoundError:
        return "sinfo not found"
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 15 s"
    except OSError as err:
        return f"sinfo: {err}"
    if out.returncode == 0:
        return None
    first = next((line.strip() for line in out.stderr.splitlines() if line.strip()), "")
    return (
        f"sinfo exit {out.returncode}: {first[:200]}" if first else f"sinfo exit {out.returncode}"
    )
