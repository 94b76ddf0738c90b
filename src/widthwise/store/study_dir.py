"""A study's directory: manifest, the spec it was made by, the probe set, one dir per width.

One ``widthwise run`` writes a study directory at a time: it holds the study's lock
(``<out>/lock``, :class:`~widthwise.store.lock.WidthLock`) from before the directory is
created until it ends, so a second run started at the same instant is refused with one
line naming the first instead of racing it through the creation of the directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from widthwise.errors import StoreError
from widthwise.store.files import (
    TMP_PREFIX,
    ChecksumError,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_npz,
    verify_checksum,
)
from widthwise.store.lock import LOCK_NAME, LockBusy, WidthLock, lock_holder

if TYPE_CHECKING:  # width_dir imports torch (checkpoints): reading a study needs neither
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


SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader where PyYAML has it (the same documents, ten times faster)."""


def width_dirname(width: int) -> str:
    """``width_00064``: zero-padded so directory listings sort by width."""
    return f"width_{width:05d}"


def study_busy_message(path: str | os.PathLike[str], holder: dict[str, Any]) -> str:
    """The one-line refusal of a second ``widthwise run`` on a study directory."""
    host = holder.get("host")
    where = "" if host in (None, "") else f" on host {host}"
    since = f" since {holder['since']}" if holder.get("since") else ""
    return (
        f"out: another widthwise run is writing {path} (pid {holder.get('pid')}{where}{since}); "
        "wait for it or pass another --out"
    )


