"""Plan and run a study: one run per width, each training all its seeds at once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from widthwise.errors import StoreError
from widthwise.executors import EXECUTORS
from widthwise.progress import study_progress
from widthwise.spec import StudySpec, load_spec
from widthwise.store.study_dir import StudyDir
from widthwise.streams import STREAMS, Stream
from widthwise.trainer import resolve_device, train_width


def build_stream(spec: StudySpec) -> Stream:
    return STREAMS.get(spec.data.stream)(spec.data.seed, spec.stream_options())


def run(
    spec: StudySpec | str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    device: str | None = None,
    executor: str = "local",
    progress: bool = False,
    console: Console | None = None,
) -> Path:
    """Run (or resume) a study; returns its directory.

    ``spec`` is a :class:`StudySpec`, a YAML path or a bundled name. Finished widths
    are skipped, unfinished ones resume from their last checkpoint, and the result
    equals one uninterrupted run. Raises :class:`~widthwise.errors.UserError` for bad
    input (before writing anything).
    """
    if not isinstance(spec, StudySpec):
        spec = load_spec(spec)
    if out is not None:
        spec = spec.model_copy(update={"out": str(out)})
    if device is not None:
        spec = spec.model_copy(update={"device": device})
    dev = resolve_device(spec.device)
    stream = build_stream(spec)
    probe_set: tuple[np.ndarray, np.ndarray] = stream.probe_set(spec.data.probe_points)
    study = StudyDir(spec.out_dir())
    study.prepare(spec, spec.hash(), probe_set, stream.describe())
    pool = EXECUTORS.get(executor)()
    results: list[dict[str, Any]] = []
    with study_progress(progress, console) as bars:
        for width in spec.widths:
            on_step = bars.for_width(width, spec.steps)
            fut = pool.submit(
                train_width,
                spec,
                width,
                study.width_dir(width),
                stream,
                probe_set,
                on_step=on_step,
                device=dev,
            )
            results.append(fut.result())
    pool.shutdown()
    failed = [w for w, r in zip(spec.widths, results) if r.get("state") != "done"]
    if failed:
        raise StoreError(f"widths {failed} did not finish; run the study again to resume them")
    return study.path
