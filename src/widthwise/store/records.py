"""What one width's directory holds, read and checked: records, arrays, status, damage.

Only the standard library and numpy (no torch, no xarray), so ``widthwise show`` can
use it and still answer at once; ``open_study`` (``store/open.py``), the resume check
of a run (``widthwise.job``) and the plan of ``widthwise run`` read a width through
the same functions, so they agree on what is intact, missing or damaged.

Identity stamps make a file moved from another width (or another step) detectable:
each scalar record carries ``"width"``, each step's npz a ``_stamp`` array
``[width, step]``, ``status.json`` its ``width``; every record and JSON document also
carries its CRC-32 (:mod:`widthwise.store.files`). Files written before these stamps
existed are read as they are.

What a width *should* hold is in its ``status.json``: ``records`` counts, per probe and
kind (``scalars``: lines of ``scalars.jsonl``, ``arrays``: npz files, ``coords``: its
``coords.json``), what was logged at the steps before ``checkpoint_step`` (every step
once the width is ``done``). :func:`find_damage` compares that with what is on disk.
"""

from __future__ import annotations

import re
import struct
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from widthwise.store.files import read_json, read_lines

STAMP = "_stamp"
"""npz member holding ``[width, step]`` of the file (not a variable)."""
SCALARS = "scalars.jsonl"
STATUS = "status.json"
KINDS = ("scalars", "arrays", "coords")
"""What a probe can write: lines of the scalar log, one npz per step, its coords.json."""

_WIDTH_DIR = re.compile(r"^width_(\d+)$")
_NPZ_ERRORS = (
    OSError,
    ValueError,
    KeyError,
    EOFError,
    struct.error,
    zlib.error,
    zipfile.BadZipFile,
)


def width_of_dir(path: str | Path) -> int | None:
    """The width a ``width_00064`` directory is named for (None for another name)."""
    m = _WIDTH_DIR.match(Path(path).name)
    return int(m.group(1)) if m else None


def _brief(err: BaseException) -> str:
    why = " ".join(str(err).split())[:80]
    return f"{type(err).__name__}: {why}" if why else type(err).__name__


# -- status.json ---------------------------------------------------------------------


def read_status(width_dir: Path, width: int | None = None) -> tuple[dict[str, Any], str]:
    """``(status, problem)`` of ``width_dir/status.json``: the mapping (``{}`` when it
    cannot be used) and what is wrong with it (``""`` when nothing): missing,
    unreadable, a checksum mismatch, or the status of another width."""
    path = Path(width_dir) / STATUS
    try:
        status = read_json(path)
    except FileNotFoundError:
        return {}, "missing"
    except (OSError, ValueError) as err:  # ValueError: bad JSON, bad UTF-8, checksum
        return {}, f"unreadable ({_brief(err)})"
    if not isinstance(status, dict):
        return {}, f"unreadable (a {type(status).__name__}, not a mapping)"
    width = width_of_dir(width_dir) if width is None else width
    owner = status.get("width")
    if owner is not None and width is not None and owner != width:
        return {}, f"belongs to width {owner!r}, not {width}"
    return status, ""


def status_values(status: dict[str, Any], n_seeds: int) -> tuple[str, float, list[int]]:
    """(state, wall time, diverged step per seed) of a ``status.json`` mapping, sanitized:
    ``unknown`` / NaN / -1 where a field is missing or malformed."""
    state = status.get("state")
    state = state if isinstance(state, str) and state else "unknown"
    wall = status.get("wall_time")
    wall = float(wall) if isinstance(wall, int | float) and not isinstance(wall, bool) else np.nan
    div = status.get("diverged_step")
    ok = isinstance(div, list) and len(div) == n_seeds and all(type(d) is int for d in div)
    return state, wall, list(div) if ok else [-1] * n_seeds


# -- scalar records ------------------------------------------------------------------


