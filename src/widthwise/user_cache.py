"""widthwise's per-user cache: small JSON files that are safe to delete at any time.

It holds this machine's speed calibration (:mod:`widthwise.calibration`) and the
consistency-horizon sentence of studies already shown (:mod:`widthwise.show`), never
results. The directory is ``$WIDTHWISE_CACHE_DIR`` if set, else
``$XDG_CACHE_HOME/widthwise``, else ``~/.cache/widthwise`` — never inside a
repository or a study directory. A cache that cannot be read or written is treated
as empty: it never stops a command.

Importing this module imports nothing heavy (no torch, numpy or xarray).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

ENV = "WIDTHWISE_CACHE_DIR"
"""Environment variable naming the cache directory (tests point it at a temporary one)."""


def cache_dir() -> Path:
    """The cache directory (not created): ``$WIDTHWISE_CACHE_DIR``,
    ``$XDG_CACHE_HOME/widthwise`` or ``~/.cache/widthwise``."""
    explicit = os.environ.get(ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "widthwise"


def read_json(name: str) -> dict[str, Any]:
    """The mapping in cache file ``name``; ``{}`` when it is missing, unreadable or not a
    mapping."""
    try:
        data = json.loads((cache_dir() / name).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(name: str, data: dict[str, Any]) -> bool:
    """Write ``data`` to cache file ``name`` atomically; False (nothing raised) on failure."""
    directory = cache_dir()
    tmp = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, directory / name)
        return True
    except (OSError, TypeError, ValueError):
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return False


def update_json(name: str, key: str, value: Any, *, keep: int = 200) -> bool:
    """Set ``key`` in cache file ``name`` (read, update, write), keeping the ``keep``
    newest keys; False on failure."""
    data = read_json(name)
    data.pop(key, None)
    data[key] = value
    if len(data) > keep:  # dicts keep insertion order: the oldest keys go first
        data = dict(list(data.items())[-keep:])
    return write_json(name, data)
