"""Dropout in module families: per-member masks from (seed, width, step).

Deterministic and resumable runs, members independent of the ensemble, vmap equal to
the loop, dropout on in training and off in probes, correct masks, and one-line
refusals of the dropout that would draw from torch's global generator.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import module_factories as mf
import numpy as np
import pytest
import torch
import xarray as xr
from conftest import write_spec
from test_resume import interrupt_at
from torch import nn

import widthwise
import widthwise.study
from widthwise.cli import main
from widthwise.errors import UserError
from widthwise.families.module_dropout import (
    dropout_generator,
    install_dropout,
    mask_shape,
    member_index,
    training_forward,
)
from widthwise.spec import validate_spec
from widthwise.streams import STREAMS
from widthwise.trainer import EnsembleTrainer

pytestmark = pytest.mark.usefixtures("single_thread")

GEG = {"stream": "gegenbauer", "seed": 3, "options": {"dim": 8, "degree": 2}, "probe_points": 16}
IMG = {"stream": "teacher_images", "seed": 0, "options": {"size": 8}, "probe_points": 8}
TOK = {"stream": "periodic_tokens", "seed": 1, "options": {"seq_len": 8, "vocab": 16}}
ADAM = {"name": "adam", "lr": 1e-2, "eps": 1e-8}


def raw_spec(factory: str = "make_drop_mlp", data: dict | None = None, **extra: Any) -> dict:
    options = {"factory": f"module_factories:{factory}", **extra.pop("options", {})}
    return {
        "name": "drop",
        "model": {"family": "module", "options": options},
        "widths": [8, 16],
        "seeds": 2,
        "parameterization": "mup",
        "optimizer": ADAM,
        "steps": 6,
        "batch_size": 16,
        "data": data or GEG,
        "device": "cpu",
        "dtype": "float64",
        **extra,
    }


def trainer(raw: dict, width: int = 16) -> EnsembleTrainer:
    spec = validate_spec(raw)
    stream = STREAMS.get(spec.data.stream)(spec.data.seed, spec.stream_options())
    return EnsembleTrainer(spec, width, stream, torch.device("cpu"))


def losses(tr: EnsembleTrainer, steps: int = 4) -> torch.Tensor:
    return torch.stack([tr.train_step() for _ in range(steps)])  # (step, member)


# -- 1. determinism and resume ---------------------------------------------------------


def run_cli(path: Path) -> int:
    return main(["run", str(path), "--quiet", "--allow-code", "--import", "module_factories"])


def study_raw(out: Path) -> dict:
    return raw_spec(
        steps=8,
        checkpoint_every=3,
        ensemble="vmap",
        probes={"train_loss": {"every": 1}, "test": {"at": ["init", "end"]}},
        out=str(out),
    )


def test_runs_are_deterministic_and_resume_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = []
    for name in ("a", "b"):
        assert run_cli(write_spec(tmp_path / f"{name}.yaml", study_raw(tmp_path / name))) == 0
        ref.append(widthwise.open_study(tmp_path / name))
    assert np.isfinite(ref[0].train_loss.values).all()
    xr.testing.assert_identical(ref[0].train_loss, ref[1].train_loss)  # bit for bit
    xr.testing.assert_identical(ref[0].test_logits, ref[1].test_logits)

    path = write_spec(tmp_path / "c.yaml", study_raw(tmp_path / "c"))
    with monkeypatch.context() as m:
        interrupt_at(m, 16, 5)  # width 16 stops after 5 steps; its last checkpoint is at 3
        assert run_cli(path) == 130
    capsys.readouterr()
    assert run_cli(path) == 0
    resumed = widthwise.open_study(tmp_path / "c")
    xr.testing.assert_identical(resumed.train_loss, ref[0].train_loss)
    xr.testing.assert_identical(resumed.test_logits, ref[0].test_logits)

    # 4b. probes run with dropout off: the test logits are the module's in eval mode
    x = torch.as_tensor(np.load(tmp_path / "a" / "probe_set.npz")["x"])
    for seed in (0, 1):
        member = widthwise.load_member(tmp_path / "a", 16, seed)
        assert not member.training
        with torch.no_grad():
            got = member(x.to(next(member.parameters()).dtype)).double()
        want = ref[0].test_logits.sel(width=16, seed=seed).isel(test_step=-1).values
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


# -- 2. members do not depend on the ensemble --------------------------------------------


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_a_member_trains_the_same_alone_or_with_others(strategy: str) -> None:
    alone = losses(trainer(raw_spec(seeds=[3], ensemble=strategy)))
    many = losses(trainer(raw_spec(seeds=[1, 3, 5], ensemble=strategy)))
    torch.testing.assert_close(many[:, 1], alone[:, 0], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(many[:, 0], many[:, 1])  # members differ


# -- 3. vmap equals the loop ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "data"), [("make_drop_mlp", GEG), ("make_drop_cnn", IMG)], ids=["mlp", "cnn"]
)
def test_vmap_and_loop_give_the_same_masks_and_losses(factory: str, data: dict) -> None:
    out = {}
    for strategy in ("vmap", "loop"):
        tr = trainer(raw_spec(factory, data, seeds=3, ensemble=strategy), 8)
        assert tr.ensemble.strategy == strategy and tr.network.apply.check_vmap() == (True, "")
        out[strategy] = (losses(tr, 3), {k: v.detach() for k, v in tr.params.items()})
    torch.testing.assert_close(out["vmap"][0], out["loop"][0], rtol=1e-12, atol=1e-12)
    for k, v in out["loop"][1].items():
        torch.testing.assert_close(out["vmap"][1][k], v, rtol=1e-11, atol=1e-12)


# -- 4. on in training, off in probes ----------------------------------------------------


def test_dropout_is_on_in_training_and_off_elsewhere() -> None:
    on = trainer(raw_spec(options={"kwargs": {"p": 0.3}}))
    off = trainer(raw_spec(options={"kwargs": {"p": 0.0}}))
    assert on.network.apply.dropout == ["drop1", "drop2"] and off.network.apply.dropout == []
    for k in on.params:  # the same initial weights
        assert torch.equal(on.params[k], off.params[k])
    x, _ = on.to_tensors(*on.stream.batch(0, 16))
    ens = on.ensemble
    probe = ens.forward(on.params, x)  # no step: a probe's forward, dropout off
    torch.testing.assert_close(probe, off.ensemble.forward(off.params, x), rtol=0, atol=0)
    train = ens.forward(on.params, x, step=0)
    assert not torch.allclose(train, probe)
    assert torch.equal(train, ens.forward(on.params, x, step=0))  # the step's masks again
    assert not torch.equal(train, ens.forward(on.params, x, step=1))
    torch.testing.assert_close(off.ensemble.forward(off.params, x, step=0), probe)
    assert not torch.allclose(losses(on, 2), losses(off, 2))
    # the module itself in eval mode computes the probes' logits
    model = on.network.apply.model
    eff = on.ensemble.effective({k: v[0].detach() for k, v in on.params.items()})
    with torch.no_grad():
        got = torch.func.functional_call(model.eval(), eff, (x,))
    model.train()
    for name in ("drop1", "drop2"):  # dropout modules stay in eval mode
        model.get_submodule(name).eval()
    torch.testing.assert_close(got, ens.forward(on.params, x)[0].detach())


# -- 5. the masks ---------------------------------------------------------------------------


def masked(mod: nn.Module, x: torch.Tensor, member: int = 0, step: int = 0) -> torch.Tensor:
    install_dropout(mod)
    with training_forward(step, [11, 12], 8), member_index(member):
        return mod(x)


def test_masks_keep_one_minus_p_scaled_and_drop_whole_channels() -> None:
    p = 0.3
    x = torch.rand(256, 256, dtype=torch.float64) + 0.5
    y = masked(nn.Dropout(p), x)
    ratio = y / x
    kept = ratio != 0
    assert abs(float(kept.double().mean()) - (1 - p)) < 0.01
    torch.testing.assert_close(ratio[kept], torch.full_like(ratio[kept], 1 / (1 - p)))
    assert torch.equal(nn.Dropout(p).eval()(x), x)  # not in a training forward: identity
    assert not torch.equal(y, masked(nn.Dropout(p), x, member=1))  # members differ
    assert not torch.equal(y, masked(nn.Dropout(p), x, step=1))  # steps differ
    assert torch.equal(y, masked(nn.Dropout(p), x))  # and are reproducible
    gen = dropout_generator(11, 8, 0)  # member 0's seed 11, width 8, step 0
    assert torch.equal(kept, torch.rand(x.shape, generator=gen) >= p)

    x4 = torch.rand(32, 64, 3, 3, dtype=torch.float64) + 0.5
    r4 = masked(nn.Dropout2d(p), x4) / x4
    per_channel = r4.flatten(2)
    torch.testing.assert_close(per_channel.amin(2), per_channel.amax(2))  # whole channels
    channel_kept = per_channel[..., 0] != 0
    assert torch.equal(per_channel != 0, channel_kept[..., None].expand_as(per_channel))
    assert abs(float(channel_kept.double().mean()) - (1 - p)) < 0.04
    first = per_channel[..., 0][channel_kept]
    torch.testing.assert_close(first, torch.full_like(first, 1 / (1 - p)))
    assert mask_shape(nn.Dropout1d(p), (4, 5, 7)) == (4, 5, 1)
    assert mask_shape(nn.Dropout1d(p), (5, 7)) == (5, 1)
    assert mask_shape(nn.Dropout2d(p), (4, 5, 7, 7)) == (4, 5, 1, 1)
    assert mask_shape(nn.Dropout3d(p), (5, 2, 2, 2)) == (5, 1, 1, 1)
    assert mask_shape(nn.Dropout3d(p), (4, 5, 2, 2, 2)) == (4, 5, 1, 1, 1)
    assert mask_shape(nn.Dropout(p), (4, 5, 7)) == (4, 5, 7)


# -- 6. refusals ------------------------------------------------------------------------------


REFUSED = [
    ("make_functional_dropout", GEG, "F.dropout(p=0.2, training=True) in its forward"),
    ("make_nested_functional_dropout", GEG, "in the forward of 'block'"),
    ("make_attention_dropout", TOK, "F.scaled_dot_product_attention(dropout_p=0.1)"),
    ("make_mha_dropout", TOK, "nn.MultiheadAttention('attn', dropout=0.1)"),
    ("make_alpha_dropout", GEG, "alpha dropout ('alpha', AlphaDropout(p=0.1))"),
    ("make_noisy", GEG, "its forward draws from torch's global random generator"),
]


@pytest.mark.quick
@pytest.mark.parametrize(("factory", "data", "needle"), REFUSED, ids=[r[0][5:] for r in REFUSED])
def test_refused_dropout_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], factory: str, data: dict, needle: str
) -> None:
    raw = raw_spec(factory, data, out=str(tmp_path / "study"))
    assert run_cli(write_spec(tmp_path / "bad.yaml", raw)) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert needle in err[0] and f"module_factories:{factory}" in err[0], err[0]
    assert not (tmp_path / "study").exists()


def test_supported_dropout_modules_build(tmp_path: Path) -> None:
    assert mf.DropCNN(8, 3, 2, 0.5) is not None
    tr = trainer(raw_spec("make_drop_cnn", IMG), 8)
    assert tr.network.apply.dropout == ["drop2d", "drop"]
    assert torch.isfinite(tr.train_step()).all()


def test_the_centring_network_sees_the_same_masks() -> None:
    param = {"name": "mf", "gamma0": 1.0, "center": True}
    sgd = {"name": "sgd", "lr": 0.1}
    tr = trainer(raw_spec(parameterization=param, optimizer=sgd, ensemble="vmap"))
    assert tr.ensemble.center and tr.ensemble.params0 is not None
    x, _ = tr.to_tensors(*tr.stream.batch(0, 16))
    assert torch.equal(tr.ensemble.forward(tr.params, x, step=0), torch.zeros(2, 16, 1).double())
    assert torch.isfinite(losses(tr, 2)).all()


def test_hugging_face_gpt2_dropout_vmap_equals_loop() -> None:
    """GPT-2's residual and embedding dropout are nn.Dropout modules: per-member masks;
    its attention dropout is functional (F.dropout / SDPA dropout_p): refused."""
    pytest.importorskip("transformers")
    out = {}
    for strategy in ("vmap", "loop"):
        raw = raw_spec("make_gpt2", TOK, seeds=2, ensemble=strategy)
        raw["model"]["options"]["kwargs"] = {"pdrop": 0.1}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tr = trainer(raw, 8)
            out[strategy] = losses(tr, 2)  # (torch warns of SDPA's vmap fallback)
        assert len(tr.network.apply.dropout) == 5 and tr.ensemble.strategy == strategy
    torch.testing.assert_close(out["vmap"], out["loop"], rtol=1e-12, atol=1e-12)
    raw["model"]["options"]["kwargs"] = {"attn_pdrop": 0.1}
    with warnings.catch_warnings(), pytest.raises(UserError, match="transformer.h.0.attn"):
        warnings.simplefilter("ignore")
        trainer(raw, 8)
