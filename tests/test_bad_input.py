"""Bad input at every user-facing entry: CLI flags, study directories, data files,
checkpoints. Each answers with one line naming what and where, exit 2, no traceback,
nothing written; no user file runs code when read; nothing is written outside the
study directory."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import tiny_spec_dict, write_spec

import widthwise
from widthwise.cli import main
from widthwise.errors import StoreError
from widthwise.spec import load_spec
from widthwise.store.width_dir import WidthDir

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")


def one_line(capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> str:
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert code == 2, (code, captured.err)
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and "Traceback" not in captured.err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    return err[0]


def snapshot(path: Path) -> dict[str, tuple[bytes, int]]:
    """Every path under ``path``; files with their bytes and mtime (a directory's mtime
    may change: the writer lock's file comes and goes)."""
    return {
        str(p.relative_to(path)): (p.read_bytes(), p.stat().st_mtime_ns)
        if p.is_file()
        else (b"", 0)
        for p in sorted(path.rglob("*"))
    }


@pytest.fixture(scope="module")
def finished(single_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad_input")
    return widthwise.run(load_spec(write_spec(root / "s.yaml", tiny_spec_dict(root / "study"))))


@pytest.fixture
def study(finished: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "study"
    shutil.copytree(finished, dst)
    return dst


# -- CLI flags --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["run", "SPEC", "--frobnicate"], ["unrecognized arguments: --frobnicate"]),
        (["run", "SPEC", "--device", "tpu"], ["device", "'tpu'"]),
        (["run", "SPEC", "--device", "cuda:x"], ["device", "'cuda:x'"]),
        (["run", "SPEC", "--out"], ["--out", "expected one argument"]),
        (["coord-check", "SPEC", "--steps", "-3"], ["--steps", ">= 0", "-3"]),
        (["coord-check", "SPEC", "--steps", "many"], ["--steps", "'many'"]),
        (["report", "STUDY", "--tol", "abc"], ["--tol", "'abc'"]),
        (["show"], ["dir"]),
        (["show", "STUDY", "STUDY"], ["unrecognized arguments"]),
        (["teleport"], ["teleport"]),
    ],
    ids=lambda v: "_".join(v) if isinstance(v, list) and v and v[0] in ("run", "show") else None,
)
def test_bad_flags(
    study: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    needles: list[str],
) -> None:
    spec = write_spec(tmp_path / "s.yaml", tiny_spec_dict(tmp_path / "new"))
    before = snapshot(study)
    argv = [{"SPEC": str(spec), "STUDY": str(study)}.get(a, a) for a in argv]
    one_line(capsys, main(argv), *needles)
    assert not (tmp_path / "new").exists()
    assert snapshot(study) == before


# -- study directories ---------------------------------------------------------------

Mutation = Callable[[Path], Any]


def _write(rel: str, data: bytes) -> Mutation:
    return lambda study: (study / rel).write_bytes(data)


def _json(rel: str, obj: Any) -> Mutation:
    return _write(rel, json.dumps(obj).encode())


def _manifest(**changes: Any) -> Mutation:
    def mutate(study: Path) -> None:
        m = json.loads((study / "manifest.json").read_text())
        m.update(changes)
        (study / "manifest.json").write_text(json.dumps(m))

    return mutate


def _remove(rel: str) -> Mutation:
    return lambda study: (study / rel).unlink()


def _pickled_probe_set(study: Path) -> None:
    np.savez(study / "probe_set.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))


# (id, mutation, file the line must name, further needles)
BAD_STUDIES: list[tuple[str, Mutation, str, list[str]]] = [
    ("manifest_garbage", _write("manifest.json", b"\x00\xff{"), "manifest.json", ["unreadable"]),
    ("manifest_list", _json("manifest.json", [1, 2]), "manifest.json", ["not a widthwise"]),
    ("manifest_no_hash", _json("manifest.json", {"widths": [16]}), "manifest.json", []),
    ("widths_str", _manifest(widths="16,32"), "manifest.json", ["widths"]),
    ("widths_escape", _manifest(widths=["../../etc"]), "manifest.json", ["widths"]),
    ("widths_negative", _manifest(widths=[-16]), "manifest.json", ["widths"]),
    ("seeds_missing", _manifest(seeds=None), "manifest.json", ["seeds"]),
    ("spec_not_yaml", _write("spec.yaml", b"a: [1,\n"), "spec.yaml", ["unreadable spec"]),
    ("spec_a_list", _write("spec.yaml", b"- 1\n- 2\n"), "spec.yaml", ["not a spec mapping"]),
    ("spec_binary", _write("spec.yaml", b"\xff\xfe\x00\x01"), "spec.yaml", ["unreadable"]),
    ("spec_missing", _remove("spec.yaml"), "spec.yaml", ["unreadable"]),
    ("probe_set_missing", _remove("probe_set.npz"), "probe_set.npz", ["missing"]),
    ("probe_set_garbage", _write("probe_set.npz", b"PK\x03\x04junk"), "probe_set.npz", []),
    ("probe_set_pickled", _pickled_probe_set, "probe_set.npz", ["unreadable"]),
    (
        "probe_set_other_size",
        lambda s: np.savez(s / "probe_set.npz", x=np.zeros((5, 8)), y=np.zeros((5, 1))),
        "probe_set.npz",
        ["5 probe points"],
    ),
]


@pytest.mark.parametrize(
    ("mutate", "where", "needles"),
    [(m, w, n) for _, m, w, n in BAD_STUDIES],
    ids=[i for i, *_ in BAD_STUDIES],
)
@pytest.mark.parametrize("command", ["show", "report"])
def test_corrupt_study_dir(
    study: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    mutate: Mutation,
    where: str,
    needles: list[str],
) -> None:
    mutate(study)
    before = snapshot(study)
    line = one_line(capsys, main([command, str(study)]), str(study / where), *needles)
    assert len(line) < 400
    assert snapshot(study) == before  # nothing written, not even a report directory


@pytest.mark.parametrize(
    "make",
    [
        lambda p: None,  # missing
        lambda p: p.write_text("just a file\n"),
        lambda p: p.mkdir(),  # empty directory
        lambda p: (p.mkdir(), (p / "manifest.json").mkdir()),  # manifest is a directory
    ],
    ids=["missing", "regular_file", "empty_dir", "manifest_is_a_dir"],
)
def test_not_a_study_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Callable[[Path], Any]
) -> None:
    path = tmp_path / "nope"
    make(path)
    one_line(capsys, main(["show", str(path)]), str(path))
    with pytest.raises(StoreError):
        widthwise.open_study(path)


def test_tolerated_per_width_damage_is_shown_not_fatal(
    study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Damage inside one width (its status, its logs) is reported, never a crash."""
    (study / "width_00016" / "status.json").write_text("[1, 2, 3]")
    (study / "width_00032" / "scalars.jsonl").unlink()
    (study / "width_00032" / "scalars.jsonl").mkdir()  # unreadable as a file
    (study / "width_00032" / "arrays" / "test" / "coords.json").write_text("[1]")
    assert main(["show", str(study)]) == 0
    out = capsys.readouterr().out
    assert "16 │ unknown" in out and "32 │ damaged" in out  # its lines are gone: not done
    assert "width 32: damaged: 25 records missing in scalars.jsonl" in out
    ds = widthwise.open_study(study)
    assert ds.status.values.tolist() == ["unknown", "damaged"]
    assert ds.missing_records.sel(width=32).values.tolist() == [20, 5]
    assert ds.attrs["skipped_records"] == 1
    assert np.isnan(ds.train_loss.sel(width=32).values).all()  # none of it is invented
    assert np.isfinite(ds.train_loss.sel(width=16).values).all()


# -- checkpoints -----------------------------------------------------------------------


class Evil:
    """Pickles to a call of os.system: loading it must never run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _unfinish(study: Path, width: int = 16) -> WidthDir:
    """Make ``width`` look like a killed run, so the next ``run`` loads its checkpoint."""
    wd = WidthDir(study / f"width_{width:05d}")
    status = wd.read_status()
    wd.write_status(**{**status, "state": "running", "step": 10})
    return wd


@pytest.mark.parametrize(
    ("make", "needles"),
    [
        (lambda p, m: p.write_bytes(os.urandom(300)), ["damaged checkpoint", "not a readable zip"]),
        (lambda p, m: p.write_bytes(b""), ["damaged checkpoint", "not a readable zip"]),
        (lambda p, m: torch.save({"x": Evil(m)}, p), ["unreadable checkpoint", "UnpicklingError"]),
        (lambda p, m: p.write_bytes(pickle.dumps(Evil(m))), ["damaged checkpoint"]),
        (lambda p, m: torch.save([1, 2], p), ["not a widthwise checkpoint", "list"]),
        (lambda p, m: torch.save({"step": 3}, p), ["not a checkpoint of width 16", "KeyError"]),
        (
            lambda p, m: torch.save(
                {**torch.load(p.parent.parent / "width_00032" / "checkpoint.pt"), "step": 10}, p
            ),
            ["not a checkpoint of width 16", "RuntimeError"],
        ),
        (
            lambda p, m: torch.save({**torch.load(p, weights_only=True), "step": 999}, p),
            ["step 999 is outside", "0..20"],
        ),
    ],
    ids=[
        "random_bytes",
        "empty",
        "evil_torch",
        "evil_pickle",
        "a_list",
        "no_params",
        "other_width",
        "step_999",
    ],
)
def test_bad_checkpoint(
    study: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[Path, Path], Any],
    needles: list[str],
) -> None:
    """A damaged checkpoint is detected, never loaded as data and never runs code: the
    run falls back to the previous checkpoint with one line saying so, and ends with
    the numbers of the uninterrupted run."""
    reference = widthwise.open_study(study)
    wd = _unfinish(study)
    marker = tmp_path / "pwned"
    make(wd.checkpoint_path, marker)
    code = main(["run", str(study / "spec.yaml"), "--out", str(study), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 0, err
    assert len(err) == 1, err
    assert err[0].startswith(f"widthwise: width 16: {wd.checkpoint_path}: ")
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    assert "resumed from checkpoint.prev.pt at step 15" in err[0]
    assert not marker.exists(), "a checkpoint ran code while loading"
    assert wd.read_status()["state"] == "done"
    after = widthwise.open_study(study)
    for var in ("train_loss", "test_loss", "test_logits"):
        xr.testing.assert_equal(after[var], reference[var])


def test_both_checkpoints_damaged_restart_the_width(
    study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Neither checkpoint usable: the width is recomputed from step 0, exactly."""
    reference = widthwise.open_study(study)
    wd = _unfinish(study)
    for path in (wd.checkpoint_path, wd.previous_checkpoint_path):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte: the zip CRC catches it
        path.write_bytes(bytes(data))
    code = main(["run", str(study / "spec.yaml"), "--out", str(study), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 0 and len(err) == 1, err
    assert "damaged checkpoint" in err[0] and "restarting this width from step 0" in err[0]
    after = widthwise.open_study(study)
    for var in ("train_loss", "test_loss", "test_logits"):
        xr.testing.assert_equal(after[var], reference[var])


def test_a_hole_before_the_checkpoint_is_recomputed(
    study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scalar lines lost before the checkpoint: the width is recomputed, never left with
    NaN holes (a resume must not drop data it will not redo)."""
    reference = widthwise.open_study(study)
    wd = _unfinish(study)
    lines = wd.scalars_path.read_text().splitlines(keepends=True)
    wd.scalars_path.write_text("".join(lines[: len(lines) // 3]))  # cut in a third
    code = main(["run", str(study / "spec.yaml"), "--out", str(study), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 0 and len(err) == 1, err
    assert "logged data before the checkpoint is damaged or missing: train_loss steps" in err[0]
    after = widthwise.open_study(study)
    assert after.attrs["skipped_records"] == 0
    for var in ("train_loss", "test_loss", "test_logits"):
        xr.testing.assert_equal(after[var], reference[var])


# -- data files ----------------------------------------------------------------------


def _data_spec(tmp_path: Path, stream: str, options: dict[str, Any], **extra: Any) -> Path:
    spec = tiny_spec_dict(
        tmp_path / "study", data={"stream": stream, "options": options, "probe_points": 8}, **extra
    )
    return write_spec(tmp_path / "s.yaml", spec)


def test_data_file_garbage_idx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "fmnist"
    d.mkdir()
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (d / name).write_bytes(os.urandom(64))
    spec = _data_spec(tmp_path, "fashion_mnist", {"path": str(d)}, model={"family": "mlp"})
    one_line(capsys, main(["run", str(spec), "--quiet"]), str(d))
    assert not (tmp_path / "study").exists()


def test_data_file_malicious_cifar_pickle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "cifar"
    d.mkdir()
    marker = tmp_path / "pwned"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (d / name).write_bytes(pickle.dumps(Evil(marker)))
    spec = _data_spec(tmp_path, "cifar10", {"path": str(d)}, model={"family": "mlp"})
    one_line(capsys, main(["run", str(spec), "--quiet"]), str(d))
    assert not marker.exists(), "a data file ran code while loading"
    assert not (tmp_path / "study").exists()


def test_data_file_garbage_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("PIL")
    d = tmp_path / "images"
    for cls in ("cat", "dog"):
        (d / cls).mkdir(parents=True)
        for i in range(3):
            (d / cls / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(40))
    spec = _data_spec(
        tmp_path, "image_folder", {"path": str(d), "size": 8}, model={"family": "mlp"}
    )
    one_line(capsys, main(["run", str(spec), "--quiet"]), str(d))
    assert not (tmp_path / "study").exists()


def test_data_file_pickled_cifar5m_part(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "c5m"
    d.mkdir()
    np.savez(d / "cifar5m_part0.npz", X=np.array([{"a": 1}], dtype=object), Y=np.zeros(1))
    spec = _data_spec(tmp_path, "cifar5m", {"path": str(d)}, model={"family": "mlp"})
    one_line(capsys, main(["run", str(spec), "--quiet"]), str(d))
    assert not (tmp_path / "study").exists()


def test_data_dir_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _data_spec(tmp_path, "text", {"path": str(tmp_path / "nothing_here"), "seq_len": 8})
    one_line(capsys, main(["run", str(spec), "--quiet"]), str(tmp_path / "nothing_here"))
    assert not (tmp_path / "study").exists()


# -- nothing is written outside the study directory --------------------------------------


@pytest.mark.parametrize("name", ["../evil", "a/b", "/abs", "..", ".hidden", "x\n"])
def test_study_name_cannot_leave_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec_dict(None, name=name)
    spec.pop("out", None)
    path = write_spec(tmp_path / "s.yaml", spec)
    one_line(capsys, main(["run", str(path), "--quiet"]), "name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_probe_names_cannot_leave_arrays(tmp_path: Path) -> None:
    """A plug-in probe named like a path is refused before a file is written."""
    wd = WidthDir(tmp_path / "width_00016")
    wd.open_for_writing()
    try:
        for bad in ("../../escape", "a/b", "..", ".", "", "/abs"):
            with pytest.raises(StoreError, match="cannot name a directory under arrays"):
                wd.write_probe(bad, 0, {"v": (("seed", "point"), np.zeros((2, 3)))})
        wd.write_probe("ok.name-1", 0, {"v": (("seed", "point"), np.zeros((2, 3)))})
    finally:
        wd.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["width_00016"]
    assert [p.name for p in wd.arrays_dir.iterdir()] == ["ok.name-1"]


def test_truncate_never_follows_a_link_out_of_the_study(tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "000000010.npz").write_bytes(b"mine")
    wd = WidthDir(tmp_path / "study" / "width_00016")
    wd.open_for_writing()
    wd.close()
    (wd.arrays_dir / "linked").symlink_to(outside, target_is_directory=True)
    real = wd.arrays_dir / "test"
    real.mkdir()
    (real / "000000010.npz").write_bytes(b"x")
    (real / "000000005.npz").write_bytes(b"x")
    wd.truncate_from(7)
    assert (outside / "000000010.npz").read_bytes() == b"mine"
    assert sorted(p.name for p in real.iterdir()) == ["000000005.npz"]


def test_width_dir_names_stay_inside(tmp_path: Path) -> None:
    from widthwise.store.study_dir import StudyDir

    study = StudyDir(tmp_path)
    assert study.width_dir(64).path == tmp_path / "width_00064"
    for bad in (-1, 0, "../x", 1.5, True, None):
        with pytest.raises(StoreError, match="not a positive integer"):
            study.width_dir(bad)  # type: ignore[arg-type]
