"""The crash-safe study store and ``open_study``.

The names below are imported on first use (PEP 562): ``widthwise.store.lock``,
``.files`` and ``.records`` need neither torch nor xarray, so ``widthwise show`` can
read a study through them without paying for either.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "open_study": "widthwise.store.open",
    "StudyDir": "widthwise.store.study_dir",
    "WidthDir": "widthwise.store.width_dir",
}

if TYPE_CHECKING:
    from widthwise.store.open import open_study
    from widthwise.store.study_dir import StudyDir
    from widthwise.store.width_dir import WidthDir

__all__ = ["StudyDir", "WidthDir", "open_study"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'widthwise.store' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
