"""The module-family examples (examples/nanogpt.py, examples/convnext.py), as a user
would use them: inferred roles asserted; (slow) the coordinate check is flat in width
under mup and grows under sp, and a short study runs to the end with a report."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from widthwise.parameterization import Role
from widthwise.spec import validate_spec
from widthwise.streams import STREAMS
from widthwise.trainer import EnsembleTrainer

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("single_thread")

GPT = (
    "nanogpt:make_gpt",
    {},
    {"stream": "periodic_tokens", "options": {"seq_len": 16, "vocab": 16}},
)
CNX = (
    "convnext:make_convnext",
    {"depths": [1, 1, 1, 1]},
    {"stream": "teacher_images", "options": {"size": 32}},
)


@pytest.fixture(autouse=True)
def examples_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    import convnext  # noqa: F401  (imported by us: the factories are ours)
    import nanogpt  # noqa: F401


def spec_for(example: tuple, widths: list[int], param: str = "mup", **extra: Any):
    factory, kwargs, data = example
    raw = {
        "name": "example",
        "model": {"family": "module", "options": {"factory": factory, "kwargs": kwargs}},
        "widths": widths,
        "seeds": 2,
        "parameterization": param,
        "optimizer": {"name": "adam", "lr": 0.01},
        "steps": 3,
        "batch_size": 16,
        "data": {**data, "probe_points": 32},
        "device": "cpu",
        **extra,
    }
    return validate_spec(raw)


def roles(example: tuple, width: int) -> dict[str, tuple[Role, int]]:
    spec = spec_for(example, [width, 2 * width])
    stream = STREAMS.get(spec.data.stream)(spec.data.seed, spec.stream_options())
    tr = EnsembleTrainer(spec, width, stream, torch.device("cpu"))
    return {p.name: (p.role, p.fan_in) for p in tr.network.params}


def test_nanogpt_roles() -> None:
    r = roles(GPT, 32)
    assert r["transformer.wte.weight"] == (Role.INPUT, 1)  # tied with lm_head
    assert r["transformer.wpe.weight"] == (Role.INPUT, 1)
    assert "lm_head.weight" not in r
    assert r["transformer.h.0.attn.c_attn.weight"] == (Role.HIDDEN, 32)
    assert r["transformer.h.1.mlp.c_proj.weight"] == (Role.HIDDEN, 128)
    assert r["transformer.h.0.ln_1.weight"][0] is Role.VECTOR
    assert {role for role, _ in r.values()} == {Role.INPUT, Role.HIDDEN, Role.VECTOR}


def test_convnext_roles() -> None:
    r = roles(CNX, 8)
    assert r["downsample.0.0.weight"] == (Role.INPUT, 3 * 4 * 4)  # the patchify stem
    assert r["downsample.1.1.weight"] == (Role.HIDDEN, 8 * 2 * 2)
    assert r["stages.0.0.dwconv.weight"] == (Role.INPUT, 49)  # depthwise: vector-like
    assert r["stages.2.0.pwconv1.weight"] == (Role.HIDDEN, 32)
    assert r["stages.3.0.gamma"][0] is Role.VECTOR
    assert r["head.weight"] == (Role.OUTPUT, 64) and r["head.bias"][0] is Role.FIXED


@pytest.mark.slow
@pytest.mark.parametrize(("example", "widths"), [(GPT, [32, 64, 128, 256]), (CNX, [8, 16, 32])])
def test_coord_check_flat_under_mup_grows_under_sp(example: tuple, widths: list[int]) -> None:
    from widthwise.coordinate_check import coord_check

    ratio = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for param in ("mup", "sp"):
            cc = coord_check(spec_for(example, widths, param), steps=3, points=32)
            last = cc.isel(step=-1).mean("seed")
            ratio[param] = last.isel(width=-1) / last.isel(width=0)
    assert float(ratio["mup"].max()) < 2.0 and float(ratio["mup"].min()) > 0.4, ratio["mup"].values
    assert float(ratio["sp"].sel(layer="output")) > 3.0, ratio["sp"].values


@pytest.mark.slow
@pytest.mark.parametrize(("example", "widths"), [(GPT, [32, 64]), (CNX, [8, 16])])
def test_short_study_runs_to_the_end_with_a_report(
    tmp_path: Path, example: tuple, widths: list[int]
) -> None:
    import widthwise
    from widthwise.report import build_report

    probes = {
        "train_loss": {"every": 1},
        "test": {"every": 5},
        "kernels": {"points": 16},
        "preacts": {},
    }
    spec = spec_for(example, widths, steps=10, probes=probes, out=str(tmp_path / "study"))
    module = example[0].partition(":")[0]
    out = widthwise.run(spec, trusted_imports=[module])
    ds = widthwise.open_study(out)
    assert (ds.status == "done").all()
    assert ds.sizes["kernels_layer"] >= 3
    report = build_report(out)
    assert Path(report).exists()


def test_bundled_nanogpt_is_the_example() -> None:
    """The bundled example's module is examples/nanogpt.py's code, docstring aside."""
    import widthwise.families.module_examples as bundled

    def code(path: Path) -> str:
        text = path.read_text()
        return text[text.index("from __future__") :]

    assert code(Path(bundled.__file__)) == code(ROOT / "examples" / "nanogpt.py")
