"""examples/paper/gpu/ and gpu_profiles.py: the paper-scale GPU profiles validate, their
data requirements are stated, and benchmarks/gpu.py runs (tiny, on the CPU).

Nothing here needs a GPU or the real data sets: the specs are validated as written
(``load_spec`` does not read ``data.options.path``), the fake data sets of
``gpu_profiles.write_fake_data`` are read by widthwise's own ``cifar5m`` and
``wikitext`` streams, and ``benchmarks/gpu.py --device cpu --smoke`` checks the
benchmark's plumbing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import widthwise

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "paper"))

import gpu_profiles as gp  # noqa: E402

SPECS = sorted((ROOT / "examples" / "paper" / "gpu").glob("*.yaml"))


def test_every_gpu_spec_is_a_profile() -> None:
    assert SPECS, "examples/paper/gpu/ has no specs"
    assert sorted(p.spec for p in gp.PROFILES.values()) == SPECS


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_gpu_spec_validates_and_states_its_estimate(path: Path) -> None:
    spec = widthwise.load_spec(path)
    assert spec.device == "cuda"
    comments = path.read_text().split("\nname:")[0].splitlines()
    header = " ".join(line.lstrip("#").strip() for line in comments)
    assert "ESTIMATED H200" in header and "GPU-hours" in header, "header lacks the estimate"
    assert "An ESTIMATE" in header and "never run on a GPU" in header
    assert re.search(r"Fig\. \d", header), "header names no paper figure"
    assert "Data:" in header


@pytest.mark.parametrize("name", list(gp.PROFILES))
def test_reduced_profile_keeps_seeds_and_batch(name: str) -> None:
    """benchmarks/gpu.py extrapolates the reduced profile from the full one's step times."""
    full = gp.load_profile(name)
    reduced = gp.load_profile(name, reduced=True, device="cpu")
    assert set(reduced.widths) <= set(full.widths)
    assert reduced.steps < full.steps
    assert (reduced.seed_list, reduced.batch_size) == (full.seed_list, full.batch_size)
    assert reduced.device == "cpu"
    assert gp.PROFILES[name].reduced_minutes <= 5.0


def test_missing_data_names_what_to_install(tmp_path: Path) -> None:
    assert gp.missing_data("mlp_lazy_entk", {}) is None
    line = gp.missing_data("resnet18_cifar5m", {})
    assert line is not None and "--data cifar5m=DIR" in line and "cifar5m_part" in line
    line = gp.missing_data("transformer_wikitext", {"wikitext": str(tmp_path / "absent")})
    assert line is not None and "wiki.train.raw" in line and "\n" not in line
    dirs = {s: str(gp.write_fake_data(s, tmp_path)) for s in ("cifar5m", "wikitext")}
    assert gp.missing_data("resnet18_cifar5m", dirs) is None
    assert gp.missing_data("transformer_wikitext", dirs) is None
    with pytest.raises(widthwise.UserError, match="--data cifar5m=DIR"):
        gp.run_profile("resnet18_cifar5m", tmp_path / "runs", data_dirs={})


def test_fake_data_is_read_by_the_real_streams(tmp_path: Path) -> None:
    """The data path override reaches the spec, and the streams accept the fake layout
    with the real data sets' shapes."""
    from widthwise.job import build_stream

    dirs = {s: str(gp.write_fake_data(s, tmp_path)) for s in ("cifar5m", "wikitext")}
    images = gp.load_profile("resnet18_cifar5m", data_dirs=dirs, sets=["data.probe_points=8"])
    assert images.data.options["path"] == dirs["cifar5m"]
    stream = build_stream(images)
    assert (stream.in_shape, stream.out_dim) == ((3, 32, 32), 10)
    x, y = stream.batch(0, 4)
    assert x.shape == (4, 3, 32, 32) and y.shape == (4,)
    text = gp.load_profile("transformer_wikitext", data_dirs=dirs, sets=["data.probe_points=4"])
    stream = build_stream(text)
    assert (stream.in_shape, stream.out_dim) == ((128,), 257)  # bytes + [MASK]


def test_benchmark_smoke_runs_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu_benchmark.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--smoke"]
        + ["--threads", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "| profile | width |" in proc.stdout and "SMOKE" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["smoke"] is True
    assert sorted(p["name"] for p in doc["profiles"]) == sorted(gp.PROFILES)
    for p in doc["profiles"]:
        for w in p["widths"]:
            assert w["error"] is None
            assert w["step_s"] > 0 and w["full_s"] > 0 and w["estimated_s"] > 0
            assert set(w["probe_s"]) == set(w["probe_calls"]) and w["probe_s"]


def test_reproduce_profile_gpu_skips_what_it_cannot_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``reproduce.py --profile gpu``: a profile without its data is one line on stderr,
    a malformed ``--data`` is one line, and nothing runnable means exit 2."""
    import reproduce

    with_data = {k: p for k, p in gp.PROFILES.items() if p.data is not None}
    monkeypatch.setattr(gp, "PROFILES", with_data)
    rc = reproduce.main(["--profile", "gpu", "--runs", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == len(with_data)
    for line, (name, p) in zip(err, with_data.items()):
        assert line.startswith(f"{name}: skipped: ") and f"--data {p.data}=DIR" in line
    assert not any(tmp_path.iterdir())  # nothing written
    with pytest.raises(SystemExit, match="is not STREAM=DIR"):
        reproduce.main(["--profile", "gpu", "--data", "cifar5m", "--runs", str(tmp_path)])


def test_total_wall_counts_a_shared_spec_once_and_names_what_was_not_recorded():
    import reproduce

    wall = reproduce.WALL
    sections = [
        f"### C1: a\n\n{wall}c1_spec: 50 s.\n",
        f"### C2: b\n\n{wall}c1_spec: 50 s.\n",  # C2 reads C1's study
        f"### C3: c\n\n{wall}c3a: 23 s, c3b: 4 s.\n",
    ]
    assert reproduce.total_wall(sections) == (
        "All 3 specs together, each run once: 77 s (1.3 min) on the 2-core CPU (goal: ≤ 20 min)."
    )
    sections.append(f"### C5: d\n\n{wall}c5: not recorded.\n")
    assert reproduce.total_wall(sections).endswith("; not recorded: c5.")
    assert reproduce.summary_table(sections).splitlines()[-1].startswith("All 4 specs")
