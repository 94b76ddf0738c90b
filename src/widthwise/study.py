"""Plan and run a study: one run per width, each training all its seeds at once.

``run`` prepares the study directory, plans every width (skip a finished one,
resume an unfinished one from its last checkpoint, run a new one), makes one
:class:`~widthwise.job.WidthJob` per width to run and hands the jobs to the spec's
executor (``local`` runs them in this process, ``processes``, ``ray`` and ``slurm``
elsewhere); every executor runs the same function, :func:`~widthwise.job.run_job`.
Each job holds its width directory's lock while it writes, so a second concurrent
writer is refused. Jobs are deterministic in (seed, step): at equal torch thread
counts the results are the same bit for bit whichever executor ran each part.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError
from rich.console import Console

from widthwise.device import check_device
from widthwise.errors import SpecError, StoreError, UserError
from widthwise.executors import EXECUTORS, ExecutorContext, ExecutorFlags, WidthExecutor
from widthwise.executors.local import WorkerDied
from widthwise.families.module import factory_modules, trust_factory
from widthwise.job import WidthJob, build_stream, raise_if_error, run_job
from widthwise.probes.preflight import probe_problems
from widthwise.progress import StudyProgress, last_train_loss, study_progress
from widthwise.resources import check_resources, describe_resources
from widthwise.spec import (
    ExecutorSpec,
    StudySpec,
    code_in_spec,
    load_spec,
    pydantic_problems,
    refuse_code,
)
from widthwise.store.lock import busy_message, lock_holder
from widthwise.store.records import width_damage
from widthwise.store.study_dir import StudyDir

POLL_S = 0.5
"""Seconds between looks at the store while runs execute elsewhere."""

# -- planning ----------------------------------------------------------------


@dataclass(frozen=True)
class WidthPlan:
    """What a run of the study will do with one width."""

    width: int
    action: Literal["run", "resume", "repair", "skip"]
    step: int
    """Steps the width had reached (0 for a new width)."""
    holder: dict[str, Any] | None
    """The live writer of the width directory, if any."""
    damage: str = ""
    """``repair``: what its status says was logged but is missing or damaged on disk."""

    def describe(self, steps: int) -> str:
        text = {
            "skip": "skip (done)",
            "resume": f"resume from its last checkpoint ({self.step} of {steps} steps reached)",
            "repair": f"repair (done, but {self.damage}): recompute what is missing",
            "run": f"run ({steps} steps)",
        }[self.action]
        if self.holder:
            text += f"; being written by pid {self.holder.get('pid')} on {self.holder.get('host')}"
        return f"width {self.width:>5}: {text}"


def plan_widths(spec: StudySpec, study: StudyDir) -> list[WidthPlan]:
    """Skip, resume, repair or run for every width, from the study directory as it stands.

    A width whose status says done is skipped only if everything it says it logged is on
    disk intact (:func:`widthwise.store.records.width_damage`); otherwise it is repaired:
    its job recomputes what is missing (from its last checkpoint when nothing before it
    is missing, else from step 0).
    """
    plans = []
    for width in spec.widths:
        wd = study.width_dir(width)
        status = wd.read_status()
        damage = ""
        if status.get("state") == "done":
            found = width_damage(wd.path, len(spec.member_ids), status)
            damage = found.describe() if found else ""
            action: Literal["run", "resume", "repair", "skip"] = "repair" if damage else "skip"
        elif wd.has_checkpoint():
            action = "resume"
        else:
            action = "run"
        step = _int(status.get("step")) if action != "run" else 0
        plans.append(WidthPlan(width, action, step, lock_holder(wd.path), damage))
    return plans


def _int(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


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
    if isinstance(executor, ExecutorSpec):
        executor = executor.model_dump()
    if isinstance(executor, dict):  # a whole executor mapping, then the flags on it
        override = ExecutorFlags(workers=workers, address=address).apply(executor)
    elif executor is None and workers is None and address is None:
        return spec
    else:
        flags = ExecutorFlags(executor, workers, address)
        override = flags.apply(spec.executor.model_dump())
    try:
        es = ExecutorSpec.model_validate(override)
    except ValidationError as err:
        raise SpecError("; ".join(pydantic_problems(err, "executor", ExecutorSpec))) from None
    if es.name not in EXECUTORS:
        raise SpecError(
            f"executor.name: unknown executor {es.name!r}; allowed: {', '.join(EXECUTORS.names())}"
        )
    try:
        EXECUTORS.validate_options(es.name, es.options)
    except ValidationError as err:
        raise SpecError(
            "; ".join(pydantic_problems(err, "executor.options", EXECUTORS.entry(es.name).options))
        ) from None
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


# -- the study ---------------------------------------------------------------------


def run(
    spec: StudySpec | str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    device: str | None = None,
    executor: str | dict[str, Any] | ExecutorSpec | None = None,
    progress: bool = False,
    console: Console | None = None,
    allow_code: bool = False,
    trusted_imports: Sequence[str] = (),
    estimate: Callable[[str], None] | None = None,
) -> Path:
    """Run (or resume) a study; returns its directory.

    ``spec`` is a :class:`StudySpec`, a YAML path or a bundled name; ``executor``
    (a name or ``{name, options}``) replaces the spec's. Finished widths are
    skipped, unfinished ones resume from their last checkpoint, and the result
    equals one uninterrupted run. Raises :class:`~widthwise.errors.UserError` for
    bad input (before writing anything) and when a width is being written by
    another live process. When the spec names trackers, the finished study's
    scalars are mirrored to them.

    A spec that would run code (``executor.options`` ``setup``, ``runtime_env``,
    ``imports``) is refused unless ``allow_code=True`` (docs/security.md); an
    ``executor`` mapping given here, and ``trusted_imports`` (the command line's
    ``--import``), are the caller's own and always allowed. A widest width that
    cannot fit in this machine's memory is refused before anything is written.
    ``estimate``, if given, is called with one line, the estimated time of the widths
    still to run (:mod:`widthwise.cost`), before the first of them starts.
    """
    from_spec = executor is None or isinstance(executor, str)  # else the caller's own mapping
    spec = _resolve_spec(spec, out, device, executor)
    if spec.depths is not None:  # one width study per depth (widthwise.depth_study)
        from widthwise.depth_study import run_depths

        return run_depths(
            spec,
            progress=progress,
            console=console,
            allow_code=allow_code,
            trusted_imports=trusted_imports,
            estimate=estimate,
            from_spec=from_spec,
        )
    cls, options, stream = preflight(spec, allow_code, trusted_imports, from_spec=from_spec)
    probe_set: tuple[np.ndarray, np.ndarray] = stream.probe_set(spec.data.probe_points)
    study = StudyDir(spec.out_dir())
    with study.writing():  # one `widthwise run` per study directory: a second is refused
        study.prepare(spec, spec.hash(), probe_set, stream.describe())
        plans = plan_widths(spec, study)
        _refuse_busy(study, plans)
        todo = [p.width for p in plans if p.action != "skip"]
        context = ExecutorContext(study_path=study.path.absolute(), name=spec.name, runs=len(todo))
        pool = cls(options, context)
        jobs = width_jobs(spec, study, todo, pool)
        if estimate is not None and todo:
            estimate(_time_line(spec, plans, pool, stream))
        results: dict[int, dict[str, Any]] = {}
        try:
            with study_progress(progress, console) as bars:
                for p in plans:
                    if p.action == "skip":
                        wd = study.width_dir(p.width)
                        bars.finished(p.width, spec.steps, last_train_loss(wd.path))
                        results[p.width] = wd.read_status()
                if pool.in_process:  # live progress; the first failure stops the study
                    for job in jobs:
                        on_step = bars.for_width(job.width, spec.steps)
                        result = pool.submit(run_job, job, on_step).result()
                        results[job.width] = raise_if_error(result)
                elif jobs:
                    results.update(_run_elsewhere(spec, study, jobs, pool, bars))
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


def preflight(
    spec: StudySpec,
    allow_code: bool,
    trusted_imports: Sequence[str],
    *,
    from_spec: bool = True,
) -> tuple[type[WidthExecutor], Any, Any]:
    """Every check :func:`run` makes before it writes anything: code the spec would run,
    the executor, the device, the probes against the model, and whether the widest width
    fits this machine. Returns the executor class, its options and the data stream."""
    if not allow_code:  # a caller's own executor mapping: the spec's factory is still the spec's
        refuse_code(spec, trusted_imports, keys=None if from_spec else ("model.options.factory",))
    trust_factory(spec)  # checked above: a module family may import its factory
    cls, options = executor_class(spec)
    cls.preflight(options)
    if cls.same_host:  # e.g. no GPU, or bf16 on one without it: before anything is written
        check_device(spec)
    stream = build_stream(spec)
    problems = probe_problems(spec, stream)  # e.g. k > parameters: before anything is written
    if problems:
        raise SpecError(f"{spec.name}: " + "; ".join(problems))
    if cls.same_host:  # parameters × seeds × (weights, grads, optimizer state) must fit here
        check_resources(spec, stream, parallel=getattr(options, "workers", 1))
    return cls, options, stream


def width_jobs(
    spec: StudySpec, study: StudyDir, widths: Sequence[int], pool: WidthExecutor
) -> list[WidthJob]:
    """One job per width for ``pool``: plain data, the same for every executor."""
    spec_json = spec.model_dump(mode="json")
    return [
        WidthJob(
            spec=spec_json,
            width=w,
            study_path=str(study.path.absolute()),
            device=spec.device,
            threads=pool.threads_per_run(),
            imports=tuple(pool.imports()),
            trusted_factories=factory_modules(spec),  # preflight allowed them
            tune_memory=not pool.in_process,  # worker processes are widthwise's own
        )
        for w in widths
    ]


def _run_elsewhere(
    spec: StudySpec,
    study: StudyDir,
    jobs: list[WidthJob],
    pool: WidthExecutor,
    bars: StudyProgress,
) -> dict[int, dict[str, Any]]:
    """Submit the jobs to a remote executor, follow them in the store, gather results."""
    futures: list[Future] = pool.submit_runs(run_job, [(job,) for job in jobs])
    by_future = {fut: job.width for fut, job in zip(futures, jobs)}
    watchers = {w: bars.watch(w, spec.steps) for w in by_future.values()}
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
        if isinstance(err, BrokenProcessPool | WorkerDied):
            user_errors.append(StoreError(f"width {w}: {err}"))
        elif isinstance(err, UserError):
            user_errors.append(err)
        elif err is not None:
            bugs.append(err)
        else:
            try:
                results[w] = raise_if_error(fut.result())
            except UserError as refused:
                user_errors.append(refused)
    if bugs:
        raise bugs[0]
    if user_errors:
        raise user_errors[0]
    return results


def _left(spec: StudySpec, plans: Sequence[WidthPlan]) -> dict[int, float]:
    """Share of each width's steps still to run."""
    steps = max(spec.steps, 1)
    return {p.width: 0.0 if p.action == "skip" else 1 - p.step / steps for p in plans}


