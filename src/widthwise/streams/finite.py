"""Streams over a finite labelled image dataset (Fashion-MNIST, CIFAR-10, CIFAR-5m, folders).

A loader turns its files into an :class:`ImageData` (a train and a test split of
uint8 images ``(N, C, H, W)`` and int64 labels); :class:`FiniteImageStream` makes it
a deterministic stream:

- ``batch(step, size)``: online (``sampling: random``) draws ``size`` training
  examples with replacement from ``rng_for(seed, step)``; offline
  (``sampling: epochs``) takes them from the epoch order of
  :mod:`widthwise.streams.offline`. Augmentation then draws from the same
  generator. Both depend only on (data seed, step, size).
- ``probe_set(n)``: the first n of a fixed permutation of the **test** split
  (``rng_for(seed, PROBE_SET_KEY)``), never augmented: held out, disjoint from
  every training example.
- ``train_eval_set(n)``: a fixed sample of the training subset, with the labels it
  is trained on (noise included), never augmented (the ``train_eval`` probe).

Normalization, per channel c: ``x = (pixel / 255 − mean_c) / std_c`` with mean and
std measured on up to 10,000 training images at evenly spaced indices (recorded
by ``describe()``); ``normalize: false`` gives ``pixel / 255`` in [0, 1]. Padding
added by a random crop is pixel 0 before normalization (PyTorch's behaviour).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from widthwise.errors import UserError
from widthwise.streams.augment import AugmentName, augment, require_torchvision
from widthwise.streams.base import PROBE_SET_KEY, Stream, rng_for
from widthwise.streams.offline import (
    EpochOrder,
    OfflineOptions,
    holdout_indices,
    noisy_labels,
    train_eval_indices,
    training_subset,
)

STATS_EXAMPLES = 10_000


# -- rows: uniform random access to in-memory, memory-mapped and multi-part arrays -----


class Rows(ABC):
    """Random access to the rows of an array that may live on disk or in several parts."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def __len__(self) -> int:
        return self.shape[0]

    @abstractmethod
    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (any order, repeats allowed) as an in-memory array."""


class ArrayRows(Rows):
    """An in-memory array."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype

    def take(self, idx: np.ndarray) -> np.ndarray:
        return self.array[idx]


class MemmapRows(Rows):
    """A read-only memory-mapped ``.npy`` file; pickles as its path, not its contents."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        self.shape = self.array.shape
        self.dtype = self.array.dtype

    def take(self, idx: np.ndarray) -> np.ndarray:
        return np.asarray(self.array[idx])

    def __reduce__(self) -> tuple[Any, ...]:
        return (MemmapRows, (self.path,))


class ConcatRows(Rows):
    """Parts stacked along the first axis without copying them."""

    def __init__(self, parts: Sequence[Rows]) -> None:
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])
        self.shape = (int(self.starts[-1]), *self.parts[0].shape[1:])
        self.dtype = self.parts[0].dtype

    def take(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        part = np.searchsorted(self.starts, idx, side="right") - 1
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        for k in np.unique(part):
            sel = part == k
            out[sel] = self.parts[k].take(idx[sel] - self.starts[k])
        return out


class SubRows(Rows):
    """The rows ``index`` of another :class:`Rows`."""

    def __init__(self, base: Rows, index: np.ndarray) -> None:
        self.base = base
        self.index = np.asarray(index, dtype=np.int64)
        self.shape = (len(self.index), *base.shape[1:])
        self.dtype = base.dtype

    def take(self, idx: np.ndarray) -> np.ndarray:
        return self.base.take(self.index[idx])


# -- datasets -------------------------------------------------------------------------


@dataclass
class Split:
    """Images ``x: (N, C, H, W)`` uint8 and labels ``y: (N,)`` int64."""

    x: Rows
    y: np.ndarray

    def subset(self, index: np.ndarray) -> Split:
        return Split(SubRows(self.x, index), self.y[index])


@dataclass
class ImageData:
    """What a loader returns: the two splits, the class count and facts to record."""

    train: Split
    test: Split
    classes: int
    source: str
    facts: dict[str, Any] = field(default_factory=dict)


def split_off_holdout(stream: str, split: Split, holdout: int | None) -> tuple[Split, Split]:
    """(train, test) from a source without a test split: a fixed random held-out set.

    ``holdout`` examples (default: 10% of the data, at most 10,000) are held out,
    the same ones for every data seed.
    """
    total = len(split.y)
    h = min(10_000, total // 10) if holdout is None else holdout
    if not 0 < h < total:
        raise UserError(
            f"{stream}: holdout {h} must be between 1 and {total - 1} "
            f"(the source has {total} examples and no test split)"
        )
    train, test = holdout_indices(total, h)
    return split.subset(train), split.subset(test)


def check_labels(stream: str, path: Path | str, labels: np.ndarray, classes: int) -> np.ndarray:
    """int64 labels in [0, classes), or a UserError naming the file."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(
            f"{stream}: {path} holds labels of shape {labels.shape} and dtype {labels.dtype}; "
            "expected a 1-d array of integer class labels"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise UserError(
            f"{stream}: {path} has labels in [{labels.min()}, {labels.max()}]; "
            f"expected classes 0..{classes - 1}"
        )
    return labels.astype(np.int64)


