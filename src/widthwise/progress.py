"""A rich progress bar per width: step, loss (mean over live seeds), ETA.

In-process runs (``local``) update their bar every few steps through an
``on_step`` callback; runs in other processes or on other machines are followed
coarsely from the store (the step of the last checkpoint in ``status.json`` and
the last logged training loss). Widths finished before the run show full bars.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from widthwise.store.width_dir import WidthDir

ProgressFn = Callable[[int, int, float], None]
"""``on_step(step, total, loss)``: a run in this process took ``step`` of ``total`` updates."""

WatchFn = Callable[[int, float, str], None]
"""``watch(step, loss, state)``: coarse update of a width run elsewhere."""


def last_train_loss(width_dir: str | os.PathLike[str]) -> float:
    """Mean over live seeds of the last logged ``train_loss`` of a width (NaN if none).

    Reads only the end of the width's scalar log, so polling it is cheap.
    """
    last = WidthDir(Path(width_dir)).last_scalar("train_loss", "train_loss")
    live = [v for v in (last[1] if last else []) if math.isfinite(v)]
    return sum(live) / len(live) if live else float("nan")


class StudyProgress:
    """Hands out one progress bar per width (no-ops when progress is off)."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress

    def for_width(self, width: int, total: int) -> ProgressFn | None:
        """An ``on_step(step, total, loss)`` callback for a run in this process."""
        if self._progress is None:
            return None
        bar = self._progress
        task = bar.add_task(f"width {width:>5}", total=total, loss=float("nan"))
        # update the bar at most ~50 times per width: cheap and still smooth
        every = max(total // 50, 1)

        def on_step(step: int, total: int, loss: float) -> None:
            if step % every == 0 or step == total:
                bar.update(task, completed=step, loss=loss)

        return on_step

    def finished(self, width: int, total: int, loss: float = float("nan")) -> None:
        """A full bar for a width that was already done."""
        if self._progress is not None:
            self._progress.add_task(
                f"width {width:>5} (done)", total=total, completed=total, loss=loss
            )

    def watch(self, width: int, total: int) -> WatchFn | None:
        """A ``watch(step, loss, state)`` callback for a run elsewhere."""
        if self._progress is None:
            return None
        bar = self._progress
        task = bar.add_task(f"width {width:>5} (queued)", total=total, loss=float("nan"))

        def watch(step: int, loss: float, state: str) -> None:
            bar.update(task, completed=step, loss=loss, description=f"width {width:>5} ({state})")

        return watch


@contextmanager
def study_progress(enabled: bool, console: Console | None = None) -> Iterator[StudyProgress]:
    """Progress bars on ``console`` (stderr by default) while the block runs."""
    if not enabled:
        yield StudyProgress(None)
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4g}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console or Console(stderr=True)) as bar:
        yield StudyProgress(bar)