def parse_record(
    rec: dict[str, Any], width: int | None, n_seeds: int | None
) -> tuple[str, int, dict[str, list[float]]] | None:
    """``(probe, step, {var: per-seed values})`` of one scalar record, or None when it is
    not one: malformed, another width's (``"width"``), or (given ``n_seeds``) not one
    value per seed."""
    try:
        probe, step, vars_ = rec["probe"], rec["step"], rec["vars"]
        if not isinstance(probe, str) or not isinstance(vars_, dict):
            return None
        if isinstance(step, bool) or not isinstance(step, int):
            step = int(step)
        owner = rec.get("width")
        if owner is not None and width is not None and owner != width:
            return None
        parsed = {}
        for name, values in vars_.items():
            if not isinstance(values, list):
                return None
            if n_seeds is not None and len(values) != n_seeds:
                return None
            parsed[str(name)] = [float(v) for v in values]
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return probe, step, parsed


def read_scalars(
    width_dir: Path, width: int | None = None, n_seeds: int | None = None
) -> tuple[dict[tuple[str, str], dict[int, list[float]]], int]:
    """{(probe, var): {step: per-seed values}} of ``scalars.jsonl`` and the count of
    skipped records (torn, corrupt, checksum-failing, another width's, not one value per
    seed); a skipped record never replaces a good one."""
    width = width_of_dir(width_dir) if width is None else width
    records, bad = read_lines(Path(width_dir) / SCALARS)
    out: dict[tuple[str, str], dict[int, list[float]]] = {}
    for rec in records:
        parsed = parse_record(rec, width, n_seeds)
        if parsed is None:
            bad += 1
            continue
        probe, step, values = parsed
        for name, v in values.items():
            out.setdefault((probe, name), {})[step] = v
    return out, bad


# -- arrays --------------------------------------------------------------------------


def valid_dims(dims: Any) -> bool:
    """``dims.json`` content: {var: [dim names, first "seed"]}."""
    return isinstance(dims, dict) and all(
        isinstance(d, list) and d and d[0] == "seed" and all(isinstance(x, str) for x in d)
        for d in dims.values()
    )


def stamp_problem(arrays: dict[str, np.ndarray], width: int | None, step: int) -> str:
    """What is wrong with an npz's ``_stamp`` (``""``: nothing, or no stamp at all)."""
    stamp = arrays.get(STAMP)
    if stamp is None:
        return ""
    try:
        owner, at = (int(x) for x in np.asarray(stamp).reshape(-1)[:2])
    except (TypeError, ValueError):
        return "unreadable stamp"
    if width is not None and owner != width:
        return f"belongs to width {owner}"
    if at != step:
        return f"holds step {at}"
    return ""


def load_npz(path: Path, width: int | None, step: int) -> dict[str, np.ndarray] | None:
    """The arrays of one step's npz (CRCs checked by reading, ``allow_pickle=False``), its
    stamp checked and removed; None when it is unreadable or another width's or step's."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except _NPZ_ERRORS:
        return None
    if stamp_problem(arrays, width, step):
        return None
    arrays.pop(STAMP, None)
    return arrays


def zip_damage(path: Path) -> str | None:
    """What is wrong with a zip file (checkpoint, npz), or None if every CRC matches."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, zlib.error, struct.error) as err:
        return f"not a readable zip file: {type(err).__name__}"
    return None if bad is None else f"CRC mismatch in {bad}"


@dataclass
class WidthRecords:
    """Everything usable in one width's directory, checked.

    ``scalars``: {(probe, var): {step: per-seed values}}; ``arrays``: {(probe, var):
    (dims, {step: array})}, arrays of one shape per variable with a leading seed dim
    (others skipped); ``coords``: {name: (dims, values)} from the probes' coords.json;
    ``bad``: records and files skipped; ``problems``: {file: what is wrong} for the
    files that describe a probe's arrays (dims.json, coords.json).
    """

    scalars: dict[tuple[str, str], dict[int, list[float]]] = field(default_factory=dict)
    arrays: dict[tuple[str, str], tuple[list[str], dict[int, np.ndarray]]] = field(
        default_factory=dict
    )
    coords: dict[str, tuple[list[str], list]] = field(default_factory=dict)
    bad: int = 0
    problems: dict[str, str] = field(default_factory=dict)
    array_vars: dict[str, list[str]] = field(default_factory=dict)
    """{probe: the variables its dims.json declares} (readable dims.json only)."""
    coord_probes: set[str] = field(default_factory=set)
    """Probes whose coords.json is intact."""

    def steps(self, probe: str, kind: str) -> set[int]:
        """Steps at which ``probe`` has an intact record of ``kind`` (``scalars``: a line;
        ``arrays``: every variable of its dims.json)."""
        if kind == "scalars":
            return {s for (p, _), by in self.scalars.items() if p == probe for s in by}
        if kind == "arrays":
            names = self.array_vars.get(probe)
            if not names:
                return set()
            per_var = [set(self.arrays.get((probe, n), ([], {}))[1]) for n in names]
            return set.intersection(*per_var)
        return set()


