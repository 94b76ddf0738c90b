"""Trackers mirror a study's scalars and its report's figures to experiment trackers
(registry :data:`TRACKERS`): Weights & Biases, MLflow, TensorBoard. Each is an
optional extra, switched on in the spec's ``trackers:`` mapping::

    trackers:
      wandb: {project: my-project}        # offline by default: `wandb sync` later
      mlflow: {}                          # file store <study>/mlruns
      tensorboard: {}                     # event files under <study>/tensorboard

:func:`mirror_scalars` (called when a study run ends) and :func:`mirror_figures`
(called when a report is built) read the study directory and do nothing when its
spec names no tracker. Mirroring is idempotent, and a tracker that fails prints
one warning line and never touches the study's data. See docs/trackers.md.

The tracker modules import their packages (wandb, mlflow, tensorboard) only when
they run, so ``import widthwise`` stays light.
"""

from __future__ import annotations

from os import PathLike
from typing import Any

from widthwise.registry import Registry

TRACKERS: Registry[Any] = Registry("tracker")
"""Tracker classes (:class:`widthwise.trackers.base.Tracker`) by spec name."""


def mirror_scalars(study_path: str | PathLike[str]) -> None:
    """Mirror every scalar of the study (per width: mean over seeds and each seed) to the
    trackers its spec names; nothing when it names none. Never raises for a tracker's
    failure: that prints one warning line."""
    from widthwise.trackers.mirror import mirror_scalars as _mirror

    _mirror(study_path)


def mirror_figures(study_path: str | PathLike[str], report_dir: str | PathLike[str]) -> None:
    """Mirror the report's PNG figures (``report_dir/figures/*.png``) to the trackers the
    study's spec names; nothing when it names none. Never raises for a tracker's failure."""
    from widthwise.trackers.mirror import mirror_figures as _mirror

    _mirror(study_path, report_dir)


# Built-in trackers register themselves; each imports its package lazily.
from widthwise.trackers import mlflow_tracker, tensorboard_tracker, wandb_tracker  # noqa: E402

__all__ = [
    "TRACKERS",
    "mirror_figures",
    "mirror_scalars",
    "mlflow_tracker",
    "tensorboard_tracker",
    "wandb_tracker",
]
