"""Infinite-width kernels against closed forms, quadrature and Monte Carlo at finite width.

Monte Carlo two ways: a direct numpy random-features network (preactivations of layer
l + 1 drawn exactly from N(0, σ² φφᵀ/n), which is the law of W φ for Gaussian W), and
widthwise's own MLP at init (``build_network`` + ``rules_for`` + ``Ensemble`` + the
``kernels`` and ``entk`` probes). Errors are relative Frobenius norms
‖K̂ − K‖_F / ‖K‖_F of whole (points × points) kernels, per seed. Measured √n · error
(RMS over seeds, σ = 1.2, 24-32 points on the sphere of radius √d): feature kernels
2.4–2.9 in layer 1 and 3.0–4.0 in layer 2, eNTK 0.6–1.5; the worst of 60 seeds was
5.8 (relu, layer 2), hence the per-seed bound ERR_C / √n with ERR_C = 8.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import integrate

from widthwise.analysis._checks import AnalysisError
from widthwise.analysis.limit_kernels import (
    dual_kernel,
    entk_coefficients,
    entk_layout,
    entk_limit,
    gaussian_expectation,
    limit_kernels_for,
    mlp_param_specs,
    nngp_kernels,
    ntk_blocks,
    ntk_limit,
    output_nngp,
)
from widthwise.ensemble import Ensemble
from widthwise.families import FAMILIES, build_network
from widthwise.parameterization import RuleContext, rules_for
from widthwise.probes import ProbeContext
from widthwise.probes.features import KERNELS, KernelOptions, kernels_probe
from widthwise.probes.ntk import EntkOptions, entk_probe

D = 8  # input dim
MF = {"gamma0": 0.5}  # mf's options
ERR_C = 8.0  # per-seed bound: relative Frobenius error ≤ ERR_C / √n
ACT = {
    "relu": lambda z: np.maximum(z, 0.0),
    "tanh": np.tanh,
    "erf": lambda z: __import__("scipy.special").special.erf(z),
}
DACT = {
    "relu": lambda z: (z > 0).astype(float),
    "tanh": lambda z: 1 - np.tanh(z) ** 2,
    "erf": lambda z: 2 / math.sqrt(math.pi) * np.exp(-z * z),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def sphere(m: int = 24, d: int = D, seed: int = 0) -> np.ndarray:
    """m points of norm √d (so x·x/d = 1: unit-variance first preactivations at σ = 1)."""
    z = np.random.default_rng(seed).standard_normal((m, d))
    return z / np.linalg.norm(z, axis=1, keepdims=True) * math.sqrt(d)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def mc_features(x, depth, act, sigma, n, rng) -> dict[str, np.ndarray]:
    """Random-features network: {l: φ(h^l)φ(h^l)ᵀ/n}, h^{l+1} ~ N(0, σ² K̂^l) exactly."""
    h = sigma / math.sqrt(x.shape[1]) * x @ rng.standard_normal((x.shape[1], n))  # (M, n)
    out = {}
    for layer in range(1, depth):
        phi = ACT[act](h)
        k = phi @ phi.T / n
        out[f"l{layer}"] = k
        lam, u = np.linalg.eigh(sigma**2 * k)
        h = (u * np.sqrt(np.clip(lam, 0, None))) @ rng.standard_normal((len(x), n))
    return out


def mc_ntk(x, depth, act, sigma, n, rng, bias=False) -> np.ndarray:
    """eNTK of an explicit ntp network f = σ/√n vᵀφ(...) w.r.t. raw weights, per output."""
    d = x.shape[1]
    ws = [rng.standard_normal((n, d))] + [rng.standard_normal((n, n)) for _ in range(depth - 2)]
    v = rng.standard_normal(n)
    feats, pres = [x.T], []  # (fan_in, M) features entering each layer
    for w in ws:
        pre = sigma / math.sqrt(w.shape[1]) * w @ feats[-1]  # (n, M)
        pres.append(pre)
        feats.append(ACT[act](pre))
    g = sigma / math.sqrt(n) * v[:, None] * np.ones((1, len(x)))  # ∂f/∂x^{L-1}: (n, M)
    theta = sigma**2 / n * feats[-1].T @ feats[-1] + (1.0 if bias else 0.0)  # readout
    for li in range(len(ws) - 1, -1, -1):
        g = DACT[act](pres[li]) * g  # ∂f/∂h^l (n, M)
        fan = feats[li].shape[0]
        theta = theta + sigma**2 / fan * (feats[li].T @ feats[li]) * (g.T @ g)
        if bias:
            theta = theta + g.T @ g
        if li > 0:
            g = sigma / math.sqrt(fan) * ws[li].T @ g
    return theta


def ensemble(param, width, depth, act, *, bias=False, seeds=4, out_dim=1, dtype=torch.float32):
    """widthwise's MLP at init through its own code path: family, rules, ensemble."""
    opts = FAMILIES.validate_options("mlp", {"depth": depth, "activation": act, "bias": bias})
    net = build_network("mlp", width, (D,), out_dim, opts)
    options = MF if param == "mf" else None
    ctx = RuleContext(width=width, base_width=64, optimizer="sgd", sigma=1.2, options=options)
    rules = rules_for(param, list(net.params), ctx)
    ens = Ensemble(net, rules, range(seeds), loss="mse", device=torch.device("cpu"), dtype=dtype)
    return ens, ens.init_params()


