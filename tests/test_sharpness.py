"""Sharpness probe against dense Hessians (float64) of small MLPs, for every seed."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from widthwise.ensemble import Ensemble
from widthwise.families import FAMILIES
from widthwise.families.mlp import MLPOptions
from widthwise.losses import per_member_loss
from widthwise.parameterization import RuleContext, rules_for
from widthwise.probes import PROBES, ProbeContext
from widthwise.probes.sharpness import SharpnessOptions, adam_preconditioner, sharpness_probe
from widthwise.spec import StudySpec
from widthwise.study import build_stream
from widthwise.trainer import EnsembleTrainer

SEEDS = [0, 1, 2]
# torch's forward-AD decompositions call torch.jit.script on first use
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls: one thread avoids oversubscription on a busy 2-core CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_ensemble(loss="mse", out_dim=2, opt="sgd"):
    """MLP 4 → 12 → 12 → out_dim with biases (≈ 250 params), muP at m = 3, float64."""
    net = FAMILIES.get("mlp")(12, (4,), out_dim, MLPOptions(depth=3, bias=True, activation="tanh"))
    rules = rules_for("mup", list(net.params), RuleContext(width=12, base_width=4, optimizer=opt))
    ens = Ensemble(net, rules, SEEDS, loss=loss, device=torch.device("cpu"), dtype=torch.float64)
    params = ens.init_params()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move away from init so biases and readout matter
        for p in params.values():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return ens, params


def member_flat(params, e):
    return torch.cat([p[e].detach().reshape(-1) for p in params.values()])


def dense_hessian(ens, params, x, y, e):
    """H of member e's mean loss w.r.t. its raw parameters (flattened in dict order)."""
    names = list(params)
    shapes = [p.shape[1:] for p in params.values()]
    sizes = [math.prod(s) for s in shapes]

    def loss(flat):
        raw = {n: t.reshape(s) for n, t, s in zip(names, flat.split(sizes), shapes)}
        logits = ens.network.apply(ens.effective(raw), x, False)[0]
        return per_member_loss(ens.loss, logits[None], y)[0]

    return torch.autograd.functional.hessian(loss, member_flat(params, e), vectorize=True)


def lr_diag(ens, params):
    return torch.cat(
        [
            torch.full((p[0].numel(),), ens.rules[n].lr_scale, dtype=p.dtype)
            for n, p in params.items()
        ]
    )


def context(ens, params, x, y, optimizer=None, alive=None):
    return ProbeContext(
        step=3,
        ensemble=ens,
        params=params,
        probe_x=x,
        probe_y=y,
        alive=torch.ones(len(SEEDS), dtype=torch.bool) if alive is None else alive,
        stream=None,  # type: ignore[arg-type]  (not used by the probe)
        lr=0.1,
        optimizer=optimizer,
    )


def top(mat, k):
    return torch.linalg.eigvalsh(mat).flip(0)[:k].numpy()


@pytest.mark.parametrize("method", ["lanczos", "power"])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_sharpness_equals_dense_hessian(method, loss):
    ens, params = small_ensemble(loss, out_dim=3 if loss == "cross_entropy" else 2)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(40, 4, generator=gen, dtype=torch.float64)
    if loss == "mse":
        y = torch.randn(40, 2, generator=gen, dtype=torch.float64)
    else:
        y = torch.randint(0, 3, (40,), generator=gen)
    k, tol = (3, 1e-7) if method == "lanczos" else (2, 1e-5)  # power: slower, fewer
    opts = SharpnessOptions(k=k, method=method, iters=1000, tol=tol, batch_points=32)
    out = sharpness_probe(context(ens, params, x, y), opts)
    assert out["sharpness"][0] == ("seed", "sharpness_eig")
    lam = lr_diag(ens, params).sqrt()
    for e in range(len(SEEDS)):
        h = dense_hessian(ens, params, x[:32], y[:32], e)  # the first batch_points points
        want = top(h, k)
        np.testing.assert_allclose(out["sharpness"][1][e], want, rtol=1e-6, atol=1e-9)
        want_lr = top(lam[:, None] * h * lam[None, :], k)
        np.testing.assert_allclose(out["sharpness_lr"][1][e], want_lr, rtol=1e-6, atol=1e-9)
        for var, ref in (("sharpness", want), ("sharpness_lr", want_lr)):
            assert (out[f"{var}_residual"][1][e] <= 1e-5 * abs(ref[0])).all(), var
            assert 1 <= out[f"{var}_iters"][1][e] <= opts.iters
    assert "sharpness_precond" not in out  # no optimizer given


