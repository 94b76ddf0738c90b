"""Plan and run a study: one run per width, each training all its seeds at once.

``run`` prepares the study directory, plans every width (skip a finished one,
resume an unfinished one from its last checkpoint, run a new one) and hands the
runs to the spec's executor (``local``, ``processes``, ``ray``, ``slurm``). Each run
holds its width directory's lock while it writes, so a second concurrent writer
is refused. Runs are deterministic in (seed, step): at equal torch thread counts
the results are the same bit for bit whichever executor ran each part.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import ValidationError
from rich.console import Console

from widthwise.errors import SpecError, StoreError, UserError
from widthwise.executors import EXECUTORS, ExecutorContext, WidthExecutor, executor_override
from widthwise.progress import StudyProgress, last_train_loss, study_progress
from widthwise.spec import ExecutorSpec, StudySpec, _pydantic_problems, load_spec
from widthwise.store.lock import busy_message, lock_holder
from widthwise.store.study_dir import StudyDir
from widthwise.store.width_dir import WidthDir
from widthwise.streams import STREAMS, Stream
from widthwise.trainer import ProgressFn, check_precision, resolve_device, train_width

POLL_S = 0.5
"""Seconds between looks at the store while runs execute elsewhere."""

_ERRORS: dict[str, type[UserError]] = {
    "StoreError": StoreError,
    "SpecError": SpecError,
    "UserError": UserError,
}


def build_stream(spec: StudySpec) -> Stream:
    """The study's data stream (deterministic in (data seed, step))."""
    return STREAMS.get(spec.data.stream)(spec.data.seed, spec.stream_options())


# -- planning ----------------------------------------------------------------


@dataclass(frozen=True)
class WidthPlan:
    """What a run of the study will do with one width."""

    width: int
    action: Literal["run", "resume", "skip"]
    step: int
    """Steps the width had reached (0 for a new width)."""
    holder: dict[str, Any] | None
    """The live writer of the width directory, if any."""

    def describe(self, steps: int) -> str:
        text = {
            "skip": "skip (done)",
            "resume": f"resume from its last checkpoint ({self.step} of {steps} steps reached)",
            "run": f"run ({steps} steps)",
        }[self.action]
        if self.holder:
            text += f"; being written by pid {self.holder.get('pid')} on {self.holder.get('host')}"
        return f"width {self.width:>5}: {text}"


def plan_widths(spec: StudySpec, study: StudyDir) -> list[WidthPlan]:
    """Skip, resume or run for every width, from the study directory as it stands."""
    plans = []
    for width in spec.widths:
        wd = study.width_dir(width)
        status = wd.read_status()
        if status.get("state") == "done":
            action: Literal["run", "resume", "skip"] = "skip"
        elif wd.checkpoint_path.exists():
            action = "resume"
        else:
            action = "run"
        step = int(status.get("step", 0)) if action != "run" else 0
        plans.append(WidthPlan(width, action, step, lock_holder(wd.path)))
    return plans


def _refuse_busy(study: StudyDir, plans: Sequence[WidthPlan]) -> None:
    for p in plans:
        if p.holder and p.action != "skip":
            raise StoreError(busy_message(study.width_dir(p.width).path, p.holder))


# -- the spec and its executor -------------------------------------------------


def with_executor(
    spec: StudySpec,
    executor: str | dict[str, Any] | ExecutorSpec | None = None,
    *,
    workers: int | None = None,
    address: str | None = None,
) -> StudySpec:
    """``spec`` with another executor (a name, a mapping, or flags on the spec's own).

    A different name starts from that executor's default options. Raises a
    one-line :class:`~widthwise.errors.SpecError` for unknown names, bad options or
    an engine that is not installed.
    """
    if executor is None and workers is None and address is None:
        return spec
    if isinstance(executor, ExecutorSpec):
        executor = executor.model_dump()
    if isinstance(executor, dict):
        override = executor_override(executor, workers=workers, address=address)
    else:
        base = spec.executor.model_dump()
        override = executor_override(base, executor, workers=workers, address=address)
    try:
        es = ExecutorSpec.model_validate(override)
    except ValidationError as err:
        raise SpecError("; ".join(_pydantic_problems(err, "executor"))) from None
    if es.name not in EXECUTORS:
        raise SpecError(
            f"executor.name: unknown executor {es.name!r}; allowed: {', '.join(EXECUTORS.names())}"
        )
    try:
        EXECUTORS.validate_options(es.name, es.options)
    except ValidationError as err:
        raise SpecError("; ".join(_pydantic_problems(err, "executor.options"))) from None
    except UserError as err:
        raise SpecError(f"executor.name: {err}") from None
    return spec.model_copy(update={"executor": es})


