"""Functions the processes-executor tests run in worker processes (importable by name)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def die_once(marker: str) -> str:
    """SIGKILL itself on the first call (per marker), answer on the second."""
    path = Path(marker)
    if not path.exists():
        path.write_text("died once")
        os.kill(os.getpid(), signal.SIGKILL)
    return "second try"


def always_die() -> str:
    os.kill(os.getpid(), signal.SIGKILL)
    return "never"


def answer(x: int) -> int:
    return x * 2


def sleep_forever(pid_file: str) -> None:
    Path(pid_file).write_text(str(os.getpid()))
    while True:
        time.sleep(0.1)
