"""Per-width summary of a study: final losses (the table ``widthwise show`` prints) and
each width's run state (done, running, interrupted, failed, damaged, not started)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import xarray as xr

    from widthwise.store.records import Damage, WidthRecords
    from widthwise.store.study_dir import StudyDir

FINAL_WINDOW = 10  # train loss: mean of each seed's last logged steps (minibatch noise)

STATES = ("done", "running", "interrupted", "failed", "damaged", "not started", "unknown")
"""What :func:`width_states` reports for a width."""


def width_summary(ds: xr.Dataset) -> xr.Dataset:
    """Final losses per width: mean and std over live seeds.

    Returns a Dataset over ``width`` with ``train_loss_mean/std`` (each seed's mean
    over its last ``FINAL_WINDOW`` logged steps), ``test_loss_mean/std`` (at the
    last test step), ``diverged`` (member count), ``status`` and ``wall_time``.
    """
    import xarray as xr  # here, not at the top: ``widthwise show`` reads states without it

    out = xr.Dataset(coords={"width": ds.width})
    if "train_loss" in ds:
        tail = ds.train_loss.isel(step=slice(-FINAL_WINDOW, None)).mean("step", skipna=False)
        out["train_loss_mean"] = tail.mean("seed")
        out["train_loss_std"] = tail.std("seed")
    if "test_loss" in ds:
        last = ds.test_loss.isel(test_step=-1)
        out["test_loss_mean"] = last.mean("seed")
        out["test_loss_std"] = last.std("seed")
    if "test_error" in ds:
        out["test_error_mean"] = ds.test_error.isel(test_step=-1).mean("seed")
    out["diverged"] = (ds.diverged_step >= 0).sum("seed")
    out["status"] = ds.status
    out["wall_time"] = ds.wall_time
    return out


def fmt_mean_std(mean: float, std: float) -> str:
    """``0.123 ± 0.01``; ``—`` for a missing (NaN) mean."""
    if not np.isfinite(mean):
        return "—"
    return f"{mean:.3g} ± {std:.1g}" if np.isfinite(std) else f"{mean:.3g}"


@dataclass
class WidthState:
    """Where one width's run stands.

    ``state`` is one of :data:`STATES`: ``running`` when a live process holds the
    width's writer lock (``holder``: its pid, host and start time); ``interrupted``
    when the status says running but no live writer holds the lock (the process
    was killed: ``widthwise run`` resumes it); ``failed`` with ``reason`` (the
    status's ``error``); ``damaged`` when records its status says were logged are
    missing or damaged on disk (``damage`` says which; ``recorded`` is the state the
    status records: a damaged width is never a clean ``done``); ``unknown`` when the
    directory exists without a usable status (``reason``: missing, unreadable, a checksum
    mismatch, another width's). ``diverged`` maps seed id to the step at which that
    member diverged.
    """

    width: int
    state: str
    step: int | None = None
    steps: int | None = None
    reason: str = ""
    holder: dict[str, Any] | None = None
    diverged: dict[int, int] = field(default_factory=dict)
    wall_time: float = float("nan")
    damage: Damage | None = None
    recorded: str = ""

    def describe(self) -> str:
        """One line for people: the state and what it means, e.g. ``failed: <reason>``."""
        at = f" at step {self.step}/{self.steps}" if self.step is not None and self.steps else ""
        if self.state == "running":
            h = self.holder or {}
            host = "" if h.get("host") in (None, socket.gethostname()) else f" on {h['host']}"
            since = f" since {h['since']}" if h.get("since") else ""
            return f"running{at} (pid {h.get('pid')}{host}{since})"
        if self.state == "interrupted":
            return f"interrupted{at}: no live writer; resume with `widthwise run`"
        if self.state == "failed":
            return f"failed{at}: {self.reason or 'no reason recorded'}"
        if self.state == "damaged":
            what = self.damage.describe() if self.damage else "records missing"
            return (
                f"damaged: {what} (status.json says {self.recorded}{at}); "
                "`widthwise run` recomputes what is missing"
            )
        if self.state == "unknown":
            why = f" ({self.reason})" if self.reason else ""
            return f"unknown: the directory has no readable status.json{why}"
        return self.state

    def describe_diverged(
        self, n_seeds: int, label: Callable[[int], str] = lambda s: f"seed {s}"
    ) -> str:
        """``1/4 diverged: seed 2 at step 13``; empty when no member diverged. ``label``
        names a member by its id (``lr=3 seed 0`` in a sweep)."""
        if not self.diverged:
            return ""
        at = ", ".join(f"{label(s)} at step {t}" for s, t in sorted(self.diverged.items()))
        return f"{len(self.diverged)}/{n_seeds} diverged: {at}"


def width_states(path: str | Path) -> list[WidthState]:
    """The state of every width of the study at ``path`` (the manifest's widths, in order).

    Reads only ``status.json`` files and lock files, so it works on a study whose
    arrays are torn or partial, and while another process writes it. ``open_study``'s
    ``status`` variable and the report's banner come from :func:`width_state` too, so
    ``widthwise show``, the Dataset and the report always say the same word.
    """
    from widthwise.store.open import study_layout
    from widthwise.store.study_dir import StudyDir

    study = StudyDir(Path(path))
    _, widths, seeds = study_layout(study)
    return [width_state(study, width, seeds) for width in widths]


def width_state(
    study: StudyDir, width: int, seeds: list[int], records: WidthRecords | None = None
) -> WidthState:
    """Where width ``width`` of ``study`` stands (its status and lock files, and what is on
    disk: :func:`widthwise.store.records.find_damage`; ``records``: already read).

    ``running``: a live process holds the writer lock; ``interrupted``: the status says
    running without a live writer; ``failed`` (with the status's ``error`` as reason);
    ``damaged``: records the status says were logged are missing or damaged;
    ``not started`` (no directory); ``unknown`` (no usable status); else ``done``.
    """
    return width_state_at(study.path, width, seeds, records)


def width_state_at(
    study_path: str | Path, width: int, seeds: list[int], records: WidthRecords | None = None
) -> WidthState:
    """:func:`width_state` of the study directory at ``study_path``; reads it without
    importing torch or xarray (``widthwise show``)."""
    from widthwise.store.lock import lock_holder
    from widthwise.store.records import read_status, status_values, width_damage

    wd_path = Path(study_path) / f"width_{width:05d}"
    if not wd_path.is_dir():
        return WidthState(width, "not started")
    status, problem = read_status(wd_path, width)
    state, wall, div = status_values(status, len(seeds))
    holder = lock_holder(wd_path)
    step, steps = status.get("step"), status.get("steps")
    ws = WidthState(
        width,
        state,
        step=step if type(step) is int else None,
        steps=steps if type(steps) is int else None,
        holder=holder,
        diverged={s: t for s, t in zip(seeds, div) if t >= 0},
        wall_time=wall,
    )
    if holder is not None:
        ws.state = "running"
    elif state == "running":
        ws.state = "interrupted"
    elif state == "failed":
        error = status.get("error")
        ws.reason = " ".join(str(error).split()) if error else ""
    elif state not in STATES or state in ("damaged", "not started"):
        ws.state = "unknown"
    if ws.state == "unknown":
        ws.reason = problem if problem not in ("", "missing") else ws.reason
    if ws.state in ("done", "interrupted", "failed"):
        damage = width_damage(wd_path, len(seeds), status, records)
        if damage:
            ws.recorded, ws.state, ws.damage = ws.state, "damaged", damage
    return ws
