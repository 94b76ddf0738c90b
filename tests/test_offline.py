"""Offline mode (paper Section 3.2): training subsets, epochs, label noise, held-out probes,
and the ``train_eval`` probe that records the loss on the training set."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_spec_dict

import widthwise
import widthwise.probes.train_eval  # noqa: F401  (registers the probe)
from widthwise.errors import UserError
from widthwise.losses import per_member_error, per_member_loss
from widthwise.probes import PROBES, ProbeContext
from widthwise.spec import validate_spec
from widthwise.streams import STREAMS
from widthwise.streams.finite import (
    ArrayRows,
    FiniteImageStream,
    ImageData,
    ImageOptions,
    Split,
    split_off_holdout,
)
from widthwise.streams.offline import EpochOrder, noisy_labels, training_subset
from widthwise.trainer import EnsembleTrainer


def numbered_images(n: int, offset: int = 0) -> np.ndarray:
    """(n, 1, 4, 4) uint8 images whose first two pixels spell the example's id."""
    ids = np.arange(offset, offset + n)
    x = np.zeros((n, 1, 4, 4), dtype=np.uint8)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = ids // 256, ids % 256
    x[:, 0, 1:] = 200  # content away from the id pixels
    return x


def ids_of(x: np.ndarray) -> np.ndarray:
    """Example ids of unnormalized float images (normalize: false gives pixel / 255)."""
    px = np.rint(x[:, 0, 0, :2] * 255).astype(np.int64)
    return px[:, 0] * 256 + px[:, 1]


def tiny_data(n_train: int = 300, n_test: int = 50, classes: int = 5) -> ImageData:
    train = Split(ArrayRows(numbered_images(n_train)), np.arange(n_train) % classes)
    test = Split(ArrayRows(numbered_images(n_test, 10_000)), np.arange(n_test) % classes)
    return ImageData(train, test, classes, "synthetic")


def stream(seed: int = 0, data: ImageData | None = None, **options) -> FiniteImageStream:
    opts = ImageOptions(normalize=False, **options)
    return FiniteImageStream(seed, data or tiny_data(), opts, "synthetic")


# -- pure mechanics ---------------------------------------------------------------


@pytest.mark.parametrize(("n", "size"), [(10, 3), (12, 4), (7, 20), (100, 32)])
def test_epochs_visit_every_example_once(n: int, size: int) -> None:
    order = EpochOrder(seed=3, n=n)
    steps = (4 * n) // size + 2
    seq = np.concatenate([order.indices(t, size) for t in range(steps)])
    for e in range(3):  # complete epochs covered by the batches
        assert sorted(seq[e * n : (e + 1) * n].tolist()) == list(range(n)), e
    # the epochs' orders differ, and a batch does not depend on which batches came before
    assert not np.array_equal(order.permutation(0), order.permutation(1))
    fresh = EpochOrder(seed=3, n=n)
    np.testing.assert_array_equal(fresh.indices(steps - 1, size), order.indices(steps - 1, size))


def test_batch_straddling_two_epochs_takes_tail_then_head() -> None:
    order = EpochOrder(seed=0, n=10)
    b = order.indices(2, 4)  # positions 8, 9 (epoch 0) and 10, 11 (epoch 1)
    np.testing.assert_array_equal(b[:2], order.permutation(0)[8:])
    np.testing.assert_array_equal(b[2:], order.permutation(1)[:2])


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_label_noise_fraction_and_stability(p: float) -> None:
    labels = np.arange(1000) % 10
    noisy, flipped = noisy_labels(4, labels, 10, p)
    changed = np.flatnonzero(noisy != labels)
    assert len(changed) == round(p * 1000)  # a replaced label is always another class
    np.testing.assert_array_equal(changed, flipped)
    assert noisy.min() >= 0 and noisy.max() < 10
    again, _ = noisy_labels(4, labels, 10, p)
    np.testing.assert_array_equal(noisy, again)  # fixed per example
    if 0 < p < 1:
        other, _ = noisy_labels(5, labels, 10, p)
        assert not np.array_equal(noisy, other)
    if p == 1.0:  # replacement classes are spread over the other classes
        shift = (noisy - labels) % 10
        assert set(np.unique(shift)) == set(range(1, 10))