def load_width(width_dir: Path, n_seeds: int | None, width: int | None = None) -> WidthRecords:
    """Read and check one width's scalar log, arrays and coordinates (:class:`WidthRecords`;
    ``n_seeds`` None: records and arrays of any seed count are kept; ``width`` None: the
    directory's name says it)."""
    width_dir = Path(width_dir)
    width = width_of_dir(width_dir) if width is None else width
    out = WidthRecords()
    try:
        out.scalars, out.bad = read_scalars(width_dir, width, n_seeds)
    except OSError:  # e.g. scalars.jsonl is not a readable file: nothing from it is data
        out.scalars, out.bad = {}, 1
    arrays_dir = width_dir / "arrays"
    try:
        pdirs = sorted(p for p in arrays_dir.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        pdirs = []
    for pdir in pdirs:
        _load_probe_dir(pdir, width, n_seeds, out)
    return out


def _load_probe_dir(pdir: Path, width: int | None, n_seeds: int | None, out: WidthRecords) -> None:
    probe = pdir.name
    rel = f"arrays/{probe}"
    coords_path = pdir / "coords.json"
    if coords_path.exists():
        try:
            coords = read_json(coords_path)
            parsed = {str(name): (list(c["dims"]), list(c["values"])) for name, c in coords.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            out.problems[f"{rel}/coords.json"] = f"unreadable ({_brief(err)})"
        else:
            out.coords.update(parsed)
            out.coord_probes.add(probe)
    try:
        dims = read_json(pdir / "dims.json")
        problem = "" if valid_dims(dims) else 'not {var: ["seed", ...]}'
    except FileNotFoundError:
        dims, problem = None, "missing"
    except (OSError, ValueError) as err:
        dims, problem = None, f"unreadable ({_brief(err)})"
    files = sorted(f for f in pdir.glob("*.npz") if f.stem.isdigit())
    if problem:
        if files:  # arrays without their dims cannot be read: none of them is data
            out.problems[f"{rel}/dims.json"] = problem
            out.bad += 1
        return
    assert isinstance(dims, dict)
    out.array_vars[probe] = list(dims)
    loaded: dict[str, dict[int, np.ndarray]] = {}
    for f in files:
        step = int(f.stem)
        arrays = load_npz(f, width, step)
        if arrays is None:
            out.bad += 1  # partial, damaged or another width's file: never reported as data
            continue
        for name, arr in arrays.items():
            if name in dims and arr.ndim == len(dims[name]):
                loaded.setdefault(name, {})[step] = arr
            elif name in dims:
                out.bad += 1  # an array that does not match its declared dims
    for name, by_step in loaded.items():
        # one shape for all steps, with a leading seed dim; a file that differs is skipped
        shapes = Counter(
            a.shape for a in by_step.values() if n_seeds is None or a.shape[:1] == (n_seeds,)
        )
        if not shapes:
            out.bad += len(by_step)
            continue
        shape = shapes.most_common(1)[0][0]
        kept = {s: a for s, a in by_step.items() if a.shape == shape}
        out.bad += len(by_step) - len(kept)
        out.arrays[(probe, name)] = (list(dims[name]), dict(sorted(kept.items())))


# -- what should be there, and what is missing -------------------------------------------


@dataclass
class Damage:
    """What a width's status says was logged but is not on disk intact.

    ``missing``: {probe: {kind: records missing}}; ``files``: {file: what is wrong} for
    files a probe's arrays need (dims.json, coords.json).
    """

    missing: dict[str, dict[str, int]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.files) or any(n for k in self.missing.values() for n in k.values())

    def records(self, probe: str | None = None) -> int:
        """Records missing (scalar lines plus array files plus coords files) of ``probe``
        (all probes when None)."""
        probes = self.missing.values() if probe is None else [self.missing.get(probe, {})]
        return sum(n for kinds in probes for n in kinds.values())

    def describe(self) -> str:
        """``24 records missing in scalars.jsonl (train_loss 20, test 4); 1 record missing
        in arrays/test/; arrays/kernels/coords.json unreadable (...)``."""
        parts = []
        for kind in ("scalars", "arrays"):
            for where, per_probe in self._by_file(kind):
                n = sum(per_probe.values())
                what = ", ".join(f"{p} {k}" for p, k in per_probe.items())
                detail = f" ({what})" if kind == "scalars" and len(per_probe) > 1 else ""
                parts.append(f"{n} record{'s' if n != 1 else ''} missing in {where}{detail}")
        for probe, kinds in self.missing.items():
            name = f"arrays/{probe}/coords.json"
            if kinds.get("coords") and name not in self.files:
                parts.append(f"{name} missing")
        parts += [f"{f} {why}" for f, why in self.files.items()]
        return "; ".join(parts)

    def _by_file(self, kind: str) -> list[tuple[str, dict[str, int]]]:
        found = {p: k[kind] for p, k in self.missing.items() if k.get(kind)}
        if not found:
            return []
        if kind == "scalars":
            return [(SCALARS, found)]
        return [(f"arrays/{p}/", {p: n}) for p, n in found.items()]


def _count(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def find_damage(status: dict[str, Any], records: WidthRecords) -> Damage | None:
    """What ``status`` says was logged that ``records`` lacks; None when the status does
    not say (written by an earlier version, or not a width that logged anything yet).

    Counted: a done width's records at every step, any other width's at the steps before
    its ``checkpoint_step`` (a resume starts there and recomputes what came after).
    """
    expected = status.get("records")
    if not isinstance(expected, dict):
        return None
    done = status.get("state") == "done"
    before = status.get("checkpoint_step")
    if not done and (type(before) is not int or before < 0):
        return None
    damage = Damage()
    for probe, kinds in expected.items():
        if not isinstance(kinds, dict):
            continue
        for kind in ("scalars", "arrays"):
            want = _count(kinds.get(kind))
            if not want:
                continue
            have = records.steps(str(probe), kind)
            if not done:
                have = {s for s in have if s < before}
            lost = max(0, want - len(have))
            if lost:
                damage.missing.setdefault(str(probe), {})[kind] = lost
        if _count(kinds.get("coords")) and str(probe) not in records.coord_probes:
            damage.missing.setdefault(str(probe), {})["coords"] = 1
    for name, why in records.problems.items():
        probe = name.split("/")[1]
        if name.endswith("dims.json") and damage.missing.get(probe, {}).get("arrays"):
            damage.files[name] = why  # the reason its arrays are missing
        elif name.endswith("coords.json") and damage.missing.get(probe, {}).get("coords"):
            damage.files[name] = why
    return damage


def width_damage(
    width_dir: Path,
    n_seeds: int | None,
    status: dict[str, Any] | None = None,
    records: WidthRecords | None = None,
) -> Damage | None:
    """:func:`find_damage` of one width directory (its status and records read here
    unless given); None when its status says nothing about what was logged."""
    width_dir = Path(width_dir)
    if status is None:
        status, _ = read_status(width_dir)
    if not isinstance(status.get("records"), dict):
        return None
    if records is None:
        records = load_width(width_dir, n_seeds)
    return find_damage(status, records)


def expected_records(
    schedules: dict[str, frozenset[int]] | dict[str, set[int]],
    kinds: dict[str, set[str]],
    before: int | None,
) -> dict[str, dict[str, int]]:
    """The ``records`` field of a status: for each probe that logged (``kinds``), how many
    scheduled steps (``schedules``) lie before ``before`` (None: all of them) per kind."""
    out: dict[str, dict[str, int]] = {}
    for probe, ks in sorted(kinds.items()):
        steps = schedules.get(probe, set())
        n = len(steps) if before is None else sum(1 for s in steps if s < before)
        entry = {k: n for k in ("scalars", "arrays") if k in ks}
        if "coords" in ks:
            entry["coords"] = 1
        out[probe] = entry
    return out
