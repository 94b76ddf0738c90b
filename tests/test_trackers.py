"""Trackers mirror a study's scalars and report figures to W&B (offline), MLflow (file
store) and TensorBoard; read back with each library's own readers, no network."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from conftest import tiny_spec_dict, write_spec

import widthwise
from widthwise.errors import SpecError
from widthwise.spec import validate_spec
from widthwise.trackers import TRACKERS, mirror_figures, mirror_scalars
from widthwise.trackers.tensorboard_tracker import TensorboardTracker
from widthwise.trackers.wandb_tracker import offline_copies, read_records

pytest.importorskip("wandb")
pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

TRACKER_OUTPUTS = ("wandb", "mlruns", "tensorboard", "report")
SCALARS = {"train_loss": "step", "test_loss": "test_step"}  # var -> step dim in the tiny study


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """W&B offline with every directory it writes under tmp; MLflow's file store allowed
    (as `mlflow ui` needs it) so the tests can read the store back."""
    home = tmp_path_factory.mktemp("trackers_env")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
            mp.setenv(var, str(home / var.lower()))
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        yield home
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()  # stop wandb's service process


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, single_thread: None, env: Path):
    """The tiny study with all three trackers, mirrored twice (a resumed study), and its
    report's figures mirrored twice."""
    root = tmp_path_factory.mktemp("trackers")
    spec = tiny_spec_dict(
        root / "study", trackers={"wandb": {"tags": ["t1"]}, "mlflow": {}, "tensorboard": {}}
    )
    out = widthwise.run(write_spec(root / "tiny.yaml", spec))
    mirror_scalars(out)
    mirror_scalars(out)
    report = root / "report"
    figures = report / "figures"
    figures.mkdir(parents=True)
    _make_figures(figures)
    mirror_figures(out, report)
    mirror_figures(out, report)
    ds = widthwise.open_study(out)
    return SimpleNamespace(path=out, ds=ds, pngs=sorted(figures.glob("*.png")))


def _make_figures(figures: Path) -> None:
    """Two small PNGs as the report writes them (matplotlib Agg)."""
    from matplotlib.figure import Figure

    for name, color in (("loss_curves", "C0"), ("distance_to_widest", "C1")):
        fig = Figure(figsize=(2, 1.5))
        fig.add_subplot().plot([0, 1, 2], [2, 1, 3], color=color)
        fig.savefig(figures / f"{name}.png", dpi=50)


def _expected(ds, var: str, width: int) -> dict[str, dict[int, float]]:
    """The study's numbers as mirrored: {metric: {step: value}} (finite values only)."""
    da = ds[var].sel(width=width)
    dim = SCALARS[var]
    out: dict[str, dict[int, float]] = {}
    mean = da.mean("seed")
    out[f"{var}/mean"] = {
        int(s): float(v) for s, v in zip(da[dim].values, mean.values) if np.isfinite(v)
    }
    for seed in da.seed.values:
        vals = da.sel(seed=seed).values
        out[f"{var}/seed_{int(seed)}"] = {
            int(s): float(v) for s, v in zip(da[dim].values, vals) if np.isfinite(v)
        }
    return out