def probe_ctx(ens, params, x) -> ProbeContext:
    e = ens.size
    return ProbeContext(
        step=0,
        ensemble=ens,
        params=params,
        probe_x=torch.as_tensor(x, dtype=ens.dtype),
        probe_y=torch.zeros(len(x), 1),
        alive=torch.ones(e, dtype=torch.bool),
        stream=None,  # type: ignore[arg-type]
        lr=0.1,
    )


# -- closed forms and quadrature ----------------------------------------------------------


def test_relu_arccos_special_values():
    a, b = 1.0, 4.0  # |x|², |y|² (√(ab) exact: the arc-cosine is steep at θ = 0, π)
    nx_ny = math.sqrt(a * b)
    np.testing.assert_allclose(dual_kernel("relu", a, b, nx_ny), nx_ny / 2, rtol=1e-15)  # θ = 0
    np.testing.assert_allclose(dual_kernel("relu", a, b, 0.0), nx_ny / (2 * math.pi), rtol=1e-15)
    assert dual_kernel("relu", a, b, -nx_ny) == pytest.approx(0.0, abs=1e-15)  # θ = π
    dots = dual_kernel("relu", a, b, np.array([nx_ny, 0.0, -nx_ny]), derivative=True)
    np.testing.assert_allclose(dots, [0.5, 0.25, 0.0], atol=1e-15)
    # E[relu(z)²] = 1/2 for z ~ N(0, 1); relu'(0) = 0 as torch has it
    assert dual_kernel("relu", 1.0, 1.0, 1.0) == pytest.approx(0.5, rel=1e-15)
    assert dual_kernel("relu", 0.0, 1.0, 0.0, derivative=True) == 0.0
    # through the recursion: x·y/d at θ = 0 and π/2 (depth 2, σ = 1)
    x = np.zeros((3, D))
    x[0, 0], x[1, 0], x[2, 1] = 1.0, 2.0, 3.0
    k = nngp_kernels(x, 2, "relu")["l1"]
    np.testing.assert_allclose(k[0, 1], 1 * 2 / D / 2, rtol=1e-14)
    np.testing.assert_allclose(k[0, 2], 1 * 3 / D / (2 * math.pi), rtol=1e-14)


def test_erf_known_values_and_quadrature_cross_check():
    # erf(z/√2) is uniform on [-1, 1] for z ~ N(0, 1): E[erf(u)²] = 1/3 at var(u) = 1/2
    assert dual_kernel("erf", 0.5, 0.5, 0.5) == pytest.approx(1 / 3, rel=1e-14)
    assert dual_kernel("erf", 0.7, 1.3, 0.0) == 0.0
    assert dual_kernel("erf", 1e12, 1e12, 1e12) == pytest.approx(1.0, rel=1e-5)  # sign²
    assert dual_kernel("erf", 0.0, 0.0, 0.0, derivative=True) == pytest.approx(4 / math.pi)
    # the same quadrature that serves tanh reproduces Williams' closed forms
    erf = ACT["erf"]
    a = np.array([0.1, 1.0, 4.0, 9.0, 2.0, 1.0])
    b = np.array([0.3, 1.0, 2.0, 9.0, 2.0, 3.0])
    c = np.array([0.05, 0.5, 2.5, -8.9, 2.0, -math.sqrt(3)])  # incl. ρ = ±1
    for deriv, fn in ((False, erf), (True, DACT["erf"])):
        np.testing.assert_allclose(
            gaussian_expectation(fn, a, b, c),
            dual_kernel("erf", a, b, c, derivative=deriv),
            rtol=0,
            atol=1e-12,
        )


