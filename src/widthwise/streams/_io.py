"""File helpers shared by the file-backed streams: clear errors, atomic writes, signatures."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from widthwise.errors import UserError
from widthwise.store.files import fsync_dir


def expand(path: str | os.PathLike[str]) -> Path:
    """``~`` and environment variables expanded; relative paths stay relative to the cwd."""
    return Path(os.path.expandvars(os.path.expanduser(os.fspath(path))))


def require_dir(stream: str, path: Path, expected: str) -> Path:
    """``path`` if it is a directory, else a one-line UserError naming it and what was expected."""
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise UserError(f"{stream}: {path} {what} (expected {expected}; set data.options.path)")
    return path


def signature(paths: Sequence[Path]) -> str:
    """A digest of the files' names, sizes and modification times (cheap staleness check)."""
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    Readers see the old file or the complete new one, never a half-written file; two
    processes writing the same file at once each write their own temporary file.
    """
    tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` through :func:`atomic_path` (no pickles: plain dtypes only)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def writable_cache_dir(stream: str, directory: Path) -> Path:
    """``directory`` created if needed; a UserError naming it when it cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"{stream}: cannot create cache directory {directory} ({err.strerror}); "
            "set data.options.cache_dir to a writable directory"
        ) from None
    if not os.access(directory, os.W_OK):
        raise UserError(
            f"{stream}: cache directory {directory} is not writable; "
            "set data.options.cache_dir to a writable directory"
        )
    return directory