def test_power_iteration_finds_largest_algebraic_when_negative_dominates():
    """A Hessian whose most negative eigenvalue dominates: power must still return λ_max."""
    from widthwise.probes.sharpness import lanczos, power_iteration

    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(2, 30, 30, generator=gen, dtype=torch.float64))
    ev = torch.linspace(-5.0, 2.0, 30, dtype=torch.float64).expand(2, 30)
    a = q @ torch.diag_embed(ev) @ q.transpose(1, 2)

    def op(v):
        return torch.einsum("enm,em->en", a, v)

    like = torch.zeros(2, 30, dtype=torch.float64)
    for solver in (lanczos, power_iteration):
        r = solver(op, like, k=2, iters=3000, tol=1e-9)
        np.testing.assert_allclose(r.values.numpy(), [[2.0, ev[0, -2].item()]] * 2, rtol=1e-6)


def adam_trainer(steps=4):
    spec = StudySpec.model_validate(
        {
            "name": "adam",
            "model": {"family": "mlp", "options": {"depth": 3, "bias": True}},
            "widths": [8, 16],
            "seeds": SEEDS,
            "parameterization": {"name": "mup"},
            "optimizer": {"name": "adam", "lr": 0.01},
            "steps": 10,
            "batch_size": 16,
            "data": {"stream": "gegenbauer", "seed": 0, "options": {"dim": 4}, "probe_points": 24},
            "device": "cpu",
            "dtype": "float64",
        }
    )
    trainer = EnsembleTrainer(spec, 16, build_stream(spec))
    for _ in range(steps):
        trainer.train_step()
    x, y = trainer.to_tensors(*trainer.stream.probe_set(24))
    return trainer, x, y


def test_preconditioned_sharpness_equals_dense_and_matches_the_adam_update():
    trainer, x, y = adam_trainer()
    ens, params, opt = trainer.ensemble, trainer.params, trainer.optimizer
    before = {k: p.detach().clone() for k, p in params.items()}
    # P is the preconditioner of the last update: one more step moves w by -P^{-1} m
    # (checked on a copy: the optimizer state must be the one *before* that step)
    precond = adam_preconditioner(opt, params)
    assert precond is not None
    ctx = context(ens, params, x, y, optimizer=opt)
    out = sharpness_probe(ctx, SharpnessOptions(k=2, iters=300, tol=1e-7, preconditioned=True))
    for e in range(len(SEEDS)):
        h = dense_hessian(ens, params, x, y, e)
        d = member_flat(precond, e).rsqrt()
        want = top(d[:, None] * h * d[None, :], 2)
        np.testing.assert_allclose(out["sharpness_precond"][1][e], want, rtol=1e-6)
        assert (out["sharpness_precond_residual"][1][e] <= 1e-5 * abs(want[0])).all()
    # definition check: the most recent update was w_t - w_{t-1} = -P_t^{-1} m_t
    trainer.train_step()
    p_new = adam_preconditioner(opt, params)
    assert p_new is not None
    for k, p in params.items():
        m = opt.state[p]["exp_avg"]
        np.testing.assert_allclose(
            (p.detach() - before[k]).numpy(), (-m / p_new[k]).numpy(), rtol=1e-9, atol=1e-14
        )


def test_preconditioned_is_nan_before_the_first_update_and_absent_without_adam():
    trainer, x, y = adam_trainer(steps=0)
    ctx = context(trainer.ensemble, trainer.params, x, y, optimizer=trainer.optimizer)
    out = sharpness_probe(ctx, SharpnessOptions(preconditioned=True, iters=30))
    assert np.isnan(out["sharpness_precond"][1]).all()
    assert np.isfinite(out["sharpness"][1]).all()
    sgd = torch.optim.SGD([p for p in trainer.params.values()], lr=0.1)
    out = sharpness_probe(
        context(trainer.ensemble, trainer.params, x, y, optimizer=sgd),
        SharpnessOptions(preconditioned=True, iters=30),
    )
    assert "sharpness_precond" not in out