def _time_line(
    spec: StudySpec,
    plans: Sequence[WidthPlan],
    pool: WidthExecutor,
    stream: Any = None,
    *,
    per_width: bool = False,
) -> str:
    """The time estimate of the widths still to run (:mod:`widthwise.cost`); never raises
    (a family that cannot be counted on torch's meta device gets "no estimate")."""
    from widthwise.cost import estimate

    try:
        est = estimate(
            spec,
            threads=pool.threads_per_run(),
            parallel=getattr(pool.options, "workers", 1) or 1,
            same_host=type(pool).same_host,
            stream=stream,
            left=_left(spec, plans),
        )
    except UserError as err:  # e.g. a data file that is not there yet
        return f"time: no estimate ({err})"
    except Exception as err:  # noqa: BLE001  (an estimate never stops a run)
        return f"time: no estimate ({type(err).__name__}: {' '.join(str(err).split())[:200]})"
    return "\n".join([*(est.width_lines() if per_width else []), est.line()])


def _estimate_lines(
    spec: StudySpec,
    trusted_imports: Sequence[str],
    plans: Sequence[WidthPlan] = (),
    pool: WidthExecutor | None = None,
) -> list[str]:
    """The memory and time estimates (:mod:`widthwise.resources`, :mod:`widthwise.cost`)
    and the keys that run code."""
    try:
        lines = describe_resources(spec)
    except UserError as err:  # e.g. a data file that is not there yet
        lines = [f"memory: no estimate ({err})"]
    if pool is not None and any(p.action != "skip" for p in plans):
        lines += _time_line(spec, plans, pool, per_width=True).split("\n")
    code = code_in_spec(spec, trusted_imports)
    if code:
        lines.append("runs code (widthwise run needs --allow-code): " + "; ".join(code))
    return lines


