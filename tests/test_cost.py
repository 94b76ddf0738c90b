"""Cost estimates: FLOPs counted on the meta device, the calibration cache, the time
estimate against a real run, --dry-run, and the bundled examples' cost index."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import tiny_spec_dict, write_spec

import widthwise
from widthwise import user_cache
from widthwise.calibration import CACHE_FILE, Calibration, cache_key, cached, calibrate
from widthwise.cli import main
from widthwise.cost import (
    COSTS_FILE,
    WidthCost,
    Work,
    estimate,
    estimate_phrase,
    format_seconds,
    makespan,
    seconds,
    study_costs,
)
from widthwise.spec import load_spec

pytestmark = pytest.mark.usefixtures("single_thread")


def fake_calibration(**kw: float) -> Calibration:
    values = dict(matmul_flops_per_s=1e10, conv_flops_per_s=1e10, op_seconds=1e-5)
    values.update(byte_seconds=1e-10, **kw)
    return Calibration(
        **values, device="cpu", threads=1, measured="2026-12-01T00:00:00", seconds=0.2
    )


@pytest.mark.quick
def test_mlp_flops_match_the_formula() -> None:
    spec = load_spec("quickstart", sets=["widths=[32, 64]", "seeds=2"])
    costs = study_costs(spec, op_seconds=1e-5)
    b, d_in = spec.batch_size, 8
    for c in costs:
        w = c.width
        forward = 2 * b * (d_in * w + w * w + w)  # depth 3, no bias, 1 output
        # backward: 2 × forward, less the input gradient of the first layer
        expected = 2 * (forward + 2 * forward - 2 * b * d_in * w)
        assert c.step.matmul_flops == pytest.approx(expected, rel=1e-12)  # 2 seeds
        assert c.step.conv_flops == 0 and c.seeds == 2 and c.steps == spec.steps
        assert c.probes.flops > 0 and c.probe_calls > 0
        assert c.memory_bytes > 0


@pytest.mark.quick
@pytest.mark.parametrize(
    ("family", "options", "data", "kind"),
    [
        ("cnn", {"depth": 2}, {"stream": "teacher_images", "options": {"size": 8}}, "conv"),
        ("resnet18_ln", {}, {"stream": "teacher_images", "options": {"size": 8}}, "conv"),
        (
            "transformer",
            {"depth": 1, "heads": 2},
            {"stream": "text", "options": {"seq_len": 8}},
            "matmul",
        ),
    ],
    ids=["cnn", "resnet", "transformer"],
)
def test_every_family_is_counted(
    tmp_path: Path, family: str, options: dict, data: dict, kind: str
) -> None:
    raw = tiny_spec_dict(tmp_path / "s", model={"family": family, "options": options})
    raw.update(widths=[8, 16], data={**data, "seed": 0, "probe_points": 16}, batch_size=4)
    raw["probes"] = {"train_loss": {"every": 1}, "test": {"every": 5}}
    spec = load_spec(write_spec(tmp_path / "s.yaml", raw))
    narrow, wide = study_costs(spec, op_seconds=1e-5)
    flops = {"conv": lambda c: c.step.conv_flops, "matmul": lambda c: c.step.matmul_flops}[kind]
    assert 0 < flops(narrow) < flops(wide)
    assert wide.step.calls == narrow.step.calls > 0  # the same kernels at every width
    assert wide.step.bytes > narrow.step.bytes > 0


def test_time_model_pieces() -> None:
    cal = fake_calibration()
    c = WidthCost(8, 10, 2, Work(1e10, 0, 100, 0), 0.0, Work(), 0, 1)
    # 10 steps of 1 s of FLOPs (at FLOP_EFFICIENCY) and 100 calls of 1e-5 s (× OP_OVERHEAD)
    from widthwise.cost import FLOP_EFFICIENCY, OP_OVERHEAD

    assert seconds(c, cal) == pytest.approx(10 * (1 / FLOP_EFFICIENCY + 100 * 1e-5 * OP_OVERHEAD))
    assert seconds(c, cal, fraction=0.5) == pytest.approx(seconds(c, cal) / 2)
    assert WidthCost.from_json(json.loads(json.dumps(c.to_json()))) == c
    assert makespan([3, 2, 2, 1], 2) == 4 and makespan([3, 2], 1) == 5
    assert [format_seconds(s) for s in (0.42, 40, 720, 3 * 3600, 3 * 86400)] == [
        "0.4 s",
        "40 s",
        "12 min",
        "3.0 h",
        "3.0 days",
    ]
    wide = WidthCost(16, 10, 2, Work(3e10, 0, 100, 0), 0.0, Work(), 0, 1)
    phrase = estimate_phrase([c, wide], cal)
    assert phrase.startswith("≈ ") and phrase.endswith("on this machine (width 16: 75 %)")


@pytest.mark.quick
def test_calibration_is_cached_per_threads(user_cache_dir: Path) -> None:
    first = calibrate("cpu", 1)
    assert first.matmul_flops_per_s > 0 and first.op_seconds > 0 and first.byte_seconds > 0
    assert first.seconds < 5
    assert calibrate("cpu", 1) == first  # cached: not measured again
    path = user_cache.cache_dir() / CACHE_FILE
    assert path.parent == user_cache_dir  # WIDTHWISE_CACHE_DIR, never the repository
    entries = json.loads(path.read_text())["entries"]
    assert cache_key("cpu", 1) in entries
    assert cached("cpu", 1) == first
    assert cached("cpu", 7) is None  # another thread count is another calibration


def test_cache_dir_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WIDTHWISE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache.cache_dir() == tmp_path / "xdg" / "widthwise"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert user_cache.cache_dir() == Path.home() / ".cache" / "widthwise"
    monkeypatch.setenv("WIDTHWISE_CACHE_DIR", str(tmp_path / "unwritable" / "x"))
    (tmp_path / "unwritable").write_text("a file, not a directory")
    assert user_cache.read_json("x.json") == {}
    assert user_cache.write_json("x.json", {"a": 1}) is False  # never raises


def test_estimate_is_within_a_factor_of_5_of_a_real_run(tmp_path: Path) -> None:
    """The quickstart at reduced size: the estimate printed before the run against the
    widths' measured wall times (a generous factor: the machine may be busy)."""
    spec = load_spec(
        "quickstart", out=str(tmp_path / "qs"), sets=["steps=60", "widths=[64, 256]", "seeds=4"]
    )
    est = estimate(spec, threads=1)
    widthwise.run(spec)
    ds = widthwise.open_study(tmp_path / "qs")
    measured = float(ds.wall_time.sum())
    assert 1 / 5 < measured / est.seconds < 5, (measured, est.seconds, est.line())


