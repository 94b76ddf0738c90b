"""Periodic token sequences: a procedural next-token task that attention must solve.

Each sequence repeats a block of ``period`` tokens drawn uniformly from ``vocab``
ids, to T + 1 tokens; ``x`` is the first T, ``y`` the last T (causal LM). From
position ``period − 1`` on, the next token is the one ``period − 1`` positions back,
so a causal transformer must learn to attend there: its attention maps then have a
width-independent target, learned in a few hundred steps at small widths (paper
Fig. 1d and 5e at laptop scale). The first ``period − 1`` predictions are chance,
which gives the loss a floor of (period − 1)/T · log(vocab) nats.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from widthwise.streams.base import STREAMS, Stream


class PeriodicOptions(BaseModel):
    """Options of the ``periodic_tokens`` stream."""

    model_config = ConfigDict(extra="forbid")

    seq_len: int = Field(16, ge=2, le=4096, description="tokens per sequence T (≤ 4096)")
    vocab: int = Field(16, ge=2, le=65536, description="token ids 0..vocab-1 (≤ 65536)")
    period: int = Field(4, ge=1, le=4096, description="length of the repeated block (< seq_len)")

    @model_validator(mode="after")
    def _period_below_length(self) -> PeriodicOptions:
        if self.period >= self.seq_len:
            raise ValueError(
                f"period must be < seq_len (got period {self.period}, seq_len {self.seq_len})"
            )
        return self


class PeriodicStream(Stream):
    """Repeated random blocks; int64 ids ``x (n, T)``, next-token labels ``y (n, T)``."""

    loss = "cross_entropy"

    def __init__(self, seed: int, options: PeriodicOptions) -> None:
        super().__init__(seed)
        self.options = options
        self.in_shape = (options.seq_len,)
        self.out_dim = options.vocab

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        o = self.options
        block = rng.integers(0, o.vocab, size=(n, o.period), dtype=np.int64)
        reps = -(-(o.seq_len + 1) // o.period)
        w = np.tile(block, (1, reps))[:, : o.seq_len + 1]
        return w[:, :-1].copy(), w[:, 1:].copy()

    def describe(self) -> dict[str, object]:
        o = self.options
        floor = (o.period - 1) / o.seq_len * float(np.log(o.vocab))
        return {
            "stream": "periodic_tokens",
            "vocab": o.vocab,
            "seq_len": o.seq_len,
            "period": o.period,
            "loss_floor_nats": floor,
        }


@STREAMS.register("periodic_tokens", options=PeriodicOptions, loss="cross_entropy")
def build_periodic(seed: int, options: PeriodicOptions) -> Stream:
    """Repeated random token blocks: next-token prediction solved by attending back."""
    return PeriodicStream(seed, options)
