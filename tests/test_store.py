"""The crash-safe store: open_study's schema, torn/partial records, refusals, checkpoint, manifest."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import tiny_spec_dict, write_spec

import widthwise
from widthwise.cli import main
from widthwise.dataset_schema import (
    SCHEMAS,
    declared_dims,
    declared_vars,
    follows_naming_rule,
    legacy_dims,
)
from widthwise.errors import StoreError
from widthwise.spec import load_spec
from widthwise.study import build_stream
from widthwise.trainer import EnsembleTrainer

WIDTHS = [16, 32]
SEEDS = [0, 1]
STEPS = 20
TEST_STEPS = [0, 5, 10, 15, 20]
POINTS = 32

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(spec path, study dir) of one finished tiny study; tests must not modify it."""
    root = tmp_path_factory.mktemp("store")
    spec_path = write_spec(root / "tiny.yaml", tiny_spec_dict(root / "study"))
    out = widthwise.run(load_spec(spec_path))
    assert out == root / "study"
    return spec_path, out


@pytest.fixture
def study_copy(study: tuple[Path, Path], tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(study[1], dst)
    return dst


def snapshot(path: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``path``: content hash and mtime (ns)."""
    return {
        str(f.relative_to(path)): (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns)
        for f in sorted(path.rglob("*"))
        if f.is_file()
    }


def assert_same_data(a: xr.Dataset, b: xr.Dataset) -> None:
    """Equal variables and coordinates, bit for bit (attrs like skipped_records may differ)."""
    xr.testing.assert_equal(a, b)


# -- schema ----------------------------------------------------------------------


def test_open_study_dims_and_coords(study: tuple[Path, Path]) -> None:
    ds = widthwise.open_study(study[1])
    assert dict(ds.sizes) == {
        "width": 2,
        "seed": 2,
        "step": STEPS,
        "test_step": len(TEST_STEPS),
        "point": POINTS,
        "output": 1,
        "probe": 2,
    }
    assert ds.probe.values.tolist() == ["train_loss", "test"]
    assert ds.missing_records.dims == ("width", "probe")
    assert (ds.missing_records == 0).all() and ds.damage.values.tolist() == ["", ""]
    assert ds.width.values.tolist() == WIDTHS
    assert ds.seed.values.tolist() == SEEDS
    assert ds.step.values.tolist() == list(range(STEPS))
    assert ds.test_step.values.tolist() == TEST_STEPS
    assert ds.point.values.tolist() == list(range(POINTS))
    assert ds.output.values.tolist() == [0]
    assert ds.train_loss.dims == ("width", "seed", "step")
    assert ds.test_loss.dims == ("width", "seed", "test_step")
    assert ds.test_logits.dims == ("width", "seed", "test_step", "point", "output")
    assert ds.test_target.dims == ("point", "output")
    assert ds.diverged_step.dims == ("width", "seed")
    assert ds.status.dims == ("width",)
    assert ds.wall_time.dims == ("width",)
    for name in ("train_loss", "test_loss", "test_logits", "test_target"):
        assert np.isfinite(ds[name].values).all(), name
        assert ds[name].attrs["description"], name
    assert ds.train_loss.dtype == np.float64
    assert ds.diverged_step.values.tolist() == [[-1, -1], [-1, -1]]
    assert ds.status.values.tolist() == ["done", "done"]
    assert (ds.wall_time.values > 0).all()


def test_open_study_values_are_consistent(study: tuple[Path, Path]) -> None:
    """Logged values are the ones the model produces: targets, losses and logits agree."""
    spec_path, out = study
    ds = widthwise.open_study(out)
    spec = load_spec(spec_path)
    stream = build_stream(spec)
    x, y = stream.probe_set(POINTS)
    np.testing.assert_array_equal(ds.test_target.values, y.astype(np.float64))
    with np.load(out / "probe_set.npz") as z:
        np.testing.assert_array_equal(z["x"], x)
    # test_loss is the MSE of the logged logits against the logged targets
    mse = ((ds.test_logits - ds.test_target) ** 2).mean(("point", "output"))
    np.testing.assert_allclose(ds.test_loss.values, mse.values, rtol=1e-5)
    # step-0 logits are the initial networks' outputs; final ones come from the checkpoint
    for width in WIDTHS:
        trainer = EnsembleTrainer(spec, width, stream, torch.device("cpu"))
        xt, _ = trainer.to_tensors(x, y)
        with torch.no_grad():
            init = trainer.ensemble.forward(trainer.params, xt).numpy()
        np.testing.assert_allclose(
            ds.test_logits.sel(width=width, test_step=0).values, init, rtol=1e-5, atol=1e-6
        )
        trainer.load_state_dict(
            torch.load(out / f"width_{width:05d}" / "checkpoint.pt", weights_only=True)
        )
        with torch.no_grad():
            final = trainer.ensemble.forward(trainer.params, xt).numpy()
        np.testing.assert_allclose(
            ds.test_logits.sel(width=width, test_step=STEPS).values, final, rtol=1e-5, atol=1e-6
        )
    # training did something: the final test loss is below the initial one for every member
    assert (ds.test_loss.isel(test_step=-1) < ds.test_loss.isel(test_step=0)).all()


def test_open_study_attrs(study: tuple[Path, Path]) -> None:
    spec_path, out = study
    ds = widthwise.open_study(out)
    spec = load_spec(spec_path)
    assert ds.attrs["name"] == "tiny"
    assert ds.attrs["spec_hash"] == spec.hash()
    assert ds.attrs["parameterization"] == "mup"
    assert ds.attrs["base_width"] == 16
    assert ds.attrs["skipped_records"] == 0
    stored = json.loads(ds.attrs["spec"])
    assert stored["widths"] == WIDTHS
    assert stored["steps"] == STEPS
    assert stored["optimizer"]["lr"] == 0.1


def test_manifest_and_stored_spec(study: tuple[Path, Path]) -> None:
    spec_path, out = study
    spec = load_spec(spec_path)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spec_hash"] == spec.hash()
    assert manifest["name"] == "tiny"
    assert manifest["widths"] == WIDTHS
    assert manifest["seeds"] == SEEDS
    assert manifest["format"] == 1
    versions = manifest["versions"]
    assert versions["widthwise"] == widthwise.__version__
    assert versions["torch"] == torch.__version__
    assert versions["numpy"] == np.__version__
    assert versions["xarray"] == xr.__version__
    assert {"python", "scipy", "pydantic"} <= set(versions)
    # spec.yaml is the full validated spec: it validates again to the same hash
    assert load_spec(out / "spec.yaml").hash() == spec.hash()
    for width in WIDTHS:
        status = json.loads((out / f"width_{width:05d}" / "status.json").read_text())
        assert status["state"] == "done"
        assert status["step"] == STEPS
        assert status["diverged_step"] == [-1, -1]
    assert not list(out.rglob(".tmp-*"))


def test_checkpoint_loads_weights_only(study: tuple[Path, Path]) -> None:
    out = study[1]
    for width in WIDTHS:
        state = torch.load(out / f"width_{width:05d}" / "checkpoint.pt", weights_only=True)
        assert state["step"] == STEPS
        params = state["params"]
        assert set(params) == {"l1.weight", "l2.weight", "out.weight"}
        assert params["l1.weight"].shape == (2, width, 8)
        assert params["l2.weight"].shape == (2, width, width)
        assert params["out.weight"].shape == (2, 1, width)
        assert all(torch.isfinite(p).all() for p in params.values())
        assert state["alive"].tolist() == [True, True]
        assert state["diverged_step"].tolist() == [-1, -1]
        # the two seeds are different networks
        assert not torch.equal(params["l1.weight"][0], params["l1.weight"][1])


# -- torn and partial records --------------------------------------------------


def test_torn_last_scalar_line_is_skipped(study: tuple[Path, Path], study_copy: Path) -> None:
    ref = widthwise.open_study(study[1])
    log = study_copy / "width_00016" / "scalars.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    assert len(lines) == STEPS + len(TEST_STEPS)
    last = lines[-1]
    with open(log, "ab") as f:
        f.write(last[: len(last) // 2])  # half a line, as a writer killed mid-append leaves it
    ds = widthwise.open_study(study_copy)
    assert ds.attrs["skipped_records"] == 1
    assert_same_data(ds.drop_vars("wall_time"), ref.drop_vars("wall_time"))


def test_torn_line_that_parses_is_not_data(study: tuple[Path, Path], study_copy: Path) -> None:
    """A last line without its newline is torn even if its prefix happens to be valid JSON."""
    ref = widthwise.open_study(study[1])
    log = study_copy / "width_00032" / "scalars.jsonl"
    rec = {"probe": "train_loss", "step": 999, "vars": {"train_loss": [5.0, 5.0]}}
    with open(log, "ab") as f:
        f.write(json.dumps(rec).encode())  # no trailing newline
    ds = widthwise.open_study(study_copy)
    assert ds.attrs["skipped_records"] == 1
    assert 999 not in ds.step.values
    assert_same_data(ds, ref)


def test_corrupt_scalar_lines_are_counted(study: tuple[Path, Path], study_copy: Path) -> None:
    ref = widthwise.open_study(study[1])
    log = study_copy / "width_00016" / "scalars.jsonl"
    with open(log, "ab") as f:
        f.write(b"\x00\x00garbage\n")
        f.write(b"[1, 2, 3]\n")
        f.write(b'{"probe": "train_loss"}\n')
    ds = widthwise.open_study(study_copy)
    assert ds.attrs["skipped_records"] == 3
    assert_same_data(ds, ref)


def test_partial_npz_is_skipped(study: tuple[Path, Path], study_copy: Path) -> None:
    ref = widthwise.open_study(study[1])
    arrays = study_copy / "width_00016" / "arrays" / "test"
    victim = arrays / "000000010.npz"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # a partial file
    (arrays / "000000007.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (arrays / ".tmp-000000015.npz.4242").write_bytes(data[:100])  # a dead writer's temp file
    ds = widthwise.open_study(study_copy)
    assert ds.attrs["skipped_records"] == 2
    assert ds.test_step.values.tolist() == TEST_STEPS  # step 7 is not invented
    hole = ds.test_logits.sel(width=16, test_step=10)
    assert np.isnan(hole.values).all()  # never garbage, never zeros
    # everything else is untouched, including test_loss at step 10 (from the scalar log)
    mask = (ds.width == 16) & (ds.test_step == 10)
    xr.testing.assert_equal(
        ds.test_logits.where(~mask), ref.test_logits.where(~mask).astype(ds.test_logits.dtype)
    )
    # the lost step is said, per width and probe: width 16 is damaged, not done
    assert ds.status.values.tolist() == ["damaged", "done"]
    assert ds.missing_records.sel(width=16).values.tolist() == [0, 1]  # train_loss, test
    assert ds.damage.values.tolist() == ["1 record missing in arrays/test/", ""]
    flags = ["test_logits", "status", "damage", "missing_records"]
    assert_same_data(ds.drop_vars(flags), ref.drop_vars(flags))


def test_open_study_refuses_non_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(StoreError, match="not a widthwise study"):
        widthwise.open_study(tmp_path)
    assert main(["show", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and str(tmp_path) in err[0] and "not a widthwise study" in err[0]


# -- refusals ------------------------------------------------------------------


def test_different_spec_same_dir_refused(
    study_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(study_copy)
    spec = tiny_spec_dict(study_copy)
    spec["optimizer"]["lr"] = 0.2
    path = write_spec(tmp_path / "other.yaml", spec)
    assert main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: out:")
    assert str(study_copy) in err[0] and "different" in err[0]
    assert snapshot(study_copy) == before
    # --out on the command line is checked the same way
    path2 = write_spec(tmp_path / "other2.yaml", {**spec, "out": str(tmp_path / "elsewhere")})
    assert main(["run", str(path2), "--quiet", "--out", str(study_copy)]) == 2
    assert "different" in capsys.readouterr().err
    assert snapshot(study_copy) == before
    assert not (tmp_path / "elsewhere").exists()


def test_same_spec_other_description_reuses_dir(
    study: tuple[Path, Path], study_copy: Path, tmp_path: Path
) -> None:
    """``description``, ``out`` and ``device`` do not change the numbers, so not the hash."""
    before = snapshot(study_copy)
    spec = tiny_spec_dict(study_copy, description="another text", device="auto")
    path = write_spec(tmp_path / "same.yaml", spec)
    assert main(["run", str(path), "--quiet"]) == 0
    after = snapshot(study_copy)
    assert after == before  # finished widths are skipped: nothing rewritten


def test_non_empty_non_study_dir_refused(
    tiny_spec, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious\n")
    path = tiny_spec(out=str(out))
    assert main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: out:") and str(out) in err[0] and "not empty" in err[0]
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    assert (out / "thesis.tex").read_text() == "precious\n"


def test_empty_existing_dir_is_used(tiny_spec, tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    spec = load_spec(
        tiny_spec(
            out=str(out),
            widths=[16],
            steps=3,
            checkpoint_every=1,
            probes={"train_loss": {"every": 1}, "test": {"every": 3}},
        )
    )
    assert widthwise.run(spec) == out
    ds = widthwise.open_study(out)
    assert ds.width.values.tolist() == [16]
    assert ds.step.values.tolist() == [0, 1, 2]
    assert ds.test_step.values.tolist() == [0, 3]


@pytest.mark.parametrize("crash_at", [1, 2, 3, 4], ids=["marker", "spec", "probe_set", "manifest"])
def test_killed_while_creating_the_study_dir(
    study: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: int
) -> None:
    """A run killed before the manifest is written leaves a dir the next run can still use."""
    import widthwise.store.files as files
    import widthwise.store.study_dir as study_dir

    real = files.atomic_write_bytes
    calls: list[str] = []

    def dying_write(path: Path, data: bytes) -> None:
        calls.append(path.name)
        if len(calls) == crash_at:
            (path.parent / f".tmp-{path.name}.999").write_bytes(data[: len(data) // 2])
            raise KeyboardInterrupt  # killed mid-write
        real(path, data)

    out = tmp_path / "study"
    spec = load_spec(write_spec(tmp_path / "tiny.yaml", tiny_spec_dict(out)))
    with monkeypatch.context() as m:
        m.setattr(files, "atomic_write_bytes", dying_write)
        m.setattr(study_dir, "atomic_write_bytes", dying_write)
        with pytest.raises(KeyboardInterrupt):
            widthwise.run(spec)
    assert calls[-1] == [".preparing", "spec.yaml", "probe_set.npz", "manifest.json"][crash_at - 1]
    assert not (out / "manifest.json").exists()
    with pytest.raises(StoreError):
        widthwise.open_study(out)
    assert widthwise.run(spec) == out
    assert not (out / ".preparing").exists()
    ref = widthwise.open_study(study[1])
    xr.testing.assert_equal(
        widthwise.open_study(out).drop_vars("wall_time"), ref.drop_vars("wall_time")
    )


def test_users_spec_file_in_out_dir_is_not_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Files named like the store's are only reused next to the store's own marker."""
    out = tmp_path / "mine"
    out.mkdir()
    text = "# my notes\nname: tiny\n"
    (out / "spec.yaml").write_text(text)
    path = write_spec(tmp_path / "tiny.yaml", tiny_spec_dict(out))
    assert main(["run", str(path), "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["spec.yaml"]
    assert (out / "spec.yaml").read_text() == text


# -- the schema as data; stores of earlier versions -----------------------------------

FIXTURES = Path(__file__).parent / "fixtures" / "store_v1"
"""Studies written by widthwise 0.1.0 before the dims were renamed (store format 1;
``checkpoint.pt`` of the transformer dropped): every probe, old dim names."""
ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def assert_declared(ds: xr.Dataset) -> None:
    """Every dim and variable of ``ds`` is declared, each variable with its declared dims."""
    dims, variables = declared_dims(), declared_vars()
    assert set(ds.dims) <= set(dims), set(ds.dims) - set(dims)
    for name, da in ds.data_vars.items():
        v = variables[name]
        assert da.dims in (v.dims, v.alt_dims), (name, da.dims)
        assert da.attrs["description"] == v.meaning and da.attrs["units"] == v.units, name
    for name, dim in dims.items():
        if dim.index_of and name in ds.dims:  # a probe's points are the first probe points
            assert ds[name].values.tolist() == list(range(ds.sizes[name])), name
            assert ds.sizes[name] <= ds.sizes[dim.index_of], name


def test_store_v1_mlp_opens_under_the_current_names() -> None:
    ds = widthwise.open_study(FIXTURES / "mlp")
    assert ds.attrs["skipped_records"] == 0 and ds.status.values.tolist() == ["done", "done"]
    assert not set(legacy_dims()) & (set(ds.dims) | set(ds.variables))
    assert_declared(ds)
    k = ds.feature_kernel
    assert k.dims == (
        "width", "seed", "kernels_step", "kernels_layer", "kernels_point_i", "kernels_point_j"
    )  # fmt: skip
    assert k.shape == (2, 2, 2, 2, 4, 4) and ds.kernels_layer.values.tolist() == ["l1", "l2"]
    np.testing.assert_allclose(k.values, k.transpose(..., "kernels_point_j", "kernels_point_i"))
    # the kernel's points join the targets by name
    y = ds.test_target.sel(point=ds.kernels_point_i)
    assert y.dims == ("kernels_point_i", "output")
    np.testing.assert_array_equal(y.values, ds.test_target.values[:4])
    h = ds.preact_hist
    assert h.dims == ("width", "seed", "preacts_step", "preacts_layer", "preacts_bin")
    np.testing.assert_allclose(ds.preacts_edge.values, np.linspace(-5, 5, 7))
    np.testing.assert_allclose(ds.preacts_bin.values, np.linspace(-5, 5, 7)[:-1] + 5 / 6)
    total = h.sum("preacts_bin") + ds.preact_underflow + ds.preact_overflow
    np.testing.assert_array_equal(total.values, ds.preact_count.values)
    np.testing.assert_array_equal(ds.preact_count.sel(width=16).values, 6.0 * 16)  # points × width
    assert ds.preact_sample.dims[-2:] == ("preacts_point", "preacts_neuron")
    assert ds.entk.dims[3:] == ("entk_point_i", "entk_output_i", "entk_point_j", "entk_output_j")
    assert ds.entk_layer.values.tolist() == ["l1", "l2", "out"]
    np.testing.assert_allclose(ds.entk_per_layer.sum("entk_layer"), ds.entk, rtol=1e-5)
    assert ds.sharpness.dims == ("width", "seed", "sharpness_step", "sharpness_eig")
    assert (ds.sharpness.isel(sharpness_eig=0) >= ds.sharpness.isel(sharpness_eig=1)).all()


def test_store_v1_transformer_opens_under_the_current_names() -> None:
    ds = widthwise.open_study(FIXTURES / "transformer")
    assert ds.attrs["skipped_records"] == 0
    assert_declared(ds)
    a = ds.attention
    assert a.dims == (
        "width", "seed", "attention_step", "attention_layer", "attention_point",
        "head", "query", "key",
    )  # fmt: skip
    assert ds.attention_layer.values.tolist() == ["b1"]
    np.testing.assert_allclose(a.sum("key"), 1.0, atol=1e-6)
    assert ds.test_label.dims == ("point", "position")
    assert ds.test_logits.dims == ("width", "seed", "test_step", "point", "position", "output")
    assert ds.entk.dims == ("width", "seed", "entk_step", "entk_point_i", "entk_point_j")
    labels = ds.test_label.sel(point=ds.attention_point)
    assert labels.dims == ("attention_point", "position") and labels.shape == (2, 4)


def test_a_new_run_writes_declared_names(study: tuple[Path, Path]) -> None:
    ds = widthwise.open_study(study[1])
    assert_declared(ds)
    for name in ds.data_vars:
        assert ds[name].attrs["description"], name


def test_declared_dims_follow_the_naming_rule() -> None:
    import widthwise.store.open  # noqa: F401  (declares the study schema; order-independent)

    seen: dict[str, object] = {}
    for schema in SCHEMAS.values():
        for d in schema.dims:
            assert follows_naming_rule(schema, d.name), (schema.name, d.name)
            assert seen.setdefault(d.name, d) == d, f"{d.name} declared twice, differently"
        for v in schema.variables:
            for dims in (v.dims, v.alt_dims) if v.alt_dims else (v.dims,):
                assert set(dims) <= set(declared_dims()), (v.name, dims)
                if schema.step_dim is not None:
                    assert dims[:3] == ("width", "seed", schema.step_dim), v.name
    assert follows_naming_rule(SCHEMAS["kernels"], "kernels_point_i")
    assert not follows_naming_rule(SCHEMAS["kernels"], "kpoint_i")
    assert not follows_naming_rule(SCHEMAS["kernels"], "preacts_bin")  # another probe's prefix


def test_every_builtin_probe_declares_its_schema() -> None:
    code = (
        "import widthwise.store.open; from widthwise.probes import PROBES; "
        "from widthwise.dataset_schema import SCHEMAS; "
        "print(sorted(set(PROBES.names()) - set(SCHEMAS)), sorted(SCHEMAS))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    missing, declared = out.stdout.strip().split("] ", 1)
    assert missing == "[", f"probes without a declared schema: {missing}]"
    assert "'study'" in declared


def test_docs_use_the_current_dim_names() -> None:
    """Earlier names appear only in dataset.md's table of them."""
    texts = {p: p.read_text() for p in [*DOCS.glob("*.md"), *ROOT.glob("examples/paper/*.py")]}
    for path, text in texts.items():
        if path.name == "dataset.md":
            text = text.split("### Dims of stores written by earlier versions")[0]
        for old in [*legacy_dims(), "preact_bin_edge"]:
            assert not re.search(rf"\b{old}\b", text), f"{path.name} still says {old!r}"


def test_probes_doc_states_the_declared_dims() -> None:
    """probes.md's per-probe tables (hand-written) give each variable its declared dims."""
    rows = re.findall(
        r"^\| `([a-z_]+)` \| \(([a-z_, ]+)\) \|", (DOCS / "probes.md").read_text(), re.M
    )
    assert len(rows) >= 12
    variables = declared_vars()
    for name, dims in rows:
        v = variables[name]
        assert tuple(dims.split(", ")) in (v.dims, v.alt_dims), name


def _documented_keys(heading: str) -> set[str]:
    """The keys of the table that follows ``heading`` in docs/dataset.md."""
    table = (DOCS / "dataset.md").read_text().split(heading, 1)[1].split("\n\n", 2)[1]
    keys: set[str] = set()
    for row in table.splitlines()[2:]:
        keys.update(re.findall(r"`([a-z_0-9]+)`", row.split("|")[1]))
    return keys


def test_status_and_checkpoint_contents_are_documented(study: tuple[Path, Path]) -> None:
    for width in WIDTHS:
        wd = study[1] / f"width_{width:05d}"
        status = json.loads((wd / "status.json").read_text())
        documented = _documented_keys("`status.json` (rewritten")
        assert set(status) <= documented and documented - set(status) <= {"error"}
        state = torch.load(wd / "checkpoint.pt", weights_only=True)
        assert set(state) == _documented_keys("`checkpoint.pt` (a mapping")
