"""The per-width status table ``widthwise show`` (and ``run``) prints."""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console
from rich.table import Table


def print_show(path: Path, console: Console) -> None:
    from widthwise.store import open_study
    from widthwise.summary import fmt_mean_std, width_summary

    ds = open_study(path)
    s = width_summary(ds)
    table = Table(
        title=f"{ds.attrs['name']} ({ds.attrs['parameterization']}, {ds.sizes['seed']} seeds)"
    )
    table.add_column("width", justify="right")
    table.add_column("status")
    if "train_loss_mean" in s:
        table.add_column("train loss", justify="right", no_wrap=True)
    if "test_loss_mean" in s:
        table.add_column("test loss", justify="right", no_wrap=True)
    if "test_error_mean" in s:
        table.add_column("test error", justify="right")
    table.add_column("diverged", justify="right")
    table.add_column("wall time", justify="right")
    table.caption = (
        "train loss: each seed's last 10 logged steps; test loss: final; mean ± std over seeds"
    )
    for i, w in enumerate(s.width.values):
        row = [str(int(w)), str(s.status.values[i])]
        if "train_loss_mean" in s:
            row.append(fmt_mean_std(float(s.train_loss_mean[i]), float(s.train_loss_std[i])))
        if "test_loss_mean" in s:
            row.append(fmt_mean_std(float(s.test_loss_mean[i]), float(s.test_loss_std[i])))
        if "test_error_mean" in s:
            row.append(f"{float(s.test_error_mean[i]):.3f}")
        row.append(f"{int(s.diverged[i])}/{ds.sizes['seed']}")
        wall = float(s.wall_time[i])
        row.append(f"{wall:.1f} s" if math.isfinite(wall) else "—")
        table.add_row(*row)
    console.print(table)
    if ds.attrs.get("skipped_records"):
        console.print(f"[yellow]skipped {ds.attrs['skipped_records']} torn or partial records[/]")
