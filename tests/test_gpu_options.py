"""Device selection, bf16 mixed precision and deterministic mode, all exercised on the CPU."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import tiny_spec_dict, write_spec

import widthwise
import widthwise.trainer
from widthwise.cli import main
from widthwise.device import check_precision, deterministic_mode, resolve_device
from widthwise.errors import SpecError, UserError
from widthwise.spec import load_spec
from widthwise.trainer import EnsembleTrainer

pytestmark = pytest.mark.usefixtures("single_thread")

PROBES = {
    "train_loss": {"every": 1},
    "test": {"every": 10},
    "kernels": {"points": 8},
}


def run_tiny(root: Path, **overrides: Any) -> xr.Dataset:
    root.mkdir(parents=True, exist_ok=True)
    spec = tiny_spec_dict(root / "study", probes=PROBES, **overrides)
    return widthwise.open_study(widthwise.run(load_spec(write_spec(root / "s.yaml", spec))))


@pytest.fixture(scope="module")
def float32_run(single_thread: None, tmp_path_factory: pytest.TempPathFactory) -> xr.Dataset:
    return run_tiny(tmp_path_factory.mktemp("f32"))


@pytest.fixture(scope="module")
def bf16_run(single_thread: None, tmp_path_factory: pytest.TempPathFactory) -> xr.Dataset:
    return run_tiny(tmp_path_factory.mktemp("bf16"), mixed_precision="bf16")


# -- device selection -----------------------------------------------------------


def test_auto_picks_cuda_only_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(
    ("name", "available", "count", "needles"),
    [
        ("cuda", False, 0, ["device: 'cuda'", "no CUDA device", "cpu or auto"]),
        ("cuda:0", False, 0, ["device: 'cuda:0'", "no CUDA device"]),
        ("cuda:3", True, 2, ["device: 'cuda:3'", "2 CUDA device", "cuda:0 … cuda:1"]),
        ("tpu", False, 0, ["device: 'tpu'", "allowed: auto, cpu, cuda, cuda:N"]),
        ("meta", False, 0, ["device: 'meta'", "not supported"]),
    ],
)
def test_unavailable_device_is_one_line(
    monkeypatch: pytest.MonkeyPatch, name: str, available: bool, count: int, needles: list[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    with pytest.raises(UserError) as err:
        resolve_device(name)
    line = str(err.value)
    assert "\n" not in line
    for needle in needles:
        assert needle in line, line


def test_cli_device_not_on_this_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    spec = write_spec(tmp_path / "s.yaml", tiny_spec_dict(tmp_path / "study"))
    assert main(["run", str(spec), "--device", "cuda:1", "--quiet"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: device: 'cuda:1'"), err
    assert not (tmp_path / "study").exists()


# -- mixed precision --------------------------------------------------------------


def test_bf16_training_learns(bf16_run: xr.Dataset) -> None:
    loss = bf16_run.test_loss
    assert np.isfinite(loss.values).all()
    assert (loss.isel(test_step=-1) < 0.9 * loss.isel(test_step=0)).all(), loss.values
    assert (bf16_run.diverged_step.values == -1).all()


def test_bf16_is_close_to_float32_but_not_equal(
    bf16_run: xr.Dataset, float32_run: xr.Dataset
) -> None:
    a, b = bf16_run.test_loss.isel(test_step=-1), float32_run.test_loss.isel(test_step=-1)
    rel = float(np.abs(a - b).max() / b.max())
    assert 0 < rel < 0.03, rel  # bf16 rounding shows, but training follows the same path
    # step 0 trains nothing, but its training loss is the bf16 forward pass: it differs
    t0 = np.abs(bf16_run.train_loss.isel(step=0) - float32_run.train_loss.isel(step=0))
    assert float(t0.max()) > 0
    assert float((t0 / float32_run.train_loss.isel(step=0)).max()) < 0.05


def test_bf16_probes_run_in_float32(bf16_run: xr.Dataset, float32_run: xr.Dataset) -> None:
    """Probes at step 0 see the same initial parameters as the float32 run: outside
    autocast they are bit-identical to it (under autocast they would not be)."""
    for var in ("test_logits", "test_loss", "feature_kernel"):
        xr.testing.assert_identical(
            bf16_run[var].isel({bf16_run[var].dims[2]: 0}),
            float32_run[var].isel({float32_run[var].dims[2]: 0}),
        )
    out = Path(json.loads(bf16_run.attrs["spec"])["out"])
    with np.load(out / "width_00016" / "arrays" / "test" / "000000020.npz") as z:
        assert z["test_logits"].dtype == np.float32
    with np.load(out / "width_00016" / "arrays" / "kernels" / "000000020.npz") as z:
        assert z["feature_kernel"].dtype == np.float64  # the probe's own float64, unchanged


def test_bf16_autocast_covers_only_the_training_forward(tmp_path: Path) -> None:
    """Inside train_step the logits are bfloat16; the loss and the gradients are float32."""
    spec = load_spec(
        write_spec(tmp_path / "s.yaml", tiny_spec_dict(tmp_path / "x", mixed_precision="bf16"))
    )
    from widthwise.study import build_stream

    trainer = EnsembleTrainer(spec, 16, build_stream(spec), torch.device("cpu"))
    seen: dict[str, torch.dtype] = {}
    real_forward = trainer.ensemble.forward

    def forward(params: Any, x: Any, **kw: Any) -> Any:
        out = real_forward(params, x, **kw)
        seen.setdefault("logits", out.dtype)
        seen.setdefault("autocast", torch.is_autocast_enabled("cpu"))
        return out

    trainer.ensemble.forward = forward  # type: ignore[method-assign]
    losses = trainer.train_step()
    assert seen == {"logits": torch.bfloat16, "autocast": True}
    assert losses.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in trainer.params.values())
    assert not torch.is_autocast_enabled("cpu")  # left on exit


def test_bf16_needs_float32_parameters(tmp_path: Path) -> None:
    # refused when the spec is validated, before anything is written ...
    raw = tiny_spec_dict(tmp_path / "x", mixed_precision="bf16", dtype="float64")
    with pytest.raises(SpecError, match=r"mixed_precision: 'bf16' .* dtype is 'float64'"):
        load_spec(write_spec(tmp_path / "s.yaml", raw))
    assert not (tmp_path / "x").exists()
    # ... and by the trainer's own check for a spec built without validation
    spec = load_spec(write_spec(tmp_path / "ok.yaml", tiny_spec_dict(tmp_path / "x")))
    spec = spec.model_copy(update={"mixed_precision": "bf16", "dtype": "float64"})
    with pytest.raises(UserError, match=r"mixed_precision: 'bf16' .* dtype is 'float64'"):
        check_precision(spec, torch.device("cpu"))


def test_bf16_on_a_gpu_without_bf16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec(
        write_spec(tmp_path / "s.yaml", tiny_spec_dict(tmp_path / "x", mixed_precision="bf16"))
    )
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100")
    with pytest.raises(UserError, match="Tesla V100 has none; use mixed_precision: none"):
        check_precision(spec, torch.device("cuda"))
    check_precision(spec, torch.device("cpu"))  # the CPU autocasts to bf16


# -- deterministic mode -------------------------------------------------------------


def test_deterministic_run_is_bit_identical_and_scoped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags: list[bool] = []
    real = widthwise.trainer.EnsembleTrainer.train_step

    def train_step(self: Any) -> Any:
        flags.append(torch.are_deterministic_algorithms_enabled())
        return real(self)

    monkeypatch.setattr(widthwise.trainer.EnsembleTrainer, "train_step", train_step)
    assert not torch.are_deterministic_algorithms_enabled()
    a = run_tiny(tmp_path / "a", deterministic=True)
    assert flags and all(flags)  # every step ran with deterministic kernels only
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run
    b = run_tiny(tmp_path / "b", deterministic=True)
    for ds in (a, b):
        ds.attrs.pop("spec")
    xr.testing.assert_identical(a.drop_vars("wall_time"), b.drop_vars("wall_time"))
    assert np.isfinite(a.test_loss.values).all()
    flags.clear()
    run_tiny(tmp_path / "c")
    assert flags and not any(flags)  # deterministic: false leaves the default alone


@pytest.mark.parametrize("before", [None, ":16:8", "junk"])
def test_deterministic_mode_restores_process_state(
    monkeypatch: pytest.MonkeyPatch, before: str | None
) -> None:
    if before is None:
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    else:
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", before)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    torch.use_deterministic_algorithms(True, warn_only=True)  # a caller's own setting
    try:
        with deterministic_mode(True, torch.device("cuda")):  # sets flags only: no GPU needed
            assert torch.are_deterministic_algorithms_enabled()
            assert not torch.is_deterministic_algorithms_warn_only_enabled()
            assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
            want = before if before == ":16:8" else ":4096:8"
            assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == want
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
        assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == before
        with pytest.raises(ZeroDivisionError), deterministic_mode(True, torch.device("cpu")):
            1 / 0  # noqa: B018
        assert torch.is_deterministic_algorithms_warn_only_enabled()  # restored on error too
        assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == before  # the CPU never sets it
    finally:
        torch.use_deterministic_algorithms(False)


def test_nondeterministic_op_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An op without a deterministic kernel stops the run with one line and a failed status."""

    def train_step(self: Any) -> Any:
        raise RuntimeError(
            "scatter_add_cuda_kernel does not have a deterministic implementation, but you set "
            "'torch.use_deterministic_algorithms(True)'. You can turn off determinism ..."
        )

    monkeypatch.setattr(widthwise.trainer.EnsembleTrainer, "train_step", train_step)
    spec = write_spec(tmp_path / "s.yaml", tiny_spec_dict(tmp_path / "study", deterministic=True))
    assert main(["run", str(spec), "--quiet"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: deterministic: scatter_add_cuda_kernel does not have")
    assert "deterministic: false" in err[0]
    status = widthwise.store.WidthDir(tmp_path / "study" / "width_00016").read_status()
    assert status["state"] == "failed"
    assert status["error"].startswith("deterministic: scatter_add_cuda_kernel")
    assert not torch.are_deterministic_algorithms_enabled()


def test_narrow_width_guard_turns_onednn_off_below_8_on_cpu_only() -> None:
    """A torch 2.13 oneDNN bug corrupts the heap for ResNets narrower than 8 on some CPUs:
    those runs keep oneDNN off (restored afterwards, also after an error)."""
    from widthwise.device import ONEDNN_MIN_WIDTH, narrow_width_guard

    assert ONEDNN_MIN_WIDTH == 8
    before = torch.backends.mkldnn.enabled
    with narrow_width_guard(4, torch.device("cpu")):
        assert torch.backends.mkldnn.enabled is False
    assert torch.backends.mkldnn.enabled == before
    with narrow_width_guard(8, torch.device("cpu")):
        assert torch.backends.mkldnn.enabled == before
    with narrow_width_guard(4, torch.device("cuda")):  # a flag only: no GPU needed
        assert torch.backends.mkldnn.enabled == before
    with pytest.raises(ZeroDivisionError), narrow_width_guard(2, torch.device("cpu")):
        1 / 0  # noqa: B018
    assert torch.backends.mkldnn.enabled == before
