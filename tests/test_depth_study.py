"""A study along depth (``depths: [...]``, issue 15 item 4): one width study per depth,
read as one Dataset with a ``depth`` dim and analysed along depth as along width.

Oracles: each depth's width study equals a plain study at that depth bit for bit; the
along-depth horizon and transfer verdict equal the width machinery's (tested on its
own) applied to the depths relabelled as widths; bad input is one line, exit 2,
nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_spec

from widthwise.analysis.study_horizon import horizon_summary, study_horizons
from widthwise.analysis.transfer import loss_at, optimal_lr, transfer_verdict
from widthwise.cli import main
from widthwise.depth_study import depth_horizons, depth_transfer
from widthwise.store import open_study

pytestmark = pytest.mark.usefixtures("single_thread")


def raw(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    spec = {
        "name": "deep",
        "model": {"family": "transformer", "options": {"heads": 2}},
        "depths": [1, 2],
        "depth_mup": {"base_depth": 1},
        "widths": [16, 32],
        "seeds": 3,
        "parameterization": {"name": "mup", "readout_zero_init": True},
        "optimizer": {"name": "adam", "lr": 0.01},
        "steps": 6,
        "batch_size": 8,
        "data": {"stream": "periodic_tokens", "seed": 0, "probe_points": 32},
        "probes": {"train_loss": {"every": 1}, "test": {"every": 3}},
        "device": "cpu",
        "out": str(tmp_path / "study"),
    }
    spec.update(extra)
    return spec


@pytest.fixture(scope="module")
def depth_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("depth")
    assert main(["run", str(write_spec(tmp / "d.yaml", raw(tmp))), "--quiet"]) == 0
    return tmp / "study"


def test_each_depth_is_the_plain_study_at_that_depth_bit_for_bit(
    depth_study: Path, tmp_path: Path
) -> None:
    ds = open_study(depth_study)
    assert dict(ds.sizes)["depth"] == 2 and list(ds.depth.values) == [1, 2]
    assert ds.train_loss.dims[:4] == ("depth", "width", "seed", "step")
    assert ds.status.dims == ("depth", "width") and (ds.status == "done").all()
    assert ds.attrs["planned_depths"] == [1, 2]
    plain = raw(tmp_path, out=str(tmp_path / "plain"))
    del plain["depths"]
    plain["model"]["options"]["depth"] = 2
    assert main(["run", str(write_spec(tmp_path / "p.yaml", plain)), "--quiet"]) == 0
    alone = open_study(tmp_path / "plain")
    np.testing.assert_array_equal(ds.train_loss.sel(depth=2).values, alone.train_loss.values)
    np.testing.assert_array_equal(ds.test_logits.sel(depth=2).values, alone.test_logits.values)
    assert not np.array_equal(ds.train_loss.sel(depth=1).values, alone.train_loss.values)


def test_along_depth_horizon_is_the_width_machinery_on_depths(depth_study: Path) -> None:
    ds = open_study(depth_study)
    got = depth_horizons(ds)
    assert set(got) == {16, 32}
    for w in (16, 32):
        one = ds[["train_loss", "test_loss"]].sel(width=w, drop=True)
        h = study_horizons(one, dim="depth", quantities=("train loss",))
        as_width = one.rename(depth="width")
        ref = study_horizons(as_width, quantities=("train loss",))
        np.testing.assert_array_equal(h["horizon"].values, ref["horizon"].values)
        np.testing.assert_array_equal(h["horizon_hi"].values, ref["horizon_hi"].values)
        assert "deepest (depth 2)" in got[w] and got[w].startswith(f"At width {w}: ")
        assert "at depth 1" in got[w]


def test_along_depth_horizon_refuses_nan_and_noise(depth_study: Path) -> None:
    ds = open_study(depth_study)
    nan = ds.copy(deep=True)
    nan["train_loss"][:] = np.nan
    nan["test_loss"][:] = np.nan
    assert depth_horizons(nan) == {}  # nothing finite: no verdict at all
    rng = np.random.default_rng(0)
    noisy = ds.copy(deep=True)
    noisy["train_loss"].values = rng.lognormal(0.0, 1.0, ds.train_loss.shape)
    sentence = horizon_summary(noisy[["train_loss"]].sel(width=32, drop=True), dim="depth")
    assert "never agree" in sentence or "undetermined" in sentence, sentence


def test_show_and_report_of_a_depth_study(
    depth_study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["show", str(depth_study)]) == 0
    text = capsys.readouterr().out
    assert "depth 1" in text and "depth 2" in text and "along depth" in text
    assert "deep: 2 of 2 depths done" in text
    assert main(["show", str(depth_study), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["depth_study"] and [d["depth"] for d in data["depths"]] == [1, 2]
    assert all(d["done"] == 2 for d in data["depths"])
    assert set(data["depth_horizon"]) == {"16", "32"}
    assert main(["report", str(depth_study)]) == 0
    page = (depth_study / "report" / "report.html").read_text()
    assert "Along depth" in page and "deepest (depth 2)" in page
    for d in (1, 2):
        assert (depth_study / f"depth-{d}" / "report" / "report.html").is_file()
    assert (depth_study / "report" / "csv" / "depth_final_loss.csv").is_file()


def test_rerun_skips_finished_depths_and_runs_a_missing_one(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "d.yaml", raw(tmp_path))
    assert main(["run", str(spec), "--quiet"]) == 0
    first = open_study(tmp_path / "study")
    import shutil

    shutil.rmtree(tmp_path / "study" / "depth-2")
    partial = open_study(tmp_path / "study")
    assert list(partial.depth.values) == [1] and partial.attrs["planned_depths"] == [1, 2]
    before = (tmp_path / "study" / "depth-1" / "manifest.json").stat().st_mtime_ns
    assert main(["run", str(spec), "--quiet"]) == 0
    again = open_study(tmp_path / "study")
    np.testing.assert_array_equal(again.train_loss.values, first.train_loss.values)
    assert (tmp_path / "study" / "depth-1" / "manifest.json").stat().st_mtime_ns == before


def _refused(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"model": {"family": "mlp", "options": {}}, "depth_mup": None}, "depths: family 'mlp'"),
        ({"model": {"family": "transformer", "options": {"depth": 2}}}, "model.options.depth"),
        ({"depths": [2, 2]}, "depths"),
        ({"depths": [0, 1]}, "depths"),
        ({"depths": [4]}, "at least 2 depths"),
        ({"depths": list(range(1, 18))}, "at most 16"),
        ({"depths": [1, 5000]}, "depths"),
    ],
)
def test_bad_depths_are_one_line_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], words: str
) -> None:
    spec = raw(tmp_path)
    spec.update(change)
    if spec.get("depth_mup") is None:
        spec.pop("depth_mup", None)
    err = _refused(capsys, ["run", str(write_spec(tmp_path / "bad.yaml", spec))])
    assert words in err, err
    assert not (tmp_path / "study").exists()


def test_changed_spec_and_damaged_depths_file_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = raw(tmp_path, steps=2, widths=[16])
    assert main(["run", str(write_spec(tmp_path / "d.yaml", spec)), "--quiet"]) == 0
    other = {**spec, "steps": 3}
    err = _refused(capsys, ["run", str(write_spec(tmp_path / "o.yaml", other)), "--quiet"])
    assert "another spec" in err and "steps: 2 → 3" in err
    file = tmp_path / "study" / "depths.json"
    file.write_text(file.read_text().replace('"deep"', '"deeq"'))
    err = _refused(capsys, ["show", str(tmp_path / "study")])
    assert "depths.json" in err and "crc32" in err


def test_transfer_along_depth_is_the_width_verdict_on_depths(tmp_path: Path) -> None:
    spec = raw(tmp_path, widths=[16], sweep={"lr": [0.003, 0.01, 0.03]}, seeds=2)
    assert main(["run", str(write_spec(tmp_path / "d.yaml", spec)), "--quiet"]) == 0
    ds = open_study(tmp_path / "study")
    assert ds.train_loss.dims[:4] == ("depth", "width", "lr", "seed")
    got = depth_transfer(ds)
    assert set(got) == {16} and "from depth 1 to 2" in got[16]
    one = ds.sel(width=16, drop=True).rename(depth="width")
    v = transfer_verdict(optimal_lr(loss_at(one, "train_loss")), pairs=("ends",))
    assert str(v["verdict"].isel(pair=0).item()) in got[16]
    assert f"{float(v['factor'].isel(pair=0)):.3g}"[:3] in got[16]


def test_dry_run_names_every_depth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["run", str(write_spec(tmp_path / "d.yaml", raw(tmp_path))), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "depth study" in out and "[depth 1]" in out and "[depth 2]" in out
    assert not (tmp_path / "study").exists()
