"""widthwise: width-consistency studies of neural networks.

Public API::

    spec = widthwise.load_spec("quickstart")      # or a YAML path
    out = widthwise.run(spec)                      # trains every width, all seeds at once
    ds = widthwise.open_study(out)                 # xarray.Dataset (width, seed, step, ...)

The names below are imported on first use (PEP 562), so ``import widthwise`` and the
command line's ``--help`` do not pay for torch and xarray until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "attention_scale": "widthwise.families.module",
    "coord_check": "widthwise.coordinate_check",
    "SpecError": "widthwise.errors",
    "StoreError": "widthwise.errors",
    "UserError": "widthwise.errors",
    "EXECUTORS": "widthwise.executors",
    "FAMILIES": "widthwise.families",
    "PARAMETERIZATIONS": "widthwise.parameterization",
    "PROBES": "widthwise.probes",
    "StudySpec": "widthwise.spec",
    "load_spec": "widthwise.spec",
    "load_member": "widthwise.members",
    "open_study": "widthwise.store",
    "STREAMS": "widthwise.streams",
    "run": "widthwise.study",
}

if TYPE_CHECKING:
    from widthwise.coordinate_check import coord_check
    from widthwise.errors import SpecError, StoreError, UserError
    from widthwise.executors import EXECUTORS
    from widthwise.families import FAMILIES
    from widthwise.families.module import attention_scale
    from widthwise.members import load_member
    from widthwise.parameterization import PARAMETERIZATIONS
    from widthwise.probes import PROBES
    from widthwise.spec import StudySpec, load_spec
    from widthwise.store import open_study
    from widthwise.streams import STREAMS
    from widthwise.study import run


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'widthwise' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "EXECUTORS",
    "FAMILIES",
    "PARAMETERIZATIONS",
    "PROBES",
    "STREAMS",
    "SpecError",
    "StoreError",
    "StudySpec",
    "UserError",
    "__version__",
    "attention_scale",
    "coord_check",
    "load_member",
    "load_spec",
    "open_study",
    "run",
]