def spec_hash_of(spec: dict[str, Any]) -> str:
    """The hash ``StudySpec.hash`` gives the spec whose JSON dump is ``spec`` (a stored
    ``spec.yaml`` is that dump)."""
    from widthwise.spec import hashed_part

    blob = json.dumps(hashed_part(spec), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _distinct_ints(v: Any, low: int) -> bool:
    return (
        isinstance(v, list)
        and bool(v)
        and all(isinstance(i, int) and not isinstance(i, bool) and i >= low for i in v)
        and len(set(v)) == len(v)
    )


class StudyDir:
    """Layout::

    <out>/
      manifest.json     format, spec hash, package versions, widths, seeds (member ids
                        in a sweep, with the sweep), stream facts
      spec.yaml         the validated spec, every default filled in
      probe_set.npz     the fixed test inputs and targets (x, y)
      width_00064/ ...  see WidthDir
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.manifest_path = self.path / MANIFEST

    def width_dir(self, width: int) -> WidthDir:
        """The directory of ``width`` (a positive int: the name stays inside the study)."""
        from widthwise.store.width_dir import WidthDir

        if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
            raise StoreError(f"{self.manifest_path}: width {width!r} is not a positive integer")
        return WidthDir(self.path / width_dirname(width), width)

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
        widths, seeds = manifest.get("widths"), manifest.get("seeds")
        if not _distinct_ints(widths, 1) or not _distinct_ints(seeds, 0):
            raise StoreError(
                f"{self.manifest_path}: corrupt manifest (widths and seeds must be lists of "
                f"distinct integers; got widths {widths!r:.60}, seeds {seeds!r:.60})"
            )
        try:
            manifest = verify_checksum(manifest)
        except ChecksumError:
            raise StoreError(
                f"{self.manifest_path}: damaged manifest (its content does not match its "
                "crc32); the study directory is corrupt"
            ) from None
        return manifest

    def stored_spec_problem(
        self, manifest: dict[str, Any], spec: dict[str, Any] | None = None
    ) -> str:
        """What is wrong with ``spec.yaml`` (``""``: nothing): unreadable, or not the spec
        whose hash the manifest records (damaged, or edited in a key that changes the
        numbers). ``spec``: the stored spec, already read."""
        if spec is None:
            try:
                spec = self.read_spec_dict()
            except StoreError as err:
                return str(err)
        try:
            found = spec_hash_of(spec)
        except (TypeError, ValueError) as err:  # not JSON-able (a YAML date, a set, ...)
            return f"{self.path / 'spec.yaml'}: not a stored spec ({type(err).__name__})"
        if found != manifest["spec_hash"]:
            return (
                f"{self.path / 'spec.yaml'}: not the spec of this study (hash {found}, "
                f"{MANIFEST} says {manifest['spec_hash']}): damaged or edited"
            )
        return ""

    def read_spec_dict(self) -> dict[str, Any]:
        """The stored ``spec.yaml`` (safe loader) as a mapping; one-line StoreError if not."""
        path = self.path / "spec.yaml"
        try:
            spec = yaml.load(path.read_text(), Loader=SAFE_LOADER)  # noqa: S506  (a safe one)
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
        names.discard(LOCK_NAME)  # the lock of a run preparing it (or of one that died)
        return not names or (
            PREPARING in names and names <= {PREPARING, "spec.yaml", "probe_set.npz"}
        )

    def _refuse_foreign(self) -> None:
        """Refuse, before anything is written, a directory that is not (yet) a study and
        holds other files; a study another run is creating right now is not foreign."""
        if self.manifest_path.exists():
            return
        self.check_writable(self.path)
        if not self.path.exists() or self._is_unfinished_prepare():
            return
        if self.manifest_path.exists():  # made meanwhile by another run
            return
        holder = lock_holder(self.path)
        if holder is not None:
            raise StoreError(study_busy_message(self.path, holder))
        names = {p.name for p in self.path.iterdir()}
        if "spec.yaml" in names and any(n.startswith("width_") for n in names):
            raise StoreError(
                f"out: {self.path} holds a study's files but no {MANIFEST}: the study "
                f"directory is damaged; restore {MANIFEST} or use another --out"
            )
        raise StoreError(
            f"out: {self.path} exists, is not empty and is not a widthwise study; use another --out"
        )

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the study's writer lock (``<out>/lock``) for the block: one ``widthwise
        run`` at a time per study directory. A second one is a one-line
        :class:`StoreError` naming the first (its pid); a directory that is not a study and
        holds other files is refused before the lock file is made in it."""
        self._refuse_foreign()
        if self.path.is_dir() and not os.access(self.path, os.W_OK | os.X_OK):
            yield  # read-only: nothing can be written here, the first write attempt says so
            return
        lock = WidthLock(self.path)
        try:
            lock.acquire()
        except LockBusy as err:
            raise StoreError(study_busy_message(self.path, err.holder)) from None
        except OSError as err:
            raise StoreError(f"out: cannot write {self.path}: {err.strerror or err}") from None
        try:
            yield
        finally:
            lock.release()

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
            self._repair(manifest, spec, probe_set)
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
                    "seeds": spec.member_ids,
                    **(
                        {  # keys: the points' order (JSON here sorts the mapping's keys)
                            "sweep": {
                                "keys": list(spec.sweep),
                                "values": spec.sweep,
                                "seeds": spec.seed_list,
                            }
                        }
                        if spec.sweep
                        else {}
                    ),
                    "stream": stream_facts,
                },
                checksum=True,
            )
            (self.path / PREPARING).unlink(missing_ok=True)
        except OSError as err:
            raise StoreError(
                f"out: cannot write study directory {self.path}: {err.strerror}"
            ) from None
        return False

    def _repair(
        self, manifest: dict[str, Any], spec: Any, probe_set: tuple[np.ndarray, np.ndarray]
    ) -> None:
        """Rewrite ``spec.yaml`` and ``probe_set.npz`` of a study being resumed when they are
        damaged or missing: both are functions of the spec (whose hash the manifest
        records), so they are rebuilt exactly; each repair is one line on stderr."""
        notes = []
        problem = self.stored_spec_problem(manifest)
        if problem:
            text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False).encode()
            self._rewrite("spec.yaml", lambda: atomic_write_bytes(self.path / "spec.yaml", text))
            notes.append(f"{problem.split(': ', 1)[-1]}; spec.yaml rewritten from the spec")
        path = self.path / "probe_set.npz"
        x, y = probe_set
        try:
            with np.load(path, allow_pickle=False) as z:
                ok = np.array_equal(z["x"], x) and np.array_equal(z["y"], y)
            why = "" if ok else "not this spec's probe set"
        except FileNotFoundError:
            why = "missing"
        except Exception as err:  # noqa: BLE001  (any unreadable file is rebuilt)
            why = f"unreadable ({type(err).__name__})"
        if why:
            self._rewrite("probe_set.npz", lambda: atomic_write_npz(path, {"x": x, "y": y}))
            notes.append(f"probe_set.npz {why}; rewritten from the stream")
        if notes:
            print(f"widthwise: {self.path}: " + "; ".join(notes), file=sys.stderr)

    def _rewrite(self, name: str, write: Any) -> None:
        try:
            write()
        except OSError as err:
            raise StoreError(
                f"out: cannot rewrite {self.path / name}: {err.strerror or err}"
            ) from None
