"""Hessian trace, spectral density, diagonal blocks and the reused-graph HVP against
dense float64 Hessians of small MLPs and a small CNN (probes/hessian.py, the sharpness
probe's new options, and the standalone ``widthwise.probes.sharpness/trace/density``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import tiny_spec_dict, write_spec
from torch import nn

import widthwise.probes as wp
from widthwise.cli import main
from widthwise.ensemble import Ensemble
from widthwise.errors import UserError
from widthwise.families import FAMILIES
from widthwise.families.mlp import MLPOptions
from widthwise.losses import per_member_loss
from widthwise.parameterization import RuleContext, rules_for
from widthwise.probes import ProbeContext
from widthwise.probes.hessian import block_groups, hutchinson, slq
from widthwise.probes.sharpness import SharpnessOptions, ensemble_hvp, sharpness_probe

SEEDS = [0, 1, 2]
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_ensemble(loss="mse", out_dim=2):
    """MLP 4 → 12 → 12 → out_dim with biases (242 params), muP, float64, moved off init."""
    net = FAMILIES.get("mlp")(12, (4,), out_dim, MLPOptions(depth=3, bias=True, activation="tanh"))
    rules = rules_for("mup", list(net.params), RuleContext(width=12, base_width=4, optimizer="sgd"))
    ens = Ensemble(net, rules, SEEDS, loss=loss, device=torch.device("cpu"), dtype=torch.float64)
    params = ens.init_params()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in params.values():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return ens, params


def data(n=40, out_dim=2, seed=2):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    return x, torch.randn(n, out_dim, generator=gen, dtype=torch.float64)


def dense_hessian(ens, params, x, y, e):
    names = list(params)
    shapes = [p.shape[1:] for p in params.values()]
    sizes = [math.prod(s) for s in shapes]

    def loss(flat):
        raw = {n: t.reshape(s) for n, t, s in zip(names, flat.split(sizes), shapes)}
        logits = ens.network.apply(ens.effective(raw), x, False)[0]
        return per_member_loss(ens.loss, logits[None], y)[0]

    flat = torch.cat([p[e].detach().reshape(-1) for p in params.values()])
    return torch.autograd.functional.hessian(loss, flat, vectorize=True)


def offsets(params):
    out, start = {}, 0
    for n, p in params.items():
        out[n] = slice(start, start + p[0].numel())
        start += p[0].numel()
    return out


def context(ens, params, x, y, alive=None):
    return ProbeContext(
        step=3,
        ensemble=ens,
        params=params,
        probe_x=x,
        probe_y=y,
        alive=torch.ones(len(SEEDS), dtype=torch.bool) if alive is None else alive,
        stream=None,  # type: ignore[arg-type]
        lr=0.1,
    )


def w1(a_grid, a_cdf, b_grid, b_cdf):
    """∫|F_a − F_b| on the union of two grids (CDFs as step/linear functions)."""
    t = np.union1d(a_grid, b_grid)
    fa = np.interp(t, a_grid, a_cdf, left=0, right=1)
    fb = np.interp(t, b_grid, b_cdf, left=0, right=1)
    return float(np.trapezoid(abs(fa - fb), t))


# -- the reused-graph HVP ---------------------------------------------------------------


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_graph_hvp_equals_jvp_of_grad_to_rounding(loss):
    out_dim = 3 if loss == "cross_entropy" else 2
    ens, params = small_ensemble(loss, out_dim)
    x, y = data(out_dim=out_dim)
    if loss == "cross_entropy":
        y = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(3))
    graph, flat = ensemble_hvp(ens, params, x, y, "graph")
    jvp, _ = ensemble_hvp(ens, params, x, y, "jvp")
    v = torch.randn(len(SEEDS), flat.numel, generator=torch.Generator().manual_seed(4)).double()
    a, b = graph(v), jvp(v)
    assert float((a - b).abs().max()) <= 1e-12 * float(b.abs().max())
    for e in range(len(SEEDS)):  # and both are H v
        h = dense_hessian(ens, params, x, y, e)
        np.testing.assert_allclose(a[e].numpy(), (h @ v[e]).numpy(), rtol=1e-10, atol=1e-12)
    assert torch.equal(graph(v), a)  # the retained graph serves any number of HVPs
    # a stack of vectors: one vmapped backward pass, the same products
    stack = torch.stack([v, 2 * v, -v])
    np.testing.assert_allclose(
        graph(stack).numpy(), torch.stack([a, 2 * a, -a]).numpy(), rtol=1e-12, atol=1e-14
    )
    one = hutchinson(graph, v, samples=20, seed=3, batch=1)
    eight = hutchinson(graph, v, samples=20, seed=3, batch=8)  # the same probes, batched
    np.testing.assert_allclose(eight.trace.numpy(), one.trace.numpy(), rtol=1e-12)
    assert one.samples == eight.samples == 20


# -- the probe's trace, density and blocks ---------------------------------------------------


def test_probe_trace_blocks_and_density_match_the_dense_hessian():
    ens, params = small_ensemble()
    x, y = data()
    opts = SharpnessOptions(
        k=2,
        tol=1e-8,
        iters=300,
        batch_points=40,
        trace=True,
        trace_samples=400,
        trace_tol=0,
        blocks="layer",
        density=True,
        density_steps=60,
        density_runs=8,
        density_points=400,
    )
    out = sharpness_probe(context(ens, params, x, y), opts)
    groups = list(out["sharpness_layer"][1])
    assert groups == ["l1", "l2", "out"]
    assert out["sharpness_trace"][0] == ("seed",)
    assert out["sharpness_block_top"][0] == ("seed", "sharpness_layer")
    assert out["sharpness_density"][0] == ("seed", "sharpness_bin")
    offs = offsets(params)
    lr = torch.cat([torch.full((p[0].numel(),), ens.rules[n].lr_scale) for n, p in params.items()])
    lam = lr.double().sqrt()
    for e in range(len(SEEDS)):
        h = dense_hessian(ens, params, x, y, e)
        for var, mat in (("sharpness", h), ("sharpness_lr", lam[:, None] * h * lam[None, :])):
            evals = torch.linalg.eigvalsh(mat).numpy()
            np.testing.assert_allclose(out[var][1][e], evals[::-1][:2], rtol=1e-6)
            tr, se = out[f"{var}_trace"][1][e], out[f"{var}_trace_se"][1][e]
            assert abs(tr - float(mat.trace())) <= 4 * se, (var, tr, float(mat.trace()), se)
            off = (mat**2).sum() - (mat.diagonal() ** 2).sum()
            np.testing.assert_allclose(se, math.sqrt(2 * float(off) / 400), rtol=0.3)
            for i, g in enumerate(groups):
                idx = torch.cat(
                    [torch.arange(s.start, s.stop) for n, s in offs.items() if n.startswith(g)]
                )
                block = mat[idx][:, idx]
                top = float(torch.linalg.eigvalsh(block)[-1])
                np.testing.assert_allclose(out[f"{var}_block_top"][1][e, i], top, rtol=1e-6)
                bt, bse = out[f"{var}_block_trace"][1][e, i], out[f"{var}_block_trace_se"][1][e, i]
                assert abs(bt - float(block.trace())) <= 4 * bse + 1e-12, (var, g)
            # the density: integral 1, first moment ≈ trace / n, close to the eigenvalues
            grid, dens = out[f"{var}_density_grid"][1][e], out[f"{var}_density"][1][e]
            np.testing.assert_allclose(np.trapezoid(dens, grid), 1.0, atol=1e-4)
            mean = np.trapezoid(grid * dens, grid)
            n = len(evals)
            spread = evals.std()
            assert abs(mean - evals.mean()) <= 0.1 * spread, (var, mean, evals.mean())
            cdf = np.concatenate([[0], np.cumsum(dens[1:] * np.diff(grid))])
            dist = w1(grid, cdf, np.sort(evals), np.arange(1, n + 1) / n)
            # W1 to the dense spectrum: ≈ 0.6-1.1 % of its range, of which the broadening
            # alone (σ = 1 % of the range) accounts for up to σ·√(2/π) ≈ 0.8 %
            assert dist <= 0.02 * (evals.max() - evals.min()), (var, dist)


def test_slq_first_moment_is_the_quadratic_form_and_exact_spectrum_at_full_steps():
    """With n steps the Gauss quadrature is the spectrum itself: nodes = eigenvalues,
    weights = squared projections of the start vector; its mean = vᵀHv (Hutchinson)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(30, 30, generator=gen, dtype=torch.float64)
    mats = torch.stack([a + a.T, a @ a.T / 30])  # (seed=2, 30, 30)
    op = lambda v: torch.einsum("eij,ej->ei", mats, v)  # noqa: E731
    like = torch.zeros(2, 30, dtype=torch.float64)
    q = slq(op, like, steps=30, runs=3, seed=5)
    np.testing.assert_allclose(q.weights.sum(-1).numpy(), 1.0, atol=1e-12)
    evals = torch.linalg.eigvalsh(mats)
    for e in range(2):
        for r in range(3):
            big = q.nodes[e, r][q.weights[e, r] > 1e-10]
            assert (big[:, None] - evals[e][None]).abs().amin(1).max() <= 1e-8
    # the first moment of each run: the Hutchinson sample vᵀHv / n of the same vector
    h = hutchinson(op, like, samples=3, seed=5)
    moment = (q.nodes * q.weights).sum(-1).mean(-1)
    np.testing.assert_allclose(moment.numpy(), (h.trace / 30).numpy(), rtol=1e-10)


