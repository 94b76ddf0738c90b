"""Pre-LayerNorm transformer language model with a fixed number of heads (paper Appendix A.3).

Width is d_model: the residual stream has ``width`` coordinates, the feed-forward
layers ``4·width``, and ``heads`` is fixed, so ``d_head = width / heads`` grows with
width (docs/concepts.md, "Widths"; the muP transformer of Yang et al. 2022 that the paper
trains on Wikitext-103). Inputs are token ids ``(B, T)``; outputs are logits over the
vocabulary at every position ``(B, T, vocab)`` with ``vocab = out_dim``:

* ``causal: true``  — causal LM: position t attends to positions ≤ t only;
* ``causal: false`` — bidirectional, for masked LM (the stream replaces masked
  inputs by a mask token of the vocabulary and labels the other positions with
  ``IGNORE_INDEX``; paper A.3.1).

Attention scores are ``attn_mult · q·k · scale`` with ``scale = 1/d_head`` (muP:
q and k become correlated during training, so q·k grows like d_head, not
√d_head) or ``1/√d_head`` (standard). ``attn_scale: auto`` takes ``1/d_head**e``
with the parameterization's exponent ``e`` (``NetworkRules.attn_exponent``, which
the family receives: it is registered with the trait ``network_rules``). Softmax
attention is written out (no fused ``scaled_dot_product_attention``: fused kernels
have no double backward, which Hessian probes need) and its probabilities are tapped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from widthwise.errors import UserError
from widthwise.families.base import FAMILIES, Network
from widthwise.parameterization import NetworkRules, ParamSpec, Role
from widthwise.parameterization.base import BRANCH, BRANCH_OUT

EPS = 1e-5
FF_MULT = 4
SCALE_EXPONENTS = {"linear": 1.0, "sqrt": 0.5}
ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


class TransformerOptions(BaseModel):
    """Options of the ``transformer`` family."""

    model_config = ConfigDict(extra="forbid")

    depth: int = Field(2, ge=1, le=1000, description="transformer blocks (≤ 1000)")
    heads: int = Field(
        4, ge=1, le=4096, description="attention heads, fixed across widths (d_head = width/heads)"
    )
    causal: bool = Field(True, description="causal LM (true) or bidirectional / masked LM (false)")
    positions: Literal["learned", "sinusoidal"] = Field(
        "learned", description="learned position embeddings or fixed sinusoids"
    )
    attn_scale: Literal["auto", "linear", "sqrt"] = Field(
        "auto",
        description="attention scores × 1/d_head (linear) or 1/√d_head (sqrt); "
        "auto: the parameterization's (docs/parameterizations.md)",
    )
    attn_mult: float = Field(
        1.0, gt=0, le=1e6, description="constant factor on the attention scores"
    )
    activation: Literal["gelu", "relu"] = Field("gelu", description="feed-forward nonlinearity")
    bias: bool = Field(True, description="biases in the attention and feed-forward linears")


def attn_exponent(attn_scale: str, network_rules: NetworkRules | None) -> float:
    """The exponent e of the attention scale 1/d_head**e: 1 for ``linear``, 1/2 for
    ``sqrt``; ``auto`` takes the parameterization's (``NetworkRules().attn_exponent``,
    1, when the caller passes none)."""
    if attn_scale != "auto":
        return SCALE_EXPONENTS[attn_scale]
    return (network_rules or NetworkRules()).attn_exponent


def _power(d: int, exponent: float) -> float:
    """d**exponent, exactly d for 1 and math.sqrt(d) for 1/2."""
    if exponent == 1.0:
        return float(d)
    return math.sqrt(d) if exponent == 0.5 else d**exponent


def sinusoids(length: int, width: int) -> Tensor:
    """Fixed sinusoidal positions (Vaswani et al. 2017): ``(length, width)``, entries in [-1, 1]."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, width, 2, dtype=torch.float64) / width)
    table = torch.zeros(length, width, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : width // 2]
    return table.float()


def softmax_attention(q: Tensor, k: Tensor, scale: float, causal: bool) -> Tensor:
    """Probabilities ``softmax(scale · q kᵀ)`` over keys, ``(B, H, T, T)``, rows summing to 1.

    ``q, k: (B, H, T, d_head)``; with ``causal`` query t gives key s > t probability
    exactly 0 (its score is −inf; the diagonal keeps every row finite).
    """
    scores = (q @ k.transpose(-1, -2)) * scale  # (B, H, T, T)
    if causal:
        t = q.shape[-2]
        future = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    return torch.softmax(scores, dim=-1)


@FAMILIES.register("transformer", options=TransformerOptions, network_rules=True)
def build_transformer(
    width: int,
    in_shape: tuple[int, ...],
    out_dim: int,
    options: TransformerOptions,
    *,
    network_rules: NetworkRules | None = None,
) -> Network:
    """Transformer LM: token ids ``x: (B, T)`` → logits ``(B, T, vocab)``, ``vocab = out_dim``.

    ``in_shape = (T,)`` is the (maximum) sequence length. ``network_rules`` (the
    parameterization's) only resolves ``attn_scale: auto``.

    Tensors and roles (``w`` = width, ``b{i}`` = block i = 1..depth):

    ============================================== ========== ========== ======
    tensor                                         shape      role       fan-in
    ============================================== ========== ========== ======
    ``embed.weight`` (token embedding)             (vocab, w) input      1
    ``pos.weight`` (learned positions only)        (T, w)     input      1
    ``b{i}.ln1/ln2.weight``, ``ln_f.weight``       (w,)       vector     init 1
    ``b{i}.ln1/ln2.bias``, ``ln_f.bias``           (w,)       vector     init 0
    ``b{i}.attn.query.weight`` (tag ``query``)     (w, w)     hidden     w
    ``b{i}.attn.key/value/proj.weight``            (w, w)     hidden     w
    ``b{i}.ff1.weight``                            (4w, w)    hidden     w
    ``b{i}.ff2.weight``                            (w, 4w)    hidden     4w
    ``b{i}.*.bias`` (option ``bias``; no key bias) (w,)/(4w,) vector     init 0
    ``out.weight`` (readout, untied)               (vocab, w) output     w
    ``out.bias``                                   (vocab,)   fixed      init 0
    ============================================== ========== ========== ======

    An embedding is a lookup, i.e. a linear map of a one-hot input with a single
    nonzero entry, so its fan-in is 1 (and its tag ``embedding``, for rules that
    treat lookups apart): every rule then gives it a width-independent
    init std σ (N(0, σ²) entries, as ``nn.Embedding`` and mup's transformer
    example), residual-stream coordinates of order one, and mup's input-weight
    learning rates (×m for SGD, ×1 for Adam, as MuSGD/MuAdam treat an
    ``nn.Embedding``, whose only width dim is its output).

    The key projection has no bias: it would add q·b_k to every score of a query
    alike, which the softmax ignores (its gradient is exactly zero).

    Block i: ``h ← h + proj(attn(ln1(h)))``, ``h ← h + ff2(φ(ff1(ln2(h))))``; then
    ``out(ln_f(h))``. Taps (``layers`` = ``b1..b{depth}``): ``act/b{i}`` the residual
    stream after block i, mean over positions, ``(B, w)``; ``preact/b{i}`` the
    feed-forward pre-activation ``ff1(ln2(h))``, mean over positions, ``(B, 4w)``;
    ``attn/b{i}`` the attention probabilities ``(B, heads, T, T)``.
    """
    if len(in_shape) != 1:
        raise UserError(
            f"model.family: 'transformer' needs token sequences of shape (T,); "
            f"the stream gives {tuple(in_shape)}"
        )
    heads = options.heads
    if width % heads:
        raise UserError(
            f"model.options.heads: width {width} is not divisible by heads={heads} "
            f"(d_head = width / heads must be an integer); use widths that are "
            f"multiples of {heads} or change model.options.heads"
        )
    (seq_len,) = in_shape
    vocab, d_head, d_ff = out_dim, width // heads, FF_MULT * width
    exponent = attn_exponent(options.attn_scale, network_rules)
    scale = options.attn_mult / _power(d_head, exponent)
    causal, has_bias, depth = options.causal, options.bias, options.depth
    act = ACTIVATIONS[options.activation]

    lookup = frozenset({"embedding"})  # a lookup table (a one-hot input): fan-in 1
    specs: list[ParamSpec] = [ParamSpec("embed.weight", (vocab, width), Role.INPUT, 1, tags=lookup)]
    if options.positions == "learned":
        specs.append(ParamSpec("pos.weight", (seq_len, width), Role.INPUT, 1, tags=lookup))

    def norm(name: str, tags: frozenset[str] = frozenset()) -> None:
        specs.append(ParamSpec(f"{name}.weight", (width,), Role.VECTOR, init="ones", tags=tags))
        specs.append(ParamSpec(f"{name}.bias", (width,), Role.VECTOR, init="zeros", tags=tags))

    def linear(
        name: str, d_out: int, d_in: int, tags: frozenset[str] = frozenset(), bias: bool = True
    ) -> None:
        specs.append(ParamSpec(f"{name}.weight", (d_out, d_in), Role.HIDDEN, d_in, tags=tags))
        if has_bias and bias:  # a branch's bias is part of the branch (depth-muP scales both)
            b_tags = tags & {BRANCH, BRANCH_OUT}
            specs.append(
                ParamSpec(f"{name}.bias", (d_out,), Role.VECTOR, init="zeros", tags=b_tags)
            )

    layers = tuple(f"b{i}" for i in range(1, depth + 1))
    br = frozenset({BRANCH})  # inside a residual branch; BRANCH_OUT: its last map
    for b in layers:
        norm(f"{b}.ln1", br)
        linear(f"{b}.attn.query", width, width, frozenset({"query", BRANCH}))
        linear(f"{b}.attn.key", width, width, br, bias=False)  # q·b_k: the same for every key
        linear(f"{b}.attn.value", width, width, br)
        linear(f"{b}.attn.proj", width, width, frozenset({BRANCH, BRANCH_OUT}))
        norm(f"{b}.ln2", br)
        linear(f"{b}.ff1", d_ff, width, br)
        linear(f"{b}.ff2", width, d_ff, frozenset({BRANCH, BRANCH_OUT}))
    norm("ln_f")
    specs.append(ParamSpec("out.weight", (vocab, width), Role.OUTPUT, width))
    specs.append(ParamSpec("out.bias", (vocab,), Role.FIXED, init="zeros"))
    fixed_pos = sinusoids(seq_len, width) if options.positions == "sinusoidal" else None

    def lin(w: Mapping[str, Tensor], name: str, h: Tensor) -> Tensor:
        return F.linear(h, w[f"{name}.weight"], w.get(f"{name}.bias"))

    def ln(w: Mapping[str, Tensor], name: str, h: Tensor) -> Tensor:
        return F.layer_norm(h, (width,), w[f"{name}.weight"], w[f"{name}.bias"], EPS)

    def split(h: Tensor) -> Tensor:  # (B, T, w) -> (B, H, T, d_head)
        return h.unflatten(-1, (heads, d_head)).transpose(1, 2)

    def apply(w: Mapping[str, Tensor], x: Tensor, taps: bool = False):
        # token ids; integer-valued floats (a float probe set) are accepted
        tokens = x.long() if x.is_floating_point() else x  # (B, T)
        t = tokens.shape[1]
        h = F.embedding(tokens, w["embed.weight"])  # (B, T, w)
        if fixed_pos is None:
            h = h + w["pos.weight"][:t]
        else:
            h = h + fixed_pos[:t].to(device=h.device, dtype=h.dtype)
        rec: dict[str, Tensor] = {}
        for b in layers:
            a = ln(w, f"{b}.ln1", h)
            q, k, v = (split(lin(w, f"{b}.attn.{n}", a)) for n in ("query", "key", "value"))
            p = softmax_attention(q, k, scale, causal)  # (B, H, T, T)
            o = (p @ v).transpose(1, 2).flatten(2)  # (B, T, w)
            h = h + lin(w, f"{b}.attn.proj", o)
            pre = lin(w, f"{b}.ff1", ln(w, f"{b}.ln2", h))  # (B, T, 4w)
            h = h + lin(w, f"{b}.ff2", act(pre))  # (B, T, w)
            if taps:
                rec[f"attn/{b}"] = p
                rec[f"preact/{b}"] = pre.mean(dim=1)  # (B, 4w)
                rec[f"act/{b}"] = h.mean(dim=1)  # (B, w)
        logits = F.linear(ln(w, "ln_f", h), w["out.weight"], w["out.bias"])  # (B, T, vocab)
        return logits, rec

    return Network("transformer", width, tuple(specs), apply, layers)
