"""Sweeps as ensemble members (docs/sweeps.md, issue: hyperparameter transfer).

Oracle: a member of a sweep study trains exactly like the study run at its point alone
(float64, to rounding): same batches, same initial weights for its seed, its own lr,
weight decay and σ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import tiny_spec_dict, write_spec

import widthwise
import widthwise.study
from widthwise.cli import main
from widthwise.errors import UserError
from widthwise.members import load_member

pytestmark = pytest.mark.usefixtures("single_thread")

OPTIMIZERS = {
    "sgd": ({"name": "sgd", "lr": 0.1, "momentum": 0.9}, {"lr": [0.05, 0.2], "sigma": [0.5, 1.0]}),
    "adam": ({"name": "adam", "lr": 0.01}, {"lr": [0.003, 0.01], "weight_decay": [0.0, 0.1]}),
    "adamw": ({"name": "adamw", "lr": 0.01}, {"lr": [0.003, 0.01], "weight_decay": [0.0, 0.1]}),
    # the optimizer's state-shaping scalars: widthwise.member_optim steps them per member
    "sgd-momentum": ({"name": "sgd", "lr": 0.1}, {"momentum": [0.0, 0.9], "lr": [0.05, 0.2]}),
    "sgd-nesterov": (
        {"name": "sgd", "lr": 0.1, "momentum": 0.5, "nesterov": True},
        {"momentum": [0.5, 0.9], "weight_decay": [0.0, 0.01]},
    ),
    "sgd-output-multiplier": (
        {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        {"output_multiplier": [0.5, 2.0], "lr": [0.05, 0.2]},
    ),
    "adam-betas": ({"name": "adam", "lr": 0.01}, {"beta1": [0.8, 0.9], "beta2": [0.99, 0.999]}),
    "adamw-eps": (
        {"name": "adamw", "lr": 0.01, "weight_decay": 0.1},
        {"eps": [1e-8, 1e-3], "lr": [0.003, 0.01]},
    ),
}


def _spec(out: Path, optimizer: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return tiny_spec_dict(
        out, widths=[16, 32], steps=8, dtype="float64", optimizer=optimizer, **extra
    )


def _point_spec(spec: dict[str, Any], point: dict[str, float], out: Path) -> dict[str, Any]:
    """The study without a sweep, run at ``point``."""
    one = {k: v for k, v in spec.items() if k != "sweep"}
    one["out"] = str(out)
    one["optimizer"] = dict(spec["optimizer"])
    for k, v in point.items():
        if k in ("sigma", "output_multiplier"):
            one["parameterization"] = {**one["parameterization"], k: v}
        elif k in ("beta1", "beta2"):
            betas = list(one["optimizer"].get("betas", (0.9, 0.999)))
            betas[k == "beta2"] = v
            one["optimizer"]["betas"] = betas
        else:
            one["optimizer"][k] = v
    return one


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_sweep_member_trains_like_its_point_alone(tmp_path: Path, opt: str) -> None:
    optimizer, sweep = OPTIMIZERS[opt]
    spec = _spec(tmp_path / "sweep", optimizer, sweep=sweep)
    assert main(["run", str(write_spec(tmp_path / "sweep.yaml", spec)), "--quiet"]) == 0
    ds = widthwise.open_study(tmp_path / "sweep")
    keys = list(sweep)
    assert list(ds.train_loss.dims) == ["width", *keys, "seed", "step"]
    assert ds.attrs["sweep"] == sweep
    for a in sweep[keys[0]]:
        for b in sweep[keys[1]]:
            point = {keys[0]: a, keys[1]: b}
            out = tmp_path / f"p_{a}_{b}"
            one = _point_spec(spec, point, out)
            assert main(["run", str(write_spec(tmp_path / "one.yaml", one)), "--quiet"]) == 0
            ref = widthwise.open_study(out)
            got = ds.sel(point)
            for var in ("train_loss", "test_logits"):
                np.testing.assert_allclose(
                    got[var].values, ref[var].values, rtol=1e-11, atol=1e-13, err_msg=f"{point}"
                )
    # the points differ: a sweep that ignored its values would pass the check above only
    # if every point's study were the same, which they are not
    first = ds.train_loss.isel({keys[0]: 0}).values
    last = ds.train_loss.isel({keys[0]: -1}).values
    assert np.abs(first - last).max() > 1e-3


def test_sweep_manifest_and_hash(tmp_path: Path) -> None:
    optimizer, _ = OPTIMIZERS["sgd"]
    plain = _spec(tmp_path / "a", optimizer)
    swept = _spec(tmp_path / "b", optimizer, sweep={"lr": [0.05, 0.2]})
    from widthwise.spec import load_spec

    h_plain = load_spec(write_spec(tmp_path / "a.yaml", plain)).hash()
    h_empty = load_spec(write_spec(tmp_path / "e.yaml", {**plain, "sweep": {}})).hash()
    h_swept = load_spec(write_spec(tmp_path / "b.yaml", swept)).hash()
    assert h_plain == h_empty != h_swept  # an empty sweep is the old spec, hash and all
    assert main(["run", str(tmp_path / "b.yaml"), "--quiet"]) == 0
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["seeds"] == [0, 1, 2, 3]  # member ids: point-major
    assert manifest["sweep"] == {"keys": ["lr"], "values": {"lr": [0.05, 0.2]}, "seeds": [0, 1]}


def test_sweep_key_order_is_the_points_order(tmp_path: Path) -> None:
    """Members are point-major in the spec's key order, which sorted JSON (the manifest,
    the hash) would lose: two orders hash apart, and a manifest without ``keys`` (written
    before the list existed) is read in ``spec.yaml``'s order."""
    from widthwise.spec import load_spec

    optimizer, _ = OPTIMIZERS["sgd"]
    sweep = {"sigma": [0.5, 1.0], "lr": [0.05, 0.2]}  # not alphabetical
    spec = _spec(tmp_path / "s", optimizer, sweep=sweep)
    spec["widths"] = [16]
    flipped = {**spec, "sweep": {"lr": sweep["lr"], "sigma": sweep["sigma"]}}
    h = load_spec(write_spec(tmp_path / "s.yaml", spec)).hash()
    assert h != load_spec(write_spec(tmp_path / "f.yaml", flipped)).hash()
    assert main(["run", str(tmp_path / "s.yaml"), "--quiet"]) == 0
    ds = widthwise.open_study(tmp_path / "s")
    assert list(ds.train_loss.dims) == ["width", "sigma", "lr", "seed", "step"]
    one = _point_spec(spec, {"sigma": 0.5, "lr": 0.2}, tmp_path / "one")
    assert main(["run", str(write_spec(tmp_path / "one.yaml", one)), "--quiet"]) == 0
    ref = widthwise.open_study(tmp_path / "one").train_loss.values
    got = ds.train_loss.sel(sigma=0.5, lr=0.2).values
    np.testing.assert_allclose(got, ref, rtol=1e-11)
    # a legacy manifest (no keys): spec.yaml gives the order, the same data
    from widthwise.store.files import atomic_write_json, read_json

    path = tmp_path / "s" / "manifest.json"
    manifest = read_json(path)
    del manifest["sweep"]["keys"]
    atomic_write_json(path, manifest, checksum=True)
    legacy = widthwise.open_study(tmp_path / "s")
    np.testing.assert_array_equal(legacy.train_loss.sel(sigma=0.5, lr=0.2).values, got)


