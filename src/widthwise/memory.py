"""Opt-in glibc malloc tuning for CPU ensembles (process-wide, so never implicit).

glibc returns freed memory to the system eagerly: blocks above its mmap threshold
(at most 32 MiB) are unmapped on free, and the top of the heap is trimmed past
``M_TRIM_THRESHOLD``, so every training step page-faults its fresh stacked gradients
in anew: ~25 ms per 64 MiB gradient, which made a width-1024, 16-seed step 1.2×
slower on the 2-core CPU (benchmarks/RESULTS.md); E separate models of 4 MiB
tensors never pay this.

The setting changes the whole process and cannot be undone, so a library call
(``widthwise.run`` in a notebook, building an ``Ensemble``) never makes it: the
``widthwise`` command line calls :func:`keep_freed_memory` at start-up, and so does
every job that runs in a worker process widthwise started (``WidthJob.tune_memory``).
Call it yourself to get the same speed in your own process.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_tuned: list[bool] = []  # [result] once tried: the settings cannot be undone, so try once


def keep_freed_memory() -> bool:
    """Let glibc reuse freed large blocks instead of unmapping them (process-wide, once).

    Sets ``M_MMAP_MAX = 0`` and ``M_TRIM_THRESHOLD = 2 GiB``: big tensors come from
    the heap and freed ones are reused, at the price of the process keeping its peak
    heap. Skipped off Linux/glibc or when the user tunes malloc (``MALLOC_*`` or
    ``GLIBC_TUNABLES`` in the environment). Returns whether the settings are in effect.
    """
    if not _tuned:
        _tuned.append(_tune())
    return _tuned[0]


def _tune() -> bool:
    if not sys.platform.startswith("linux") or any(
        k.startswith("MALLOC_") or k == "GLIBC_TUNABLES" for k in os.environ
    ):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
