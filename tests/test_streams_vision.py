"""Procedural vision streams: teacher_images (a fixed random conv teacher) and mnist1d."""

from __future__ import annotations

import numpy as np
import pytest

from widthwise.streams import STREAMS
from widthwise.streams.vision import mnist1d_templates, structured_images


def build(name: str, seed: int = 0, **options):
    return STREAMS.get(name)(seed, STREAMS.validate_options(name, options))


SMALL = {"teacher_images": {"size": 8, "teacher_channels": 12}, "mnist1d": {}}


@pytest.mark.parametrize("name", ["teacher_images", "mnist1d"])
def test_batches_depend_only_on_seed_and_step(name: str) -> None:
    a, b = build(name, 3, **SMALL[name]), build(name, 3, **SMALL[name])
    fwd = [a.batch(t, 24) for t in range(4)]
    bwd = [b.batch(t, 24) for t in (3, 2, 1, 0)][::-1]
    for (x1, y1), (x2, y2) in zip(fwd, bwd):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    a.probe_set(50)
    np.testing.assert_array_equal(a.batch(1, 24)[0], fwd[1][0])
    assert not np.array_equal(fwd[0][0], fwd[1][0])
    assert not np.array_equal(build(name, 4, **SMALL[name]).batch(0, 24)[0], fwd[0][0])
    np.testing.assert_array_equal(a.probe_set(50)[0], b.probe_set(50)[0])
    assert a.describe() == b.describe()


def test_teacher_images_shapes_balance_and_labels() -> None:
    s = build("teacher_images", 0, size=12, channels=2, classes=4, teacher_channels=8)
    assert s.in_shape == (2, 12, 12) and s.out_dim == 4 and s.loss == "cross_entropy"
    x, y = s.batch(0, 2000)
    assert x.shape == (2000, 2, 12, 12) and x.dtype == np.float32 and y.dtype == np.int64
    # standardized per image
    np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(1, 2, 3)), 1, rtol=1e-4)
    freq = np.bincount(y, minlength=4) / len(y)
    assert freq.min() > 0.15, freq  # whitened teacher: roughly balanced classes
    # the label is the teacher's argmax (x rounded to float32 after labelling: near-ties)
    assert (s.teacher_logits(x.astype(np.float64)).argmax(1) == y).mean() > 0.99
    # another data seed: another teacher, other labels on the same images
    other = build("teacher_images", 1, size=12, channels=2, classes=4, teacher_channels=8)
    assert other.describe()["teacher_sha256"] != s.describe()["teacher_sha256"]
    assert (other.teacher_logits(x.astype(np.float64)).argmax(1) != y).mean() > 0.3


def test_teacher_labels_depend_on_image_structure() -> None:
    """A label is a function of the image: the teacher is not a hash of the noise."""
    s = build("teacher_images", 0, size=16, classes=3)
    x = structured_images(np.random.default_rng(0), 400, 3, 16)
    y = s.teacher_logits(x).argmax(1)
    shifted = np.roll(x, 1, axis=3)  # a one-pixel shift keeps most labels
    assert (s.teacher_logits(shifted).argmax(1) == y).mean() > 0.7


def test_mnist1d_shapes_and_standardization() -> None:
    s = build("mnist1d", 0)
    assert s.in_shape == (40,) and s.out_dim == 10
    x, y = s.batch(0, 4000)
    assert x.shape == (4000, 40) and x.dtype == np.float32 and y.dtype == np.int64
    assert abs(x.mean()) < 0.05 and x.std() == pytest.approx(1.0, rel=0.05)
    assert np.bincount(y, minlength=10).min() > 300
    ch = build("mnist1d", 0, shape="channel")
    assert ch.in_shape == (1, 40) and ch.batch(0, 8)[0].shape == (8, 1, 40)
    np.testing.assert_array_equal(ch.batch(0, 8)[0][:, 0], s.batch(0, 8)[0])


def test_mnist1d_without_noise_is_the_dilated_template() -> None:
    """No noise, scale, shear or shift: every example of a class is the same curve, its
    template padded with 36 zeros (48 points: the dilation onto 12 + max padding points is
    the identity here), then resampled to 40."""
    quiet = {"scale_coeff": 0, "max_translation": 1, "corr_noise": 0, "iid_noise": 0, "shear": 0}
    s = build("mnist1d", 0, padding=(36, 36), **quiet)
    x, y = s.batch(0, 300)
    raw = x * s.std + s.mean
    for c in range(10):
        rows = raw[y == c]
        assert len(rows) > 5
        np.testing.assert_allclose(rows, rows[0][None].repeat(len(rows), 0), atol=1e-5)
        padded = np.concatenate([mnist1d_templates()[c], np.zeros(36)])  # 48 points
        want = np.interp(np.linspace(0, 47, 40), np.arange(48), padded)
        np.testing.assert_allclose(rows[0], want, atol=1e-5)
    means = np.stack([raw[y == c][0] for c in range(10)])
    assert len({row.tobytes() for row in means}) == 10  # the classes differ


def test_mnist1d_dilation_uses_the_longest_padding() -> None:
    """Default padding [36, 60]: a template padded with p zeros is stretched onto 72 points."""
    quiet = {"scale_coeff": 0, "max_translation": 1, "corr_noise": 0, "iid_noise": 0, "shear": 0}
    s = build("mnist1d", 0, padding=(50, 50), **quiet)
    x, y = s.batch(0, 50)
    raw = x * s.std + s.mean
    padded = np.concatenate([mnist1d_templates()[y[0]], np.zeros(50)])  # 62 points
    want = np.interp(np.linspace(0, 61, 40), np.arange(62), padded)
    np.testing.assert_allclose(raw[0], want, atol=1e-5)
    wide = build("mnist1d", 0, padding=(10, 50), **quiet).batch(0, 400)
    assert len({r.tobytes() for r in wide[0][wide[1] == 0]}) > 10  # p varies per example


def test_mnist1d_is_learnable_by_nearest_class_mean() -> None:
    """Labels carry signal: a nearest-class-mean classifier beats chance on fresh data."""
    s = build("mnist1d", 1)
    x, y = s.batch(0, 4000)
    means = np.stack([x[y == c].mean(0) for c in range(10)])
    xt, yt = s.batch(1, 2000)
    pred = ((xt[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == yt).mean() > 0.2  # chance is 0.1