def dry_run(
    spec: StudySpec | str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    device: str | None = None,
    executor: str | dict[str, Any] | ExecutorSpec | None = None,
    trusted_imports: Sequence[str] = (),
) -> str:
    """What :func:`run` would do, as text; nothing is written or started.

    Lists which widths would run, resume or be skipped, the executor's settings,
    each width's memory estimate, the spec keys that would run code (other than
    ``trusted_imports``; :func:`run` needs ``allow_code`` for them) and, for Slurm,
    the job script that would be submitted.
    """
    spec = _resolve_spec(spec, out, device, executor)
    if spec.depths is not None:  # one width study per depth
        parts = [dry_run(spec.at_depth(d), trusted_imports=trusted_imports) for d in spec.depths]
        head = (
            f"depth study: {spec.name} → {spec.out_dir().absolute()}, depths {spec.depths} "
            "(one width study each)"
        )
        return "\n".join([head, *(f"[depth {d}] {p}" for d, p in zip(spec.depths, parts))])
    study = StudyDir(spec.out_dir())
    if study.manifest_path.exists():
        manifest = study.read_manifest()
        if manifest["spec_hash"] != spec.hash():
            raise StoreError(study.other_spec_message(manifest, spec, spec.hash()))
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
        *_estimate_lines(spec, trusted_imports, plans, pool),
    ]
    if todo:
        argsets = [(job,) for job in width_jobs(spec, study, todo, pool)]
        text = pool.submission_text(run_job, argsets)
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
