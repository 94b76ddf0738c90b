"""The per-width status table ``widthwise show`` (and ``run``) prints.

One row per width of the study (finished or not): its state (done, running,
interrupted, failed, not started; see :func:`widthwise.summary.width_states`), final
losses, diverged members and wall time. Below the table, one line per width that
needs a word more: why it failed, who is writing it, where to resume, which members
diverged at which step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    import xarray as xr

    from widthwise.store.study_dir import StudyDir


def print_show(path: Path, console: Console) -> None:
    """Print the study at ``path``; a one-line ``StoreError`` if it is not a readable study."""
    from widthwise.store import open_study
    from widthwise.store.open import study_layout
    from widthwise.store.study_dir import StudyDir
    from widthwise.summary import fmt_mean_std, width_states, width_summary

    study = StudyDir(Path(path))
    manifest, widths, seeds = study_layout(study)
    states = width_states(path)
    ds = s = None
    if any(st.state != "not started" for st in states):
        ds = open_study(path)
        s = width_summary(ds)
    name = str(manifest.get("name", ""))
    param = ds.attrs["parameterization"] if ds is not None else _parameterization(study)
    table = Table(title=escape(f"{name} ({param}, {len(seeds)} seeds)"))
    table.add_column("width", justify="right")
    table.add_column("status")
    has = {k: s is not None and k in s for k in ("train_loss_mean", "test_loss_mean")}
    has["test_error_mean"] = s is not None and "test_error_mean" in s
    if has["train_loss_mean"]:
        table.add_column("train loss", justify="right", no_wrap=True)
    if has["test_loss_mean"]:
        table.add_column("test loss", justify="right", no_wrap=True)
    if has["test_error_mean"]:
        table.add_column("test error", justify="right")
    table.add_column("diverged", justify="right")
    table.add_column("wall time", justify="right")
    table.caption = (
        "train loss: each seed's last 10 logged steps; test loss: final; mean ± std over seeds"
    )
    present = [] if s is None else [int(w) for w in s.width.values]
    for st in states:
        row = [str(st.width), st.state]
        i = present.index(st.width) if st.width in present else None
        if has["train_loss_mean"]:
            row.append(_cell(s, "train_loss", i, fmt_mean_std))
        if has["test_loss_mean"]:
            row.append(_cell(s, "test_loss", i, fmt_mean_std))
        if has["test_error_mean"]:
            row.append(_cell(s, "test_error", i, None))
        row.append(f"{len(st.diverged)}/{len(seeds)}")
        row.append(f"{st.wall_time:.1f} s" if math.isfinite(st.wall_time) else "—")
        table.add_row(*(escape(c) for c in row))
    console.print(table)
    for st in states:
        notes = [st.describe()] if st.state not in ("done", "not started") else []
        if st.diverged:
            notes.append(st.describe_diverged(len(seeds)))
        for note in notes:
            console.print(escape(f"width {st.width}: {note}"), soft_wrap=True, highlight=False)
    if ds is not None and ds.attrs.get("skipped_records"):
        console.print(f"[yellow]skipped {ds.attrs['skipped_records']} torn or partial records[/]")
    if ds is not None:  # the consistency horizon of the loss curves, in one sentence
        from widthwise.analysis.study_horizon import horizon_summary

        horizon = horizon_summary(ds[[v for v in ("train_loss", "test_loss") if v in ds]])
        if horizon:
            console.print(escape(horizon), soft_wrap=True, highlight=False)


def _cell(
    s: xr.Dataset | None, var: str, i: int | None, fmt: Callable[[float, float], str] | None
) -> str:
    """A summary cell of row ``i`` (``—`` for a width without data)."""
    if s is None or i is None:
        return "—"
    mean = float(s[f"{var}_mean"][i])
    if fmt is None:
        return f"{mean:.3f}" if math.isfinite(mean) else "—"
    return fmt(mean, float(s[f"{var}_std"][i]))


def _parameterization(study: StudyDir) -> str:
    """The parameterization name for the title of a study without results yet."""
    try:
        p = study.read_spec_dict().get("parameterization")
    except Exception:  # noqa: BLE001  (a title only; the spec's own errors show elsewhere)
        return "?"
    return str(p.get("name", "?") if isinstance(p, dict) else p)
