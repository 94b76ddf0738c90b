"""One width's directory: scalar log, per-step arrays, checkpoint and status."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from widthwise.errors import StoreError
from widthwise.probes.base import ProbeResult
from widthwise.store.files import (
    TMP_PREFIX,
    LineLog,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_npz,
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
          status.json            state (running/done/failed), step, wall time, diverged
          scalars.jsonl          {"probe", "step", "vars": {name: [per seed]}} per line
          arrays/<probe>/dims.json          {var: [dim, ...]} (first dim "seed")
          arrays/<probe>/<step:09d>.npz     one atomic file per logged step
          checkpoint.pt          atomic, loaded with weights_only=True, CRCs verified
          checkpoint.prev.pt     the checkpoint before it (a damaged one falls back here)
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.scalars_path = self.path / "scalars.jsonl"
        self.arrays_dir = self.path / "arrays"
        self.checkpoint_path = self.path / "checkpoint.pt"
        self.previous_checkpoint_path = self.path / "checkpoint.prev.pt"
        self.status_path = self.path / "status.json"
        self._log: LineLog | None = None
        self._dims_written: set[object] = set()
        self.kinds: dict[str, set[str]] = {}
        """What each probe wrote since this object was made: "scalars" and/or "arrays"."""

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
            )
            self._dims_written.add((probe, "coords"))
        if scalars:
            self._log.append({"probe": probe, "step": step, "vars": scalars})
            self.kinds.setdefault(probe, set()).add("scalars")
        if arrays:
            pdir = self.arrays_dir / probe
            if probe not in self._dims_written:
                pdir.mkdir(exist_ok=True)
                atomic_write_json(pdir / "dims.json", {k: list(d) for k, (d, _) in arrays.items()})
                self._dims_written.add(probe)
            atomic_write_npz(pdir / f"{step:09d}.npz", {k: v for k, (_, v) in arrays.items()})
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
        damage = _zip_damage(path)
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

    def logged_steps(self) -> dict[str, dict[str, set[int]]]:
        """{probe: {"scalars": steps with a good scalar record, "arrays": steps with an
        intact npz}}: what is on disk, for checking that a resume leaves no hole."""
        out: dict[str, dict[str, set[int]]] = {}
        records, _ = read_lines(self.scalars_path)
        for r in records:
            try:
                probe, step = str(r["probe"]), int(r["step"])
                if not isinstance(r["vars"], dict):
                    continue
            except (KeyError, TypeError, ValueError):
                continue
            out.setdefault(probe, {"scalars": set(), "arrays": set()})["scalars"].add(step)
        if self.arrays_dir.is_dir():
            for pdir in self.arrays_dir.iterdir():
                if pdir.is_symlink() or not pdir.is_dir():
                    continue
                steps = out.setdefault(pdir.name, {"scalars": set(), "arrays": set()})["arrays"]
                for f in pdir.glob("*.npz"):
                    if f.stem.isdigit() and _zip_damage(f) is None:
                        steps.add(int(f.stem))
        return out

    def truncate_from(self, step: int) -> None:
        """Forget everything logged at steps >= ``step`` (resuming from a checkpoint at ``step``).

        The scalar log must be closed (:meth:`open_for_writing` does both in order).
        """
        if self._log is not None:
            raise RuntimeError("truncate_from: close the scalar log first")
        records, _ = read_lines(self.scalars_path)
        kept = [r for r in records if r.get("step", 0) < step]
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in kept)
        atomic_write_bytes(self.scalars_path, text.encode())
        if self.arrays_dir.exists():
            for pdir in self.arrays_dir.iterdir():
                if pdir.is_symlink() or not pdir.is_dir():
                    continue  # never delete through a link out of the study
                for f in pdir.glob("*.npz"):
                    if f.stem.isdigit() and int(f.stem) >= step:
                        f.unlink()

    def write_status(self, **fields: Any) -> None:
        """Atomically replace ``status.json`` with ``fields``."""
        atomic_write_json(self.status_path, fields)

    # -- reading -------------------------------------------------------------
    def read_status(self) -> dict[str, Any]:
        """``status.json`` as a mapping; ``{}`` when missing or unreadable."""
        try:
            status = json.loads(self.status_path.read_text())
        except (OSError, ValueError):  # ValueError: bad JSON or bad UTF-8
            return {}
        return status if isinstance(status, dict) else {}

    def last_scalar(
        self, probe: str, var: str, *, tail_bytes: int = 16384
    ) -> tuple[int, list[float]] | None:
        """The last logged ``(step, per-seed values)`` of ``probe``'s ``var``, or None.

        Reads only the end of the scalar log, so polling a running width is cheap.
        """
        for r in reversed(read_tail_lines(self.scalars_path, tail_bytes)):
            try:
                if r["probe"] == probe:
                    return int(r["step"]), [float(v) for v in r["vars"][var]]
            except (KeyError, TypeError, ValueError):
                continue
        return None

    def read_scalars(
        self, n_seeds: int | None = None
    ) -> tuple[dict[tuple[str, str], dict[int, list[float]]], int]:
        """{(probe, var): {step: per-seed values}} and the count of skipped records.

        Skipped: torn and corrupt lines, and (given ``n_seeds``) records whose value
        lists do not hold one value per seed; a skipped record never replaces a good one.
        """
        records, bad = read_lines(self.scalars_path)
        out: dict[tuple[str, str], dict[int, list[float]]] = {}
        for r in records:
            try:
                probe, step, vars_ = r["probe"], int(r["step"]), r["vars"]
                if not isinstance(probe, str) or not isinstance(vars_, dict):
                    raise TypeError("not a scalar record")
                parsed = {}
                for name, values in vars_.items():
                    if not isinstance(values, list):
                        raise TypeError("values are not a per-seed list")
                    if n_seeds is not None and len(values) != n_seeds:
                        raise ValueError("not one value per seed")
                    parsed[name] = [float(v) for v in values]
            except (KeyError, TypeError, ValueError, AttributeError):
                bad += 1
                continue
            for name, values in parsed.items():
                out.setdefault((probe, name), {})[step] = values
        return out, bad

    def read_coords(self) -> dict[str, tuple[list[str], list]]:
        """Coordinates probes recorded at run time: {name: (dims, values)}."""
        out: dict[str, tuple[list[str], list]] = {}
        if not self.arrays_dir.exists():
            return out
        for f in sorted(self.arrays_dir.glob("*/coords.json")):
            try:
                for name, c in json.loads(f.read_text()).items():
                    out[name] = (list(c["dims"]), list(c["values"]))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue
        return out

    def read_arrays(
        self,
    ) -> tuple[dict[tuple[str, str], tuple[list[str], dict[int, np.ndarray]]], int]:
        """{(probe, var): (dims, {step: array})} and the count of unreadable files skipped."""
        out: dict[tuple[str, str], tuple[list[str], dict[int, np.ndarray]]] = {}
        bad = 0
        if not self.arrays_dir.exists():
            return out, bad
        for pdir in sorted(p for p in self.arrays_dir.iterdir() if p.is_dir()):
            try:
                dims = json.loads((pdir / "dims.json").read_text())
            except (OSError, ValueError):
                dims = None
            if not _valid_dims(dims):
                bad += 1
                continue
            for f in sorted(pdir.glob("*.npz")):
                if not f.stem.isdigit():
                    continue
                try:
                    with np.load(f, allow_pickle=False) as z:
                        arrays = {k: z[k] for k in z.files}
                except (
                    OSError,
                    ValueError,
                    KeyError,
                    EOFError,
                    struct.error,
                    zlib.error,
                    zipfile.BadZipFile,
                ):
                    bad += 1  # partial file: never reported as data
                    continue
                for name, arr in arrays.items():
                    if name in dims and arr.ndim == len(dims[name]):
                        out.setdefault((pdir.name, name), (dims[name], {}))[1][int(f.stem)] = arr
                    elif name in dims:
                        bad += 1  # an array that does not match its declared dims
        return out, bad


def _valid_dims(dims: Any) -> bool:
    """``dims.json`` content: {var: [dim names, first "seed"]}."""
    return isinstance(dims, dict) and all(
        isinstance(d, list) and d and d[0] == "seed" and all(isinstance(x, str) for x in d)
        for d in dims.values()
    )


def _zip_damage(path: Path) -> str | None:
    """What is wrong with a zip file (checkpoint, npz), or None if every CRC matches."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, zlib.error, struct.error) as err:
        return f"not a readable zip file: {type(err).__name__}"
    return None if bad is None else f"CRC mismatch in {bad}"
