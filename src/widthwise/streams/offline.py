"""Offline mode (paper Section 3.2, Fig. 8): a finite training set seen for many epochs.

The paper contrasts online training (every batch fresh) with offline training on
CIFAR-200k / CIFAR-50k subsets of CIFAR-5m, the latter with 50% of the labels
replaced, where over-fitting and double descent break width consistency. This
module holds the mechanics, all pure functions of the data seed:

- the training subset: the first N entries of a fixed permutation of the training
  split (``rng_for(seed, SUBSET_KEY)``), kept sorted; subsets of one seed are nested
  (the subset of size N is contained in that of size N' > N);
- label noise: exactly ``round(p·N)`` examples of the subset, chosen once from
  ``rng_for(seed, NOISE_KEY)``, get a uniformly random *other* class;
- epochs: epoch e visits the subset in the order ``rng_for(seed, EPOCH_KEY, e)``;
  batch t of size B holds positions ``t·B … t·B + B − 1`` of the endless sequence
  epoch 0, epoch 1, …, so a batch that straddles two epochs takes the tail of one
  and the head of the next, and each epoch visits every example exactly once;
- the train-eval subset: a fixed sample of the training subset
  (``rng_for(seed, TRAIN_EVAL_KEY)``) on which the ``train_eval`` probe measures the
  loss on the training set itself (noisy labels included).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from widthwise.streams.base import rng_for

SUBSET_KEY = 2**31 - 10
NOISE_KEY = 2**31 - 11
EPOCH_KEY = 2**31 - 12
TRAIN_EVAL_KEY = 2**31 - 13
HOLDOUT_KEY = 2**31 - 14


class OfflineOptions(BaseModel):
    """Options every finite (file-backed) stream shares: subset, order, label noise."""

    model_config = ConfigDict(extra="forbid")

    train_size: int | None = Field(
        None, gt=0, description="offline mode: train on a fixed subset of N examples (default: all)"
    )
    sampling: Literal["auto", "random", "epochs"] = Field(
        "auto",
        description=(
            "random: every batch drawn with replacement; epochs: shuffled passes, a fixed "
            "order per epoch; auto: epochs when train_size is set, else random"
        ),
    )
    label_noise: float = Field(
        0.0, ge=0.0, le=1.0, description="fraction of training labels replaced by another class"
    )

    def uses_epochs(self) -> bool:
        if self.sampling == "auto":
            return self.train_size is not None
        return self.sampling == "epochs"


def training_subset(seed: int, total: int, train_size: int | None) -> np.ndarray | None:
    """Sorted indices of the N-example training subset; None means all ``total`` examples."""
    if train_size is None or train_size >= total:
        return None
    perm = rng_for(seed, SUBSET_KEY).permutation(total)
    return np.sort(perm[:train_size])


def noisy_labels(
    seed: int, labels: np.ndarray, classes: int, fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Labels with ``round(fraction·N)`` entries replaced by a random other class.

    Returns ``(labels, flipped)`` with ``flipped`` the sorted indices that changed.
    Drawn once from the data seed, so the noise is fixed per example.
    """
    n = len(labels)
    count = int(round(fraction * n))
    out = np.array(labels, dtype=np.int64)
    if count == 0 or classes < 2:
        return out, np.zeros(0, dtype=np.int64)
    rng = rng_for(seed, NOISE_KEY)
    flipped = np.sort(rng.choice(n, size=count, replace=False))
    out[flipped] = (out[flipped] + rng.integers(1, classes, size=count)) % classes
    return out, flipped


class EpochOrder:
    """Positions of batches in the endless sequence of shuffled epochs over ``n`` examples."""

    def __init__(self, seed: int, n: int, cached_epochs: int = 2) -> None:
        self.seed = seed
        self.n = n
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached_epochs = cached_epochs

    def permutation(self, epoch: int) -> np.ndarray:
        """The visiting order of epoch ``epoch``: a permutation of range(n)."""
        perm = self._cache.get(epoch)
        if perm is None:
            perm = rng_for(self.seed, EPOCH_KEY, epoch).permutation(self.n)
            self._cache[epoch] = perm
            while len(self._cache) > self._cached_epochs:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(epoch)
        return perm

    def indices(self, step: int, size: int) -> np.ndarray:
        """Example indices of batch ``step`` of ``size``: positions step·size … of the sequence."""
        pos = step * size + np.arange(size, dtype=np.int64)
        epoch, within = np.divmod(pos, self.n)
        out = np.empty(size, dtype=np.int64)
        for e in np.unique(epoch):
            sel = epoch == e
            out[sel] = self.permutation(int(e))[within[sel]]
        return out


def train_eval_indices(seed: int, n_train: int, points: int) -> np.ndarray:
    """A fixed sample (without replacement) of ``min(points, n_train)`` training indices."""
    k = min(points, n_train)
    return rng_for(seed, TRAIN_EVAL_KEY).permutation(n_train)[:k]


def holdout_indices(total: int, holdout: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices when a source has no test split: a fixed random ``holdout``.

    The split is the same for every data seed (``rng_for(0, HOLDOUT_KEY)``), so studies
    with different data seeds are tested on the same held-out examples.
    """
    perm = rng_for(0, HOLDOUT_KEY).permutation(total)
    return np.sort(perm[holdout:]), np.sort(perm[:holdout])


__all__ = [
    "EpochOrder",
    "OfflineOptions",
    "holdout_indices",
    "noisy_labels",
    "train_eval_indices",
    "training_subset",
]