def test_batches_average_over_disjoint_batches_and_report_their_spread():
    ens, params = small_ensemble()
    x, y = data(n=60)
    opts = SharpnessOptions(
        k=1, tol=1e-9, iters=300, batch_points=30, batches=2, lr_weighted=False, trace=True
    )
    out = sharpness_probe(context(ens, params, x, y), opts)
    for e in range(len(SEEDS)):
        tops = [
            float(torch.linalg.eigvalsh(dense_hessian(ens, params, x[s], y[s], e))[-1])
            for s in (slice(0, 30), slice(30, 60))
        ]
        np.testing.assert_allclose(out["sharpness"][1][e, 0], np.mean(tops), rtol=1e-6)
        np.testing.assert_allclose(
            out["sharpness_batch_sd"][1][e, 0], np.std(tops, ddof=1), rtol=1e-5
        )
    assert out["sharpness_trace_batch_sd"][0] == ("seed",)
    assert "sharpness_lr" not in out


def test_diverged_members_are_nan_in_every_new_variable():
    ens, params = small_ensemble()
    x, y = data()
    alive = torch.tensor([True, False, True])
    opts = SharpnessOptions(batch_points=40, trace=True, density=True, blocks="tensor")
    out = sharpness_probe(context(ens, params, x, y, alive), opts)
    for name, (dims, v) in out.items():
        if dims and dims[0] == "seed":
            assert np.isnan(v[1]).all(), name
            assert np.isfinite(v[0]).all() and np.isfinite(v[2]).all(), name
    out = sharpness_probe(context(ens, params, x, y, torch.zeros(3, dtype=torch.bool)), opts)
    assert all(np.isnan(v).all() for k, (d, v) in out.items() if d and d[0] == "seed")


