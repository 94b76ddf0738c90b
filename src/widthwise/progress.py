"""A rich progress bar per width: step, loss (mean over live seeds), ETA."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from widthwise.trainer import ProgressFn


class StudyProgress:
    """Hands out one ``on_step(step, total, loss)`` callback per width."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress

    def for_width(self, width: int, total: int) -> ProgressFn | None:
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


@contextmanager
def study_progress(enabled: bool, console: Console | None = None) -> Iterator[StudyProgress]:
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
