"""TensorBoard: event files under ``<logdir>/width_00064/`` (scalars) and
``<logdir>/report/`` (figures as images), written with the ``tensorboard`` package
alone (no TensorFlow, no torch).

Each mirror rewrites a run directory's event file: the new file is written under a
temporary name, renamed into place, and only then are the older event files of that
directory removed, so a mirror never duplicates a value and a failed one leaves the
previous mirror in place.
"""

from __future__ import annotations

import os
import struct
import time
import uuid
from pathlib import Path

from pydantic import Field

from widthwise.store.study_dir import width_dirname
from widthwise.trackers import TRACKERS
from widthwise.trackers.base import Tracker, TrackerOptions

EVENTS_PREFIX = "events.out.tfevents."


class TensorboardOptions(TrackerOptions):
    package = "tensorboard"
    extra = "tensorboard"
    path_fields = ("logdir",)

    logdir: str | None = Field(
        None,
        description="event file directory (default: tensorboard/ in the study dir; relative to it)",
    )


def _png_facts(data: bytes) -> tuple[int, int, int]:
    """(height, width, channels) from a PNG's IHDR chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(data[25], 4)
    return height, width, channels


def _write_events(run_dir: Path, events: list) -> None:
    """Replace ``run_dir``'s event files by one holding ``events`` (atomically)."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    run_dir.mkdir(parents=True, exist_ok=True)
    old = [p for p in run_dir.iterdir() if p.name.startswith(EVENTS_PREFIX)]
    now = time.time()
    final = (
        run_dir / f"{EVENTS_PREFIX}{int(now):010d}.widthwise.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    )
    tmp = run_dir / f".tmp-{final.name}"
    try:
        with open(tmp, "wb") as f:
            writer = RecordWriter(f)
            header = event_pb2.Event(wall_time=now, file_version="brain.Event:2")
            writer.write(header.SerializeToString())
            for event in events:
                writer.write(event.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    for p in old:
        p.unlink(missing_ok=True)


@TRACKERS.register(
    "tensorboard",
    options=TensorboardOptions,
    description="TensorBoard event files, a run directory per width (extra: tensorboard)",
)
class TensorboardTracker(Tracker):
    """TensorBoard event files: one run directory per width, plus ``report`` for figures."""

    Options = TensorboardOptions
    options: TensorboardOptions

    @property
    def logdir(self) -> Path:
        logdir = self.study.resolve(self.options.logdir, "tensorboard")
        if logdir.resolve() == self.study.path:  # its run dirs would be the study's own
            raise ValueError("logdir must not be the study directory itself")
        return logdir

    def mirror_scalars(self) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        now = time.time()
        for ws in self.study.widths:
            events = [
                event_pb2.Event(
                    wall_time=now,
                    step=step,
                    summary=summary_pb2.Summary(
                        value=[
                            summary_pb2.Summary.Value(tag=key, simple_value=value)
                            for key, value in values.items()
                        ]
                    ),
                )
                for step, values in ws.rows()
            ]
            _write_events(self.logdir / width_dirname(ws.width), events)

    def mirror_figures(self, pngs: list[Path]) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        values = []
        for p in pngs:
            data = p.read_bytes()
            height, width, channels = _png_facts(data)
            image = summary_pb2.Summary.Image(
                height=height, width=width, colorspace=channels, encoded_image_string=data
            )
            values.append(summary_pb2.Summary.Value(tag=f"figures/{p.stem}", image=image))
        event = event_pb2.Event(
            wall_time=time.time(), step=self.study.steps, summary=summary_pb2.Summary(value=values)
        )
        _write_events(self.logdir / "report", [event])
