"""Test-only plug-ins for the attention hook: a one-layer attention family and a sequence stream.

``register()`` adds the family ``tiny_attention`` and the stream ``tiny_seq`` to the
registries once (safe to call from every test module).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from widthwise.families import FAMILIES, Network
from widthwise.parameterization import ParamSpec, Role
from widthwise.streams.base import STREAMS, Stream

SEQ, DIM = 5, 4


class TinyAttentionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    heads: int = Field(2, ge=1)


def attention_probs(q: Tensor, k: Tensor) -> Tensor:
    """softmax(q kᵀ / d_head) over keys, written out (no fused kernel); (B, H, T, T)."""
    scores = q @ k.transpose(-1, -2) / q.shape[-1]  # muP: 1/d_head
    scores = scores - scores.amax(dim=-1, keepdim=True)
    e = torch.exp(scores)
    return e / e.sum(dim=-1, keepdim=True)


def build_tiny_attention(
    width: int, in_shape: tuple[int, ...], out_dim: int, options: TinyAttentionOptions
) -> Network:
    """Embed tokens, one self-attention layer (residual), mean-token readout.

    Taps: ``attn/a1`` (batch, head, query, key); ``preact/a1`` and ``act/a1``: the
    token-pooled residual stream (batch, width).
    """
    seq, dim = in_shape
    heads = options.heads
    assert width % heads == 0
    dh = width // heads
    specs = (
        ParamSpec("embed.weight", (width, dim), Role.INPUT, dim),
        ParamSpec("a1.query", (width, width), Role.HIDDEN, width, tags=frozenset({"query"})),
        ParamSpec("a1.key", (width, width), Role.HIDDEN, width),
        ParamSpec("a1.value", (width, width), Role.HIDDEN, width),
        ParamSpec("out.weight", (out_dim, width), Role.OUTPUT, width),
    )

    def split(h: Tensor) -> Tensor:  # (B, T, width) -> (B, H, T, dh)
        return h.reshape(h.shape[0], h.shape[1], heads, dh).transpose(1, 2)

    def apply(w: Mapping[str, Tensor], x: Tensor, taps: bool = False):
        h = x @ w["embed.weight"].T  # (B, T, width)
        q, k, v = (split(h @ w[f"a1.{n}"].T) for n in ("query", "key", "value"))
        p = attention_probs(q, k)  # (B, H, T, T)
        o = (p @ v).transpose(1, 2).reshape(h.shape)  # (B, T, width)
        pooled = (h + o).mean(dim=1)  # (B, width)
        out = pooled @ w["out.weight"].T  # (B, C)
        rec = {"attn/a1": p, "preact/a1": pooled, "act/a1": pooled} if taps else {}
        return out, rec

    return Network("tiny_attention", width, specs, apply, ("a1",))


class TinySeqOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TinySeqStream(Stream):
    """x ~ N(0, 1) of shape (SEQ, DIM); y = tanh of a fixed linear readout of the mean token."""

    loss = "mse"
    out_dim = 1
    in_shape = (SEQ, DIM)

    def __init__(self, seed: int, options: TinySeqOptions) -> None:
        super().__init__(seed)
        self.beta = np.random.default_rng([seed, 7]).standard_normal(DIM)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.standard_normal((n, SEQ, DIM))
        y = np.tanh(x.mean(axis=1) @ self.beta)[:, None]
        return x.astype(np.float32), y.astype(np.float32)


def register() -> None:
    if "tiny_attention" not in FAMILIES:
        FAMILIES.register("tiny_attention", options=TinyAttentionOptions)(build_tiny_attention)
    if "tiny_seq" not in STREAMS:
        STREAMS.register("tiny_seq", options=TinySeqOptions)(TinySeqStream)