def test_probe_changes_nothing():
    trainer, x, y = adam_trainer()
    params, opt = trainer.params, trainer.optimizer
    p_before = {k: p.detach().clone() for k, p in params.items()}
    grads_before = {k: None if p.grad is None else p.grad.clone() for k, p in params.items()}
    state_before = copy.deepcopy(opt.state_dict())
    rng_before = torch.get_rng_state()
    for method in ("lanczos", "power"):
        opts = SharpnessOptions(k=2, method=method, iters=20, preconditioned=True)
        sharpness_probe(context(trainer.ensemble, params, x, y, optimizer=opt), opts)
    assert torch.equal(torch.get_rng_state(), rng_before)
    for k, p in params.items():
        assert torch.equal(p.detach(), p_before[k])
        g0 = grads_before[k]
        assert (p.grad is None and g0 is None) or torch.equal(p.grad, g0)
    state_after = opt.state_dict()
    assert state_after["param_groups"] == state_before["param_groups"]
    for i, st in state_before["state"].items():
        for key, val in st.items():
            assert torch.equal(state_after["state"][i][key], val), key


def test_diverged_members_are_nan_and_do_not_disturb_the_others():
    ens, params = small_ensemble()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(16, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    opts = SharpnessOptions(k=1, iters=200, tol=1e-8)
    full = sharpness_probe(context(ens, params, x, y), opts)
    broken = {k: p.detach().clone() for k, p in params.items()}
    broken["l2.weight"][1] = float("inf")
    alive = torch.tensor([True, False, True])
    part = sharpness_probe(context(ens, broken, x, y, alive=alive), opts)
    for var in ("sharpness", "sharpness_lr", "sharpness_iters"):
        assert np.isnan(part[var][1][1]).all()
        np.testing.assert_allclose(part[var][1][[0, 2]], full[var][1][[0, 2]], rtol=1e-6)


def test_options_and_registration():
    assert PROBES.entry("sharpness").obj.step_dim == "sharpness_step"
    assert SharpnessOptions.model_validate({}).log_spaced == 20  # default schedule
    given = SharpnessOptions.model_validate({"every": 5, "k": 2})
    assert given.log_spaced is None and given.every == 5
    coords = PROBES.entry("sharpness").obj.coords(given)
    assert list(coords["sharpness_eig"][1]) == [0, 1]


def test_preconditioned_sharpness_in_an_adam_study(tmp_path):
    """End to end: train_width hands the optimizer to the probe (NaN only at step 0)."""
    import widthwise

    spec = StudySpec.model_validate(
        {
            "name": "adam_sharpness",
            "model": {"family": "mlp", "options": {"depth": 3}},
            "widths": [8],
            "seeds": 2,
            "optimizer": {"name": "adam", "lr": 0.01},
            "steps": 4,
            "batch_size": 8,
            "data": {"stream": "gegenbauer", "options": {"dim": 4}, "probe_points": 8},
            "probes": {"sharpness": {"every": 2, "iters": 20, "preconditioned": True}},
            "device": "cpu",
        }
    )
    ds = widthwise.open_study(widthwise.run(spec, out=tmp_path / "s"))
    pre = ds["sharpness_precond"].isel(width=0, sharpness_eig=0)
    assert pre.dims == ("seed", "sharpness_step")
    assert np.isnan(pre.sel(sharpness_step=0)).all()
    assert (
        np.isfinite(pre.sel(sharpness_step=[2, 4])).all() and (pre.sel(sharpness_step=4) > 0).all()
    )


def test_lr_weighted_only_skips_the_plain_operator():
    ens, params = small_ensemble()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(16, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    both = sharpness_probe(context(ens, params, x, y), SharpnessOptions(iters=200, tol=1e-8))
    only = sharpness_probe(
        context(ens, params, x, y), SharpnessOptions(iters=200, tol=1e-8, plain=False)
    )
    assert "sharpness" not in only and "sharpness_iters" not in only
    np.testing.assert_allclose(only["sharpness_lr"][1], both["sharpness_lr"][1], rtol=1e-6)
    with pytest.raises(ValueError, match="nothing to do"):
        SharpnessOptions(plain=False, lr_weighted=False)