def test_bad_groups_and_k_are_one_line_errors():
    with pytest.raises(UserError, match=r"blocks.head: 'head' names no parameter tensor"):
        block_groups(["l1.weight", "out.weight"], {"head": ["head"]})
    ens, params = small_ensemble()
    x, y = data()
    with pytest.raises(UserError, match="500 eigenvalues asked, but the model has only 242"):
        sharpness_probe(context(ens, params, x, y), SharpnessOptions(k=500))
    with pytest.raises(UserError, match="names no parameter tensor"):
        sharpness_probe(context(ens, params, x, y), SharpnessOptions(blocks={"x": ["l9"]}))


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"batches": 0}, "probes.sharpness.batches"),
        ({"density": True, "density_points": 0}, "probes.sharpness.density_points"),
        ({"blocks": {"head": []}}, "blocks.head"),
        ({"trace_samples": 1}, "probes.sharpness.trace_samples"),
        # judged against the model (narrowest width, built on meta) before anything is written
        ({"k": 1000}, "probes.sharpness.k: 1000 eigenvalues asked, but the model has only"),
        ({"trace_deflate": 999}, "probes.sharpness.trace_deflate: 999 eigenvalues asked"),
        ({"blocks": {"x": ["l9"]}}, "probes.sharpness.blocks.x: 'l9' names no parameter"),
        ({"batches": 33}, "probes.sharpness.batches: 33 batches need at least 33 probe points"),
        ({"method": "power", "stop": "eigenvalue"}, "needs method 'lanczos'"),
        ({"stop": "vector"}, "probes.sharpness.stop"),
    ],
)
def test_bad_options_fail_spec_validation_with_one_line(tmp_path, capsys, options, needle):
    spec = tiny_spec_dict(tmp_path / "s", probes={"sharpness": {"at": ["end"], **options}})
    path = write_spec(tmp_path / "s.yaml", spec)
    code = main(["run", str(path), "--quiet"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], (code, err)
    assert not (tmp_path / "s").exists()


# -- the standalone functions on plain modules -----------------------------------------------


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.head = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x)).flatten(1))