@pytest.mark.quick
def test_dry_run_prints_the_time_estimate(tiny_spec, capsys: pytest.CaptureFixture[str]) -> None:
    path = tiny_spec()
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    time_line = next(line for line in lines if line.startswith("time: ≈ "))
    assert "on this machine (width 32:" in time_line and "an estimate" in time_line
    assert sum(line.startswith("width    16: ") and "FLOP" in line for line in lines) == 1
    assert not (path.parent / "study").exists()


@pytest.mark.quick
def test_run_prints_the_estimate_unless_quiet(
    tiny_spec, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tiny_spec(steps=4)
    assert main(["run", str(path)]) == 0
    assert "time: ≈ " in capsys.readouterr().out
    assert main(["run", str(path), "--quiet"]) == 0  # nothing left to run, and quiet
    assert "time: " not in capsys.readouterr().out


def test_bundled_cost_index_is_current() -> None:
    """examples/costs.json (what ``widthwise list`` shows) equals a fresh count; the
    measured part (``data_calls``) only roughly. Rewrite it with
    ``python -m widthwise.cost --write``."""
    from widthwise.bundled import read_costs
    from widthwise.cost import bundled_index

    stored = json.loads(COSTS_FILE.read_text())
    fresh = bundled_index()
    assert set(read_costs()) == set(stored), "a spec changed: python -m widthwise.cost --write"
    for name, entry in fresh.items():
        assert stored[name]["spec_sha256"] == entry["spec_sha256"], name
        for old, new in zip(stored[name]["widths"], entry["widths"], strict=True):
            a, b = old.pop("data_calls"), new.pop("data_calls")
            assert old == new, f"{name}: python -m widthwise.cost --write"
            assert math.isfinite(a) and a >= 0 and b >= 0