def _resolve_spec(
    spec: StudySpec | str | os.PathLike[str],
    out: str | os.PathLike[str] | None,
    device: str | None,
    executor: str | dict[str, Any] | ExecutorSpec | None,
) -> StudySpec:
    if not isinstance(spec, StudySpec):
        spec = load_spec(spec)
    if out is not None:
        spec = spec.model_copy(update={"out": str(out)})
    if device is not None:
        spec = spec.model_copy(update={"device": device})
    return with_executor(spec, executor)


def executor_class(spec: StudySpec) -> tuple[type[WidthExecutor], Any]:
    """The spec's executor class and its validated options (nothing is started)."""
    cls = EXECUTORS.get(spec.executor.name)
    return cls, EXECUTORS.validate_options(spec.executor.name, spec.executor.options)


def make_executor(spec: StudySpec, runs: int, *, preflight: bool = True) -> WidthExecutor:
    """The spec's executor for ``runs`` width runs (nothing is started or written yet)."""
    cls, options = executor_class(spec)
    if preflight:
        cls.preflight(options)
    context = ExecutorContext(study_path=spec.out_dir().absolute(), name=spec.name, runs=runs)
    return cls(options, context)


# -- one width run ---------------------------------------------------------------


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    if not threads or threads == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_with_threads(
    spec: StudySpec,
    width: int,
    width_dir: WidthDir,
    stream: Stream,
    probe_set: tuple[np.ndarray, np.ndarray],
    on_step: ProgressFn | None,
    device: torch.device,
    threads: int | None,
) -> dict[str, Any]:
    """Train one width with ``threads`` torch threads (train_width takes the width's lock
    and leaves a finished width untouched)."""
    with _torch_threads(threads):
        return train_width(
            spec, width, width_dir, stream, probe_set, on_step=on_step, device=device
        )


def run_width_job(
    spec_json: dict[str, Any],
    width: int,
    study_path: str,
    device: str | None = None,
    threads: int | None = None,
    imports: Sequence[str] = (),
) -> dict[str, Any]:
    """The unit of work an executor ships to a worker: train (or resume) one width.

    Everything it needs travels as plain data: the spec as JSON, the width, the
    absolute study directory. The stream and probe set are rebuilt here
    (deterministic in (seed, step)); ``threads`` sets torch's thread count first.
    Returns the width's final status. A user-facing error (a busy width, a missing
    CUDA device) comes back as ``{"state": "error", "error": ..., "error_type": ...}``
    so that every engine delivers it intact; other exceptions propagate.
    """
    for module in imports:
        importlib.import_module(module)
    if threads:
        torch.set_num_threads(threads)
    try:
        spec = StudySpec.model_validate(spec_json)
        study = StudyDir(Path(study_path))
        manifest = study.read_manifest()
        if manifest["spec_hash"] != spec.hash():
            raise StoreError(
                f"{study.path}: holds a study made by another spec (hash "
                f"{manifest['spec_hash']} != {spec.hash()}); this job is stale"
            )
        stream = build_stream(spec)
        probe_set = stream.probe_set(spec.data.probe_points)
        dev = resolve_device(device or spec.device)
        return _train_with_threads(
            spec, width, study.width_dir(width), stream, probe_set, None, dev, None
        )
    except UserError as err:
        return {"state": "error", "error": str(err), "error_type": type(err).__name__}


# -- the study ---------------------------------------------------------------------


def run(
    spec: StudySpec | str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    device: str | None = None,
    executor: str | dict[str, Any] | ExecutorSpec | None = None,
    progress: bool = False,
    console: Console | None = None,
) -> Path:
    """Run (or resume) a study; returns its directory.

    ``spec`` is a :class:`StudySpec`, a YAML path or a bundled name; ``executor``
    (a name or ``{name, options}``) replaces the spec's. Finished widths are
    skipped, unfinished ones resume from their last checkpoint, and the result
    equals one uninterrupted run. Raises :class:`~widthwise.errors.UserError` for
    bad input (before writing anything) and when a width is being written by
    another live process. When the spec names trackers, the finished study's
    scalars are mirrored to them.
    """
    spec = _resolve_spec(spec, out, device, executor)
    cls, options = executor_class(spec)
    cls.preflight(options)
    dev = resolve_device(spec.device) if cls.same_host else None
    if dev is not None:
        check_precision(spec, dev)  # e.g. bf16 on a GPU without it: before anything is written
    stream = build_stream(spec)
    probe_set: tuple[np.ndarray, np.ndarray] = stream.probe_set(spec.data.probe_points)
    study = StudyDir(spec.out_dir())
    study.prepare(spec, spec.hash(), probe_set, stream.describe())
    plans = plan_widths(spec, study)
    _refuse_busy(study, plans)
    todo = [p.width for p in plans if p.action != "skip"]
    context = ExecutorContext(study_path=study.path.absolute(), name=spec.name, runs=len(todo))
    pool = cls(options, context)
    results: dict[int, dict[str, Any]] = {}
    try:
        with study_progress(progress, console) as bars:
            for p in plans:
                if p.action == "skip":
                    bars.finished(
                        p.width, spec.steps, last_train_loss(study.width_dir(p.width).path)
                    )
                    results[p.width] = study.width_dir(p.width).read_status()
            if todo and pool.in_process:
                assert dev is not None
                for width in todo:
                    fut = pool.submit(
                        _train_with_threads,
                        spec,
                        width,
                        study.width_dir(width),
                        stream,
                        probe_set,
                        bars.for_width(width, spec.steps),
                        dev,
                        pool.threads_per_run(),
                    )
                    results[width] = fut.result()
            elif todo:
                results.update(_run_elsewhere(spec, study, todo, pool, dev, bars))
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    if spec.trackers:  # mirror what is final, even when a width failed (never raises)
        from widthwise.trackers import mirror_scalars

        mirror_scalars(study.path)
    failed = [w for w in spec.widths if results.get(w, {}).get("state") != "done"]
    if failed:
        raise StoreError(f"widths {failed} did not finish; run the study again to resume them")
    return study.path