# -- the stream -----------------------------------------------------------------------


class ImageOptions(OfflineOptions):
    """Options shared by the file-backed image streams."""

    augment: AugmentName = Field(
        "none", description="none, crop_flip (A.2.1) or autoaugment (A.2.3, needs [vision])"
    )
    crop_padding: int = Field(
        4, ge=0, le=1024, description="zero padding of the random crop (pixels; ≤ 1024)"
    )
    normalize: bool = Field(True, description="standardize each channel (else pixel / 255)")


def channel_stats(x: Rows) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of pixel/255 over up to 10,000 evenly spaced rows."""
    n = len(x)
    idx = np.unique(np.linspace(0, n - 1, min(n, STATS_EXAMPLES)).round().astype(np.int64))
    sample = x.take(idx).astype(np.float64) / 255.0  # (k, C, H, W)
    mean = sample.mean(axis=(0, 2, 3))
    std = sample.std(axis=(0, 2, 3))
    return mean, np.where(std > 0, std, 1.0)


class FiniteImageStream(Stream):
    """Classification on a finite image dataset; see the module docstring."""

    loss = "cross_entropy"

    def __init__(self, seed: int, data: ImageData, options: ImageOptions, name: str) -> None:
        super().__init__(seed)
        self.name = name
        self.data = data
        self.options = options
        self.in_shape = tuple(int(s) for s in data.train.x.shape[1:])
        self.out_dim = data.classes
        if options.augment == "autoaugment":
            require_torchvision()  # fail before training starts
        total = len(data.train.y)
        if options.train_size is not None and options.train_size > total:
            raise UserError(
                f"{name}: train_size {options.train_size} exceeds the {total} training "
                f"examples of {data.source}"
            )
        subset = training_subset(seed, total, options.train_size)
        self.train = data.train if subset is None else data.train.subset(subset)
        self.labels, self.flipped = noisy_labels(
            seed, self.train.y, data.classes, options.label_noise
        )
        self.n_train = len(self.labels)
        self.order = EpochOrder(seed, self.n_train) if options.uses_epochs() else None
        if options.normalize:
            self.mean, self.std = channel_stats(data.train.x)
        else:
            c = self.in_shape[0]
            self.mean, self.std = np.zeros(c), np.ones(c)

    # -- arrays ---------------------------------------------------------------------
    def _pixels(self, images: np.ndarray) -> np.ndarray:
        x = images.astype(np.float32) / np.float32(255.0)
        m = self.mean.astype(np.float32)[None, :, None, None]
        s = self.std.astype(np.float32)[None, :, None, None]
        return (x - m) / s

    def _training_examples(
        self, idx: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        images = augment(
            self.train.x.take(idx), self.options.augment, rng, self.options.crop_padding
        )
        return self._pixels(images), self.labels[idx]

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` training examples drawn with replacement from ``rng``, augmented from ``rng``."""
        idx = rng.integers(0, self.n_train, size=n)
        return self._training_examples(idx, rng)

    def batch(self, step: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        rng = rng_for(self.seed, step)
        if self.order is None:
            return self.sample(rng, size)
        return self._training_examples(self.order.indices(step, size), rng)

    def probe_set(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n`` of a fixed permutation of the held-out test split."""
        test = self.data.test
        if n > len(test.y):
            raise UserError(
                f"data.probe_points: {n} exceeds the {len(test.y)} held-out test examples "
                f"of {self.name} ({self.data.source})"
            )
        idx = rng_for(self.seed, PROBE_SET_KEY).permutation(len(test.y))[:n]
        return self._pixels(test.x.take(idx)), test.y[idx].astype(np.int64)

    def train_eval_set(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """A fixed sample of ``min(n, N)`` training examples, labels as trained (noise kept)."""
        idx = train_eval_indices(self.seed, self.n_train, n)
        return self._pixels(self.train.x.take(idx)), self.labels[idx]

    def describe(self) -> dict[str, object]:
        stats_idx = np.unique(
            np.linspace(0, len(self.data.train.y) - 1, 64).round().astype(np.int64)
        )
        h = hashlib.sha256(self.data.train.y.tobytes() + self.data.test.y.tobytes())
        h.update(self.data.train.x.take(stats_idx).tobytes())
        return {
            "stream": self.name,
            "source": self.data.source,
            "train_examples": len(self.data.train.y),
            "test_examples": len(self.data.test.y),
            "train_size": self.n_train,
            "sampling": "epochs" if self.order is not None else "random",
            "label_noise": self.options.label_noise,
            "noisy_labels": len(self.flipped),
            "augment": self.options.augment,
            "channel_mean": [round(float(v), 6) for v in self.mean],
            "channel_std": [round(float(v), 6) for v in self.std],
            "fingerprint": h.hexdigest()[:16],
            **self.data.facts,
        }


__all__ = [
    "ArrayRows",
    "ConcatRows",
    "FiniteImageStream",
    "ImageData",
    "ImageOptions",
    "MemmapRows",
    "Rows",
    "Split",
    "SubRows",
    "channel_stats",
    "check_labels",
    "split_off_holdout",
]