def test_training_subsets_are_nested_and_seeded() -> None:
    small, large = training_subset(1, 1000, 100), training_subset(1, 1000, 400)
    assert len(np.unique(small)) == 100 and set(small) <= set(large)
    assert training_subset(1, 1000, None) is None
    assert not np.array_equal(small, training_subset(2, 1000, 100))


# -- the stream -------------------------------------------------------------------


@pytest.mark.parametrize("size", [7, 30, 64])
def test_offline_stream_epochs_visit_the_subset_once_each(size: int) -> None:
    s = stream(seed=2, train_size=60)
    assert s.order is not None  # train_size implies epochs (sampling: auto)
    subset = set(ids_of(s.train_eval_set(10_000)[0]).tolist())
    assert len(subset) == 60
    seen = np.concatenate([ids_of(s.batch(t, size)[0]) for t in range(3 * 60 // size + 1)])
    for e in range(3):
        assert sorted(seen[e * 60 : (e + 1) * 60].tolist()) == sorted(subset)


def test_offline_batches_are_deterministic_in_any_order() -> None:
    a, b = (
        stream(seed=5, train_size=50, augment="crop_flip"),
        stream(5, train_size=50, augment="crop_flip"),
    )
    fwd = [a.batch(t, 16) for t in range(8)]
    bwd = [b.batch(t, 16) for t in reversed(range(8))][::-1]
    for (x1, y1), (x2, y2) in zip(fwd, bwd):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(fwd[0][0], fwd[1][0])


def test_labels_follow_the_examples_and_noise_is_fixed() -> None:
    clean = stream(seed=1, train_size=200)
    noisy = stream(seed=1, train_size=200, label_noise=0.5)
    x, y = noisy.batch(0, 200)
    true = ids_of(x) % 5  # tiny_data's labels: id mod classes
    assert (y != true).mean() == pytest.approx(0.5, abs=0.15)  # one epoch: every example once
    assert len(noisy.flipped) == 100 and noisy.describe()["noisy_labels"] == 100
    np.testing.assert_array_equal(clean.batch(0, 200)[1], true)
    # the same example carries the same (noisy) label in every epoch
    x2, y2 = noisy.batch(1, 200)
    by_id = dict(zip(ids_of(x).tolist(), y.tolist()))
    assert all(by_id[i] == lab for i, lab in zip(ids_of(x2).tolist(), y2.tolist()))
    # train_eval_set carries the labels as trained; the probe set is clean
    tx, ty = noisy.train_eval_set(200)
    assert all(by_id[i] == lab for i, lab in zip(ids_of(tx).tolist(), ty.tolist()))
    px, py = noisy.probe_set(50)
    np.testing.assert_array_equal(py, ids_of(px) % 5)


def test_probe_set_is_held_out() -> None:
    s = stream(seed=0, train_size=100)
    train_ids = set(ids_of(s.train_eval_set(10_000)[0]).tolist())
    probe_ids = set(ids_of(s.probe_set(50)[0]).tolist())
    assert len(probe_ids) == 50 and not train_ids & probe_ids
    with pytest.raises(UserError, match="probe_points: 51 exceeds the 50"):
        s.probe_set(51)
    # without a test split a fixed holdout is split off, the same for every data seed
    base = Split(ArrayRows(numbered_images(400)), np.arange(400) % 5)
    tr, te = split_off_holdout("synthetic", base, 40)
    tr_ids, te_ids = (
        set(ids_of(tr.x.take(np.arange(360)) / 255.0).tolist()),
        set(ids_of(te.x.take(np.arange(40)) / 255.0).tolist()),
    )
    assert len(te_ids) == 40 and not tr_ids & te_ids and len(tr_ids) == 360
    data = ImageData(tr, te, 5, "synthetic")
    for seed in (0, 1):
        s = stream(seed, data, train_size=100)
        assert not set(ids_of(s.train_eval_set(500)[0]).tolist()) & te_ids


def test_random_sampling_draws_with_replacement_from_the_subset() -> None:
    s = stream(seed=0, train_size=30, sampling="random")
    assert s.order is None
    subset = set(ids_of(s.train_eval_set(30)[0]).tolist())
    ids = ids_of(s.batch(0, 300)[0])
    assert set(ids.tolist()) <= subset and len(set(ids.tolist())) < 300


def test_bad_train_size_is_a_user_error() -> None:
    with pytest.raises(UserError, match="train_size 301 exceeds the 300 training examples"):
        stream(train_size=301)


# -- the train_eval probe -----------------------------------------------------------


def write_idx(path: Path, a: np.ndarray) -> None:
    path.write_bytes(bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes())


def tiny_offline_spec(tmp_path: Path, **overrides):
    """A study on tiny Fashion-MNIST-format files: 40 of 120 examples, 25% noisy labels."""
    d = tmp_path / "fm"
    d.mkdir()
    for part, n in (("train", 120), ("t10k", 30)):
        x = np.random.default_rng(n).integers(0, 256, (n, 6, 6), dtype=np.uint8)
        write_idx(d / f"{part}-images-idx3-ubyte", x)
        write_idx(d / f"{part}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    raw = tiny_spec_dict(
        tmp_path / "run",
        data={
            "stream": "fashion_mnist",
            "options": {"path": str(d), "train_size": 40, "label_noise": 0.25},
            "probe_points": 20,
        },
        steps=12,
        batch_size=8,
        probes={
            "train_loss": {"every": 1},
            "test": {"every": 4},
            "train_eval": {"every": 4, "points": 30},
        },
    )
    raw.update(overrides)
    return validate_spec(raw)


def test_train_eval_probe_equals_the_loss_on_the_training_sample(tmp_path) -> None:
    spec = tiny_offline_spec(tmp_path)
    s = STREAMS.get("fashion_mnist")(0, spec.stream_options())
    trainer = EnsembleTrainer(spec, 16, s, torch.device("cpu"))
    for _ in range(3):
        trainer.train_step()
    px, py = trainer.to_tensors(*s.probe_set(20))
    ctx = ProbeContext(3, trainer.ensemble, trainer.params, px, py, trainer.alive, s, 0.1)
    opts = PROBES.validate_options("train_eval", {"every": 1, "points": 30, "chunk": 7})
    out = PROBES.get("train_eval").fn(ctx, opts)
    x, y = trainer.to_tensors(*s.train_eval_set(30))
    with torch.no_grad():
        logits = trainer.ensemble.forward(trainer.params, x)
    np.testing.assert_allclose(
        out["train_eval_loss"][1], per_member_loss("cross_entropy", logits, y).numpy(), rtol=1e-5
    )
    np.testing.assert_allclose(
        out["train_eval_error"][1], per_member_error(logits, y).numpy(), rtol=1e-5
    )
    assert out["train_eval_loss"][0] == ("seed",)


def test_train_eval_probe_needs_a_finite_stream(tmp_path) -> None:
    spec = validate_spec(tiny_spec_dict(tmp_path / "g"))
    s = STREAMS.get("gegenbauer")(0, spec.stream_options())
    trainer = EnsembleTrainer(spec, 16, s, torch.device("cpu"))
    px, py = trainer.to_tensors(*s.probe_set(8))
    ctx = ProbeContext(0, trainer.ensemble, trainer.params, px, py, trainer.alive, s, 0.1)
    opts = PROBES.validate_options("train_eval", {"every": 1})
    with pytest.raises(UserError, match="no finite training set") as err:
        PROBES.get("train_eval").fn(ctx, opts)
    assert "\n" not in str(err.value)


def test_offline_study_records_train_and_test_loss(tmp_path) -> None:
    ds = widthwise.open_study(widthwise.run(tiny_offline_spec(tmp_path)))
    loss = ds["train_eval_loss"]
    assert loss.dims == ("width", "seed", "train_eval_step")
    assert list(ds["train_eval_step"].values) == [0, 4, 8, 12]
    assert np.isfinite(loss.values).all() and np.isfinite(ds["train_eval_error"].values).all()
    assert np.isfinite(ds["test_loss"].values).all()