def _run_elsewhere(
    spec: StudySpec,
    study: StudyDir,
    widths: list[int],
    pool: WidthExecutor,
    device: torch.device | None,
    bars: StudyProgress,
) -> dict[int, dict[str, Any]]:
    """Submit the widths to a remote executor, follow them in the store, gather results."""
    spec_json = spec.model_dump(mode="json")
    path = str(study.path.absolute())
    dev = str(device) if device is not None else spec.device
    argsets = [(spec_json, w, path, dev, pool.threads_per_run(), pool.imports()) for w in widths]
    futures: list[Future] = pool.submit_runs(run_width_job, argsets)
    by_future = dict(zip(futures, widths))
    watchers = {w: bars.watch(w, spec.steps) for w in widths}
    pending = set(futures)
    while pending:
        _, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
        for fut, w in by_future.items():
            watch = watchers[w]
            if watch is not None:
                wd = study.width_dir(w)
                status = wd.read_status()
                if fut.done():
                    state = str(status.get("state", "failed"))
                else:
                    state = "running" if lock_holder(wd.path) else "queued"
                watch(int(status.get("step", 0)), last_train_loss(wd.path), state)
    results: dict[int, dict[str, Any]] = {}
    user_errors: list[UserError] = []
    bugs: list[BaseException] = []
    for fut, w in by_future.items():
        err = fut.exception()
        if isinstance(err, BrokenProcessPool):
            user_errors.append(
                StoreError(f"width {w}: its worker process died; run the study again to resume")
            )
        elif isinstance(err, UserError):
            user_errors.append(err)
        elif err is not None:
            bugs.append(err)
        else:
            res = fut.result()
            if res.get("state") == "error":
                user_errors.append(_ERRORS.get(res.get("error_type", ""), UserError)(res["error"]))
            else:
                results[w] = res
    if bugs:
        raise bugs[0]
    if user_errors:
        raise user_errors[0]
    return results


def dry_run(
    spec: StudySpec | str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    device: str | None = None,
    executor: str | dict[str, Any] | ExecutorSpec | None = None,
) -> str:
    """What :func:`run` would do, as text; nothing is written or started.

    Lists which widths would run, resume or be skipped, the executor's settings
    and, for Slurm, the job script that would be submitted.
    """
    spec = _resolve_spec(spec, out, device, executor)
    study = StudyDir(spec.out_dir())
    if study.manifest_path.exists():
        manifest = study.read_manifest()
        if manifest["spec_hash"] != spec.hash():
            raise StoreError(
                f"out: {study.path} holds study {manifest.get('name')!r} made by a different "
                f"spec (hash {manifest['spec_hash']} != {spec.hash()}); use another --out or "
                "delete the directory"
            )
        plans = plan_widths(spec, study)
    else:
        plans = [WidthPlan(w, "run", 0, None) for w in spec.widths]
    todo = [p.width for p in plans if p.action != "skip"]
    pool = make_executor(spec, runs=max(len(todo), 1), preflight=False)
    lines = [
        f"dry run: {spec.name} → {study.path.absolute()} "
        f"({len(todo)} of {len(plans)} widths to run; nothing written)",
        f"executor {pool.describe()}",
        *(p.describe(spec.steps) for p in plans),
    ]
    if todo:
        argsets = [
            (
                spec.model_dump(mode="json"),
                w,
                str(study.path.absolute()),
                spec.device,
                pool.threads_per_run(),
                pool.imports(),
            )
            for w in todo
        ]
        text = pool.submission_text(run_width_job, argsets)
        if text is not None:
            tasks = ", ".join(f"{i} → width {w}" for i, w in enumerate(todo))
            kind = f"one array job of {len(todo)} tasks" if len(todo) > 1 else "one job"
            lines += [
                f"would submit {kind} ({tasks}):",
                text.rstrip("\n"),
            ]
    else:
        lines.append("nothing to run: every width is done")
    return "\n".join(lines)