@pytest.mark.parametrize("k", [(1.0, 1.0, 0.5), (4.0, 2.0, 2.5), (0.3, 2.0, -0.1)])
def test_tanh_quadrature_against_adaptive_dblquad(k):
    a, b, c = k
    sa, l21 = math.sqrt(a), c / math.sqrt(a)
    l22 = math.sqrt(b - l21**2)
    for deriv, fn in ((False, np.tanh), (True, DACT["tanh"])):

        def g(z2, z1, fn=fn):
            return fn(sa * z1) * fn(l21 * z1 + l22 * z2) * np.exp(-(z1**2 + z2**2) / 2) / 2 / np.pi

        ref = integrate.dblquad(g, -12, 12, -12, 12, epsabs=1e-13, epsrel=1e-12)[0]
        got = dual_kernel("tanh", a, b, c, derivative=deriv)
        assert abs(got - ref) < 1e-10, (deriv, got, ref)


@pytest.mark.parametrize("act", ["relu", "erf", "tanh", "gelu"])
def test_kernels_symmetric_psd_and_ntk_recursion(act):
    x = sphere(12)
    s, beta = 1.3, 1.0
    feats = nngp_kernels(x, 4, act, sigma=s)
    assert list(feats) == ["l1", "l2", "l3"]
    blocks = ntk_blocks(x, 4, act, sigma=s, bias_multiplier=beta)
    assert list(blocks) == [p.name for p in mlp_param_specs(8, D, 1, 4, True)]
    theta = ntk_limit(x, 4, act, sigma=s, bias_multiplier=beta)
    # Arora et al. 2019: Θ¹ = Σ¹ + β², Θ^{l+1} = σ²K^l + β² + Θ^l ⊙ σ² K̇^l (here b = 0)
    sig = s**2 * x @ x.T / D
    rec = sig + beta**2
    for _ in range(3):
        k = dual_kernel(act, np.diag(sig)[:, None], np.diag(sig)[None, :], sig)
        kd = dual_kernel(act, np.diag(sig)[:, None], np.diag(sig)[None, :], sig, derivative=True)
        rec = s**2 * k + beta**2 + rec * s**2 * kd
        sig = s**2 * k
    np.testing.assert_allclose(theta, rec, rtol=1e-12)
    np.testing.assert_allclose(output_nngp(x, 4, act, sigma=s), sig, rtol=1e-12)
    for k in [*feats.values(), theta]:
        np.testing.assert_array_equal(k, k.T)
        assert np.linalg.eigvalsh(k).min() > -1e-12 * np.abs(k).max()


def test_ntk_of_one_hidden_layer_is_nngp_plus_readout_terms():
    """Depth 2, relu, by hand: Θ = σ²K¹ + β² + (σ²K⁰ + β²) ⊙ σ²K̇¹ with K¹, K̇¹ arc-cosine."""
    x, s = sphere(6), 1.5
    sig = s**2 * x @ x.T / D
    nrm = np.sqrt(np.outer(np.diag(sig), np.diag(sig)))
    th = np.arccos(np.clip(sig / nrm, -1, 1))
    k1 = nrm / (2 * np.pi) * (np.sin(th) + (np.pi - th) * np.cos(th))
    kd = (np.pi - th) / (2 * np.pi)
    want = s**2 * k1 + 1 + (sig + 1) * s**2 * kd
    np.testing.assert_allclose(
        ntk_limit(x, 2, "relu", sigma=s, bias_multiplier=1.0), want, rtol=1e-9
    )
    np.testing.assert_allclose(nngp_kernels(x, 2, "relu", sigma=s, features="preact")["l1"], sig)


