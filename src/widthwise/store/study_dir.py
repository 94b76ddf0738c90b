"""A study's directory: manifest, the spec it was made by, the probe set, one dir per width."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from widthwise.errors import StoreError
from widthwise.store.files import (
    TMP_PREFIX,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_npz,
)
from widthwise.store.width_dir import WidthDir

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PREPARING = ".preparing"
"""Marker of a study dir whose creation has not finished (removed once the manifest is in)."""


def package_versions() -> dict[str, str]:
    import pydantic
    import scipy
    import torch
    import xarray

    from widthwise import __version__

    return {
        "widthwise": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "xarray": xarray.__version__,
        "pydantic": pydantic.__version__,
    }


MAX_CHANGES = 3
"""Differing keys a changed-spec refusal names (the rest are counted)."""


def _brief(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def spec_changes(old: Any, new: Any, limit: int = MAX_CHANGES) -> list[str]:
    """``key: old → new`` for each dotted key whose value differs between two spec mappings
    (recursively; lists compare whole), the first ``limit`` named and the rest counted:
    ``["optimizer.lr: 0.1 → 0.2", "steps: 400 → 800", "and 3 more"]``."""
    found: list[str] = []
    missing = object()

    def walk(a: Any, b: Any, key: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in [*a, *(k for k in b if k not in a)]:
                walk(a.get(k, missing), b.get(k, missing), f"{key}.{k}" if key else str(k))
        elif a is missing or b is missing or a != b or type(a) is not type(b):
            before = "(absent)" if a is missing else _brief(a)
            after = "(absent)" if b is missing else _brief(b)
            if before != after:
                found.append(f"{key}: {before} → {after}")

    walk(old, new, "")
    if len(found) > limit:
        return [*found[:limit], f"and {len(found) - limit} more"]
    return found


def width_dirname(width: int) -> str:
    """``width_00064``: zero-padded so directory listings sort by width."""
    return f"width_{width:05d}"


class StudyDir:
    """Layout::

    <out>/
      manifest.json     format, spec hash, package versions, widths, seeds, stream facts
      spec.yaml         the validated spec, every default filled in
      probe_set.npz     the fixed test inputs and targets (x, y)
      width_00064/ ...  see WidthDir
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.manifest_path = self.path / MANIFEST

    def width_dir(self, width: int) -> WidthDir:
        """The directory of ``width`` (a positive int: the name stays inside the study)."""
        if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
            raise StoreError(f"{self.manifest_path}: width {width!r} is not a positive integer")
        return WidthDir(self.path / width_dirname(width))

    def read_manifest(self) -> dict[str, Any]:
        """``manifest.json``; a one-line :class:`StoreError` naming the path if it is not a study."""
        if not self.path.exists():
            raise StoreError(f"{self.path}: not a widthwise study (no such directory)")
        if not self.path.is_dir():
            raise StoreError(f"{self.path}: not a widthwise study (not a directory)")
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            raise StoreError(f"{self.path}: not a widthwise study (no {MANIFEST})") from None
        except (OSError, ValueError) as err:  # ValueError: bad JSON, bad UTF-8
            why = " ".join(str(err).split())[:120]
            raise StoreError(
                f"{self.manifest_path}: unreadable manifest ({type(err).__name__}: {why})"
            ) from None
        if not isinstance(manifest, dict) or "spec_hash" not in manifest:
            raise StoreError(f"{self.manifest_path}: not a widthwise manifest")
        return manifest

    def read_spec_dict(self) -> dict[str, Any]:
        """The stored ``spec.yaml`` (safe loader) as a mapping; one-line StoreError if not."""
        path = self.path / "spec.yaml"
        try:
            spec = yaml.safe_load(path.read_text())
        except (OSError, ValueError, yaml.YAMLError) as err:
            why = " ".join(str(err).split())[:120]
            raise StoreError(f"{path}: unreadable spec ({type(err).__name__}: {why})") from None
        if not isinstance(spec, dict):
            raise StoreError(f"{path}: not a spec mapping (a {type(spec).__name__})")
        return spec

    def other_spec_message(self, manifest: dict[str, Any], spec: Any, spec_hash: str) -> str:
        """The refusal of a spec other than the one that made this study: the keys that
        differ (stored ``spec.yaml`` vs ``spec``, hashed keys only) and both hashes."""
        try:
            from widthwise.spec import hashed_part

            old = hashed_part(self.read_spec_dict())
            new = hashed_part(spec.model_dump(mode="json"))
            changes = spec_changes(old, new)
        except Exception:  # noqa: BLE001  (no readable spec.yaml: the hashes still tell)
            changes = []
        what = f"{', '.join(changes)}; " if changes else ""
        return (
            f"out: {self.path} holds study {manifest.get('name')!r} made by a different spec "
            f"({what}hash {manifest['spec_hash']} != {spec_hash}); use another --out or "
            "delete the directory"
        )

    @staticmethod
    def check_writable(path: Path) -> None:
        """Fail early (before anything is written) if ``path`` cannot become a study dir."""
        probe = path
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise StoreError(f"out: {probe} exists and is not a directory")
        if not os.access(probe, os.W_OK | os.X_OK):
            why = "permission denied"
            try:
                if os.statvfs(probe).f_flag & os.ST_RDONLY:
                    why = "read-only file system"
            except OSError:
                pass
            raise StoreError(f"out: cannot write to {probe} ({why}); choose --out DIR")

    def _is_unfinished_prepare(self) -> bool:
        """Empty, or left by a :meth:`prepare` that was killed before writing the manifest.

        Only files prepare writes count, and spec.yaml / probe_set.npz only next to the
        marker prepare writes first, so a user's own files are never overwritten.
        """
        names = {p.name for p in self.path.iterdir() if not p.name.startswith(TMP_PREFIX)}
        return not names or (
            PREPARING in names and names <= {PREPARING, "spec.yaml", "probe_set.npz"}
        )

    def prepare(
        self,
        spec: Any,
        spec_hash: str,
        probe_set: tuple[np.ndarray, np.ndarray],
        stream_facts: dict[str, Any],
    ) -> bool:
        """Create the study dir, or check an existing one was made by the same spec.

        Returns True when the directory already held this study (a resume).
        """
        if self.manifest_path.exists():
            manifest = self.read_manifest()
            if manifest["spec_hash"] != spec_hash:
                raise StoreError(self.other_spec_message(manifest, spec, spec_hash))
            return True
        self.check_writable(self.path)
        if self.path.exists() and not self._is_unfinished_prepare():
            raise StoreError(
                f"out: {self.path} exists, is not empty and is not a widthwise study; "
                "use another --out"
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path / PREPARING, b"")
            spec_dict = spec.model_dump(mode="json")
            atomic_write_bytes(
                self.path / "spec.yaml", yaml.safe_dump(spec_dict, sort_keys=False).encode()
            )
            x, y = probe_set
            atomic_write_npz(self.path / "probe_set.npz", {"x": x, "y": y})
            atomic_write_json(
                self.manifest_path,  # written last: its presence marks a complete study dir
                {
                    "format": FORMAT_VERSION,
                    "name": spec.name,
                    "spec_hash": spec_hash,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "versions": package_versions(),
                    "widths": spec.widths,
                    "seeds": spec.seed_list,
                    "stream": stream_facts,
                },
            )
            (self.path / PREPARING).unlink()
        except OSError as err:
            raise StoreError(
                f"out: cannot write study directory {self.path}: {err.strerror}"
            ) from None
        return False
