"""Weights & Biases: one run per width (group: the study name) holding its scalars at
the training step, and one ``report`` run holding the report's figures as images.

Run ids are deterministic (study name + spec hash + ``w<width>``), so a second mirror
continues the same run instead of starting another:

- ``online``: the run is resumed and only steps from its ``starting_step`` on are
  logged;
- ``offline`` (the default, no network): the earlier offline copies of the run under
  ``<dir>/wandb/offline-run-*-<id>/`` are read and only later steps go into a new
  copy (none is made when nothing is new); ``wandb sync`` uploads the copies of one
  run in order of start time;
- ``disabled``: nothing is written.

The report run's id also holds a digest of the figures: the same figures are
mirrored once, a changed report makes a new report run.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from widthwise.trackers import TRACKERS
from widthwise.trackers.base import Tracker, TrackerOptions, figures_digest

BLOCK = 32768  # the .wandb transaction log: leveldb-log blocks after a 7-byte header


class WandbOptions(TrackerOptions):
    package = "wandb"
    extra = "wandb"
    path_fields = ("dir",)

    project: str | None = Field(None, description="W&B project (default: the study name)")
    entity: str | None = Field(None, description="W&B entity (user or team; default: yours)")
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline (local files, upload with `wandb sync`), online or disabled"
    )
    dir: str | None = Field(
        None,
        description="directory that holds wandb/ (default: the study dir; relative paths are relative to it)",
    )
    tags: list[str] = Field(default_factory=list, description="tags of every run")


def read_records(path: Path) -> Iterator[Any]:
    """The protobuf records (``wandb.proto.wandb_internal_pb2.Record``) of a .wandb file."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log")
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        chunk = data[pos : pos + length]
        pos += length
        if kind == 0:  # zero padding at the end of a file still being written
            break
        if kind == 1:  # full
            payload = chunk
        elif kind == 2:  # first
            pending = chunk
            continue
        elif kind == 3:  # middle
            pending += chunk
            continue
        else:  # last
            payload, pending = pending + chunk, b""
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def offline_copies(base: Path, run_id: str) -> list[Path]:
    """The .wandb files of every offline copy of ``run_id`` under ``base/wandb``, oldest
    first (directories ``offline-run-<YYYYmmdd_HHMMSS>-<id>``, plus ``-<n>`` for a copy
    started within the same second as another)."""

    def start(path: Path) -> tuple[str, int]:
        stamp, _, rest = path.parent.name.removeprefix("offline-run-").partition("-")
        suffix = rest.removeprefix(run_id).lstrip("-")
        return stamp, int(suffix) if suffix.isdigit() else 0

    found = (base / "wandb").glob(f"offline-run-*-{run_id}*/run-{run_id}.wandb")
    return sorted(found, key=start)


def last_logged_step(base: Path, run_id: str) -> int:
    """The highest history step in the offline copies of ``run_id``; -1 when none."""
    last = -1
    for path in offline_copies(base, run_id):
        for record in read_records(path):
            if record.WhichOneof("record_type") == "history":
                last = max(last, int(record.history.step.num))
    return last


@TRACKERS.register(
    "wandb",
    options=WandbOptions,
    description="Weights & Biases: a run per width, grouped by study (extra: wandb)",
)
class WandbTracker(Tracker):
    """Weights & Biases: a run per width and a report run, grouped by the study."""

    Options = WandbOptions
    options: WandbOptions

    @property
    def base(self) -> Path:
        return self.study.resolve(self.options.dir, ".")

    def _init(self, run_id: str, name: str, job_type: str, config: dict[str, Any]) -> Any:
        import wandb

        self.base.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = dict(
            project=self.options.project or self.study.name,
            entity=self.options.entity,
            mode=self.options.mode,
            dir=str(self.base),
            id=run_id,
            resume="allow",
            name=name,
            group=self.study.name,
            job_type=job_type,
            tags=self.options.tags or None,
            config=config,
            reinit="create_new",  # never finishes a run the caller has open
        )
        try:
            settings = wandb.Settings(silent=True, console="off", x_disable_stats=True)
        except Exception:  # noqa: BLE001  (older wandb: fewer settings)
            settings = wandb.Settings(silent=True)
        return wandb.init(settings=settings, **kwargs)

    def mirror_scalars(self) -> None:
        if self.options.mode == "disabled":
            return
        for ws in self.study.widths:
            run_id = self.study.run_id(f"w{ws.width}")
            rows = ws.rows()
            offline_done = last_logged_step(self.base, run_id)
            if self.options.mode == "offline" and all(s <= offline_done for s, _ in rows):
                continue  # nothing new: no new offline copy
            run = self._init(
                run_id,
                f"{self.study.name} w={ws.width}",
                "width",
                {"width": ws.width, **self.study.config},
            )
            try:
                if getattr(run, "offline", False):  # also when WANDB_MODE overrides the spec
                    start = offline_done + 1
                elif getattr(run, "resumed", False):
                    start = int(getattr(run, "starting_step", 0) or 0)
                else:
                    start = 0
                for step, values in rows:
                    if step >= start:
                        run.log(values, step=step)
                run.summary["widthwise_state"] = ws.state
            finally:
                run.finish()

    def mirror_figures(self, pngs: list[Path]) -> None:
        if self.options.mode == "disabled":
            return
        import wandb

        run_id = self.study.run_id(f"report-{figures_digest(pngs)[:8]}")
        copied = bool(offline_copies(self.base, run_id))
        if self.options.mode == "offline" and copied:
            return  # these figures are mirrored already
        run = self._init(run_id, f"{self.study.name} report", "report", self.study.config)
        try:
            there = getattr(run, "resumed", False) or (getattr(run, "offline", False) and copied)
            if not there:
                run.log(
                    {f"figures/{p.stem}": wandb.Image(str(p)) for p in pngs},
                    step=self.study.steps,
                )
        finally:
            run.finish()