# -- Monte Carlo: numpy random features -----------------------------------------------------


@pytest.mark.parametrize("act", ["relu", "tanh", "erf"])
def test_nngp_matches_random_features_at_width_2_14(act):
    x, n, seeds = sphere(24), 2**14, 4
    lim = nngp_kernels(x, 3, act, sigma=1.2)
    mcs = [mc_features(x, 3, act, 1.2, n, np.random.default_rng(s)) for s in range(seeds)]
    for layer in lim:
        errs = np.array([rel(m[layer], lim[layer]) for m in mcs])
        assert errs.max() <= ERR_C / math.sqrt(n), (layer, errs * math.sqrt(n))
        # the seed mean is within 3 standard errors (estimated from the seeds' spread)
        stack = np.stack([m[layer] for m in mcs])
        spread = np.sqrt(((stack - stack.mean(0)) ** 2).sum((1, 2)).mean() * seeds / (seeds - 1))
        assert np.linalg.norm(stack.mean(0) - lim[layer]) <= 3 * spread / math.sqrt(seeds)


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_error_falls_like_inverse_sqrt_width(act):
    x, seeds = sphere(24), 8
    lim = nngp_kernels(x, 3, act, sigma=1.2)

    def rms_err(n):
        errs = [
            rel(mc_features(x, 3, act, 1.2, n, np.random.default_rng(100 + s))["l2"], lim["l2"])
            for s in range(seeds)
        ]
        return math.sqrt(np.mean(np.square(errs)))

    ratio = rms_err(2**10) / rms_err(2**14)  # √16 = 4 expected
    assert 2.7 <= ratio <= 6.0, ratio  # 10 seed sets gave 3.4–5.2


def test_ntk_matches_explicit_random_network():
    x = sphere(24)
    for depth, n in ((2, 2**14), (3, 2**11)):
        for act in ("relu", "tanh"):
            lim = ntk_limit(x, depth, act, sigma=1.2, bias_multiplier=1.0)
            for s in range(3 - depth + 1):  # 2 seeds at depth 2, 1 at depth 3
                k = mc_ntk(x, depth, act, 1.2, n, np.random.default_rng(s), bias=True)
                assert rel(k, lim) <= ERR_C / math.sqrt(n), (depth, act, rel(k, lim) * n**0.5)


# -- Monte Carlo: widthwise's MLP and probes ---------------------------------------------------


@pytest.mark.parametrize("param", ["sp", "ntp", "mup", "mf"])
def test_kernels_probe_matches_limit_in_every_parameterization(param):
    x = sphere(24)
    cases = [(2, 2**14, "relu"), (3, 2**12, "tanh")] if param == "sp" else [(3, 2**11, "relu")]
    for depth, n, act in cases:
        ens, params = ensemble(param, n, depth, act, bias=True, seeds=2)
        for features in ("act", "preact"):
            got = kernels_probe(probe_ctx(ens, params, x), KernelOptions(features=features))
            k = got["feature_kernel"][1]  # (seed, layer, M, M)
            lim = nngp_kernels(x, depth, act, sigma=1.2, features=features)
            assert list(got["kernels_layer"][1]) == list(lim)
            for li, layer in enumerate(lim):
                errs = [rel(k[e, li], lim[layer]) for e in range(ens.size)]
                assert max(errs) <= ERR_C / math.sqrt(n), (param, layer, np.array(errs) * n**0.5)


def test_gelu_kernels_probe_matches_limit():
    x = sphere(16)
    ens, params = ensemble("mup", 2**14, 2, "gelu", seeds=2)
    k = kernels_probe(probe_ctx(ens, params, x), KernelOptions())["feature_kernel"][1]
    lim = nngp_kernels(x, 2, "gelu", sigma=1.2)["l1"]
    assert max(rel(k[e, 0], lim) for e in range(2)) <= ERR_C / 2**7


