"""``mirror_scalars`` and ``mirror_figures``: run every tracker the study's spec names,
turning any tracker failure into one warning line (the study's data is never touched)."""

from __future__ import annotations

import sys
from os import PathLike
from pathlib import Path

from widthwise.store.study_dir import StudyDir
from widthwise.trackers import TRACKERS
from widthwise.trackers.base import Study, Tracker


def warn(message: str) -> None:
    """Print one warning line to stderr."""
    text = " ".join(str(message).split())
    if len(text) > 400:
        text = text[:397] + "..."
    print(f"widthwise: warning: {text}", file=sys.stderr, flush=True)


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _open(study_path: str | PathLike[str]) -> Study | None:
    """The study, or None when its spec names no tracker (or, after a warning, when it
    cannot be read)."""
    try:
        if not (StudyDir(Path(study_path)).read_spec_dict() or {}).get("trackers"):
            return None  # the common case: read nothing more, print nothing
        return Study(Path(study_path))
    except Exception as err:  # noqa: BLE001  (a tracker must never fail the study)
        warn(f"trackers: cannot read the study at {study_path} ({_describe(err)}); not mirrored")
        return None


def _trackers(study: Study) -> list[tuple[str, Tracker | None]]:
    """(name, tracker) per spec entry; None (after a warning) where it cannot be set up."""
    out: list[tuple[str, Tracker | None]] = []
    for name, options in study.trackers.items():
        try:
            opts = TRACKERS.validate_options(name, options if isinstance(options, dict) else {})
            out.append((name, TRACKERS.get(name)(opts, study)))
        except Exception as err:  # noqa: BLE001
            warn(f"trackers.{name}: not mirrored ({_describe(err)}); the study is unaffected")
            out.append((name, None))
    return out


def mirror_scalars(study_path: str | PathLike[str]) -> None:
    """Mirror the study's scalars to every tracker its spec names (see
    :mod:`widthwise.trackers.base` for what and how). Idempotent; never raises."""
    study = _open(study_path)
    if study is None:
        return
    for name, tracker in _trackers(study):
        if tracker is None:
            continue
        try:
            tracker.mirror_scalars()
        except Exception as err:  # noqa: BLE001
            warn(
                f"trackers.{name}: mirroring scalars failed ({_describe(err)}); "
                "the study is unaffected"
            )


def mirror_figures(study_path: str | PathLike[str], report_dir: str | PathLike[str]) -> None:
    """Mirror ``report_dir/figures/*.png`` to every tracker the study's spec names.
    Idempotent; never raises."""
    study = _open(study_path)
    if study is None:
        return
    pngs = sorted(Path(report_dir, "figures").glob("*.png"))
    if not pngs:
        return
    for name, tracker in _trackers(study):
        if tracker is None:
            continue
        try:
            tracker.mirror_figures(pngs)
        except Exception as err:  # noqa: BLE001
            warn(
                f"trackers.{name}: mirroring figures failed ({_describe(err)}); "
                "the report is unaffected"
            )
