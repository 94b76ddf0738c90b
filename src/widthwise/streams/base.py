"""What a data stream is: deterministic batches indexed by step, plus a fixed probe set."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Literal

import numpy as np

from widthwise.registry import Registry

PROBE_SET_KEY = 2**31 - 1  # rng key of the probe set; no training step reaches it


def rng_for(seed: int, *key: int) -> np.random.Generator:
    """A numpy generator that depends only on (seed, *key): order-free, platform-stable."""
    return np.random.default_rng([seed, *key])


class Stream(ABC):
    """An online data distribution.

    ``batch(step, size)`` depends only on (data seed, step, size), so every width and
    every seed sees identical batches in the same order (paper Appendix F).
    ``probe_set(n)`` is a fixed held-out sample of the same distribution.
    Arrays: ``x: (n, *in_shape)`` float32 (or int64 token ids for text); ``y: (n,
    out_dim)`` float32 for ``mse``, or int64 labels for ``cross_entropy``: ``(n,)``
    classes or ``(n, position)`` tokens (-100 = no loss at that position).
    """

    in_shape: tuple[int, ...]
    out_dim: int
    loss: Literal["mse", "cross_entropy"]

    def __init__(self, seed: int) -> None:
        self.seed = seed

    @abstractmethod
    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` examples from ``rng``."""

    def batch(self, step: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The training batch of ``step``: ``x (size, *in_shape)``, ``y``; a function of
        (stream seed, step) only."""
        return self.sample(rng_for(self.seed, step), size)

    def probe_set(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The fixed held-out probe (test) set of ``n`` examples, never trained on."""
        return self.sample(rng_for(self.seed, PROBE_SET_KEY), n)

    def describe(self) -> dict[str, object]:
        """Facts about the stream recorded with the study (e.g. a teacher's hash)."""
        return {}


StreamBuilder = Callable[..., Stream]
STREAMS: Registry[StreamBuilder] = Registry("stream")