def test_entk_probe_matches_ntk_limit_in_ntp():
    """ntp: eNTK → Θ δ_cd (full layout, 2 outputs) and eNTK_lr → Σ_t lr_t B_t."""
    x = sphere(16)
    for depth, n, act in ((2, 2**14, "relu"), (3, 2**12, "tanh")):
        ens, params = ensemble("ntp", n, depth, act, bias=True, seeds=2, out_dim=2)
        opts = EntkOptions(per_layer=True, blocks="tensor")
        got = entk_probe(probe_ctx(ens, params, x), opts)
        lim = entk_limit(x, depth, act, "ntp", sigma=1.2, bias=True)
        lim_lr = entk_limit(
            x, depth, act, "ntp", sigma=1.2, bias=True, base_width=64, lr_weighted=True
        )
        assert list(got["entk_layer"][1]) == list(lim.blocks)
        for e in range(2):
            for var, want in (("entk", lim.kernel), ("entk_lr", lim_lr.kernel)):
                k = got[var][1][e]  # (M, C, M, C)
                full = entk_layout(want, 2)
                assert rel(k, full) <= ERR_C / math.sqrt(n), (var, depth, rel(k, full) * n**0.5)
            for i, (name, block) in enumerate(lim.blocks.items()):
                k = got["entk_per_layer"][1][e, i, :, 0, :, 0]
                assert rel(k, block) <= 2 * ERR_C / math.sqrt(n), (name, rel(k, block) * n**0.5)


@pytest.mark.parametrize(
    "param,kind,normalize",
    [
        ("sp", "entk", "width"),
        ("mup", "entk", None),
        ("mup", "entk_lr", None),
        ("mf", "entk_lr", None),
    ],
)
def test_entk_probe_matches_limit_of_each_parameterization(param, kind, normalize):
    x, n, depth = sphere(16), 2**12, 3
    ens, params = ensemble(param, n, depth, "relu", bias=True, seeds=2)
    got = entk_probe(probe_ctx(ens, params, x), EntkOptions(trace_outputs=True))[kind][1]
    got = got / n if normalize else got
    options = MF if param == "mf" else None
    kw = dict(sigma=1.2, bias=True, base_width=64, options=options, lr_weighted=kind == "entk_lr")
    at_n = entk_limit(x, depth, "relu", param, normalize=normalize, width=n, **kw)
    lim = entk_limit(x, depth, "relu", param, normalize=normalize, **kw)
    for e in range(2):
        assert rel(got[e], at_n.kernel) <= ERR_C / math.sqrt(n), rel(got[e], at_n.kernel) * n**0.5
    # the leading-order kernel at width n tends to the limit (corrections O(1/m) or O(1/n))
    assert rel(at_n.kernel, lim.kernel) <= 2 * 64 / n


def test_which_entk_limits_exist():
    x = sphere(6)
    kw = dict(sigma=1.0, bias=True, base_width=64)
    with pytest.raises(AnalysisError, match="no infinite-width limit.*normalize='width'"):
        entk_limit(x, 3, "relu", "sp", **kw)
    with pytest.raises(AnalysisError, match="no infinite-width limit"):
        entk_limit(x, 3, "relu", "sp", lr_weighted=True, **kw)
    with pytest.raises(AnalysisError, match="depends on base_width"):
        entk_limit(x, 3, "relu", "mup", sigma=1.0)
    b = ntk_blocks(x, 3, "relu", bias_multiplier=1.0)
    ntp = entk_limit(x, 3, "relu", "ntp", bias=True)  # no base_width needed
    np.testing.assert_allclose(ntp.kernel, sum(b.values()))
    mup = entk_limit(x, 3, "relu", "mup", **kw)  # hidden weights (base/σ²) and the readout bias
    assert {t for t, c in mup.coefficients.items() if c} == {"l2.weight", "out.bias"}
    np.testing.assert_allclose(mup.kernel, 64 * b["l2.weight"] + 1)
    no_bias = {**kw, "bias": False}
    assert not entk_limit(x, 2, "relu", "mup", **no_bias).kernel.any()  # nothing survives
    mf = entk_limit(x, 3, "relu", "mf", options=MF, **kw)  # the readout bias, 1/γ0²
    np.testing.assert_allclose(mf.kernel, 4 * b["out.bias"])
    mf_lr = entk_limit(x, 3, "relu", "mf", options=MF, lr_weighted=True, **kw)
    np.testing.assert_allclose(mf_lr.kernel, sum(b.values()))  # σ = 1: the ntp NTK
    sp = entk_limit(x, 3, "relu", "sp", normalize="width", **kw)
    np.testing.assert_allclose(sp.kernel, b["l2.weight"] + b["out.weight"])
    adam = entk_limit(x, 3, "relu", "mup", optimizer="adam", lr_weighted=True, **kw)
    np.testing.assert_array_equal(adam.kernel, 1.0)  # only the readout bias survives
    ntp_lr = entk_limit(x, 3, "relu", "ntp", lr_weighted=True, **kw)
    mup_lr = entk_limit(x, 3, "relu", "mup", lr_weighted=True, **kw)
    np.testing.assert_allclose(mup_lr.kernel, ntp_lr.kernel, rtol=1e-12)  # same at init
    want = D * b["l1.weight"] + 64 * (b["l2.weight"] + b["out.weight"])
    np.testing.assert_allclose(ntp_lr.kernel, want + b["l1.bias"] + b["l2.bias"] + 1)
    zero_init = {"readout_zero_init": True}
    zero = entk_limit(x, 3, "relu", "mup", options=zero_init, lr_weighted=True, **kw)
    assert {t for t, c in zero.coefficients.items() if c} == {"out.weight", "out.bias"}
    c = entk_coefficients("ntp", 4096, d_in=D, depth=3, bias=True, sigma=1.7)
    assert all(v == pytest.approx(1.0) for v in c.values())


