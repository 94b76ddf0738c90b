"""Feature-kernel and preactivation probes: invariants, hand computations, width convergence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from widthwise.ensemble import Ensemble
from widthwise.errors import UserError
from widthwise.families import FAMILIES
from widthwise.families.mlp import MLPOptions
from widthwise.parameterization import RuleContext, rules_for
from widthwise.probes import PROBES, ProbeContext
from widthwise.probes.features import (
    KernelOptions,
    PreactOptions,
    histogram_counts,
    kernels_probe,
    preacts_probe,
)
from widthwise.streams.gegenbauer import GegenbauerOptions, GegenbauerStream

STREAM = GegenbauerStream(0, GegenbauerOptions(dim=8))


def context(width: int, seeds: int = 2, points: int = 40, depth: int = 3, strategy="auto"):
    """A ProbeContext over an initial muP ReLU MLP ensemble (σ = √2, base width 64)."""
    net = FAMILIES.get("mlp")(width, (8,), 1, MLPOptions(depth=depth))
    ctx_rules = RuleContext(width=width, base_width=64, optimizer="sgd", sigma=math.sqrt(2))
    rules = rules_for("mup", list(net.params), ctx_rules)
    ens = Ensemble(
        net, rules, range(seeds), loss="mse", device=torch.device("cpu"), strategy=strategy
    )
    params = ens.init_params()
    x, y = STREAM.probe_set(points)
    return ProbeContext(
        step=0,
        ensemble=ens,
        params=params,
        probe_x=torch.as_tensor(x),
        probe_y=torch.as_tensor(y),
        alive=torch.ones(seeds, dtype=torch.bool),
        stream=STREAM,
        lr=0.1,
    )


def taps_of(ctx: ProbeContext, points: int | None = None) -> dict[str, np.ndarray]:
    x = ctx.probe_x if points is None else ctx.probe_x[:points]
    with torch.no_grad():
        _, taps = ctx.ensemble.forward_taps(ctx.params, x)
    return {k: v.double().numpy() for k, v in taps.items()}


# -- kernels -----------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_kernel_is_phi_phi_t_over_width_symmetric_psd(strategy):
    ctx = context(48, seeds=3, strategy=strategy)
    opts = KernelOptions(points=24)
    dims, k = kernels_probe(ctx, opts)["feature_kernel"]
    assert dims == ("seed", "kernels_layer", "kernels_point_i", "kernels_point_j")
    assert k.shape == (3, 2, 24, 24) and k.dtype == np.float64
    taps = taps_of(ctx, 24)
    for li, layer in enumerate(("l1", "l2")):
        phi = taps[f"act/{layer}"]  # (seed, M, width)
        by_hand = np.einsum("ein,ejn->eij", phi, phi) / 48
        np.testing.assert_allclose(k[:, li], by_hand, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(k, k.swapaxes(-1, -2), rtol=0, atol=1e-12)
    eigs = np.linalg.eigvalsh(k)
    assert (eigs >= -1e-5 * eigs.max(axis=-1, keepdims=True)).all()


def test_kernel_options_layers_features_points():
    ctx = context(32, seeds=2, points=10)
    opts = KernelOptions(layers=["l2"], features="preact", points=64)  # more than the probe set
    _, k = kernels_probe(ctx, opts)["feature_kernel"]
    assert k.shape == (2, 1, 10, 10)
    pre = taps_of(ctx)["preact/l2"]
    np.testing.assert_allclose(k[:, 0], np.einsum("ein,ejn->eij", pre, pre) / 32, rtol=1e-10)
    dims, names = kernels_probe(ctx, opts)["kernels_layer"]  # a run-time coordinate
    assert dims == ("kernels_layer",) and list(names) == ["l2"]
    assert list(kernels_probe(ctx, KernelOptions())["kernels_layer"][1]) == ["l1", "l2"]


def test_kernel_unknown_layer_and_default_schedule():
    ctx = context(16)
    with pytest.raises(UserError, match="unknown layer.*'l9'.*l1, l2"):
        kernels_probe(ctx, KernelOptions(layers=["l9"]))
    assert KernelOptions().resolve(100) == [0, 100]  # default: init and end
    assert KernelOptions(every=50).resolve(100) == [0, 50, 100]
    assert KernelOptions(steps=[7]).resolve(100) == [7]  # no default added to a given schedule


def test_diverged_members_are_nan():
    ctx = context(16, seeds=3)
    ctx.alive = torch.tensor([True, False, True])
    _, k = kernels_probe(ctx, KernelOptions(points=8))["feature_kernel"]
    assert np.isnan(k[1]).all() and np.isfinite(k[[0, 2]]).all()
    out = preacts_probe(ctx, PreactOptions())
    assert np.isnan(out["preact_hist"][1][1]).all() and np.isfinite(out["preact_hist"][1][0]).all()


def test_kernels_converge_with_width_at_init():
    """Init kernels of a wide muP ReLU MLP approach a deterministic limit (paper Section 2)."""
    widths = [64, 256, 1024, 4096]
    means = []
    for w in widths:
        ctx = context(w, seeds=4, points=32)
        _, k = kernels_probe(ctx, KernelOptions(points=32))["feature_kernel"]
        means.append(k.mean(axis=0))  # seed-averaged (layer, M, M)
    dist = [
        np.linalg.norm(b - a, axis=(-2, -1)) / np.linalg.norm(b, axis=(-2, -1))
        for a, b in zip(means, means[1:])
    ]  # per layer, successive widths
    dist = np.array(dist)  # (pair, layer)
    # fluctuations are O(1/sqrt(width)): each 4x in width should about halve the distance
    assert (dist[1:] < 0.75 * dist[:-1]).all(), dist
    assert (dist[-1] < 0.08).all(), dist


# -- preactivation histograms ------------------------------------------------------------


def test_histogram_counts_edges_nan_inf():
    edges = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    v = torch.tensor([[-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, float("nan"), float("inf")]])
    hist, under, over, counted = histogram_counts(v, edges)
    assert hist.tolist() == [[2.0, 3.0]]  # [-1, 0) and [0, 1] (last bin closed)
    assert under.tolist() == [1.0] and over.tolist() == [2.0] and counted.tolist() == [8.0]
    finite = v[:, :7].numpy()
    np.testing.assert_array_equal(hist[0].numpy(), np.histogram(finite, edges.numpy())[0])


@pytest.mark.parametrize("width", [8, 40])
def test_preacts_match_numpy_and_sum_to_count(width):
    ctx = context(width, seeds=2, points=30)
    opts = PreactOptions(range=(-1.0, 1.0), bins=7, points=25)
    out = preacts_probe(ctx, opts)
    assert out["preact_hist"][0] == ("seed", "preacts_layer", "preacts_bin")
    assert out["preact_sample"][0] == ("seed", "preacts_layer", "preacts_point", "preacts_neuron")
    hist, under, over = (out[v][1] for v in ("preact_hist", "preact_underflow", "preact_overflow"))
    count = out["preact_count"][1]
    assert hist.shape == (2, 2, 7) and count.shape == (2, 2)
    np.testing.assert_array_equal(hist.sum(-1) + under + over, count)
    np.testing.assert_array_equal(count, 25 * width)
    edges = np.linspace(-1, 1, 8)
    taps = taps_of(ctx, 25)
    for li, layer in enumerate(("l1", "l2")):
        pre = taps[f"preact/{layer}"]  # (seed, point, width)
        for s in range(2):
            np.testing.assert_array_equal(hist[s, li], np.histogram(pre[s], edges)[0])
            assert under[s, li] == (pre[s] < -1).sum() and over[s, li] == (pre[s] > 1).sum()
        sample = out["preact_sample"][1][:, li]  # (seed, 8, 16)
        n = min(width, 16)
        np.testing.assert_array_equal(sample[:, :, :n], pre[:, :8, :n])
        assert np.isnan(sample[:, :, n:]).all()  # neurons beyond a narrow width


def test_preact_coords_are_fixed_by_options():
    opts = PreactOptions()
    coords = PROBES.get("preacts").coords(opts)
    np.testing.assert_array_equal(coords["preacts_edge"][1], np.linspace(-5, 5, 61))
    assert coords["preacts_bin"][1].shape == (60,)
    assert coords["preacts_edge"][0] == ("preacts_edge",)
    assert "preacts_layer" not in coords  # layer names are recorded at run time
    with pytest.raises(ValueError, match="lo < hi"):
        PreactOptions(range=(1.0, -1.0))
