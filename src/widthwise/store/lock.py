"""One writer per width directory: an advisory lock with its holder's name on it.

``WidthLock(width_dir).acquire()`` takes an exclusive ``flock`` on the file ``lock``
inside the width directory and writes the holder's ``{pid, host, since}`` into it.
The kernel drops an ``flock`` when its process dies, however it dies, so a lock
file left by a killed process is *stale* by construction: the next writer takes
it over and rewrites the holder. ``lock_holder(width_dir)`` names the live holder,
or returns None when the width is unlocked or its lock is stale.

The lock file is removed on release (while still locked, so a waiting writer
that opened the old file notices and retries on the new one). On file systems
without ``flock`` the lock falls back to the recorded pid: refused while that
pid is alive on this host, taken over otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from widthwise.errors import StoreError

LOCK_NAME = "lock"
"""File name of the lock inside a width directory."""

_RETRIES = 10
_RETRY_S = 0.05  # a reader's probe (lock_holder) holds the lock for microseconds


class LockBusy(StoreError):
    """The lock is held by another live writer (``holder``: its pid, host, since when)."""

    def __init__(self, message: str, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.holder = holder


def busy_message(width_dir: str | os.PathLike[str], holder: dict[str, Any]) -> str:
    """The one-line refusal naming a width directory's live writer."""
    return (
        f"{width_dir}: being written by pid {holder.get('pid')} on host {holder.get('host')} "
        f"since {holder.get('since')}; wait for that run to finish or stop it (the lock of a "
        "process that died is cleared automatically)"
    )


def _read_info(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 4096, 0)
        info = json.loads(raw) if raw else {}
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict):
        info = {}
    return {"pid": info.get("pid"), "host": info.get("host"), "since": info.get("since")}


def _pid_alive_here(info: dict[str, Any]) -> bool:
    """Fallback without flock: does the recorded holder still run on this host?"""
    pid = info.get("pid")
    if not isinstance(pid, int) or info.get("host") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _flock_unsupported(err: OSError) -> bool:
    return err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class WidthLock:
    """Exclusive writer lock of one width directory (a context manager).

    ``acquire()`` raises :class:`~widthwise.errors.StoreError` naming the live
    holder (pid, host, since when) if another writer holds the directory; a stale
    lock of a dead process is cleared. ``release()`` removes the lock file.
    """

    def __init__(self, width_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(width_dir)
        self.path = self.dir / LOCK_NAME
        self._fd: int | None = None
        self._created_dir = False
        self.info: dict[str, Any] | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> WidthLock:
        """Take the lock or raise StoreError naming the live holder; returns self."""
        if self._fd is not None:
            return self
        try:
            if not self.dir.exists():
                self.dir.mkdir(parents=True, exist_ok=True)
                self._created_dir = True
        except OSError as err:
            raise StoreError(f"out: cannot write {self.dir}: {err.strerror or err}") from None
        holder: dict[str, Any] = {}
        for _ in range(_RETRIES):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise StoreError(f"out: cannot write {self.path}: {err.strerror or err}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_info(fd)
                os.close(fd)
                time.sleep(_RETRY_S)
                continue
            except OSError as err:
                if not _flock_unsupported(err):
                    os.close(fd)
                    raise
                holder = _read_info(fd)
                if _pid_alive_here(holder) and holder.get("pid") != os.getpid():
                    os.close(fd)
                    break
            if not self._same_file(fd):  # released and removed while we opened it
                os.close(fd)
                continue
            self._fd = fd
            self._write_info()
            return self
        raise LockBusy(busy_message(self.dir, holder), holder)

    def _same_file(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def _write_info(self) -> None:
        assert self._fd is not None
        self.info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        data = (json.dumps(self.info) + "\n").encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        """Remove the lock file and drop the lock (a no-op when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        if self._created_dir:  # leave no empty width directory behind
            with contextlib.suppress(OSError):
                self.dir.rmdir()

    def __enter__(self) -> WidthLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __del__(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)


def lock_holder(width_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``{"pid", "host", "since"}`` of the live writer of ``width_dir``, else None.

    None when there is no lock file or when the lock is stale (its process died).
    Values the holder has not written yet are None.
    """
    path = Path(width_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_info(fd)
        except OSError as err:
            if not _flock_unsupported(err):
                raise
            info = _read_info(fd)
            return info if _pid_alive_here(info) else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextlib.contextmanager
def writer_lock(width_dir: str | os.PathLike[str]) -> Iterator[WidthLock]:
    """Hold the width directory's writer lock for the block.

    Another live writer is a one-line :class:`StoreError` naming it; a directory where
    the lock cannot even be created (read-only, full) is one too.
    """
    lock = WidthLock(width_dir)
    try:
        lock.acquire()
    except OSError as err:
        raise StoreError(f"out: cannot write {lock.dir}: {err.strerror or err}") from None
    try:
        yield lock
    finally:
        lock.release()