def test_diverged_member_is_frozen_and_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _spec(
        tmp_path / "s", {"name": "sgd", "lr": 0.1, "momentum": 0.9}, sweep={"lr": [0.1, 1000.0]}
    )
    spec["widths"] = [16]
    assert main(["run", str(write_spec(tmp_path / "s.yaml", spec)), "--quiet"]) == 0
    ds = widthwise.open_study(tmp_path / "s")
    div = ds.diverged_step.sel(width=16)
    assert (div.sel(lr=0.1) == -1).all()
    assert (div.sel(lr=1000.0) >= 0).all()
    # the healthy point is untouched by its neighbour's divergence
    assert np.isfinite(ds.train_loss.sel(width=16, lr=0.1)).all()
    capsys.readouterr()
    assert main(["show", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "width 16: 2/4 diverged: lr=1000: 2/2 at step" in out
    assert main(["show", str(tmp_path / "s"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["sweep"] == {"points": [{"lr": 0.1}, {"lr": 1000.0}], "seeds": [0, 1]}
    assert {d["member"] for d in shown["widths"][0]["diverged"]} == {
        "lr=1000 seed 0",
        "lr=1000 seed 1",
    }


class _Interrupt(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("opt", ["adamw", "adam-betas", "sgd-momentum"])
def test_interrupted_sweep_resumes_to_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opt: str
) -> None:
    """Interrupted at step 5 of width 32, resumed from its step-3 checkpoint: bit for bit,
    torch's optimizers and widthwise.member_optim's (per-member β, momentum) alike."""
    optimizer, sweep = OPTIMIZERS[opt]
    ref_spec = _spec(tmp_path / "ref", optimizer, sweep=sweep, checkpoint_every=3)
    assert main(["run", str(write_spec(tmp_path / "ref.yaml", ref_spec)), "--quiet"]) == 0
    spec_path = write_spec(tmp_path / "s.yaml", {**ref_spec, "out": str(tmp_path / "s")})
    real = widthwise.study.run_job

    def run_job(job: Any, on_step: Any = None) -> Any:
        def boom(done: int, total: int, loss: float) -> None:
            if job.width == 32 and done == 5:
                raise _Interrupt

        return real(job, on_step=boom)

    with monkeypatch.context() as m:
        m.setattr(widthwise.study, "run_job", run_job)
        assert main(["run", str(spec_path), "--quiet"]) == 130
    assert main(["run", str(spec_path), "--quiet"]) == 0
    got, ref = widthwise.open_study(tmp_path / "s"), widthwise.open_study(tmp_path / "ref")
    for var in ("train_loss", "test_logits", "diverged_step"):
        xr.testing.assert_equal(got[var], ref[var])


def test_load_member_at_a_point(tmp_path: Path) -> None:
    optimizer, sweep = OPTIMIZERS["sgd"]
    spec = _spec(tmp_path / "s", optimizer, sweep=sweep)
    assert main(["run", str(write_spec(tmp_path / "s.yaml", spec)), "--quiet"]) == 0
    ds = widthwise.open_study(tmp_path / "s")
    x = np.load(tmp_path / "s" / "probe_set.npz")["x"]
    point = {"lr": 0.2, "sigma": 0.5}
    model = load_member(tmp_path / "s", 32, 1, point=point)
    with torch.no_grad():
        f = model(torch.as_tensor(x, dtype=torch.float64)).numpy()
    want = ds.test_logits.sel(width=32, seed=1, **point).isel(test_step=-1).values
    np.testing.assert_allclose(f, want, rtol=1e-10, atol=1e-12)
    other = ds.test_logits.sel(width=32, seed=1, lr=0.05, sigma=0.5).isel(test_step=-1).values
    assert np.abs(f - other).max() > 1e-4  # the point matters
    with pytest.raises(UserError, match="is a sweep study"):
        load_member(tmp_path / "s", 32, 1)
    with pytest.raises(UserError, match="0.3"):
        load_member(tmp_path / "s", 32, 1, point={"lr": 0.3, "sigma": 0.5})


def test_output_multiplier_member_exports_and_its_entk_is_its_point_alone(
    tmp_path: Path,
) -> None:
    """α multiplies a member's logits: load_member folds it in (outputs equal the stored
    test logits), and its eNTK is its point's alone (α² times the family's)."""
    optimizer, sweep = OPTIMIZERS["sgd-output-multiplier"]
    probes = {
        "train_loss": {"every": 1},
        "test": {"every": 4},
        "entk": {"at": ["init", "end"], "points": 8},
    }
    spec = _spec(tmp_path / "s", optimizer, sweep=sweep, probes=probes)
    spec["widths"] = [16]
    assert main(["run", str(write_spec(tmp_path / "s.yaml", spec)), "--quiet"]) == 0
    ds = widthwise.open_study(tmp_path / "s")
    x = np.load(tmp_path / "s" / "probe_set.npz")["x"]
    point = {"output_multiplier": 2.0, "lr": 0.2}
    model = load_member(tmp_path / "s", 16, 1, point=point)
    with torch.no_grad():
        f = model(torch.as_tensor(x, dtype=torch.float64)).numpy()
    want = ds.test_logits.sel(width=16, seed=1, **point).isel(test_step=-1).values
    np.testing.assert_allclose(f, want, rtol=1e-10, atol=1e-12)
    one = _point_spec(spec, point, tmp_path / "one")
    assert main(["run", str(write_spec(tmp_path / "one.yaml", one)), "--quiet"]) == 0
    ref = widthwise.open_study(tmp_path / "one")
    np.testing.assert_allclose(ds.entk.sel(point).values, ref.entk.values, rtol=1e-9)
    init = ds.entk.isel(entk_step=0).sel(lr=0.2)  # same weights at init: K ∝ α²
    np.testing.assert_allclose(
        init.sel(output_multiplier=2.0).values,
        16 * init.sel(output_multiplier=0.5).values,
        rtol=1e-10,
    )


BAD_SWEEPS = [
    ({"sweep": {"betas": [0.5, 0.9]}}, ("betas", "cannot be swept", "beta1", "allowed: lr")),
    ({"sweep": {"nesterov": [0, 1]}}, ("nesterov", "cannot be swept", "allowed: lr")),
    (
        {"optimizer": {"name": "adam", "lr": 0.01}, "sweep": {"momentum": [0.5, 0.9]}},
        ("sweep.momentum", "'adam' has no momentum", "allowed with sgd"),
    ),
    (
        {"optimizer": {"name": "sgd", "lr": 0.1}, "sweep": {"beta2": [0.99, 0.999]}},
        ("sweep.beta2", "'sgd' has no beta2", "adam and adamw"),
    ),
    (
        {
            "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True},
            "sweep": {"momentum": [0.0, 0.9]},
        },
        ("sweep.momentum", "nesterov", "momentum > 0"),
    ),
    ({"sweep": {"beta1": [0.9, 1.0]}}, ("beta1", "1.0", "< 1")),
    ({"sweep": {"momentum": [-0.1, 0.9]}}, ("momentum", "-0.1", "≥ 0")),
    ({"sweep": {"eps": [0.0, 1e-8]}}, ("eps", "0.0", "> 0")),
    ({"sweep": {"batch_size": [8]}}, ("unknown sweep key", "batch_size", "allowed: lr")),
    ({"sweep": {"lr": []}}, ("lr", "non-empty list")),
    ({"sweep": {"lr": [0.1, -1.0]}}, ("lr", "-1.0", "> 0")),
    ({"sweep": {"lr": [0.1, float("nan")]}}, ("lr", "nan", "finite")),
    ({"sweep": {"lr": [0.1, 0.1]}}, ("lr", "unique")),
    ({"sweep": {"lr": [0.1 * (i + 1) for i in range(65)]}}, ("lr", "65 values", "at most 64")),
    ({"sweep": {"lr": "0.1"}}, ("lr", "list")),
    (
        {"seeds": 100, "sweep": {"lr": [0.01 * (i + 1) for i in range(64)]}},
        ("sweep", "6400", "4096"),
    ),
    (
        {"parameterization": {"name": "ntp"}, "sweep": {"sigma": [0.5, 1.0]}},
        ("sigma", "ntp", "forward multiplier"),
    ),
    (
        {
            "sweep": {"lr": [0.05, 0.1]},
            "optimizer": {"name": "adam", "lr": 0.01},
            "probes": {
                "train_loss": {"every": 1},
                "sharpness": {"every": 5, "preconditioned": True},
            },
        },
        ("preconditioned", "sweep.lr"),
    ),
]


@pytest.mark.parametrize(("overrides", "needles"), BAD_SWEEPS, ids=lambda v: str(v)[:40])
def test_bad_sweep_is_one_line_and_writes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, Any],
    needles: tuple[str, ...],
) -> None:
    spec = tiny_spec_dict(tmp_path / "study", **overrides)
    path = write_spec(tmp_path / "bad.yaml", spec)
    code = main(["run", str(path), "--quiet"])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(err) == 1 and "Traceback" not in captured.err, err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    assert not (tmp_path / "study").exists()


def test_sweep_dims_are_shared_dataset_dims() -> None:
    from widthwise.dataset_schema import SHARED_DIMS
    from widthwise.sweep import SWEEP_KEYS

    assert set(SWEEP_KEYS) <= set(SHARED_DIMS)


def test_lr_weighted_probes_of_a_member_equal_its_point_alone(tmp_path: Path) -> None:
    """Λ = the per-tensor lr *scales*: the same operator for every member of an lr sweep,
    so sharpness_lr and entk_lr of a member are those of its point run alone."""
    probes = {
        "train_loss": {"every": 1},
        "sharpness": {"every": 4, "batch_points": 16, "plain": False, "tol": 1e-6},
        "entk": {"at": ["init", "end"], "points": 8},
    }
    optimizer = {"name": "sgd", "lr": 0.1, "momentum": 0.9}
    spec = _spec(tmp_path / "sweep", optimizer, sweep={"lr": [0.05, 0.2]}, probes=probes)
    spec["widths"] = [16]
    assert main(["run", str(write_spec(tmp_path / "sweep.yaml", spec)), "--quiet"]) == 0
    ds = widthwise.open_study(tmp_path / "sweep")
    one = _point_spec(spec, {"lr": 0.2}, tmp_path / "one")
    assert main(["run", str(write_spec(tmp_path / "one.yaml", one)), "--quiet"]) == 0
    ref = widthwise.open_study(tmp_path / "one")
    for var in ("sharpness_lr", "entk_lr"):
        got = ds[var].sel(lr=0.2).values
        np.testing.assert_allclose(got, ref[var].values, rtol=1e-6, err_msg=var)
    assert not np.allclose(ds.entk_lr.sel(lr=0.05).values, ds.entk_lr.sel(lr=0.2).values)


def test_tracker_series_per_point(tmp_path: Path) -> None:
    """Trackers mirror a sweep as ``var/lr_<v>/seed_<s>`` and ``var/lr_<v>/mean``."""
    from widthwise.trackers.base import Study

    optimizer, _ = OPTIMIZERS["sgd"]
    spec = _spec(tmp_path / "s", optimizer, sweep={"lr": [0.05, 0.2]})
    spec["widths"] = [16]
    assert main(["run", str(write_spec(tmp_path / "s.yaml", spec)), "--quiet"]) == 0
    ds = widthwise.open_study(tmp_path / "s")
    (ws,) = Study(tmp_path / "s").widths
    names = {k for k in ws.series if k.startswith("train_loss/")}
    assert names == {
        f"train_loss/lr_{lr}/{m}" for lr in ("0.05", "0.2") for m in ("seed_0", "seed_1", "mean")
    }
    got = ws.series["train_loss/lr_0.2/seed_1"]
    want = ds.train_loss.sel(width=16, lr=0.2, seed=1).values
    np.testing.assert_allclose([got[t] for t in sorted(got)], want, rtol=1e-12)
    mean = ws.series["train_loss/lr_0.05/mean"][3]
    assert mean == pytest.approx(float(ds.train_loss.sel(width=16, lr=0.05, step=3).mean()))


@pytest.mark.parametrize(
    "damage",
    [
        {"values": {"lr": [0.05]}, "seeds": [0, 1]},
        {"values": "lr"},
        {"values": {"lr": [0.05, 0.2]}},
    ],
    ids=["too-few-points", "not-a-mapping", "no-seeds"],
)
def test_damaged_sweep_entry_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: dict[str, Any]
) -> None:
    optimizer, _ = OPTIMIZERS["sgd"]
    spec = _spec(tmp_path / "s", optimizer, sweep={"lr": [0.05, 0.2]})
    spec["widths"] = [16]
    assert main(["run", str(write_spec(tmp_path / "s.yaml", spec)), "--quiet"]) == 0
    path = tmp_path / "s" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["sweep"] = damage
    from widthwise.errors import StoreError
    from widthwise.store.files import atomic_write_json

    # a damaged byte is caught by the manifest's CRC; this entry is written as a
    # well-formed manifest (a buggy or hostile writer), which the sweep check must catch
    atomic_write_json(path, manifest, checksum=True)

    with pytest.raises(StoreError, match="corrupt sweep entry"):
        widthwise.open_study(tmp_path / "s")
    capsys.readouterr()
    for command in ("show", "report"):
        code = main([command, str(tmp_path / "s")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "sweep" in err[0], (command, err)
    assert not (tmp_path / "s" / "report").exists()


def test_preconditioned_sharpness_of_a_beta_sweep_member_equals_its_point_alone(
    tmp_path: Path,
) -> None:
    """Adam's preconditioner reads each member's own β₂ and ε (widthwise.member_optim)."""
    probes = {
        "train_loss": {"every": 1},
        "sharpness": {"every": 4, "batch_points": 16, "plain": False, "tol": 1e-6},
    }
    probes["sharpness"]["preconditioned"] = True
    optimizer = {"name": "adam", "lr": 0.01}
    sweep = {"beta2": [0.9, 0.999], "eps": [1e-8, 1e-2]}
    spec = _spec(tmp_path / "sweep", optimizer, sweep=sweep, probes=probes)
    spec["widths"] = [16]
    assert main(["run", str(write_spec(tmp_path / "sweep.yaml", spec)), "--quiet"]) == 0
    ds = widthwise.open_study(tmp_path / "sweep")
    point = {"beta2": 0.9, "eps": 1e-2}
    one = _point_spec(spec, point, tmp_path / "one")
    assert main(["run", str(write_spec(tmp_path / "one.yaml", one)), "--quiet"]) == 0
    ref = widthwise.open_study(tmp_path / "one")
    var = "sharpness_precond"
    assert var in ds, list(ds.data_vars)
    got = ds[var].sel(point).values
    assert np.isfinite(got).any()
    np.testing.assert_allclose(got, ref[var].values, rtol=1e-6, err_msg=var)
    other = ds[var].sel(beta2=0.999, eps=1e-8).values
    assert not np.allclose(got, other, equal_nan=True)


def test_dry_run_counts_members_of_a_sweep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    optimizer, sweep = OPTIMIZERS["sgd"]  # 2 lr × 2 sigma × 2 seeds = 8 members
    spec = _spec(tmp_path / "s", optimizer, sweep=sweep)
    assert main(["run", str(write_spec(tmp_path / "s.yaml", spec)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "parameters × 8 members" in out and not (tmp_path / "s").exists()


def test_momentum_transfer_section_says_what_was_fitted(tmp_path: Path) -> None:
    """A momentum grid holds 0: the optimum is fitted on a linear axis, and the section
    says so; the 1/width drift of the lr under SP is not claimed for momentum."""
    spec = _spec(tmp_path / "s", {"name": "sgd", "lr": 0.1}, sweep={"momentum": [0.0, 0.5, 0.9]})
    assert main(["run", str(write_spec(tmp_path / "s.yaml", spec)), "--quiet"]) == 0
    assert main(["report", str(tmp_path / "s"), "--out", str(tmp_path / "r")]) == 0
    page = (tmp_path / "r" / "report.html").read_text()
    assert "Transfer of momentum" in page and "two neighbours in momentum" in page
    assert "∝ 1/width" not in page and "in log momentum" not in page