def module_dense(model, loss_fn, x, y):
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for _, p in model.named_parameters()]
    sizes = [p.numel() for p in params]

    def loss(flat):
        tree = {n: t.reshape(p.shape) for n, t, p in zip(names, flat.split(sizes), params)}
        return loss_fn(torch.func.functional_call(model, tree, (x,)), y)

    h = torch.autograd.functional.hessian(loss, torch.cat([p.reshape(-1) for p in params]))
    return h, dict(zip(names, np.cumsum([0, *sizes])[:-1])), dict(zip(names, sizes))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_standalone_functions_match_the_dense_hessian(kind):
    torch.manual_seed(0)  # the test's own models; the functions never touch the RNG
    if kind == "mlp":
        model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
        x = torch.randn(24, 5, dtype=torch.float64)
    else:
        model = SmallCNN().double()
        x = torch.randn(16, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 2 if kind == "cnn" else 3, (x.shape[0],))
    f = nn.functional.cross_entropy
    h, start, size = module_dense(model, f, x, y)
    evals = torch.linalg.eigvalsh(h).numpy()
    before = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    s = wp.sharpness(model, f, (x, y), k=3, tol=1e-9, iters=500, blocks="tensor")
    np.testing.assert_allclose(s.eigenvalues, evals[::-1][:3], rtol=1e-6)
    assert (s.residuals <= 1e-6 * abs(evals).max()).all()
    for name, top in s.blocks.items():
        sl = slice(start[name], start[name] + size[name])
        np.testing.assert_allclose(
            top, float(torch.linalg.eigvalsh(h[sl, sl])[-1]), rtol=1e-6, atol=1e-10
        )
    t = wp.trace(model, f, (x, y), samples=300, tol=0, blocks="tensor")
    assert abs(t.value - float(h.trace())) <= 4 * t.se
    for name, (bt, bse) in t.blocks.items():
        sl = slice(start[name], start[name] + size[name])
        assert abs(bt - float(h[sl, sl].trace())) <= 4 * bse + 1e-12, name
    d = wp.density(model, f, (x, y), steps=40, runs=6, points=300)
    np.testing.assert_allclose(np.trapezoid(d.density, d.grid), 1.0, atol=1e-4)
    mean = np.trapezoid(d.grid * d.density, d.grid)
    assert abs(mean - evals.mean()) <= 0.25 * evals.std()
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    assert torch.equal(rng, torch.get_rng_state())
    # a list of batches: the mean Hessian
    two = wp.sharpness(model, f, [(x[:8], y[:8]), (x[8:], y[8:])], tol=1e-9, iters=500)
    h1, _, _ = module_dense(model, f, x[:8], y[:8])
    h2, _, _ = module_dense(model, f, x[8:], y[8:])
    want = float(torch.linalg.eigvalsh((h1 + h2) / 2)[-1])
    np.testing.assert_allclose(two.eigenvalues[0], want, rtol=1e-6)