def _copy_study(src: Path, dst: Path) -> Path:
    """The study without any tracker output (its own trackers start from nothing)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*TRACKER_OUTPUTS))
    return dst


# -- spec validation -----------------------------------------------------------------


def test_trackers_are_registered_and_import_lazily():
    assert TRACKERS.names() == ["mlflow", "tensorboard", "wandb"]
    code = (
        "import sys, widthwise, widthwise.trackers; "
        "print(sorted(m for m in ('wandb', 'mlflow', 'tensorboard') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["wandb", "mlflow", "tensorboard"])
def test_missing_extra_is_one_line_naming_it(monkeypatch, name):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda mod, *a: None if mod == name else real(mod, *a)
    )
    with pytest.raises(SpecError) as err:
        validate_spec(tiny_spec_dict(trackers={name: {}}), "s.yaml")
    assert str(err.value) == (
        f"s.yaml: trackers.{name}: needs the {name} extra: pip install 'widthwise[{name}]'"
    )


def test_tracker_options_are_validated():
    spec = validate_spec(
        tiny_spec_dict(
            trackers={
                "wandb": {"project": "p", "mode": "disabled", "tags": ["a"]},
                "mlflow": {"experiment": "e", "tracking_uri": "runs/mlruns"},
                "tensorboard": {"logdir": "tb"},
            }
        )
    )
    assert spec.trackers["wandb"]["mode"] == "disabled"
    with pytest.raises(SpecError) as err:
        validate_spec(
            tiny_spec_dict(trackers={"wandb": {"mode": "cloud", "projekt": "p"}}), "s.yaml"
        )
    msg = str(err.value)
    assert "trackers.wandb.projekt: unknown key" in msg
    assert "trackers.wandb.mode: Input should be 'offline', 'online' or 'disabled'" in msg
    with pytest.raises(SpecError, match="unknown tracker 'neptune'; allowed: mlflow"):
        validate_spec(tiny_spec_dict(trackers={"neptune": {}}))


def test_trackers_do_not_change_the_spec_hash():
    plain = validate_spec(tiny_spec_dict())
    tracked = validate_spec(tiny_spec_dict(trackers={"tensorboard": {}}))
    assert plain.hash() == tracked.hash()


@pytest.mark.skipif(importlib.util.find_spec("sqlalchemy") is not None, reason="full mlflow")
def test_mlflow_database_store_needs_full_mlflow():
    with pytest.raises(SpecError) as err:
        validate_spec(tiny_spec_dict(trackers={"mlflow": {"tracking_uri": "sqlite:///m.db"}}))
    assert "trackers.mlflow: tracking_uri 'sqlite:///m.db' needs the full mlflow package" in str(
        err.value
    )


# -- TensorBoard -----------------------------------------------------------------------


def _tb(path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_tensorboard_scalars_equal_the_study(study):
    for width in (16, 32):
        run_dir = study.path / "tensorboard" / f"width_{width:05d}"
        assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # rewritten, not added
        acc = _tb(run_dir)
        for var in SCALARS:
            for key, expected in _expected(study.ds, var, width).items():
                events = acc.Scalars(key)
                assert [e.step for e in events] == sorted(expected)  # each step once
                got = np.array([e.value for e in events])
                want = np.array([expected[s] for s in sorted(expected)])
                np.testing.assert_allclose(got, want, rtol=1e-6)  # stored as float32
    assert len(_tb(study.path / "tensorboard" / "width_00016").Scalars("train_loss/mean")) == 20


def test_tensorboard_figures_are_the_pngs(study):
    acc = _tb(study.path / "tensorboard" / "report")
    for png in study.pngs:
        (image,) = acc.Images(f"figures/{png.stem}")
        assert image.encoded_image_string == png.read_bytes()
        assert image.step == 20
        assert image.height > 0 and image.width > 0


# -- MLflow --------------------------------------------------------------------------


def _mlflow(path: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(path / "mlruns").as_uri())
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    return client, {r.data.tags["widthwise.run"].rsplit(":", 1)[1]: r for r in runs}


def test_mlflow_metrics_equal_the_study(study):
    client, runs = _mlflow(study.path)
    assert sorted(runs) == ["study", "w16", "w32"]  # mirrored twice, one run each
    parent = runs["study"].info.run_id
    for width in (16, 32):
        run = runs[f"w{width}"]
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.data.params["width"] == str(width)
        assert run.info.status == "FINISHED"
        for var in SCALARS:
            for key, expected in _expected(study.ds, var, width).items():
                history = client.get_metric_history(run.info.run_id, key)
                assert sorted(m.step for m in history) == sorted(expected)  # no duplicates
                for m in history:
                    assert m.value == pytest.approx(expected[m.step], rel=1e-12)
    assert runs["study"].data.params["spec_hash"] == study.ds.attrs["spec_hash"]


def test_mlflow_figures_are_artifacts(study):
    client, runs = _mlflow(study.path)
    run_id = runs["study"].info.run_id
    names = sorted(Path(a.path).name for a in client.list_artifacts(run_id, "figures"))
    assert names == [p.name for p in study.pngs]
    local = Path(client.download_artifacts(run_id, "figures/loss_curves.png"))
    assert local.read_bytes() == (study.pngs[1]).read_bytes()
    assert "spec.yaml" in [a.path for a in client.list_artifacts(run_id)]


# -- Weights & Biases (offline) ----------------------------------------------------------


def _wandb_history(wandb_file: Path) -> dict[int, dict[str, object]]:
    """{step: {key: value}} from a .wandb transaction log."""
    rows: dict[int, dict[str, object]] = {}
    for record in read_records(wandb_file):
        if record.WhichOneof("record_type") != "history":
            continue
        row = rows.setdefault(int(record.history.step.num), {})
        for item in record.history.item:
            *outer, key = [item.key] if item.key else list(item.nested_key)
            target = row
            for part in outer:  # an image's fields arrive as (key, field) pairs
                target = target.setdefault(part, {})
            target[key] = json.loads(item.value_json)
    return rows


def _wandb_run(wandb_file: Path):
    for record in read_records(wandb_file):
        if record.WhichOneof("record_type") == "run":
            return record.run
    raise AssertionError("no run record")


def test_wandb_offline_history_equals_the_study(study):
    base = study.path
    for width in (16, 32):
        run_id = f"tiny-{study.ds.attrs['spec_hash'][:8]}-w{width}"
        copies = offline_copies(base, run_id)
        assert len(copies) == 1  # the second mirror found nothing new
        run = _wandb_run(copies[0])
        assert (run.run_id, run.run_group, run.job_type) == (run_id, "tiny", "width")
        assert list(run.tags) == ["t1"]
        rows = _wandb_history(copies[0])
        for var in SCALARS:
            for key, expected in _expected(study.ds, var, width).items():
                got = {s: row[key] for s, row in rows.items() if key in row}
                assert sorted(got) == sorted(expected)
                for s, v in got.items():
                    assert v == pytest.approx(expected[s], rel=1e-12)


def test_wandb_offline_report_images_are_the_pngs(study):
    (report_dir,) = (study.path / "wandb").glob("offline-run-*-report-*")
    (log,) = report_dir.glob("run-*.wandb")
    rows = _wandb_history(log)
    assert list(rows) == [20]
    for png in study.pngs:
        image = rows[20][f"figures/{png.stem}"]
        assert image["_type"] == "image-file"
        assert (report_dir / "files" / image["path"]).read_bytes() == png.read_bytes()


def test_wandb_disabled_writes_nothing(study, tmp_path):
    copy = _copy_study(study.path, tmp_path / "s")
    spec = yaml.safe_load((copy / "spec.yaml").read_text())
    spec["trackers"] = {"wandb": {"mode": "disabled"}}
    (copy / "spec.yaml").write_text(yaml.safe_dump(spec))
    mirror_scalars(copy)
    mirror_figures(copy, study.pngs[0].parent.parent)
    assert not (copy / "wandb").exists()


# -- a partial study, then the rest of it -------------------------------------------------


def test_partial_then_finished_study_mirrors_each_value_once(study, tmp_path, capsys):
    copy = _copy_study(study.path, tmp_path / "s")
    status_path = copy / "width_00032" / "status.json"
    done = status_path.read_text()
    status = json.loads(done)
    status.update(state="running", step=12)  # crashed after the checkpoint at step 10
    status.pop("crc32", None)  # an edited status without its checksum (else: "unknown")
    status_path.write_text(json.dumps(status))
    mirror_scalars(copy)
    run_id = f"tiny-{study.ds.attrs['spec_hash'][:8]}-w32"
    (first,) = offline_copies(copy, run_id)
    assert max(_wandb_history(first)) == 9  # steps >= 10 are redone on resume
    tb32 = copy / "tensorboard" / "width_00032"
    assert [e.step for e in _tb(tb32).Scalars("test_loss/mean")] == [0, 5]
    status_path.write_text(done)  # the study resumed and finished
    mirror_scalars(copy)
    assert capsys.readouterr().err == ""
    copies = offline_copies(copy, run_id)
    assert len(copies) == 2
    second = _wandb_history(copies[1])
    assert min(second) == 10 and max(second) == 20
    expected = _expected(study.ds, "train_loss", 32)["train_loss/mean"]
    merged = {**_wandb_history(first), **second}
    got = {s: r["train_loss/mean"] for s, r in merged.items() if "train_loss/mean" in r}
    assert got == pytest.approx(expected, rel=1e-12)
    assert [e.step for e in _tb(tb32).Scalars("test_loss/mean")] == [0, 5, 10, 15, 20]
    client, runs = _mlflow(copy)
    history = client.get_metric_history(runs["w32"].info.run_id, "train_loss/mean")
    assert sorted(m.step for m in history) == list(range(20))


# -- failures never reach the study --------------------------------------------------------


def test_a_failing_tracker_warns_once_and_the_others_still_mirror(
    study, tmp_path, capsys, monkeypatch
):
    copy = _copy_study(study.path, tmp_path / "s")

    def boom(self):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(TensorboardTracker, "mirror_scalars", boom)
    mirror_scalars(copy)  # no exception
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "widthwise: warning: trackers.tensorboard: mirroring scalars failed "
        "(RuntimeError: disk on fire second line); the study is unaffected"
    ]
    assert not (copy / "tensorboard").exists()
    assert (copy / "mlruns").is_dir() and (copy / "wandb").is_dir()
    assert widthwise.open_study(copy).train_loss.equals(study.ds.train_loss)


def test_bad_tracker_entry_or_study_warns(study, tmp_path, capsys):
    copy = _copy_study(study.path, tmp_path / "s")
    spec = yaml.safe_load((copy / "spec.yaml").read_text())
    spec["trackers"] = {"tensorboard": {"logdir": 3}, "neptune": {}}
    (copy / "spec.yaml").write_text(yaml.safe_dump(spec))
    mirror_scalars(copy)
    err = sorted(capsys.readouterr().err.strip().splitlines())
    assert len(err) == 2
    assert err[0].startswith("widthwise: warning: trackers.neptune: not mirrored (UserError: ")
    assert "Unknown tracker 'neptune'" in err[0]
    assert err[1].startswith("widthwise: warning: trackers.tensorboard: not mirrored (")
    assert "logdir" in err[1] and err[1].endswith("the study is unaffected")
    mirror_scalars(tmp_path / "nothing")
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("widthwise: warning: trackers: cannot read the study at ")
    assert line.endswith("; not mirrored")


def test_no_trackers_no_output(study, tmp_path, capsys):
    copy = _copy_study(study.path, tmp_path / "s")
    spec = yaml.safe_load((copy / "spec.yaml").read_text())
    del spec["trackers"]
    (copy / "spec.yaml").write_text(yaml.safe_dump(spec))
    before = sorted(p.name for p in copy.iterdir())
    mirror_scalars(copy)
    mirror_figures(copy, study.pngs[0].parent.parent)
    assert sorted(p.name for p in copy.iterdir()) == before
    assert capsys.readouterr().err == ""


def test_wandb_online_resumes_from_the_runs_last_step(study, tmp_path, monkeypatch):
    """Online mode cannot reach a server here: a stand-in wandb module plays one that
    already holds steps 0..11 of width 16 and the report run."""
    logged: dict[str, list[int]] = {}

    class FakeRun:
        def __init__(self, id: str, **kwargs: object) -> None:
            self.id, self.kwargs, self.summary = id, kwargs, {}
            self.resumed = id.endswith("-w16") or "-report-" in id
            self.offline = False
            self.starting_step = 12 if id.endswith("-w16") else 0
            logged[id] = []

        def log(self, values: dict, step: int) -> None:
            logged[self.id].append(step)

        def finish(self) -> None:
            self.finished = True

    fake = types.ModuleType("wandb")
    fake.init = lambda settings, **kw: FakeRun(**kw)
    fake.Settings = lambda **kw: kw
    fake.Image = lambda path: path
    monkeypatch.setitem(sys.modules, "wandb", fake)
    copy = _copy_study(study.path, tmp_path / "s")
    spec = yaml.safe_load((copy / "spec.yaml").read_text())
    spec["trackers"] = {"wandb": {"mode": "online", "project": "p", "entity": "me"}}
    (copy / "spec.yaml").write_text(yaml.safe_dump(spec))
    mirror_scalars(copy)
    mirror_figures(copy, study.pngs[0].parent.parent)
    prefix = f"tiny-{study.ds.attrs['spec_hash'][:8]}"
    assert logged[f"{prefix}-w16"] == list(range(12, 21))  # 20: the last test step
    assert logged[f"{prefix}-w32"] == list(range(21))
    (report_id,) = [k for k in logged if "-report-" in k]
    assert logged[report_id] == []  # resumed: these figures are there already


def _only_tracker(copy: Path, trackers: dict) -> None:
    spec = yaml.safe_load((copy / "spec.yaml").read_text())
    spec["trackers"] = trackers
    (copy / "spec.yaml").write_text(yaml.safe_dump(spec))


def test_the_reports_own_figures_are_mirrored(study, tmp_path):
    from widthwise.report.build import build_report

    copy = _copy_study(study.path, tmp_path / "s")
    _only_tracker(copy, {"tensorboard": {"logdir": "tb"}})
    page = build_report(copy)
    mirror_figures(copy, page.parent)
    pngs = sorted((page.parent / "figures").glob("*.png"))
    assert "loss_curves" in [p.stem for p in pngs]
    acc = _tb(copy / "tb" / "report")
    assert sorted(acc.Tags()["images"]) == [f"figures/{p.stem}" for p in pngs]
    for png in pngs:
        assert acc.Images(f"figures/{png.stem}")[-1].encoded_image_string == png.read_bytes()


def test_run_succeeds_when_a_tracker_fails(study, tmp_path, capsys, monkeypatch):
    def boom(self):
        raise OSError("no space left on device")

    monkeypatch.setattr(TensorboardTracker, "mirror_scalars", boom)
    copy = _copy_study(study.path, tmp_path / "s")
    _only_tracker(copy, {"tensorboard": {}})
    spec = yaml.safe_load((copy / "spec.yaml").read_text())
    assert widthwise.run(write_spec(tmp_path / "s.yaml", spec), out=copy) == copy
    err = capsys.readouterr().err.strip().splitlines()
    assert all("trackers.tensorboard: mirroring scalars failed" in line for line in err)
    assert len(err) <= 1  # one line once widthwise.run mirrors
    assert widthwise.open_study(copy).train_loss.equals(study.ds.train_loss)


def test_mlflow_file_store_needs_no_environment_variable(study, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    copy = _copy_study(study.path, tmp_path / "s")
    _only_tracker(copy, {"mlflow": {"tracking_uri": "store", "experiment": "exp"}})
    mirror_scalars(copy)
    assert capsys.readouterr().err == ""
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # restored
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(copy / "store").as_uri())
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["tiny", "tiny w=16", "tiny w=32"]


@pytest.mark.parametrize(("tracker", "key"), [("tensorboard", "logdir"), ("wandb", "dir")])
def test_relative_tracker_path_cannot_leave_the_study(tracker: str, key: str) -> None:
    raw = tiny_spec_dict(trackers={tracker: {key: "../../elsewhere"}})
    with pytest.raises(SpecError, match=rf"trackers\.{tracker}: {key}: a relative path stays"):
        validate_spec(raw)
    absolute = tiny_spec_dict(trackers={tracker: {key: "/tmp/elsewhere"}})
    assert validate_spec(absolute).trackers[tracker][key] == "/tmp/elsewhere"
