"""Online data streams: the Gegenbauer target's normalization, determinism in
(data seed, step), the fixed probe set, and the teacher classification stream."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.special import eval_gegenbauer

from widthwise.streams import STREAMS, rng_for
from widthwise.streams.gegenbauer import GegenbauerStream, gegenbauer_norm2

pytestmark = pytest.mark.quick


def gegenbauer(seed: int = 0, **options) -> GegenbauerStream:
    reg = STREAMS
    return reg.get("gegenbauer")(seed, reg.validate_options("gegenbauer", options))


def teacher(seed: int = 0, **options):
    return STREAMS.get("teacher")(seed, STREAMS.validate_options("teacher", options))


# -- Gegenbauer ---------------------------------------------------------------


@pytest.mark.parametrize("dim", [3, 4, 5, 8, 16, 64])
@pytest.mark.parametrize("degree", [1, 2, 3, 4, 6])
def test_gegenbauer_norm2_matches_quadrature(dim: int, degree: int) -> None:
    """E[C_k^α(t)²] for t = β·z has density ∝ (1 - t²)^(α - 1/2) on [-1, 1]."""
    a = (dim - 2) / 2

    def weight(t: float) -> float:
        return (1 - t * t) ** (a - 0.5)

    num = quad(lambda t: eval_gegenbauer(degree, a, t) ** 2 * weight(t), -1, 1, limit=200)[0]
    den = quad(weight, -1, 1, limit=200)[0]
    assert gegenbauer_norm2(degree, dim) == pytest.approx(num / den, rel=1e-7)


@pytest.mark.parametrize("degree", [1, 2, 3, 5])
def test_gegenbauer_norm2_closed_form_in_3d(degree: int) -> None:
    """D = 3: β·z is uniform on [-1, 1] (Archimedes) and C_k^{1/2} = P_k: E = 1/(2k+1)."""
    assert gegenbauer_norm2(degree, 3) == pytest.approx(1 / (2 * degree + 1), rel=1e-12)


@pytest.mark.parametrize(("dim", "degree"), [(3, 1), (3, 4), (8, 3), (16, 2)])
def test_gegenbauer_targets_have_unit_mean_square(dim: int, degree: int) -> None:
    stream = gegenbauer(0, dim=dim, degree=degree)
    x, y = stream.sample(rng_for(0, 12345), 200_000)
    assert x.shape == (200_000, dim) and y.shape == (200_000, 1)
    assert x.dtype == np.float32 and y.dtype == np.float32
    y2 = y[:, 0].astype(np.float64) ** 2
    se = y2.std() / math.sqrt(y2.size)
    assert se < 0.02
    assert abs(y2.mean() - 1.0) < 5 * se, (y2.mean(), se)
    # odd degrees are odd functions of β·z: mean zero; every degree ≥ 1 is orthogonal to 1
    assert abs(y.astype(np.float64).mean()) < 5 * y.std() / math.sqrt(y.size)


@pytest.mark.parametrize("dim", [3, 16, 50])
def test_gegenbauer_inputs_on_sphere_of_radius_sqrt_dim(dim: int) -> None:
    x, _ = gegenbauer(1, dim=dim).batch(0, 20_000)
    np.testing.assert_allclose(
        np.linalg.norm(x.astype(np.float64), axis=1), math.sqrt(dim), rtol=1e-6
    )
    # uniform direction: E[x] = 0 and E[x xᵀ] = I (coordinates of order one)
    np.testing.assert_allclose(x.mean(0), 0.0, atol=0.05)
    np.testing.assert_allclose(np.cov(x.T, bias=True), np.eye(dim), atol=0.06)


def test_gegenbauer_target_is_the_polynomial_of_beta_dot_z() -> None:
    """Degree 2 by hand: C_2^α(t) = 2α(α+1)t² − α, α = (D−2)/2, t = β·x/√D."""
    dim = 10
    stream = gegenbauer(4, dim=dim, degree=2)
    assert np.linalg.norm(stream.beta) == pytest.approx(1.0)
    x, y = stream.batch(3, 1000)
    a = (dim - 2) / 2
    t = x.astype(np.float64) @ stream.beta / math.sqrt(dim)
    c2 = 2 * a * (a + 1) * t**2 - a
    np.testing.assert_allclose(
        y[:, 0], c2 / math.sqrt(gegenbauer_norm2(2, dim)), rtol=1e-5, atol=1e-5
    )


def test_gegenbauer_noise_adds_variance() -> None:
    clean = gegenbauer(0, dim=8, degree=2).batch(0, 50_000)[1]
    noisy = gegenbauer(0, dim=8, degree=2, noise=0.5).batch(0, 50_000)[1]
    assert (noisy - clean).var() == pytest.approx(0.25, rel=0.05)


# -- determinism, probe set ---------------------------------------------------


@pytest.mark.parametrize("name", ["gegenbauer", "teacher"])
def test_batch_depends_only_on_seed_and_step(name: str) -> None:
    make = gegenbauer if name == "gegenbauer" else teacher
    a, b = make(7), make(7)
    forward = [a.batch(t, 32) for t in range(5)]
    backward = [b.batch(t, 32) for t in reversed(range(5))][::-1]
    for (x1, y1), (x2, y2) in zip(forward, backward):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    # repeated calls, interleaved with probe-set draws, give the same batch
    a.probe_set(100)
    np.testing.assert_array_equal(a.batch(2, 32)[0], forward[2][0])
    # different steps and different data seeds give different batches
    assert not np.array_equal(forward[0][0], forward[1][0])
    assert not np.array_equal(make(8).batch(0, 32)[0], forward[0][0])


@pytest.mark.parametrize("name", ["gegenbauer", "teacher"])
def test_probe_set_is_fixed_and_not_a_training_batch(name: str) -> None:
    make = gegenbauer if name == "gegenbauer" else teacher
    stream = make(3)
    px, py = stream.probe_set(64)
    px2, py2 = make(3).probe_set(64)
    np.testing.assert_array_equal(px, px2)
    np.testing.assert_array_equal(py, py2)
    probe_rows = {row.tobytes() for row in px}
    for t in range(200):
        x, _ = stream.batch(t, 64)
        assert not probe_rows & {row.tobytes() for row in x}, t
    assert not np.array_equal(make(4).probe_set(64)[0], px)


# -- teacher ------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("classes", [2, 10])
def test_teacher_labels_in_range_and_balanced(seed: int, classes: int) -> None:
    stream = teacher(seed, dim=16, classes=classes)
    assert stream.loss == "cross_entropy" and stream.out_dim == classes
    x, y = stream.batch(0, 20_000)
    assert x.shape == (20_000, 16) and x.dtype == np.float32
    assert y.dtype == np.int64 and y.min() >= 0 and y.max() < classes
    freq = np.bincount(y, minlength=classes) / y.size
    # measured: 2 classes 0.50 ± 0.004; 10 classes between 0.04 and 0.19
    assert freq.min() > 0.3 / classes, freq
    assert freq.max() < 2.5 / classes, freq
    # labels are the teacher's argmax (x was rounded to float32 after labelling: near-ties)
    assert (y == stream.teacher_logits(x.astype(np.float64)).argmax(1)).mean() > 0.999


def test_teacher_is_deterministic_in_the_data_seed() -> None:
    a, b, c = teacher(5), teacher(5), teacher(6)
    assert a.describe() == b.describe() != c.describe()
    np.testing.assert_array_equal(a.w1, b.w1)
    x, y = a.batch(1, 500)
    np.testing.assert_array_equal(y, b.batch(1, 500)[1])
    # same inputs, another teacher: other labels
    assert (c.teacher_logits(x.astype(np.float64)).argmax(1) != y).mean() > 0.3