def test_the_sharpness_module_is_callable_and_keeps_its_contents():
    import widthwise.probes.sharpness as mod

    assert callable(wp.sharpness) and wp.sharpness is mod
    assert mod.lanczos.__name__ == "lanczos"
    model = nn.Linear(3, 1).double()
    x = torch.randn(10, 3, dtype=torch.float64)
    y = torch.randn(10, 1, dtype=torch.float64)
    s = wp.sharpness(model, nn.functional.mse_loss, (x, y), k=4, tol=1e-10)
    # mse of a linear model: H = 2 [x 1]ᵀ[x 1] / N
    z = torch.cat([x, torch.ones(10, 1, dtype=torch.float64)], 1)
    want = torch.linalg.eigvalsh(2 * z.T @ z / 10).flip(0).numpy()
    np.testing.assert_allclose(s.eigenvalues, want, rtol=1e-8)
    with pytest.raises(UserError, match="5 eigenvalues asked"):
        wp.sharpness(model, nn.functional.mse_loss, (x, y), k=5)


def test_deflated_trace_is_exact_in_expectation_and_less_noisy():
    """tr H = Σ θ_top + tr(PHP): with the top eigenpairs taken out, the estimate stays
    centred on the dense trace and its standard error drops (a cross-entropy Hessian:
    a few outliers carry most of ‖H‖_F)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    x = torch.randn(64, 5, dtype=torch.float64)
    y = torch.randint(0, 4, (64,))
    f = nn.functional.cross_entropy
    h, start, size = module_dense(model, f, x, y)
    plain = wp.trace(model, f, (x, y), samples=200, tol=0, blocks="layer")
    defl = wp.trace(model, f, (x, y), samples=200, tol=0, blocks="layer", deflate=4)
    exact = float(h.trace())
    assert abs(defl.value - exact) <= 4 * defl.se
    # standard errors as theory says: √(2 Σ_{i≠j} A_ij² / s), A = H or PHP (P: off the top 4)
    _, vecs = torch.linalg.eigh(h)
    q = vecs[:, -4:]
    php = h - q @ (q.T @ h) - (h @ q) @ q.T + q @ (q.T @ h @ q) @ q.T

    def theory(a):
        return math.sqrt(2 * float((a**2).sum() - (a.diagonal() ** 2).sum()) / 200)

    np.testing.assert_allclose(plain.se, theory(h), rtol=0.3)
    np.testing.assert_allclose(defl.se, theory(php), rtol=0.3)
    assert defl.se < 0.8 * plain.se, (defl.se, plain.se)
    for g, (bt, bse) in defl.blocks.items():
        names = [n for n in start if n.startswith(g)]
        want = sum(
            float(h[start[n] : start[n] + size[n], start[n] : start[n] + size[n]].trace())
            for n in names
        )
        assert abs(bt - want) <= 4 * bse + 1e-6 * abs(exact), g
    ens, params = small_ensemble()
    xx, yy = data()
    out = sharpness_probe(
        context(ens, params, xx, yy),
        SharpnessOptions(
            batch_points=40,
            trace=True,
            trace_samples=100,
            trace_tol=0,
            trace_deflate=5,
            lr_weighted=False,
        ),
    )
    for e in range(len(SEEDS)):
        tr = float(dense_hessian(ens, params, xx, yy, e).trace())
        assert abs(out["sharpness_trace"][1][e] - tr) <= 4 * out["sharpness_trace_se"][1][e]


@pytest.mark.parametrize("family", ["cnn", "transformer"])
def test_graph_hvp_equals_jvp_for_conv_and_attention_families(family):
    gen = torch.Generator().manual_seed(0)
    if family == "cnn":
        shape, out, opts = (3, 8, 8), 4, {}
        x = torch.randn(6, 3, 8, 8, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 4, (6,), generator=gen)
    else:
        shape, out, opts = (6,), 7, {"depth": 2, "heads": 2}
        x = torch.randint(0, 7, (5, 6), generator=gen)
        y = torch.randint(0, 7, (5, 6), generator=gen)
    net = FAMILIES.get(family)(8, shape, out, FAMILIES.validate_options(family, opts))
    rules = rules_for("mup", list(net.params), RuleContext(width=8, base_width=4, optimizer="sgd"))
    ens = Ensemble(
        net, rules, [0, 1], loss="cross_entropy", device=torch.device("cpu"), dtype=torch.float64
    )
    params = ens.init_params()
    graph, flat = ensemble_hvp(ens, params, x, y, "graph")
    jvp, _ = ensemble_hvp(ens, params, x, y, "jvp")
    v = torch.randn(2, flat.numel, generator=gen, dtype=torch.float64)
    a, b = graph(v), jvp(v)
    assert float((a - b).abs().max()) <= 1e-12 * float(b.abs().max())


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_eigenvalue_stop_meets_its_tolerance_in_fewer_steps(loss):
    """stop='eigenvalue' (min(r, r²/gap) ≤ tol·|θ|): the top-k eigenvalues within tol of
    the dense Hessian's, in no more Lanczos steps than the residual rule; the residual
    rule's eigenvalues are more accurate still (its vectors converge too)."""
    from widthwise.probes.eigen import lanczos

    out_dim = 3 if loss == "cross_entropy" else 2
    ens, params = small_ensemble(loss, out_dim)
    x, y = data(out_dim=out_dim)
    if loss == "cross_entropy":
        y = torch.randint(0, out_dim, (x.shape[0],), generator=torch.Generator().manual_seed(4))
    hvp, flat = ensemble_hvp(ens, params, x, y)
    like = flat.flatten(params)
    tol, k = 1e-4, 2
    dense = torch.stack(
        [torch.linalg.eigvalsh(dense_hessian(ens, params, x, y, e)).flip(0)[:k] for e in range(3)]
    )
    res = lanczos(hvp, like, k=k, iters=200, tol=tol, seed=0)
    eig = lanczos(hvp, like, k=k, iters=200, tol=tol, seed=0, stop="eigenvalue")
    err = ((eig.values - dense).abs() / dense.abs()).max().item()
    assert err <= tol, err
    assert (eig.iters <= res.iters).all() and eig.hvps < res.hvps
    assert ((res.values - dense).abs() / dense.abs()).max().item() <= err + 1e-12
    with pytest.raises(ValueError, match="stop"):
        lanczos(hvp, like, k=1, stop="vector")