def test_param_specs_match_the_mlp_family():
    for depth, bias in ((2, False), (4, True)):
        opts = FAMILIES.validate_options("mlp", {"depth": depth, "bias": bias})
        net = build_network("mlp", 48, (2, 4), 3, opts)
        assert mlp_param_specs(48, 8, 3, depth, bias) == list(net.params)


# -- glue: a study's probes ---------------------------------------------------------------------


def test_limit_kernels_for_a_study(tmp_path):
    import widthwise
    from widthwise.analysis import relative_frobenius
    from widthwise.spec import StudySpec

    raw = {
        "name": "limit",
        "model": {"family": "mlp", "options": {"depth": 2, "activation": "tanh"}},
        "widths": [2048],
        "seeds": 2,
        "parameterization": {"name": "ntp", "sigma": 2.0},
        "optimizer": {"name": "sgd", "lr": 0.01},
        "steps": 1,
        "batch_size": 8,
        "data": {"stream": "gegenbauer", "options": {"dim": 8}, "probe_points": 16},
        "probes": {"kernels": {"at": ["init"]}, "entk": {"at": ["init"], "trace_outputs": True}},
        "device": "cpu",
        "out": str(tmp_path / "study"),
    }
    ds = widthwise.open_study(widthwise.run(StudySpec.model_validate(raw)))
    lim = limit_kernels_for(ds, x=limit_x(raw))
    assert lim.feature_kernel.dims == KERNELS.result_dims("feature_kernel")[1:]
    assert lim.entk.dims == ("entk_point_i", "entk_point_j") and lim.attrs["no_limit"] == ""
    for var, step in (("feature_kernel", "kernels_step"), ("entk", "entk_step")):
        d = relative_frobenius(ds[var].isel({step: 0}), lim[var], over=lim[var].dims[-2:])
        bound = ERR_C / np.sqrt(ds.width)
        assert (d <= bound).all(), d.values
    raw["parameterization"] = {"name": "sp", "sigma": 2.0}
    sp = limit_kernels_for(StudySpec.model_validate(raw))
    assert (
        "entk" not in sp and "entk: the sp eNTK has no infinite-width limit" in sp.attrs["no_limit"]
    )
    np.testing.assert_allclose(sp.feature_kernel, lim.feature_kernel)  # same in sp and ntp
    assert json.loads(ds.attrs["spec"])["parameterization"]["name"] == "ntp"


def limit_x(raw):
    from widthwise.job import build_stream
    from widthwise.spec import StudySpec

    spec = StudySpec.model_validate(raw)
    return build_stream(spec).probe_set(spec.data.probe_points)[0]
