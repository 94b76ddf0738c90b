"""A study along depth: ``depths: [...]`` runs one width study per depth and reads them
as one Dataset with a ``depth`` dim, analysed along depth as along width (issue 15).

Depth changes the architecture, so the depths cannot be members of one vectorized
ensemble (as seeds and sweep points are): each depth ``d`` is a whole width study in
``<out>/depth-<d>/`` (its spec is the study's with ``model.options.depth = d`` and no
``depths``; :meth:`widthwise.spec.StudySpec.at_depth`), run, resumed, shown and
reported exactly as any width study. ``<out>/depths.json`` (written atomically, with a
crc32) names the depths and the spec's hash, so a rerun with another spec is refused,
and the whole of every depth's spec is checked before anything is written.

Analysis along depth uses the width machinery with ``dim="depth"`` at each width: the
consistency horizon against the *deepest* (:func:`depth_horizons`), and, with an lr
sweep, the μTransfer verdict from the shallowest to the deepest
(:func:`depth_transfer`; Bordelon et al. 2023, Yang et al. 2023 "Tensor Programs VI":
under depth-muP the optimal lr should not move with depth). docs/depth.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from widthwise.errors import StoreError

if TYPE_CHECKING:
    import xarray as xr
    from rich.console import Console

    from widthwise.spec import StudySpec

DEPTHS_FILE = "depths.json"
FORMAT_VERSION = 1


def depth_dirname(depth: int) -> str:
    """The directory of one depth's width study inside a depth study: ``depth-<d>``."""
    return f"depth-{int(depth)}"