def test_hvp_graph_member_by_member_on_cpu_equals_the_stacked_one():
    """From width 256 on a CPU the Hessian graph is built per member (HVP_LOOP_WIDTH,
    faster there): the same H v as through the stacked forward, to float64 rounding."""
    from widthwise.probes.hessian import loss_hvp
    from widthwise.probes.sharpness import HVP_LOOP_WIDTH, hvp_strategy

    net = FAMILIES.get("mlp")(HVP_LOOP_WIDTH, (4,), 3, MLPOptions(depth=3))
    rules = rules_for(
        "mup", list(net.params), RuleContext(width=256, base_width=64, optimizer="sgd")
    )
    ens = Ensemble(net, rules, SEEDS, loss="mse", device=torch.device("cpu"), dtype=torch.float64)
    assert ens.strategy == "vmap" and hvp_strategy(ens) == "loop"
    params = ens.init_params()
    x, y = data(out_dim=3)
    hvp, flat = ensemble_hvp(ens, params, x, y)

    def stacked(raw):
        return per_member_loss(ens.loss, ens.forward(raw, x, strategy="vmap"), y).sum()

    ref, _ = loss_hvp(stacked, params)
    v = torch.randn(flat.flatten(params).shape, dtype=torch.float64)
    got, want = hvp(v), ref(v)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12 * float(want.abs().max()))
    assert float(want.abs().max()) > 0
