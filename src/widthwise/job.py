"""One width run, one job: train (or resume) all seeds of one width, top to bottom.

A :class:`WidthJob` is plain data (the spec as JSON, the width, the study directory,
the device, torch threads, plug-in modules): every executor ships it as it is, and
:func:`run_job` is the one function that runs it — in this process for ``local``, in
a worker process, a Ray task or a Slurm array task for the others. It reads top to
bottom:

1. import the plug-ins, validate the spec, check the study is the spec's;
2. a finished width is returned untouched; otherwise resolve the device (once),
   rebuild the data stream and probe set (deterministic in (seed, step));
3. take the width's writer lock (``store/lock.py``), switch deterministic mode on if
   asked, build the :class:`~widthwise.trainer.EnsembleTrainer` and restore the last
   checkpoint, refusing one whose parameterization rules are not this spec's;
4. the loop: checkpoint when due, probes on the network at step t, update t, probes
   of update t (``train_loss``), progress; then the final probes and checkpoint;
5. a failure (disk full, a non-deterministic op, Ctrl-C) is recorded in the width's
   status with its reason before it propagates.

User-facing errors come back as ``{"state": "error", "error": ..., "error_type": ...}``
so that every engine delivers them intact; other exceptions propagate.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from widthwise import __version__
from widthwise.device import (
    check_precision,
    deterministic_mode,
    narrow_width_guard,
    nondeterministic_op,
    resolve_device,
    torch_threads,
)
from widthwise.errors import SpecError, StoreError, UserError
from widthwise.memory import keep_freed_memory
from widthwise.probes import PROBES, ProbeContext, ProbeDef
from widthwise.progress import ProgressFn
from widthwise.schedule import Schedule
from widthwise.spec import StudySpec
from widthwise.store.lock import writer_lock
from widthwise.store.records import Damage, expected_records, width_damage
from widthwise.store.study_dir import StudyDir
from widthwise.store.width_dir import WidthDir
from widthwise.streams import STREAMS, Stream
from widthwise.trainer import EnsembleTrainer

ERROR_TYPES: dict[str, type[UserError]] = {
    "StoreError": StoreError,
    "SpecError": SpecError,
    "UserError": UserError,
}
"""The user-facing errors a job reports by name (``{"error_type": ...}``)."""


@dataclass(frozen=True)
class WidthJob:
    """One width of a study, as plain data an executor can ship anywhere."""

    spec: dict[str, Any]
    """The validated spec, ``StudySpec.model_dump(mode="json")``."""
    width: int
    study_path: str
    """Absolute study directory (shared by every worker)."""
    device: str = "auto"
    """Resolved by the job, on the machine that runs it."""
    threads: int | None = None
    """torch intra-op threads during the job (None: leave the process's setting)."""
    imports: tuple[str, ...] = ()
    """Modules to import first (they register the spec's own families, streams, probes)."""
    trusted_factories: tuple[str, ...] = ()
    """Factory modules of a module family the caller allowed to import (``--allow-code``
    or ``--import``, checked before the jobs were made): the job imports them first, as
    a worker process does not inherit the caller's imports (docs/security.md)."""
    tune_memory: bool = False
    """Tune glibc malloc for CPU ensembles (:mod:`widthwise.memory`): worker processes
    widthwise started only, never a user's own process."""


def build_stream(spec: StudySpec) -> Stream:
    """The study's data stream (deterministic in (data seed, step))."""
    return STREAMS.get(spec.data.stream)(spec.data.seed, spec.stream_options())


def run_job(job: WidthJob, on_step: ProgressFn | None = None) -> dict[str, Any]:
    """Train (or resume, or return if done) one width; returns its final status.

    ``on_step(step, total, loss)`` follows every update (in-process runs only). A
    user-facing error returns ``{"state": "error", "error": ..., "error_type": ...}``.
    """
    try:
        for module in job.imports:
            importlib.import_module(module)
        if job.trusted_factories:
            from widthwise.families.module import trust_factory_modules

            trust_factory_modules(job.trusted_factories)
        if job.tune_memory:
            keep_freed_memory()
        with torch_threads(job.threads):
            return _run(job, on_step)
    except UserError as err:  # by the name of the nearest class the engines know
        name = next((n for n, cls in ERROR_TYPES.items() if isinstance(err, cls)), "UserError")
        return {"state": "error", "error": str(err), "error_type": name}


def raise_if_error(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` of :func:`run_job`, or the user-facing error it reports, raised."""
    if result.get("state") == "error":
        raise ERROR_TYPES.get(result.get("error_type", ""), UserError)(result["error"])
    return result


def _run(job: WidthJob, on_step: ProgressFn | None) -> dict[str, Any]:
    spec = StudySpec.model_validate(job.spec)
    study = StudyDir(Path(job.study_path))
    manifest = study.read_manifest()
    if manifest["spec_hash"] != spec.hash():
        raise StoreError(
            f"{study.path}: holds a study made by another spec (hash "
            f"{manifest['spec_hash']} != {spec.hash()}); this job is stale"
        )
    width_dir = study.width_dir(job.width)
    n_seeds = len(spec.member_ids)
    status = width_dir.read_status()
    damage = _done_damage(width_dir, status, n_seeds)
    if status.get("state") == "done" and not damage:  # before locking: nothing is touched
        return status
    device = resolve_device(job.device)
    check_precision(spec, device)
    with (
        writer_lock(width_dir.path),
        deterministic_mode(spec.deterministic, device),
        narrow_width_guard(job.width, device),  # probes too: a oneDNN bug at widths < 8
    ):
        again = width_dir.read_status()
        if again != status:  # written by another writer meanwhile
            status, damage = again, _done_damage(width_dir, again, n_seeds)
            if status.get("state") == "done" and not damage:
                return status
        notes = []
        if damage:  # done, but something it logged is missing or damaged: repair it
            notes.append(f"done, but {damage.describe()}")
        problem = width_dir.status_problem()
        if problem not in ("", "missing") and width_dir.has_checkpoint():
            notes.append(f"status.json {problem}")  # resumed from the checkpoint below
        stream = build_stream(spec)
        _check_stream(stream, manifest, study.path)
        trainer, wall_before, logged, restored = _restore(
            spec, job.width, stream, device, width_dir
        )
        if notes and not restored:  # nothing before the checkpoint is missing
            restored = [f"recomputing from step {trainer.step}"]
        notes += restored
        if notes:  # a recovery is never silent: one line says what happened
            print(f"widthwise: width {job.width}: " + "; ".join(notes), file=sys.stderr)
        if trainer.step > 0 and isinstance(logged, dict):  # what was written before it
            for probe, kinds in logged.items():
                if isinstance(kinds, list):
                    width_dir.kinds.setdefault(str(probe), set()).update(map(str, kinds))
        return _train(trainer, width_dir, on_step, wall_before)


def _done_damage(width_dir: WidthDir, status: dict[str, Any], n_seeds: int) -> Damage | None:
    """What a done width's status says it logged but is not on disk intact (None: not
    done, or a status that does not say; a false Damage: intact)."""
    if status.get("state") != "done":
        return None
    return width_damage(width_dir.path, n_seeds, status)


def _train(
    trainer: EnsembleTrainer,
    width_dir: WidthDir,
    on_step: ProgressFn | None,
    wall_before: float,
) -> dict[str, Any]:
    """The training loop of one width, from ``trainer.step`` to the spec's last step."""
    spec = trainer.spec
    probes = _scheduled_probes(spec)
    probe_x, probe_y = trainer.to_tensors(*trainer.stream.probe_set(spec.data.probe_points))
    clock = _Clock(wall_before)
    resumed_at = trainer.step
    try:
        width_dir.open_for_writing(resume_at=resumed_at)  # drops what came after the checkpoint
    except OSError as err:
        width_dir.close()
        raise StoreError(f"out: cannot write {width_dir.path}: {err.strerror or err}") from None
    width_dir.checkpoint_step = resumed_at  # everything before it is on disk (checked)
    try:
        width_dir.write_status(**_status(trainer, width_dir, "running", clock()))
        while trainer.step < spec.steps:
            t = trainer.step
            if t != resumed_at and t % spec.checkpoint_every == 0:
                width_dir.save_checkpoint(_checkpoint(trainer, width_dir, clock()))
                width_dir.write_status(**_status(trainer, width_dir, "running", clock()))
            context = probe_context(trainer, t, probe_x, probe_y)
            _run_probes(width_dir, probes, context, after_update=False)  # the network at t
            losses = trainer.train_step()  # update t: (seed,) loss before it
            context.losses = losses
            _run_probes(width_dir, probes, context, after_update=True)  # update t itself
            if on_step is not None:
                live = losses[torch.isfinite(losses)]
                on_step(t + 1, spec.steps, float(live.mean()) if live.numel() else math.nan)
        _run_probes(
            width_dir,
            probes,
            probe_context(trainer, spec.steps, probe_x, probe_y),
            after_update=False,
        )
        width_dir.save_checkpoint(_checkpoint(trainer, width_dir, clock()))
        final = _status(trainer, width_dir, "done", clock())
        width_dir.write_status(**final)
        return final
    except BaseException as err:
        translated = _failed(err, trainer, width_dir, clock())
        if translated is err:
            raise
        raise translated from None
    finally:
        width_dir.close()


# -- probes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ScheduledProbe:
    name: str
    definition: ProbeDef
    options: Schedule
    steps: frozenset[int]


def _scheduled_probes(spec: StudySpec) -> list[_ScheduledProbe]:
    """Every probe of the spec with the steps it runs at (its ProbeDef says whether the
    end, where no update is taken, is one of them)."""
    out = []
    for name, options in spec.probe_options().items():
        pdef = PROBES.get(name)
        steps = options.resolve(spec.steps, include_end=pdef.include_end)
        out.append(_ScheduledProbe(name, pdef, options, frozenset(steps)))
    return out


def probe_context(
    trainer: EnsembleTrainer, step: int, probe_x: torch.Tensor, probe_y: torch.Tensor
) -> ProbeContext:
    """What the probes see of ``trainer`` at ``step`` (also used by benchmarks/gpu.py)."""
    spec = trainer.spec
    return ProbeContext(
        step=step,
        ensemble=trainer.ensemble,
        params=trainer.params,
        probe_x=probe_x,
        probe_y=probe_y,
        alive=trainer.alive,
        stream=trainer.stream,
        lr=spec.optimizer.lr * trainer.lr_factor(min(step, spec.steps - 1)),
        optimizer=trainer.optimizer,
    )


def _run_probes(
    width_dir: WidthDir,
    probes: Sequence[_ScheduledProbe],
    context: ProbeContext,
    *,
    after_update: bool,
) -> None:
    for p in probes:
        if p.definition.after_update == after_update and context.step in p.steps:
            width_dir.write_probe(p.name, context.step, p.definition.fn(context, p.options))


# -- checkpoints and status ----------------------------------------------------------------


class _Clock:
    """Wall time of the width: before this run (from the checkpoint) plus this run's."""

    def __init__(self, before: float) -> None:
        self.before = before
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return self.before + time.perf_counter() - self.start


def _checkpoint(trainer: EnsembleTrainer, width_dir: WidthDir, wall_time: float) -> dict[str, Any]:
    return {
        **trainer.state_dict(),
        "width": trainer.width,
        "wall_time": wall_time,
        "widthwise_version": __version__,
        "logged": {p: sorted(k) for p, k in sorted(width_dir.kinds.items())},
    }


def _status(
    trainer: EnsembleTrainer, width_dir: WidthDir, state: str, wall_time: float, **extra: Any
) -> dict[str, Any]:
    """The width's ``status.json``: where it stands and what it has logged (``records``:
    per probe and kind, the records at the steps before ``checkpoint_step``, or at every
    step once done), so readers can tell a complete width from a damaged one."""
    before = None if state == "done" else width_dir.checkpoint_step or 0
    schedules = {p.name: p.steps for p in _scheduled_probes(trainer.spec)}
    return {
        "state": state,
        "width": trainer.width,
        "step": trainer.step,
        "steps": trainer.spec.steps,
        "checkpoint_step": trainer.spec.steps if before is None else before,
        "records": expected_records(schedules, width_dir.kinds, before),
        "wall_time": wall_time,
        "diverged_step": trainer.diverged_step.tolist(),
        "strategy": trainer.ensemble.strategy,
        "device": str(trainer.device),
        **extra,
    }


class RulesDiffer(StoreError):
    """A checkpoint whose parameterization rules are not this spec's (never recovered)."""


def _check_stream(stream: Stream, manifest: dict[str, Any], study_path: Path) -> None:
    """The data must be the data the study started with (e.g. files replaced between an
    interrupt and its resume would mix old and new batches)."""
    then = (manifest.get("stream") or {}).get("fingerprint")
    now = stream.describe().get("fingerprint")
    if then is not None and now is not None and then != now:
        raise StoreError(
            f"data: the stream's files changed since {study_path} was started (fingerprint "
            f"{then} then, {now} now); restore the original files or start a new study"
        )


def _restore(
    spec: StudySpec, width: int, stream: Stream, device: torch.device, width_dir: WidthDir
) -> tuple[EnsembleTrainer, float, Any, list[str]]:
    """A trainer restored from the newest good checkpoint: (trainer, wall time, what the
    checkpoint says was logged before it, notes).

    Read-only. A damaged or unusable ``checkpoint.pt`` falls back to
    ``checkpoint.prev.pt``, and where neither can be used, or the data logged before
    the checkpoint is damaged or missing (a resume must leave no hole), the width
    restarts from step 0 (the initialization is deterministic, so this recomputes
    everything exactly); each such recovery is one line in ``notes``. A checkpoint
    whose parameterization rules differ from this spec's is refused, never recovered
    from (:class:`RulesDiffer`).
    """
    notes: list[str] = []
    for path in width_dir.checkpoint_paths():
        trainer = EnsembleTrainer(spec, width, stream, device)
        try:
            state = width_dir.load_checkpoint(path)
            assert state is not None
            wall = _load_state(trainer, state, path)
        except RulesDiffer:
            raise
        except StoreError as err:
            notes.append(f"{err}".split("; delete it")[0])
            continue
        hole = _hole(width_dir, spec, trainer.step, state.get("logged"))
        if hole is None:
            if notes:
                notes.append(f"resumed from {path.name} at step {trainer.step}")
            return trainer, wall, state.get("logged"), notes
        notes.append(f"{hole}; the checkpoint at step {trainer.step} cannot be resumed")
        break  # an older checkpoint has the same hole: recompute from the start
    if notes:
        notes.append("restarting this width from step 0 (the results will be recomputed)")
    return EnsembleTrainer(spec, width, stream, device), 0.0, None, notes


def _load_state(trainer: EnsembleTrainer, state: dict[str, Any], path: Path) -> float:
    """Load ``state`` into ``trainer``, checked; returns its wall time."""
    step = state.get("step")
    if isinstance(step, torch.Tensor) and step.numel() == 1 and not step.is_floating_point():
        step = int(step)
    if not isinstance(step, int) or isinstance(step, bool):
        raise StoreError(f"{path}: step {step!r} is not a whole number; delete it to restart")
    alive = state.get("alive")
    if isinstance(alive, torch.Tensor) and alive.shape != trainer.alive.shape:
        raise StoreError(
            f"{path}: alive mask has {alive.numel()} entries for {trainer.alive.numel()} seeds; "
            "delete it to restart"
        )
    try:
        trainer.load_state_dict(state)
        wall = float(state.get("wall_time", 0.0))
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as err:
        raise StoreError(
            f"{path}: not a checkpoint of width {trainer.width} of this "
            f"study ({type(err).__name__}: {_one_line(err, 80)}); delete it to restart this width"
        ) from None
    owner = state.get("width")
    if owner is not None and owner != trainer.width:  # a checkpoint copied from another width
        raise StoreError(
            f"{path}: not a checkpoint of width {trainer.width} (it is width {owner!r}'s); "
            "delete it to restart"
        )
    if not 0 <= trainer.step <= trainer.spec.steps:
        raise StoreError(
            f"{path}: step {trainer.step} is outside this study's "
            f"0..{trainer.spec.steps}; delete it to restart this width"
        )
    for name, p in trainer.params.items():
        if not bool(torch.isfinite(p.detach()[trainer.alive]).all()):
            raise StoreError(
                f"{path}: tensor {name!r} of a live member is not finite; delete it to restart"
            )
    _check_rules(state, trainer, path)
    return wall


def _hole(width_dir: WidthDir, spec: StudySpec, step: int, logged: Any) -> str | None:
    """What is missing from the data logged before ``step`` (None: nothing).

    ``logged`` ({probe: ["scalars", "arrays"]}, recorded in the checkpoint) says what
    each probe wrote; every scheduled step before ``step`` must be on disk intact.
    """
    if step == 0:
        return None
    on_disk = width_dir.logged_steps(len(spec.seed_list))  # read as open_study reads them
    missing = []
    for p in _scheduled_probes(spec):
        kinds = set(logged.get(p.name, [])) if isinstance(logged, dict) else {"scalars"}
        if not isinstance(logged, dict) and p.name != "train_loss":
            continue  # an older checkpoint does not say what the probe wrote
        expected = {t for t in p.steps if t < step}
        for kind in sorted(kinds & {"scalars", "arrays"}):
            have = on_disk.get(p.name, {}).get(kind, set())
            lost = sorted(expected - have)
            if lost:
                where = "scalars.jsonl" if kind == "scalars" else f"arrays/{p.name}/"
                missing.append(f"{p.name} steps {_steps_text(lost)} ({where})")
        if "coords" in kinds and not on_disk.get(p.name, {}).get("coords"):
            missing.append(f"{p.name} coordinates (arrays/{p.name}/coords.json)")
    return (
        "logged data before the checkpoint is damaged or missing: " + ", ".join(missing)
        if missing
        else None
    )


def _steps_text(steps: list[int]) -> str:
    return ", ".join(map(str, steps[:5])) + (
        f" and {len(steps) - 5} more" if len(steps) > 5 else ""
    )


def _check_rules(state: dict[str, Any], trainer: EnsembleTrainer, path: Path) -> None:
    saved = state.get("rules")
    if not isinstance(saved, dict):
        return  # not a checkpoint at all: load_state_dict names what is missing
    version = state.get("widthwise_version")
    across = (
        f" (written by widthwise {version}, this is {__version__})"
        if version is not None and version != __version__
        else ""
    )
    current = {k: r.as_dict() for k, r in trainer.rules.items()}
    for name in sorted(set(saved) | set(current)):
        if name not in saved or name not in current:
            where = "the checkpoint" if name not in saved else "this spec's model"
            raise RulesDiffer(
                f"{path}: tensor {name!r} is missing from {where}{across}; the checkpoint "
                "belongs to another model: delete it to restart this width"
            )
        for key, now in current[name].items():
            then = saved[name].get(key) if isinstance(saved[name], dict) else None
            if not isinstance(then, int | float) or not math.isclose(
                float(then), now, rel_tol=1e-12, abs_tol=0.0
            ):
                raise RulesDiffer(
                    f"{path}: the rule of tensor {name!r} differs: {key} {then!r} in the "
                    f"checkpoint, {now!r} for this spec{across}; resuming would train "
                    "another network: delete the checkpoint to restart this width"
                )


def _failed(
    err: BaseException, trainer: EnsembleTrainer, width_dir: WidthDir, wall_time: float
) -> BaseException:
    """Record ``failed`` (``interrupted`` for Ctrl-C and SIGTERM) and its reason in the
    width's status (where it can still be written); returns the exception to raise: a one-line user error where the cause
    is the user's setting or machine, the original otherwise."""
    out: BaseException = err
    if isinstance(err, OSError):
        where, what = err.filename or width_dir.path, err.strerror or str(err)
        reason = f"write failed: {what} ({where})"
        out = StoreError(
            f"out: writing {where} failed: {what}; what was written before is kept "
            "(widthwise show lists it) and `widthwise run` resumes from the last checkpoint"
        )
    elif nondeterministic_op(err):
        first = _one_line(str(err).split(". ")[0], 200)
        reason = f"deterministic: {first}"
        out = UserError(
            f"deterministic: {first}; this run needs an operation without a deterministic "
            f"implementation on {trainer.device.type} (allowed: deterministic: false)"
        )
    elif isinstance(err, KeyboardInterrupt):
        reason = "interrupted (Ctrl-C or a stop request); run the study again to resume"
    else:
        reason = f"{type(err).__name__}: {err}"
    state = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
    with contextlib.suppress(OSError):
        width_dir.write_status(
            **_status(trainer, width_dir, state, wall_time, error=_one_line(reason))
        )
    return out


def _one_line(text: object, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
