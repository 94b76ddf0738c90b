"""One width's directory: scalar log, per-step arrays, checkpoint and status."""

from __future__ import annotations

import io
import json
import zipfile
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
)


class WidthDir:
    """Files of one width (all its seeds).

    Layout::

        width_00064/
          status.json            state (running/done/failed), step, wall time, diverged
          scalars.jsonl          {"probe", "step", "vars": {name: [per seed]}} per line
          arrays/<probe>/dims.json          {var: [dim, ...]} (first dim "seed")
          arrays/<probe>/<step:09d>.npz     one atomic file per logged step
          checkpoint.pt          atomic, loaded with weights_only=True
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.scalars_path = self.path / "scalars.jsonl"
        self.arrays_dir = self.path / "arrays"
        self.checkpoint_path = self.path / "checkpoint.pt"
        self.status_path = self.path / "status.json"
        self._log: LineLog | None = None
        self._dims_written: set[object] = set()

    # -- writing -------------------------------------------------------------
    def open_for_writing(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.arrays_dir.mkdir(exist_ok=True)
        for stale in self.path.rglob(f"{TMP_PREFIX}*"):
            stale.unlink()
        self._log = LineLog(self.scalars_path)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def write_probe(self, probe: str, step: int, result: ProbeResult) -> None:
        """Seed-only variables to the scalar log, other per-seed arrays to one npz for this
        step, and entries whose first dim is not ``seed`` (coordinates such as layer names)
        to ``arrays/<probe>/coords.json``."""
        assert self._log is not None, "open_for_writing() first"
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
        if arrays:
            pdir = self.arrays_dir / probe
            if probe not in self._dims_written:
                pdir.mkdir(exist_ok=True)
                atomic_write_json(pdir / "dims.json", {k: list(d) for k, (d, _) in arrays.items()})
                self._dims_written.add(probe)
            atomic_write_npz(pdir / f"{step:09d}.npz", {k: v for k, (_, v) in arrays.items()})

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        if self._log is not None:
            self._log.sync()  # everything logged so far is on disk before the checkpoint
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.checkpoint_path, buf.getvalue())

    def load_checkpoint(self) -> dict[str, Any] | None:
        if not self.checkpoint_path.exists():
            return None
        try:
            return torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001  (any unreadable checkpoint is one user-facing error)
            raise StoreError(
                f"{self.checkpoint_path}: unreadable checkpoint ({type(err).__name__}); "
                "delete it to restart this width from scratch"
            ) from None

    def truncate_from(self, step: int) -> None:
        """Forget everything logged at steps >= ``step`` (resuming from a checkpoint at ``step``)."""
        self.close()
        records, _ = read_lines(self.scalars_path)
        kept = [r for r in records if r.get("step", 0) < step]
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in kept)
        atomic_write_bytes(self.scalars_path, text.encode())
        if self.arrays_dir.exists():
            for f in self.arrays_dir.glob("*/*.npz"):
                if f.stem.isdigit() and int(f.stem) >= step:
                    f.unlink()

    def write_status(self, **fields: Any) -> None:
        atomic_write_json(self.status_path, fields)

    # -- reading -------------------------------------------------------------
    def read_status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def read_scalars(self) -> tuple[dict[tuple[str, str], dict[int, list[float]]], int]:
        """{(probe, var): {step: per-seed values}} and the count of skipped torn lines."""
        records, bad = read_lines(self.scalars_path)
        out: dict[tuple[str, str], dict[int, list[float]]] = {}
        for r in records:
            try:
                probe, step, vars_ = r["probe"], int(r["step"]), r["vars"]
                for name, values in vars_.items():
                    out.setdefault((probe, name), {})[step] = [float(v) for v in values]
            except (KeyError, TypeError, ValueError, AttributeError):
                bad += 1
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
            except (OSError, json.JSONDecodeError, KeyError, TypeError):
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
            except (OSError, json.JSONDecodeError):
                bad += 1
                continue
            for f in sorted(pdir.glob("*.npz")):
                if not f.stem.isdigit():
                    continue
                try:
                    with np.load(f, allow_pickle=False) as z:
                        arrays = {k: z[k] for k in z.files}
                except (OSError, ValueError, zipfile.BadZipFile, EOFError):
                    bad += 1  # partial file: never reported as data
                    continue
                for name, arr in arrays.items():
                    if name in dims:
                        out.setdefault((pdir.name, name), (dims[name], {}))[1][int(f.stem)] = arr
        return out, bad
