"""Crash-safe file primitives: atomic replace, fsync'd line appends, and checksums.

A failed write (disk full, read-only directory) raises ``OSError`` and leaves what was
on disk before: the temporary file of an atomic write is removed, a torn line of the
line log is skipped by :func:`read_lines`.

Every line of a :class:`LineLog` and every JSON document written with
``checksum=True`` carries the CRC-32 of its own content (key :data:`CHECKSUM_KEY`), so
a flipped bit that still parses (a digit changed into another digit) is detected on
read instead of becoming a wrong number. Records and documents without the key
(written by earlier versions) are read as they are.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

TMP_PREFIX = ".tmp-"

CHECKSUM_KEY = "crc32"
"""Key of the CRC-32 a checksummed record or JSON document carries of the rest of itself."""


class ChecksumError(ValueError):
    """A record or document whose content does not match its own CRC-32."""


def content_crc(obj: dict[str, Any]) -> int:
    """CRC-32 of a mapping's canonical JSON (sorted keys, no spaces); floats round-trip
    exactly through JSON, so a record read back gives the CRC it was written with."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return zlib.crc32(blob.encode())


def with_checksum(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` plus its :func:`content_crc` under :data:`CHECKSUM_KEY` (last)."""
    body = {k: v for k, v in obj.items() if k != CHECKSUM_KEY}
    return {**body, CHECKSUM_KEY: content_crc(body)}


def verify_checksum(obj: Any) -> Any:
    """``obj`` without its checksum key; :class:`ChecksumError` if the CRC does not match.
    Objects without the key (and non-mappings) are returned as they are."""
    if not isinstance(obj, dict) or CHECKSUM_KEY not in obj:
        return obj
    body = {k: v for k, v in obj.items() if k != CHECKSUM_KEY}
    if obj[CHECKSUM_KEY] != content_crc(body):
        raise ChecksumError("checksum mismatch")
    return body


def read_json(path: Path) -> Any:
    """A JSON document, its checksum verified (``OSError``, ``ValueError`` — including
    :class:`ChecksumError` — when it cannot be read or does not match)."""
    return verify_checksum(json.loads(Path(path).read_bytes()))


def encode_line(record: dict[str, Any]) -> bytes:
    """One :class:`LineLog` line: the record with its checksum, compact, newline-terminated."""
    return (json.dumps(with_checksum(record), separators=(",", ":")) + "\n").encode()


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # a read-only dir: nothing to remove
            tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any, *, checksum: bool = False) -> None:
    """:func:`atomic_write_bytes` of ``obj`` as indented, key-sorted JSON; ``checksum``:
    with its CRC-32 under :data:`CHECKSUM_KEY` (read it back with :func:`read_json`)."""
    if checksum:
        obj = with_checksum(obj)
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """:func:`atomic_write_bytes` of an uncompressed ``.npz`` of ``arrays``."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


class LineLog:
    """An append-only file of JSON lines.

    Each record is written with its CRC-32 (:func:`encode_line`) and flushed at once; ``fsync`` runs at most every
    ``sync_every`` seconds and on :meth:`sync` (the trainer syncs before every
    checkpoint, so nothing a checkpoint depends on can be lost). A crash can leave
    a torn last line: :func:`read_lines` skips it.
    """

    def __init__(self, path: Path, sync_every: float = 1.0) -> None:
        self.path = path
        self.sync_every = sync_every
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115  (closed in close())
        self._last_sync = time.monotonic()

    def append(self, record: dict[str, Any]) -> None:
        self._f.write(encode_line(record).decode())
        self._f.flush()
        if time.monotonic() - self._last_sync > self.sync_every:
            self.sync()

    def sync(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._last_sync = time.monotonic()

    def close(self) -> None:
        """Sync and close; never raises (closing after a failed write, e.g. a full disk,
        must not hide that write's error)."""
        if self._f.closed:
            return
        try:
            self.sync()
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                self._f.close()


def read_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Records of a :class:`LineLog` (checksums verified and removed) and how many torn,
    corrupt or checksum-failing lines were skipped."""
    if not path.exists():
        return [], 0
    records, bad = [], 0
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                bad += 1  # torn last line of a crashed writer
                continue
            try:
                rec = verify_checksum(json.loads(raw))
            except ValueError:  # bad JSON, bad UTF-8, checksum mismatch
                bad += 1
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                bad += 1
    return records, bad


def read_tail_lines(path: Path, tail_bytes: int = 16384) -> list[dict[str, Any]]:
    """The complete, parseable records among the last ``tail_bytes`` of a :class:`LineLog`
    (oldest first; torn, corrupt and checksum-failing lines skipped; ``[]`` if the file
    is missing)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - tail_bytes))
            lines = f.read().split(b"\n")
    except OSError:
        return []
    if size > tail_bytes:
        lines = lines[1:]  # the first line read is cut by the seek
    out = []
    for raw in lines:
        try:
            rec = verify_checksum(json.loads(raw))
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out