def is_depth_study(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a depth study (its ``depths.json``)."""
    return (Path(path) / DEPTHS_FILE).is_file()


def read_depths(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``depths.json`` of a depth study, checked: one-line :class:`StoreError` naming the
    file when it is unreadable, damaged (crc32) or does not list distinct depths."""
    from widthwise.store.files import ChecksumError, verify_checksum

    file = Path(path) / DEPTHS_FILE
    try:
        data = json.loads(file.read_text())
        data = verify_checksum(data)
    except FileNotFoundError:
        raise StoreError(f"{path}: not a depth study (no {DEPTHS_FILE})") from None
    except ChecksumError:
        raise StoreError(
            f"{file}: damaged (its content does not match its crc32); the depth study is corrupt"
        ) from None
    except (OSError, ValueError) as err:
        why = " ".join(str(err).split())[:120]
        raise StoreError(f"{file}: unreadable ({type(err).__name__}: {why})") from None
    depths = data.get("depths") if isinstance(data, dict) else None
    ok = (
        isinstance(depths, list)
        and len(depths) >= 1
        and all(type(d) is int and 1 <= d <= 1000 for d in depths)
        and len(set(depths)) == len(depths)
        and isinstance(data.get("spec_hash"), str)
    )
    if not ok:
        raise StoreError(
            f"{file}: corrupt (depths must be distinct integers from 1 to 1000; got {depths!r:.60})"
        )
    return data


def run_depths(
    spec: StudySpec,
    *,
    progress: bool = False,
    console: Console | None = None,
    allow_code: bool = False,
    trusted_imports: Sequence[str] = (),
    estimate: Callable[[str], None] | None = None,
    from_spec: bool = True,
) -> Path:
    """Run (or resume) every depth of ``spec`` (``spec.depths`` set), shallowest first;
    returns the depth study's directory. Every depth's spec passes every check of
    :func:`widthwise.study.run` before anything is written (a deepest depth that does
    not fit in memory refuses the whole study); then ``depths.json`` is written and each
    depth runs as a width study in ``depth-<d>/`` (finished ones are skipped)."""
    from widthwise.store.files import atomic_write_json, with_checksum
    from widthwise.store.study_dir import MANIFEST, spec_changes
    from widthwise.study import preflight, run

    assert spec.depths is not None
    subs = [spec.at_depth(d) for d in spec.depths]
    for sub in subs:
        preflight(sub, allow_code, trusted_imports, from_spec=from_spec)
    out = spec.out_dir()
    if (out / MANIFEST).exists():
        raise StoreError(f"out: {out} holds a width study, not a depth study; give another --out")
    dump = spec.model_dump(mode="json")
    if is_depth_study(out):
        old = read_depths(out)
        if old["spec_hash"] != spec.hash():
            changed = "; ".join(spec_changes(old.get("spec", {}), dump)) or "the spec"
            raise StoreError(
                f"{out}: a depth study made by another spec ({changed}); give another --out "
                "or the study's own spec to resume it"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(f"out: cannot create {out}: {err}") from None
    atomic_write_json(
        out / DEPTHS_FILE,
        with_checksum(
            {
                "format": FORMAT_VERSION,
                "kind": "depth study",
                "name": spec.name,
                "depths": list(spec.depths),
                "spec_hash": spec.hash(),
                "spec": dump,
            }
        ),
    )
    for d, sub in zip(spec.depths, subs):
        if console is not None and progress:
            console.print(f"[bold]depth {d}[/] → {sub.out_dir()}", soft_wrap=True)
        run(
            sub,
            executor=None if from_spec else sub.executor,
            progress=progress,
            console=console,
            allow_code=allow_code,
            trusted_imports=trusted_imports,
            estimate=estimate,
        )
    return out


def started_depths(path: str | os.PathLike[str]) -> list[int]:
    """The depths of the depth study at ``path`` whose width study exists (has its manifest)."""
    from widthwise.store.study_dir import MANIFEST

    return [
        d
        for d in read_depths(path)["depths"]
        if (Path(path) / depth_dirname(d) / MANIFEST).exists()
    ]


_SHARED = ("test_label", "test_target")
"""The probe set's targets: one stream, the same at every depth (checked equal)."""


def open_depth_study(path: str | os.PathLike[str]) -> xr.Dataset:
    """The depth study at ``path`` as one Dataset with dims (depth, width, seed, ...).

    Each started depth's width study is read by :func:`widthwise.store.open_study` and
    the depths are stacked along ``depth`` (outer join: a width or step one depth has
    not reached is NaN there; variables equal at every depth, e.g. the probe set's
    labels, stay without the dim). ``attrs`` are the shallowest depth's, plus
    ``depths`` (those read) and ``planned_depths`` (all listed). A study with no depth
    started is a one-line :class:`StoreError`."""
    import xarray as xr

    from widthwise.store.open import open_study

    path = Path(path)
    planned = read_depths(path)["depths"]
    present = started_depths(path)
    if not present:
        raise StoreError(f"{path}: a depth study with no depth started yet (depths {planned})")
    parts = [open_study(path / depth_dirname(d)) for d in present]
    try:
        ds = xr.concat(
            parts,
            dim=xr.DataArray(np.asarray(present, dtype=np.int64), dims="depth", name="depth"),
            data_vars=[
                v for v in dict.fromkeys(k for p in parts for k in p.data_vars) if v not in _SHARED
            ],
            coords="different",
            compat="equals",
            join="outer",
            combine_attrs="override",
        )
    except (ValueError, TypeError) as err:
        why = " ".join(str(err).split())[:160]
        raise StoreError(
            f"{path}: its depths hold arrays that do not fit together ({why})"
        ) from None
    ds.attrs.update(depths=present, planned_depths=list(planned), depth_study=1)
    return ds


# -- analysis along depth --------------------------------------------------------------------


def at_tuned_point(ds: xr.Dataset) -> tuple[xr.Dataset, str]:
    """A depth study's Dataset at the sweep point tuned at the deepest depth
    (:func:`widthwise.analysis.transfer.tuned_point`) and the words saying so
    (" at the tuned point lr = 0.01"); unchanged and "" without a sweep."""
    if not ds.attrs.get("sweep"):
        return ds, ""
    from widthwise.analysis.transfer import select_point, tuned_point

    point = tuned_point(ds.isel(depth=-1))
    at = ", ".join(f"{k} = {v:g}" for k, v in point.items())
    return select_point(ds, point), f" at the tuned point {at}"


def final_loss_along_depth(ds: xr.Dataset, width: int, var: str = "train_loss") -> xr.DataArray:
    """Each member's final ``var`` at ``width`` (depth, [sweep dims], seed), as
    :func:`widthwise.analysis.transfer.loss_at` takes it across widths: the last steps
    every depth reached, and its ``diverged`` coordinate."""
    from widthwise.analysis.transfer import loss_at

    one = ds.sel(width=width, drop=True).rename(depth="width")  # "every width reached"
    return loss_at(one, var).rename(width="depth")


def depth_horizons(ds: xr.Dataset, tol: float | None = None) -> dict[int, str]:
    """Per width present at every depth: one sentence, up to which step each depth's loss
    curve agrees with the deepest's within ``tol`` (default 5 %), judged as
    :func:`widthwise.analysis.study_horizon.horizon_summary` judges widths (seed
    bootstrap, the same margins) with ``dim="depth"``. Empty when fewer than 2 depths."""
    from widthwise.analysis.study_horizon import TOL, horizon_summary

    if "depth" not in ds.dims or ds.sizes["depth"] < 2:
        return {}
    at_ds, at = at_tuned_point(ds)
    losses = at_ds[[v for v in ("train_loss", "test_loss") if v in at_ds]]
    out = {}
    for w in ds["width"].values.tolist():
        one = losses.sel(width=w)
        if any(
            not np.isfinite(one[v].values).any(axis=tuple(range(1, one[v].ndim))).all()
            for v in one.data_vars
        ):  # a depth without this width's data: nothing to compare there
            continue
        sentence = horizon_summary(one, TOL if tol is None else tol, dim="depth")
        if sentence:
            out[int(w)] = f"At width {int(w)}{at}: {sentence[0].lower()}{sentence[1:]}"
    return out


def depth_transfer(ds: xr.Dataset) -> dict[int, str]:
    """Per width, with an ``lr`` sweep: does the optimal lr move from the shallowest to
    the deepest depth (:func:`widthwise.analysis.transfer.transfer_verdict` with
    ``width_dim="depth"``, tolerance ×2)? Empty without an lr sweep or 2 depths."""
    from widthwise.analysis._checks import AnalysisError
    from widthwise.analysis.transfer import optimal_lr, transfer_sentence, transfer_verdict

    if "lr" not in (ds.attrs.get("sweep") or {}) or ds.sizes.get("depth", 0) < 2:
        return {}
    out = {}
    for w in ds["width"].values.tolist():
        try:
            loss = final_loss_along_depth(ds, w)
            opt = optimal_lr(loss, width_dim="depth")
            v = transfer_verdict(opt, width_dim="depth", pairs=("ends",))
        except (AnalysisError, KeyError, ValueError):
            continue
        out[int(w)] = f"At width {int(w)}: {transfer_sentence(v)}"
    return out


# -- what `widthwise show` prints ------------------------------------------------------------


def _along(path: Path) -> tuple[dict[int, str], dict[int, str]]:
    """The along-depth horizon and transfer sentences, per width ({} when not computable)."""
    try:
        ds = open_depth_study(path)
    except StoreError:
        return {}, {}
    return depth_horizons(ds), depth_transfer(ds)


def show_depth_data(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``widthwise show --json`` of a depth study: each started depth's own show data,
    and the along-depth sentences per width (docs/cli.md)."""
    from widthwise.show import show_data

    path = Path(path)
    info = read_depths(path)
    present = started_depths(path)
    depths = [{"depth": d, **show_data(path / depth_dirname(d))} for d in present]
    horizons, transfer = _along(path) if len(present) >= 2 else ({}, {})
    done = sum(d["done"] == len(d["widths"]) for d in depths)
    return {
        "study": str(path),
        "name": str(info.get("name", "")),
        "depth_study": True,
        "planned_depths": info["depths"],
        "depths": depths,
        "depth_horizon": {str(w): s for w, s in horizons.items()},
        "depth_transfer": {str(w): s for w, s in transfer.items()},
        "summary": _final_line(info, done),
        "done": done,
    }


def _depths_done(path: Path, present: list[int]) -> int:
    """Depths whose every width is done (read from the files, as ``show`` reads them)."""
    from widthwise.show import read_study

    return sum(
        all(st.state == "done" for st in read_study(path / depth_dirname(d)).states)
        for d in present
    )


def _final_line(info: dict[str, Any], done: int) -> str:
    planned = info["depths"]
    text = f"{info.get('name', '')}: {done} of {len(planned)} depths done"
    if done < len(planned):
        text += "; `widthwise run` resumes the rest"
    return text


def print_depth_show(
    path: str | os.PathLike[str], console: Console, *, quiet: bool = False
) -> None:
    """Print a depth study: each started depth as ``widthwise show`` prints a width
    study, then the along-depth horizon (and transfer) sentences."""
    from rich.markup import escape

    from widthwise.show import print_show

    path = Path(path)
    info = read_depths(path)
    present = started_depths(path)
    last = _final_line(info, _depths_done(path, present))
    if quiet:
        console.print(escape(last), soft_wrap=True, highlight=False)
        return
    console.print(
        f"[bold]{escape(str(info.get('name', '')))}[/]: depth study, depths {info['depths']} "
        f"({len(present)} started)",
        soft_wrap=True,
    )
    for d in present:
        console.rule(f"depth {d}")
        print_show(path / depth_dirname(d), console)
    if len(present) >= 2:
        horizons, transfer = _along(path)
        console.rule("along depth")
        for line in [*horizons.values(), *transfer.values()] or [
            "Along depth: nothing to compare yet (no width has data at every depth)."
        ]:
            console.print(escape(line), soft_wrap=True, highlight=False)
    console.print(escape(last), soft_wrap=True, highlight=False)
