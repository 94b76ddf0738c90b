"""One width's directory: scalar log, per-step arrays, checkpoint and status."""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from widthwise.errors import StoreError
from widthwise.probes.base import ProbeResult
from widthwise.store import records as rec
from widthwise.store.files import (
    TMP_PREFIX,
    LineLog,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_npz,
    encode_line,
    read_lines,
    read_tail_lines,
)

PROBE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
"""Probe names become directory names (``arrays/<probe>/``): no separators, no ``..``."""


def check_probe_name(probe: str) -> str:
    """``probe`` if it is a safe directory name, else :class:`StoreError` (a plug-in bug)."""
    if not isinstance(probe, str) or not PROBE_NAME.match(probe) or len(probe) > 100:
        raise StoreError(
            f"probes: {probe!r} cannot name a directory under arrays/ "
            "(allowed: letters, digits, _ . -, starting with a letter or digit)"
        )
    return probe


class WidthDir:
    """Files of one width (all its seeds).

    Layout::

        width_00064/
          status.json            state (running/done/failed), step, wall time, diverged,
                                 what was logged (``records``), its width, its CRC-32
          scalars.jsonl          {"probe", "step", "vars": {name: [per seed]}, "width",
                                 "crc32"} per line
          arrays/<probe>/dims.json          {var: [dim, ...]} (first dim "seed")
          arrays/<probe>/coords.json        coordinates recorded at run time
          arrays/<probe>/<step:09d>.npz     one atomic file per logged step (+ ``_stamp``)
          checkpoint.pt          atomic, loaded with weights_only=True, CRCs verified
          checkpoint.prev.pt     the checkpoint before it (a damaged one falls back here)

    ``width`` (default: read from the directory name) is stamped into what is written
    and checked on read (:mod:`widthwise.store.records`), so a file moved from another
    width is never read as this one's.
    """

    def __init__(self, path: Path, width: int | None = None) -> None:
        self.path = Path(path)
        self.width = rec.width_of_dir(self.path) if width is None else width
        self.scalars_path = self.path / "scalars.jsonl"
        self.arrays_dir = self.path / "arrays"
        self.checkpoint_path = self.path / "checkpoint.pt"
        self.previous_checkpoint_path = self.path / "checkpoint.prev.pt"
        self.status_path = self.path / "status.json"
        self._log: LineLog | None = None
        self._dims_written: set[object] = set()
        self.kinds: dict[str, set[str]] = {}
        """What each probe wrote: "scalars", "arrays", "coords" (since this object was made,
        plus what the checkpoint a run resumed from says was written before it)."""
        self.checkpoint_step: int | None = None
        """Step of the last checkpoint written or resumed from: every record scheduled
        before it is on disk."""

    # -- writing -------------------------------------------------------------
    def open_for_writing(self, *, resume_at: int | None = None) -> None:
        """Create the directory, remove dead writers' temporary files, open the scalar log.

        ``resume_at``: the step of the checkpoint a run resumes from; everything logged
        at later steps (by the run that was stopped) is dropped first, so the resumed
        run logs each step once.
        """
        self.close()
        self.path.mkdir(parents=True, exist_ok=True)
        self.arrays_dir.mkdir(exist_ok=True)
        for stale in self.path.rglob(f"{TMP_PREFIX}*"):
            stale.unlink()
        if resume_at is not None:
            self.truncate_from(resume_at)
        self._log = LineLog(self.scalars_path)

    def close(self) -> None:
        """Close the scalar log (synced); never raises."""
        if self._log is not None:
            self._log.close()
            self._log = None

    def write_probe(self, probe: str, step: int, result: ProbeResult) -> None:
        """Seed-only variables to the scalar log, other per-seed arrays to one npz for this
        step, and entries whose first dim is not ``seed`` (coordinates such as layer names)
        to ``arrays/<probe>/coords.json``."""
        assert self._log is not None, "open_for_writing() first"
        check_probe_name(probe)
        coords = {k: (d, v) for k, (d, v) in result.items() if not d or d[0] != "seed"}
        result = {k: dv for k, dv in result.items() if k not in coords}
        scalars = {k: v.tolist() for k, (dims, v) in result.items() if dims == ("seed",)}
        arrays = {k: (dims, v) for k, (dims, v) in result.items() if dims != ("seed",)}
        if coords and (probe, "coords") not in self._dims_written:
            pdir = self.arrays_dir / probe
            pdir.mkdir(exist_ok=True)
            atomic_write_json(
                pdir / "coords.json",
                {
                    k: {"dims": list(d), "values": np.asarray(v).tolist()}
                    for k, (d, v) in coords.items()
                },
                checksum=True,
            )
            self._dims_written.add((probe, "coords"))
            self.kinds.setdefault(probe, set()).add("coords")
        if scalars:
            record: dict[str, Any] = {"probe": probe, "step": step, "vars": scalars}
            if self.width is not None:
                record["width"] = self.width
            self._log.append(record)
            self.kinds.setdefault(probe, set()).add("scalars")
        if arrays:
            pdir = self.arrays_dir / probe
            if probe not in self._dims_written:
                pdir.mkdir(exist_ok=True)
                atomic_write_json(
                    pdir / "dims.json", {k: list(d) for k, (d, _) in arrays.items()}, checksum=True
                )
                self._dims_written.add(probe)
            data = {k: v for k, (_, v) in arrays.items()}
            if self.width is not None:
                data[rec.STAMP] = np.array([self.width, step], dtype=np.int64)
            atomic_write_npz(pdir / f"{step:09d}.npz", data)
            self.kinds.setdefault(probe, set()).add("arrays")

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Sync the scalar log, keep the current checkpoint as the previous one, then
        atomically write ``state`` as ``checkpoint.pt``."""
        if self._log is not None:
            self._log.sync()  # everything logged so far is on disk before the checkpoint
        buf = io.BytesIO()
        torch.save(state, buf)
        if self.checkpoint_path.exists():  # keep it as the previous one; it stays in place
            tmp = self.path / f"{TMP_PREFIX}{self.previous_checkpoint_path.name}.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            try:
                os.link(self.checkpoint_path, tmp)
            except OSError:  # no hard links here: a copy
                shutil.copyfile(self.checkpoint_path, tmp)
            os.replace(tmp, self.previous_checkpoint_path)
        atomic_write_bytes(self.checkpoint_path, buf.getvalue())  # never a moment without one
        step = state.get("step")
        self.checkpoint_step = step if type(step) is int else self.checkpoint_step

    def has_checkpoint(self) -> bool:
        """Whether a checkpoint (current or previous) exists to resume from."""
        return self.checkpoint_path.exists() or self.previous_checkpoint_path.exists()

    def checkpoint_paths(self) -> list[Path]:
        """The checkpoints to try, newest first (those that exist)."""
        return [p for p in (self.checkpoint_path, self.previous_checkpoint_path) if p.exists()]

    def load_checkpoint(self, path: Path | None = None) -> dict[str, Any] | None:
        """A checkpoint (``checkpoint.pt`` unless ``path``), or None if absent.

        Every member's CRC-32 is verified first (``torch.load`` does not), then it is
        read with ``torch.load(weights_only=True)``: no code runs. Raises
        :class:`StoreError` (one line) for a damaged file or one that is not a
        checkpoint mapping; the job checks its contents against the width.
        """
        path = self.checkpoint_path if path is None else path
        if not path.exists():
            return None
        damage = rec.zip_damage(path)
        if damage is not None:
            raise StoreError(
                f"{path}: damaged checkpoint ({damage}); delete it to restart this width"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001  (any unreadable checkpoint is one user-facing error)
            raise StoreError(
                f"{path}: unreadable checkpoint ({type(err).__name__}); "
                "delete it to restart this width from scratch"
            ) from None
        if not isinstance(state, dict):
            raise StoreError(
                f"{path}: not a widthwise checkpoint (a {type(state).__name__}, "
                "not a mapping); delete it to restart this width from scratch"
            )
        return state

    def logged_steps(self, n_seeds: int | None = None) -> dict[str, dict[str, set[int]]]:
        """{probe: {"scalars": steps with a good scalar record, "arrays": steps with an
        intact npz of every variable, "coords": {0} if its coords.json is intact}}: what is
        on disk, read as ``open_study`` reads it, for checking that a resume leaves no hole."""
        found = rec.load_width(self.path, n_seeds, self.width)
        out: dict[str, dict[str, set[int]]] = {}
        probes = {p for p, _ in found.scalars} | set(found.array_vars) | found.coord_probes
        for p in probes:
            out[p] = {k: found.steps(p, k) for k in ("scalars", "arrays")}
            out[p]["coords"] = {0} if p in found.coord_probes else set()
        return out

    def truncate_from(self, step: int) -> None:
        """Forget everything logged at steps >= ``step`` (resuming from a checkpoint at ``step``).

        The scalar log must be closed (:meth:`open_for_writing` does both in order).
        """
        if self._log is not None:
            raise RuntimeError("truncate_from: close the scalar log first")
        records, _ = read_lines(self.scalars_path)
        kept = [
            r
            for r in records
            if (parsed := rec.parse_record(r, self.width, None)) is not None and parsed[1] < step
        ]  # torn, corrupt and other widths' records go too
        atomic_write_bytes(self.scalars_path, b"".join(encode_line(r) for r in kept))
        if self.arrays_dir.exists():
            for pdir in self.arrays_dir.iterdir():
                if pdir.is_symlink() or not pdir.is_dir():
                    continue  # never delete through a link out of the study
                for f in pdir.glob("*.npz"):
                    if f.stem.isdigit() and int(f.stem) >= step:
                        f.unlink()

    def write_status(self, **fields: Any) -> None:
        """Atomically replace ``status.json`` with ``fields`` (plus this width and a CRC-32)."""
        if self.width is not None:
            fields.setdefault("width", self.width)
        atomic_write_json(self.status_path, fields, checksum=True)

    # -- reading -------------------------------------------------------------
    def read_status(self) -> dict[str, Any]:
        """``status.json`` as a mapping; ``{}`` when missing, unreadable, failing its
        checksum or another width's (:meth:`status_problem` says which)."""
        return rec.read_status(self.path, self.width)[0]

    def status_problem(self) -> str:
        """What is wrong with ``status.json`` (``""``: nothing): missing, unreadable, a
        checksum mismatch, another width's."""
        return rec.read_status(self.path, self.width)[1]

    def last_scalar(
        self, probe: str, var: str, *, tail_bytes: int = 16384
    ) -> tuple[int, list[float]] | None:
        """The last logged ``(step, per-seed values)`` of ``probe``'s ``var``, or None.

        Reads only the end of the scalar log, so polling a running width is cheap.
        """
        for r in reversed(read_tail_lines(self.scalars_path, tail_bytes)):
            parsed = rec.parse_record(r, self.width, None)
            if parsed is not None and parsed[0] == probe and var in parsed[2]:
                return parsed[1], parsed[2][var]
        return None

    def read_scalars(
        self, n_seeds: int | None = None
    ) -> tuple[dict[tuple[str, str], dict[int, list[float]]], int]:
        """{(probe, var): {step: per-seed values}} and the count of skipped records.

        Skipped: torn, corrupt and checksum-failing lines, another width's records, and
        (given ``n_seeds``) records whose value lists do not hold one value per seed; a
        skipped record never replaces a good one.
        """
        return rec.read_scalars(self.path, self.width, n_seeds)

    def read_coords(self) -> dict[str, tuple[list[str], list]]:
        """Coordinates probes recorded at run time: {name: (dims, values)}."""
        return rec.load_width(self.path, None, self.width).coords

    def read_arrays(
        self,
    ) -> tuple[dict[tuple[str, str], tuple[list[str], dict[int, np.ndarray]]], int]:
        """{(probe, var): (dims, {step: array})} and the count of unreadable files skipped
        (see :func:`widthwise.store.records.load_width`)."""
        found = rec.load_width(self.path, None, self.width)
        return found.arrays, found.bad
