"""BatchNorm in module families: per-member running statistics.

Each member equals a plain torch training loop of the same module; members do not
depend on the ensemble; vmap equals the loop; a resumed run is bit-identical; probes
(eval mode) change no running statistic; ``load_member`` gives the member's buffers.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import module_factories as mf
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
from conftest import write_spec
from test_resume import interrupt_at

import widthwise
import widthwise.study
from widthwise.cli import main
from widthwise.probes.ntk import empirical_ntk, ntk_vector_product
from widthwise.spec import validate_spec
from widthwise.streams import STREAMS
from widthwise.trainer import EnsembleTrainer

pytestmark = pytest.mark.usefixtures("single_thread")

GEG = {"stream": "gegenbauer", "seed": 3, "options": {"dim": 8, "degree": 2}, "probe_points": 16}
IMG = {"stream": "teacher_images", "seed": 0, "options": {"size": 8}, "probe_points": 8}
CASES = {"mlp": ("make_bn_mlp", GEG, mf.make_bn_mlp), "cnn": ("make_bn_cnn", IMG, mf.make_bn_cnn)}
LR = 0.1


def raw_spec(case: str = "mlp", **extra: Any) -> dict:
    factory, data, _ = CASES[case]
    options = {"factory": f"module_factories:{factory}", **extra.pop("options", {})}
    return {
        "name": "bn",
        "model": {"family": "module", "options": options},
        "widths": [8, 16],
        "seeds": 2,
        "parameterization": "sp",
        "optimizer": {"name": "sgd", "lr": LR},
        "steps": 4,
        "batch_size": 16,
        "data": data,
        "device": "cpu",
        "dtype": "float64",
        **extra,
    }


def trainer(raw: dict, width: int = 8) -> EnsembleTrainer:
    spec = validate_spec(raw)
    stream = STREAMS.get(spec.data.stream)(spec.data.seed, spec.stream_options())
    return EnsembleTrainer(spec, width, stream, torch.device("cpu"))


def train(tr: EnsembleTrainer, steps: int = 4) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    losses = torch.stack([tr.train_step() for _ in range(steps)])  # (step, member)
    return losses, {k: v.clone() for k, v in tr.ensemble.buffers.items()}


def probe_x(tr: EnsembleTrainer) -> torch.Tensor:
    x, _ = tr.stream.probe_set(8)
    return tr.to_tensors(x, np.zeros(len(x), dtype=np.int64))[0]


# -- 1. each member is a plain torch training loop of the same module ----------------------


@pytest.mark.parametrize("case", ["mlp", "cnn"])
def test_each_member_equals_a_plain_torch_training_loop(case: str) -> None:
    tr = trainer(raw_spec(case, ensemble="loop"))
    assert all(r.multiplier == 1.0 and r.lr_scale == 1.0 for r in tr.rules.values())  # sp, m=1
    assert sorted(tr.ensemble.buffers) == sorted(
        f"{bn}.{b}"
        for bn in ("bn1", "bn2")
        for b in ("running_mean", "running_var", "num_batches_tracked")
    )
    init = {k: v.detach().clone() for k, v in tr.params.items()}
    losses, stats = train(tr, 4)
    xp = probe_x(tr)
    with torch.no_grad():
        probe = tr.ensemble.forward(tr.params, xp)  # eval mode: the running statistics
    make = CASES[case][2]
    for e in range(tr.ensemble.size):
        model = make(8, tr.stream.in_shape, tr.stream.out_dim).double().train()
        named = dict(model.named_parameters())
        with torch.no_grad():
            for k, v in init.items():
                named[k].copy_(v[e])
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        for t in range(4):
            x, y = tr.to_tensors(*tr.stream.batch(t, 16))
            out = model(x)
            loss = F.mse_loss(out, y) if tr.loss_name == "mse" else F.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            assert abs(loss.item() - float(losses[t, e])) < 1e-10, (t, e)
        for k, b in model.named_buffers():
            torch.testing.assert_close(stats[k][e], b, rtol=0, atol=1e-10)
        assert int(stats["bn1.num_batches_tracked"][e]) == 4
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(probe[e], model(xp), rtol=0, atol=1e-10)


# -- 2. members do not depend on the ensemble ------------------------------------------------


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_a_member_trains_the_same_alone_or_with_others(strategy: str) -> None:
    alone_l, alone_b = train(trainer(raw_spec(seeds=[1], ensemble=strategy)))
    many_l, many_b = train(trainer(raw_spec(seeds=3, ensemble=strategy)))
    torch.testing.assert_close(many_l[:, 1], alone_l[:, 0], rtol=1e-12, atol=1e-12)
    for k in alone_b:
        torch.testing.assert_close(many_b[k][1], alone_b[k][0], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(many_b["bn1.running_mean"][0], many_b["bn1.running_mean"][1])


# -- 3. vmap equals the loop -------------------------------------------------------------------


@pytest.mark.parametrize("case", ["mlp", "cnn"])
def test_vmap_and_loop_agree(case: str) -> None:
    out = {}
    for strategy in ("vmap", "loop"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback notice: vmap runs BatchNorm
            tr = trainer(raw_spec(case, ensemble=strategy))
        assert tr.ensemble.strategy == strategy
        losses, stats = train(tr, 3)
        with torch.no_grad():
            logits = tr.ensemble.forward(tr.params, probe_x(tr))
        out[strategy] = (losses, stats, logits)
    (lv, bv, ov), (ll, bl, ol) = out["vmap"], out["loop"]
    torch.testing.assert_close(lv, ll, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ov, ol, rtol=1e-12, atol=1e-12)
    for k in bv:
        torch.testing.assert_close(bv[k], bl[k], rtol=1e-12, atol=1e-12)


def test_batchnorm_vmap_cannot_run_falls_back_to_the_loop_with_a_notice() -> None:
    # momentum=None: a cumulative average, 1/float(num_batches_tracked): not vmappable
    raw = raw_spec(ensemble="vmap", options={"kwargs": {"momentum": None}})
    with pytest.warns(UserWarning, match="torch.func.vmap cannot run it.*seeds run one by one"):
        tr = trainer(raw)
    assert tr.ensemble.strategy == "loop"
    _, stats = train(tr, 2)
    assert bool((stats["bn1.num_batches_tracked"] == 2).all())


# -- 4. probes: eval mode, no running statistic changes ----------------------------------------


def test_probe_forwards_change_no_buffer_and_use_the_members_statistics() -> None:
    tr = trainer(raw_spec(ensemble="vmap"))
    train(tr, 2)
    before = {k: v.clone() for k, v in tr.ensemble.buffers.items()}
    xp = probe_x(tr)
    with torch.no_grad():
        a = tr.ensemble.forward(tr.params, xp)
        _, taps = tr.ensemble.forward_taps(tr.params, xp)
        b = tr.ensemble.forward(tr.params, xp[:3])  # eval: a point's logits need no batch
    for k, v in before.items():
        assert torch.equal(v, tr.ensemble.buffers[k]), k
    torch.testing.assert_close(a[:, :3], b, rtol=1e-12, atol=1e-12)
    assert taps  # kernels and preacts read the eval forward


@pytest.mark.parametrize("case", ["mlp", "cnn"])
def test_entk_uses_each_members_running_statistics(case: str) -> None:
    tr = trainer(raw_spec(case, ensemble="loop"))
    train(tr, 3)
    x = probe_x(tr)[:4]
    before = {k: v.clone() for k, v in tr.ensemble.buffers.items()}
    got = empirical_ntk(tr.ensemble, tr.params, x).kernel  # (seed, M, C, M, C)
    v = torch.randn(got.shape[:3], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kv = ntk_vector_product(tr.ensemble, tr.params, x, v)
    model = CASES[case][2](8, tr.stream.in_shape, tr.stream.out_dim).double().eval()
    for e in range(tr.ensemble.size):
        w = {k: p[e].detach() for k, p in tr.params.items()}
        bufs = tr.ensemble.member_buffers(e)

        def f(ww: dict[str, torch.Tensor], e: int = e, bufs: dict = bufs) -> torch.Tensor:
            return torch.func.functional_call(model, {**ww, **bufs}, (x,))  # eval mode

        jac = torch.func.jacrev(f)(w)  # name -> (M, C, *shape)
        want = sum(torch.einsum("icp,jdp->icjd", j.flatten(2), j.flatten(2)) for j in jac.values())
        torch.testing.assert_close(got[e], want, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(
            kv[e], torch.einsum("icjd,jd->ic", want, v[e]), rtol=1e-9, atol=1e-9
        )
    for k, b in before.items():
        assert torch.equal(b, tr.ensemble.buffers[k]), k


def cli(path: Path) -> int:
    return main(["run", str(path), "--quiet", "--allow-code", "--import", "module_factories"])


def member_buffers(study: Path, width: int, seed: int) -> dict[str, torch.Tensor]:
    member = widthwise.load_member(study, width, seed)
    return {k: v.clone() for k, v in member.named_buffers()}


def test_sharpness_and_entk_probes_do_not_change_running_stats(tmp_path: Path) -> None:
    base = {"train_loss": {"every": 1}, "test": {"at": ["init", "end"]}}
    probes = {
        **base,
        "sharpness": {"every": 2, "k": 1, "iters": 8, "batch_points": 8},
        "entk": {"every": 2, "points": 4, "trace_outputs": True},
    }
    for name, p in (("plain", base), ("probed", probes)):
        raw = raw_spec(widths=[8], probes=p, out=str(tmp_path / name))
        assert cli(write_spec(tmp_path / f"{name}.yaml", raw)) == 0
    plain, probed = (widthwise.open_study(tmp_path / n) for n in ("plain", "probed"))
    xr.testing.assert_identical(plain.train_loss, probed.train_loss)
    xr.testing.assert_identical(plain.test_logits, probed.test_logits)
    assert np.isfinite(probed.entk.values).all()
    assert np.isfinite(probed.sharpness.values).all()
    for seed in (0, 1):
        a, b = (
            member_buffers(tmp_path / "plain", 8, seed),
            member_buffers(tmp_path / "probed", 8, seed),
        )
        for k in a:
            assert torch.equal(a[k], b[k]), k


# -- 5. resume bit for bit; load_member ---------------------------------------------------------


def study_raw(out: Path) -> dict:
    return raw_spec(
        "cnn",
        steps=7,
        checkpoint_every=3,
        ensemble="vmap",
        probes={"train_loss": {"every": 1}, "test": {"at": ["init", "end"]}},
        out=str(out),
    )


def test_resume_is_bit_for_bit_and_load_member_has_the_members_statistics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(write_spec(tmp_path / "a.yaml", study_raw(tmp_path / "a"))) == 0
    ref = widthwise.open_study(tmp_path / "a")
    assert np.isfinite(ref.train_loss.values).all()

    path = write_spec(tmp_path / "c.yaml", study_raw(tmp_path / "c"))
    with monkeypatch.context() as m:
        interrupt_at(m, 16, 5)  # width 16 stops after 5 steps; its last checkpoint is at 3
        assert cli(path) == 130
    capsys.readouterr()
    assert cli(path) == 0
    resumed = widthwise.open_study(tmp_path / "c")
    xr.testing.assert_identical(resumed.train_loss, ref.train_loss)
    xr.testing.assert_identical(resumed.test_logits, ref.test_logits)
    for seed in (0, 1):
        a, c = member_buffers(tmp_path / "a", 16, seed), member_buffers(tmp_path / "c", 16, seed)
        for k in a:
            assert torch.equal(a[k], c[k]), k

    # load_member: the member's running statistics, its eval outputs are the test logits
    x = torch.as_tensor(np.load(tmp_path / "a" / "probe_set.npz")["x"])
    for seed in (0, 1):
        member = widthwise.load_member(tmp_path / "a", 16, seed)
        assert not member.training
        assert int(member.bn1.num_batches_tracked) == 7
        assert float(member.bn1.running_mean.abs().max()) > 0
        with torch.no_grad():
            got = member(x.to(next(member.parameters()).dtype)).double()
        want = ref.test_logits.sel(width=16, seed=seed).isel(test_step=-1).values
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_old_checkpoint_without_buffers_loads() -> None:
    tr = trainer(raw_spec())
    state = tr.state_dict()
    assert set(state["buffers"]) == set(tr.ensemble.buffers)
    for key in ("buffers", "buffers0"):
        state.pop(key)
    trainer(raw_spec()).load_state_dict(state)  # from before per-member buffers: no error


# -- 6. what still cannot work: one line ------------------------------------------------------


@pytest.mark.quick
def test_buffer_changed_in_eval_mode_is_refused_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = raw_spec(out=str(tmp_path / "study"))
    raw["model"]["options"]["factory"] = "module_factories:make_counter"
    assert cli(write_spec(tmp_path / "bad.yaml", raw)) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert "buffer 'running' changes during the forward pass in eval mode" in err[0], err[0]
    assert not (tmp_path / "study").exists()
