"""The crash-safe study store and ``open_study``."""

from widthwise.store.open import open_study
from widthwise.store.study_dir import StudyDir
from widthwise.store.width_dir import WidthDir

__all__ = ["StudyDir", "WidthDir", "open_study"]
