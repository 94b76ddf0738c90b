"""Empirical NTK against explicit per-example Jacobians (float64), for every seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from widthwise.ensemble import Ensemble
from widthwise.families import FAMILIES
from widthwise.families.base import Network
from widthwise.families.mlp import MLPOptions
from widthwise.parameterization import ParamSpec, Role, RuleContext, rules_for
from widthwise.probes import PROBES, ProbeContext
from widthwise.probes.ntk import (
    EntkOptions,
    block_names,
    empirical_ntk,
    entk_probe,
    ntk_vector_product,
)

SEEDS = [0, 1, 2]
# torch's forward-AD decompositions call torch.jit.script on first use
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
M, C = 6, 3


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls: one thread avoids oversubscription on a busy 2-core CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def perturb(params, scale=0.2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # biases and readout are zero at init: move them
        for p in params.values():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return params


def mlp_ensemble(param="mup", activation="tanh", dtype=torch.float64):
    """MLP 5 → 10 → 10 → C with biases; muP at m = 2.5 (multipliers and lr scales ≠ 1)."""
    net = FAMILIES.get("mlp")(10, (5,), C, MLPOptions(depth=3, bias=True, activation=activation))
    rules = rules_for(param, list(net.params), RuleContext(width=10, base_width=4, optimizer="sgd"))
    ens = Ensemble(net, rules, SEEDS, loss="mse", device=torch.device("cpu"), dtype=dtype)
    return ens, perturb(ens.init_params())


def points(n=M, d=5, dtype=torch.float64):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(7), dtype=dtype)


def explicit_blocks(ens, params, x, e):
    """{tensor: K_t (M, C, M, C)} from torch.autograd.functional.jacobian, raw coordinates."""
    raw = {k: p[e].detach() for k, p in params.items()}
    out = {}
    for name in raw:

        def f(t, name=name):
            return ens.network.apply(ens.effective({**raw, name: t}), x, False)[0]

        j = torch.autograd.functional.jacobian(f, raw[name]).reshape(x.shape[0] * C, -1)
        out[name] = (j @ j.T).reshape(x.shape[0], C, x.shape[0], C)
    return out


@pytest.mark.parametrize("implementation", ["structured", "jacobian"])
def test_entk_equals_explicit_jacobians(implementation):
    ens, params = mlp_ensemble()
    assert any(r.multiplier != 1.0 for r in ens.rules.values())
    assert any(r.lr_scale != 1.0 for r in ens.rules.values())
    x = points()
    by_tensor = empirical_ntk(
        ens, params, x, blocks="tensor", lr_weighted=True, implementation=implementation
    )
    by_layer = empirical_ntk(ens, params, x, blocks="layer", implementation=implementation)
    assert by_tensor.block_names == [p.name for p in ens.network.params]
    assert by_layer.block_names == ["l1", "l2", "out"]
    if implementation == "structured":
        assert set(by_tensor.structured) == set(params)
    for e in range(len(SEEDS)):
        ks = explicit_blocks(ens, params, x, e)
        total = sum(ks.values())
        lr = sum(ens.rules[k].lr_scale * v for k, v in ks.items())
        close = {"rtol": 1e-10, "atol": 1e-12}
        np.testing.assert_allclose(by_tensor.kernel[e], total, **close)
        np.testing.assert_allclose(by_layer.kernel[e], total, **close)
        np.testing.assert_allclose(by_tensor.lr[e], lr, **close)
        for i, name in enumerate(by_tensor.block_names):
            np.testing.assert_allclose(by_tensor.blocks[e, i], ks[name], **close)
            np.testing.assert_allclose(
                by_tensor.blocks_lr[e, i], ens.rules[name].lr_scale * ks[name], **close
            )
        for i, layer in enumerate(by_layer.block_names):
            want = ks[f"{layer}.weight"] + ks[f"{layer}.bias"]
            np.testing.assert_allclose(by_layer.blocks[e, i], want, **close)


@pytest.mark.parametrize("param,activation", [("sp", "relu"), ("ntp", "gelu"), ("mup", "tanh")])
def test_structured_jacobian_and_chunked_agree_traced_and_full(param, activation):
    ens, params = mlp_ensemble(param, activation)
    x = points(n=9)
    kw = {"blocks": "layer", "lr_weighted": True}
    full = empirical_ntk(ens, params, x, implementation="structured", **kw)
    for trace in (False, True):
        ref = empirical_ntk(ens, params, x, trace_outputs=trace, implementation="structured", **kw)
        for other in (
            empirical_ntk(ens, params, x, trace_outputs=trace, implementation="jacobian", **kw),
            empirical_ntk(  # 2-point chunks: exercises the off-diagonal chunk pairs
                ens,
                params,
                x,
                trace_outputs=trace,
                implementation="jacobian",
                max_jacobian_bytes=2 * C * 250 * 8,
                **kw,
            ),
            empirical_ntk(ens, params, x, trace_outputs=trace, implementation="auto", **kw),
        ):
            for attr in ("kernel", "lr", "blocks", "blocks_lr"):
                np.testing.assert_allclose(
                    getattr(other, attr), getattr(ref, attr), rtol=1e-10, atol=1e-12
                )
        if trace:  # traced = Σ_c K[i, c, j, c]
            for attr in ("kernel", "lr", "blocks", "blocks_lr"):
                f = getattr(full, attr)
                np.testing.assert_allclose(
                    getattr(ref, attr), f.diagonal(dim1=-3, dim2=-1).sum(-1), rtol=1e-10
                )
    k = full.kernel.reshape(len(SEEDS), 9 * C, 9 * C)
    assert torch.allclose(k, k.transpose(1, 2))
    assert torch.linalg.eigvalsh(k).min() > -1e-10 * k.abs().max()


def odd_network(width=6, d_in=4, out=2):
    """A family the structured path only partly covers: a matmul layer and a gain vector."""
    specs = (
        ParamSpec("a.weight", (width, d_in), Role.INPUT, d_in),
        ParamSpec("a.bias", (width,), Role.VECTOR, init="zeros"),
        ParamSpec("b.weight", (width, width), Role.HIDDEN, width),
        ParamSpec("gain", (width,), Role.VECTOR, init="ones"),
        ParamSpec("out.weight", (out, width), Role.OUTPUT, width),
    )

    def apply(w, x, taps=False):
        h = torch.tanh(F.linear(x, w["a.weight"], w["a.bias"]))
        h = torch.tanh(h @ w["b.weight"].T) * w["gain"]  # not an F.linear: fallback
        return F.linear(h, w["out.weight"]), {}

    return Network("odd", width, specs, apply, ("a", "b"))


def test_auto_falls_back_per_tensor_and_structured_refuses():
    net = odd_network()
    rules = rules_for("mup", list(net.params), RuleContext(width=6, base_width=3, optimizer="sgd"))
    ens = Ensemble(net, rules, SEEDS, loss="mse", device=torch.device("cpu"), dtype=torch.float64)
    params = perturb(ens.init_params())
    x = points(n=5, d=4)
    auto = empirical_ntk(ens, params, x, blocks="tensor", lr_weighted=True, implementation="auto")
    jac = empirical_ntk(
        ens, params, x, blocks="tensor", lr_weighted=True, implementation="jacobian"
    )
    assert sorted(auto.structured) == ["a.bias", "a.weight", "out.weight"]
    for attr in ("kernel", "lr", "blocks", "blocks_lr"):
        np.testing.assert_allclose(getattr(auto, attr), getattr(jac, attr), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="gain"):
        empirical_ntk(ens, params, x, implementation="structured")


@pytest.mark.parametrize("lr_weighted", [False, True])
def test_ntk_vector_product_equals_kernel_times_vector(lr_weighted):
    ens, params = mlp_ensemble()
    x = points()
    res = empirical_ntk(ens, params, x, lr_weighted=True)
    k = res.lr if lr_weighted else res.kernel
    v = torch.randn(
        len(SEEDS), M, C, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    kv = ntk_vector_product(ens, params, x, v, lr_weighted=lr_weighted)
    np.testing.assert_allclose(kv, torch.einsum("eicjd,ejd->eic", k, v), rtol=1e-10, atol=1e-12)


def test_float64_option_casts_float32_models():
    ens, params = mlp_ensemble(dtype=torch.float32)
    x = points(dtype=torch.float32)
    r64 = empirical_ntk(ens, params, x, dtype=torch.float64)
    r32 = empirical_ntk(ens, params, x)
    assert r64.kernel.dtype == torch.float64 and r32.kernel.dtype == torch.float32
    np.testing.assert_allclose(r32.kernel.double(), r64.kernel, rtol=1e-4, atol=1e-5)


def test_probe_dims_options_and_diverged_members():
    ens, params = mlp_ensemble()
    x = points(n=8)
    alive = torch.tensor([True, False, True])
    ctx = ProbeContext(
        step=0,
        ensemble=ens,
        params=params,
        probe_x=x,
        probe_y=torch.zeros(8, C, dtype=torch.float64),
        alive=alive,
        stream=None,  # type: ignore[arg-type]  (not used by the probe)
        lr=0.1,
    )
    before = {k: p.detach().clone() for k, p in params.items()}
    opts = EntkOptions.model_validate({"points": 5, "per_layer": True, "dtype": "float64"})
    assert opts.at == ["init", "end"]  # default schedule
    assert EntkOptions.model_validate({"every": 3}).at is None
    out = entk_probe(ctx, opts)
    pdims = ("entk_point_i", "entk_output_i", "entk_point_j", "entk_output_j")
    assert out["entk"][0] == ("seed", *pdims)
    assert out["entk_lr"][0] == ("seed", *pdims)
    assert out["entk_per_layer"][0] == ("seed", "entk_layer", *pdims)
    assert out["entk_per_layer_lr"][0] == ("seed", "entk_layer", *pdims)
    assert list(out["entk_layer"][1]) == ["l1", "l2", "out"]
    assert out["entk"][1].shape == (3, 5, C, 5, C)
    assert out["entk_per_layer"][1].shape == (3, 3, 5, C, 5, C)
    assert block_names(ens, "layer") == ["l1", "l2", "out"]
    assert np.isnan(out["entk"][1][1]).all() and np.isfinite(out["entk"][1][[0, 2]]).all()
    ref = empirical_ntk(ens, params, x[:5])
    np.testing.assert_allclose(out["entk"][1][[0, 2]], ref.kernel[[0, 2]], rtol=1e-12)
    traced = entk_probe(ctx, EntkOptions(points=5, trace_outputs=True, lr_weighted=False))
    assert set(traced) == {"entk"}
    assert traced["entk"][0] == ("seed", "entk_point_i", "entk_point_j")
    assert traced["entk"][1].dtype == np.float32
    for k, p in params.items():
        assert torch.equal(p.detach(), before[k])
    assert PROBES.entry("entk").obj.step_dim == "entk_step"


def test_entk_and_sharpness_in_a_study(tmp_path):
    """End to end: probes run inside widthwise.run, open_study exposes their dims."""
    import widthwise
    from widthwise.spec import StudySpec

    def study(name, probes):
        spec = StudySpec.model_validate(
            {
                "name": name,
                "model": {"family": "mlp", "options": {"depth": 3, "bias": True}},
                "widths": [8, 16],
                "seeds": 2,
                "parameterization": {"name": "mup"},
                "optimizer": {"name": "sgd", "lr": 0.1},
                "steps": 6,
                "batch_size": 8,
                "data": {"stream": "gegenbauer", "options": {"dim": 4}, "probe_points": 10},
                "probes": {"train_loss": {"every": 1}, "test": {"every": 3}, **probes},
                "device": "cpu",
            }
        )
        return widthwise.open_study(widthwise.run(spec, out=tmp_path / name))

    probes = {
        "entk": {"points": 4, "trace_outputs": True, "per_layer": True},
        "sharpness": {"every": 3, "k": 2, "iters": 30, "batch_points": 8},
    }
    base = study("base", {})
    ds = study("probed", probes)
    np.testing.assert_array_equal(base["train_loss"].values, ds["train_loss"].values)
    assert ds["entk"].dims == ("width", "seed", "entk_step", "entk_point_i", "entk_point_j")
    assert list(ds["entk_step"].values) == [0, 6]
    assert ds["entk_per_layer"].sizes["entk_layer"] == 3
    assert list(ds["entk_layer"].values) == ["l1", "l2", "out"]
    assert ds["sharpness"].dims == ("width", "seed", "sharpness_step", "sharpness_eig")
    assert list(ds["sharpness_step"].values) == [0, 3, 6]
    assert list(ds["sharpness_eig"].values) == [0, 1]
    assert ds["sharpness_iters"].dims == ("width", "seed", "sharpness_step")
    assert np.isfinite(ds["sharpness"].values).all() and np.isfinite(ds["entk"].values).all()
    assert (ds["sharpness"].isel(sharpness_eig=0) >= ds["sharpness"].isel(sharpness_eig=1)).all()


def test_attention_family_uses_the_jacobian_fallback():
    from tiny_attention_family import register

    register()
    opts = FAMILIES.validate_options("tiny_attention", {})
    net = FAMILIES.get("tiny_attention")(4, (3, 2), C, opts)
    rules = rules_for("mup", list(net.params), RuleContext(width=4, base_width=2, optimizer="sgd"))
    ens = Ensemble(net, rules, SEEDS, loss="mse", device=torch.device("cpu"), dtype=torch.float64)
    params = perturb(ens.init_params())
    x = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    res = empirical_ntk(ens, params, x, blocks="tensor", lr_weighted=True)
    assert res.structured == []  # matmuls, not F.linear
    for e in range(len(SEEDS)):
        ks = explicit_blocks(ens, params, x, e)
        np.testing.assert_allclose(res.kernel[e], sum(ks.values()), rtol=1e-10, atol=1e-12)
        lr = sum(ens.rules[k].lr_scale * v for k, v in ks.items())
        np.testing.assert_allclose(res.lr[e], lr, rtol=1e-10, atol=1e-12)
