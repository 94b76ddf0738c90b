"""Systematic store damage: every file kind of a study directory × every damage mode.

Two tiny studies are built once (an MLP, widths 16 and 32, 2 seeds, 20 steps, probes
``train_loss``, ``test`` and ``kernels``): one finished, one interrupted (width 32 stopped
at step 13, checkpoints at 5 and 10, stale lock files as a killed run leaves them). For
every file kind found in them — manifest, stored spec, probe set, lock files, and each
width's status, scalar log, dims/coords/npz of every probe, both checkpoints — and every
damage mode (truncated to half, one bit flipped in the middle, deleted, swapped with the
same file of the other width), a copy is damaged and

- ``open_study``: refuses in one line, or returns data identical to the undamaged
  study's, or flags the damaged width (``damaged``/``unknown``, ``missing_records``):
  never a value that is not the undamaged one, never a value missing without a flag;
- ``widthwise show DIR``: exit 2 with at most 3 lines on stderr, or exit 0 naming the
  state of every flagged width; never a traceback;
- ``widthwise run SPEC --out DIR``: exit 2 with at most 3 lines on stderr and no
  traceback, or a recovery whose data equal the uninterrupted study's bit for bit.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from conftest import tiny_spec_dict, write_spec
from test_resume import assert_identical_results, interrupt_at

import widthwise
from widthwise.cli import main
from widthwise.errors import UserError

pytestmark = pytest.mark.usefixtures("single_thread")

SPEC = {
    "steps": 20,
    "checkpoint_every": 5,
    "probes": {
        "train_loss": {"every": 1},
        "test": {"every": 5},
        "kernels": {"every": 10, "points": 8},
    },
}
INTERRUPTED_WIDTH, INTERRUPTED_AT, LAST_CHECKPOINT = 32, 13, 10

STUDY_KINDS = ["manifest.json", "spec.yaml", "probe_set.npz", "lock"]
WIDTH_KINDS = [
    "status.json",
    "scalars.jsonl",
    "checkpoint.pt",
    "checkpoint.prev.pt",
    "lock",
    "arrays/test/dims.json",
    "arrays/test/<step>.npz",
    "arrays/kernels/dims.json",
    "arrays/kernels/coords.json",
    "arrays/kernels/<step>.npz",
]
MODES = ["truncate", "flip", "delete", "swap"]
STUDIES = {"finished": 16, "interrupted": INTERRUPTED_WIDTH}
"""Each study and the width whose files are damaged (swapped with the other width's)."""
OTHER = {16: 32, 32: 16}


def kinds_of(study: str) -> list[str]:
    """The file kinds a study holds (a test below checks against the directories)."""
    lock = study == "interrupted"  # a killed run leaves its lock files behind
    top = [k for k in STUDY_KINDS if lock or k != "lock"]
    per_width = [f"width/{k}" for k in WIDTH_KINDS if lock or k != "lock"]
    return top + per_width


def cases() -> list[Any]:
    out = []
    for study in STUDIES:
        for kind in kinds_of(study):
            for mode in MODES:
                if mode == "swap" and not kind.startswith("width/"):
                    continue  # a study has one of these: nothing to swap with
                if mode == "swap" and kind == "width/lock":
                    continue  # the other (finished) width has no lock file
                out.append(pytest.param(study, kind, mode, id=f"{study}-{kind}-{mode}"))
    return out


# -- the two studies ----------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def studies(single_thread: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """{"spec": the spec file, "finished"/"interrupted": (dir, open_study of it)}."""
    root = tmp_path_factory.mktemp("damage")
    spec = write_spec(root / "s.yaml", tiny_spec_dict(root / "finished", **SPEC))
    finished = widthwise.run(spec)
    interrupted = root / "interrupted"
    with pytest.MonkeyPatch.context() as mp:
        interrupt_at(mp, INTERRUPTED_WIDTH, INTERRUPTED_AT)
        with pytest.raises(KeyboardInterrupt):
            widthwise.run(spec, out=interrupted)
    stale = f'{{"pid": {_dead_pid()}, "host": "{socket.gethostname()}", "since": "then"}}\n'
    for d in (interrupted, interrupted / f"width_{INTERRUPTED_WIDTH:05d}"):
        (d / "lock").write_text(stale)  # as a SIGKILLed run leaves them
    return {
        "spec": spec,
        "finished": (finished, widthwise.open_study(finished)),
        "interrupted": (interrupted, widthwise.open_study(interrupted)),
    }


def kind_of(rel: Path) -> str:
    """``width/arrays/test/<step>.npz`` for ``width_00016/arrays/test/000000010.npz``."""
    parts = list(rel.parts)
    if parts[0].startswith("width_"):
        parts[0] = "width"
    if re.fullmatch(r"\d{9}\.npz", parts[-1]):
        parts[-1] = "<step>.npz"
    return "/".join(parts)


@pytest.mark.parametrize("study", list(STUDIES))
def test_every_file_kind_is_damaged(studies: dict[str, Any], study: str) -> None:
    """The kinds the matrix damages are exactly the files the study holds."""
    path = studies[study][0]
    found = {kind_of(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}
    assert found == set(kinds_of(study))


def victim(study_dir: Path, study: str, kind: str) -> tuple[Path, Path | None]:
    """The file of ``kind`` to damage and the other width's same file (None: none)."""
    if not kind.startswith("width/"):
        return study_dir / kind, None
    width = STUDIES[study]
    rel = kind.removeprefix("width/")
    wd, other = study_dir / f"width_{width:05d}", study_dir / f"width_{OTHER[width]:05d}"
    if rel.endswith("<step>.npz"):
        files = sorted((wd / rel).parent.glob("*.npz"))
        if study == "interrupted":  # a step the resume keeps (before its checkpoint)
            files = [f for f in files if int(f.stem) < LAST_CHECKPOINT]
        path = files[len(files) // 2]
        return path, other / path.relative_to(wd)
    return wd / rel, other / rel


def damage(path: Path, partner: Path | None, mode: str) -> None:
    data = path.read_bytes()
    if mode == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif mode == "flip":  # the lowest bit: a digit stays a digit, a letter a letter
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :])
    elif mode == "delete":
        path.unlink()
    else:
        assert partner is not None
        tmp = path.with_name(path.name + ".swap")
        os.replace(path, tmp)
        os.replace(partner, path)
        os.replace(tmp, partner)


# -- what counts as right -----------------------------------------------------------


def newly_flagged(ds: xr.Dataset, ref: xr.Dataset) -> set[int]:
    """Widths whose state now says something is wrong (and did not before)."""
    now = dict(zip(ds.width.values.tolist(), ds.status.values.tolist()))
    then = dict(zip(ref.width.values.tolist(), ref.status.values.tolist()))
    return {w for w, s in now.items() if s != then.get(w) and s != "done"}


def lost_values(ds: xr.Dataset, ref: xr.Dataset) -> dict[int, set[Any]]:
    """Per width, (variable, step) where the undamaged study has a value and ``ds`` has
    none. Asserts that every value ``ds`` does have is the undamaged one."""
    lost: dict[int, set[Any]] = {}
    for name, b in ref.data_vars.items():
        if b.dtype.kind != "f" or "width" not in b.dims:
            if name in ds and "width" not in b.dims:  # probe set targets / labels
                np.testing.assert_array_equal(ds[name].values, b.values)
            continue
        step_dims = [d for d in b.dims if d == "step" or str(d).endswith("_step")]
        if name not in ds:
            for w in ref.width.values.tolist():
                lost.setdefault(w, set()).add((name, None))
            continue
        a, b = xr.align(ds[name], b, join="outer")
        fa, fb = np.isfinite(a), np.isfinite(b)
        assert not bool((fa & ~fb).any()), f"{name}: values the undamaged study does not have"
        both = (fa & fb).values
        assert np.array_equal(a.values[both], b.values[both]), f"{name}: values changed"
        gone = fb & ~fa
        for w in ref.width.values.tolist():
            g = gone.sel(width=w)
            if not bool(g.any()):
                continue
            if not step_dims:  # e.g. wall_time
                lost.setdefault(w, set()).add((name, None))
                continue
            sd = step_dims[0]
            at = g.any([d for d in g.dims if d != sd])
            lost.setdefault(w, set()).update((name, int(t)) for t in at[sd].values[at.values])
    return lost


def check_open(path: Path, ref: xr.Dataset, study: str) -> tuple[str, dict[int, str]]:
    """``refused``, ``identical`` or ``flagged``, and the flagged widths' states."""
    try:
        ds = widthwise.open_study(path)
    except UserError as err:
        assert "\n" not in str(err) and len(str(err)) < 400, str(err)
        return "refused", {}
    flagged = newly_flagged(ds, ref)
    for coord in ref.coords:
        if coord not in ds.coords:
            assert flagged, f"coordinate {coord} lost without a flag"
    lost = lost_values(ds, ref)
    for w, what in lost.items():
        if w in flagged:
            continue
        if study == "interrupted" and w == INTERRUPTED_WIDTH:  # after the checkpoint: resumed
            what = {(n, s) for n, s in what if s is None or s < LAST_CHECKPOINT}
        assert not what, f"width {w}: {sorted(what, key=str)[:5]} missing without a flag"
    for w in ref.width.values.tolist():  # a width whose state holds tells the truth
        if w not in flagged and w in ds.width.values:
            for name in ("diverged_step", "step_reached"):
                np.testing.assert_array_equal(ds[name].sel(width=w), ref[name].sel(width=w))
            assert ds.status.sel(width=w).item() == ref.status.sel(width=w).item()
    if not flagged and ds.attrs["skipped_records"] == ref.attrs["skipped_records"]:
        xr.testing.assert_identical(ds, ref)
        return "identical", {}
    states = {w: str(ds.status.sel(width=w).item()) for w in flagged}
    assert "done" not in states.values()
    return "flagged", states


def check_exit_2(code: int, err: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 3, lines
    assert lines[-1].startswith("error: "), lines


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return code, out, err


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich does not wrap the lines looked for
    # the horizon sentence (an analysis of the loss curves) is not what is tested here,
    # and it is most of the time `show` takes: a stand-in keeps the matrix within a minute
    import widthwise.analysis.study_horizon as study_horizon

    monkeypatch.setattr(study_horizon, "horizon_summary", lambda ds: "")


@pytest.mark.parametrize(("study", "kind", "mode"), cases())
def test_damage_is_refused_recovered_or_flagged(
    studies: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    study: str,
    kind: str,
    mode: str,
) -> None:
    pristine, ref = studies[study]
    case = tmp_path / "case"
    shutil.copytree(pristine, case)
    path, partner = victim(case, study, kind)
    damage(path, partner, mode)

    opened, flagged = check_open(case, ref, study)

    code, out, err = run_cli(["show", str(case)], capsys)
    if opened == "refused" or code != 0:
        check_exit_2(code, err)
    for w, state in flagged.items():  # show says what open_study says
        assert f"width {w}: {state}" in out, (w, state, out)

    code, out, err = run_cli(["run", str(studies["spec"]), "--out", str(case), "--quiet"], capsys)
    if code != 0:
        check_exit_2(code, err)
        return
    assert len(err.strip().splitlines()) <= 3, err  # each recovery said in one line
    ds = widthwise.open_study(case)
    assert ds.status.values.tolist() == ["done", "done"]
    assert_identical_results(ds, studies["finished"][1])
    assert not list(case.rglob("lock"))
