"""ResNet-18 with LayerNorm in place of BatchNorm (paper Appendix A.2.1, A.2.3).

The paper's vision runs use ResNet-18 "where BatchNorm was replaced with LayerNorm
(to maintain the consistency of the neural network between train and test)". A
LayerNorm normalizes each example by itself, so there are no batch statistics:
train and test behaviour are identical, members of a vectorized ensemble never see
each other's activations, and the forward pass is a pure function that
``torch.func.vmap`` maps over seeds.

Width is the number of channels of the first stage (64 = the standard ResNet-18);
the four stages have ``width, 2·width, 4·width, 8·width`` channels (docs/concepts.md,
"Widths"). The stem is a 3×3 stride-1 convolution without max-pool, as ResNets for
32×32 CIFAR images use, so a 32×32 input reaches stage 4 at 4×4.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from widthwise.families.base import FAMILIES, Network
from widthwise.families.cnn import image_shape
from widthwise.parameterization import ParamSpec, Role
from widthwise.parameterization.base import BRANCH, BRANCH_OUT

EPS = 1e-5
STAGE_MULT = (1, 2, 4, 8)
STAGE_STRIDE = (1, 2, 2, 2)


class ResNetOptions(BaseModel):
    """Options of the ``resnet18_ln`` family."""

    model_config = ConfigDict(extra="forbid")

    blocks: tuple[
        Annotated[int, Field(le=1000)],
        Annotated[int, Field(le=1000)],
        Annotated[int, Field(le=1000)],
        Annotated[int, Field(le=1000)],
    ] = Field((2, 2, 2, 2), description="basic blocks per stage ((2, 2, 2, 2) = ResNet-18; ≤ 1000)")
    depth: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="basic blocks in every stage (sets blocks to 4 × depth; a depth study's "
        "axis, docs/depth.md)",
    )
    order: Literal["post", "pre"] = Field(
        "post",
        description="post: conv-norm-ReLU with a ReLU after each residual sum (ResNet v1, "
        "the paper's); pre: norm-ReLU-conv branches on an identity stream (ResNet v2, the "
        "form depth-muP's theory assumes)",
    )
    norm: Literal["channel", "chw"] = Field(
        "channel",
        description="LayerNorm over the channels at each position (channel; Flax's "
        "LayerNorm on NHWC) or over all of (C, H, W) of an example (chw)",
    )

    @model_validator(mode="after")
    def _depth_sets_blocks(self) -> ResNetOptions:
        if self.depth is not None:
            if "blocks" in self.model_fields_set and self.blocks != (self.depth,) * 4:
                raise ValueError(
                    f"blocks {list(self.blocks)} and depth {self.depth} both set: give one"
                )
            self.blocks = (self.depth,) * 4
        return self

    @property
    def residual_blocks(self) -> int:
        """L of depth-muP: the residual (basic) blocks of all stages (8 for ResNet-18)."""
        return sum(self.blocks)


def layer_norm(x: Tensor, gain: Tensor, bias: Tensor, over: str) -> Tensor:
    """LayerNorm of ``x: (B, C, H, W)`` with per-channel ``gain, bias: (C,)``.

    ``channel``: statistics over C at each (example, position);
    ``chw``: statistics over (C, H, W) of each example (GroupNorm with one group).
    Neither mixes examples, so train and test are the same function.
    """
    if over == "chw":
        return F.group_norm(x, 1, gain, bias, EPS)
    # channels last for torch's fused kernel (2-3× faster than a reduction over dim 1)
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), gain, bias, EPS).permute(0, 3, 1, 2)


@FAMILIES.register("resnet18_ln", options=ResNetOptions)
def build_resnet18_ln(
    width: int, in_shape: tuple[int, ...], out_dim: int, options: ResNetOptions
) -> Network:
    """ResNet-18-LN on images ``x: (B, C, H, W)`` (or ``(B, H, W)``) → logits ``(B, out_dim)``.

    Tensors and roles (conv fan-in = in_channels · k · k; no conv biases):

    ``stem.conv.weight (w, C, 3, 3)`` input; every other conv hidden:
    ``s{s}b{b}.conv1.weight``, ``s{s}b{b}.conv2.weight`` (3×3) and, where a block
    changes shape, ``s{s}b{b}.short.weight`` (1×1); each conv is followed by a
    LayerNorm whose ``.norm*.weight`` gain (vector, init 1) and ``.norm*.bias``
    (vector, init 0) have one entry per channel; ``out.weight (out_dim, 8w)``
    output, ``out.bias (out_dim,)`` fixed. Stages s = 1..4 have 1, 2, 4, 8 × w
    channels; stages 2-4 halve H and W in their first block.

    Taps (``layers`` = ``stem, s1b1, s1b2, ..., s4b2``): ``preact/<layer>`` is the
    spatial mean of the layer's output before its final ReLU (the residual sum for a
    block), ``act/<layer>`` after it; both ``(B, channels of that stage)``.

    ``order: pre`` (ResNet v2, He et al. 2016 "Identity mappings in deep residual
    networks"): block ``h ← h + conv2(ReLU(norm2(conv1(ReLU(norm1(h))))))`` on an
    identity stream (where the shape changes the shortcut is ``short`` applied to
    ``ReLU(norm1(h))``, without its own norm), and ``final.norm`` before the last ReLU
    and the pool; ``norm1`` has the block's input channels. Block taps:
    ``preact/<block>`` the branch's output, ``act/<block>`` the stream after the block.
    Residual branches are tagged for depth-muP (``depth_mup``): their last map
    (``norm2`` under ``post``, ``conv2`` under ``pre``) is scaled by √(L₀/L), L the
    blocks of all stages.
    """
    c_in, _, _ = image_shape(in_shape, "resnet18_ln")
    over = options.norm
    specs: list[ParamSpec] = []

    def conv(
        name: str,
        c_out: int,
        c_from: int,
        k: int,
        role: Role = Role.HIDDEN,
        tags: frozenset[str] = frozenset(),
    ) -> None:
        fan_in = c_from * k * k
        specs.append(ParamSpec(f"{name}.weight", (c_out, c_from, k, k), role, fan_in, tags=tags))

    def norm(name: str, c: int, tags: frozenset[str] = frozenset()) -> None:
        specs.append(ParamSpec(f"{name}.weight", (c,), Role.VECTOR, init="ones", tags=tags))
        specs.append(ParamSpec(f"{name}.bias", (c,), Role.VECTOR, init="zeros", tags=tags))

    conv("stem.conv", width, c_in, 3, Role.INPUT)
    norm("stem.norm", width)
    # (name, c_from, c_out, stride, has shortcut conv)
    blocks: list[tuple[str, int, int, int, bool]] = []
    c_prev = width
    br = frozenset({BRANCH})
    pre_act = options.order == "pre"
    for s, (mult, stride, n) in enumerate(zip(STAGE_MULT, STAGE_STRIDE, options.blocks), 1):
        c = mult * width
        for b in range(1, n + 1):
            st = stride if b == 1 else 1
            name = f"s{s}b{b}"
            short = st != 1 or c_prev != c
            if pre_act:  # branch norm1 → ReLU → conv1 → norm2 → ReLU → conv2 (its last map)
                norm(f"{name}.norm1", c_prev, br)
                conv(f"{name}.conv1", c, c_prev, 3, tags=br)
                norm(f"{name}.norm2", c, br)
                conv(f"{name}.conv2", c, c, 3, tags=br | {BRANCH_OUT})
                if short:
                    conv(f"{name}.short", c, c_prev, 1)
            else:  # branch conv1 → norm1 → ReLU → conv2 → norm2 (its last map)
                conv(f"{name}.conv1", c, c_prev, 3, tags=br)
                norm(f"{name}.norm1", c, br)
                conv(f"{name}.conv2", c, c, 3, tags=br)
                norm(f"{name}.norm2", c, br | {BRANCH_OUT})  # depth-muP scales the last map
                if short:
                    conv(f"{name}.short", c, c_prev, 1)
                    norm(f"{name}.shortnorm", c)
            blocks.append((name, c_prev, c, st, short))
            c_prev = c
    if pre_act:
        norm("final.norm", c_prev)  # the stream's norm before the ReLU and the pool
    specs.append(ParamSpec("out.weight", (out_dim, c_prev), Role.OUTPUT, c_prev))
    specs.append(ParamSpec("out.bias", (out_dim,), Role.FIXED, init="zeros"))
    layers = ("stem", *(b[0] for b in blocks))

    def ln(w: Mapping[str, Tensor], name: str, h: Tensor) -> Tensor:
        return layer_norm(h, w[f"{name}.weight"], w[f"{name}.bias"], over)

    def apply(w: Mapping[str, Tensor], x: Tensor, taps: bool = False):
        h = x.reshape(x.shape[0], c_in, x.shape[-2], x.shape[-1])  # (B, C, H, W)
        rec: dict[str, Tensor] = {}
        pre = ln(w, "stem.norm", F.conv2d(h, w["stem.conv.weight"], padding=1))  # (B, w, H, W)
        h = F.relu(pre)
        if taps:
            rec["preact/stem"], rec["act/stem"] = pre.mean(dim=(2, 3)), h.mean(dim=(2, 3))
        if pre_act:
            return _apply_pre(w, h, rec, taps)
        for name, _, _, st, short in blocks:
            y = F.conv2d(h, w[f"{name}.conv1.weight"], stride=st, padding=1)  # (B, c, H', W')
            y = F.relu(ln(w, f"{name}.norm1", y))
            y = ln(w, f"{name}.norm2", F.conv2d(y, w[f"{name}.conv2.weight"], padding=1))
            if short:
                h = ln(w, f"{name}.shortnorm", F.conv2d(h, w[f"{name}.short.weight"], stride=st))
            pre = y + h
            h = F.relu(pre)
            if taps:
                rec[f"preact/{name}"], rec[f"act/{name}"] = pre.mean(dim=(2, 3)), h.mean(dim=(2, 3))
        feats = h.mean(dim=(2, 3))  # global average pool: (B, 8w)
        return F.linear(feats, w["out.weight"], w["out.bias"]), rec  # (B, out_dim)

    def _apply_pre(w: Mapping[str, Tensor], h: Tensor, rec: dict[str, Tensor], taps: bool):
        for name, _, _, st, short in blocks:
            a = F.relu(ln(w, f"{name}.norm1", h))
            y = F.conv2d(a, w[f"{name}.conv1.weight"], stride=st, padding=1)  # (B, c, H', W')
            y = F.relu(ln(w, f"{name}.norm2", y))
            y = F.conv2d(y, w[f"{name}.conv2.weight"], padding=1)
            h = y + (F.conv2d(a, w[f"{name}.short.weight"], stride=st) if short else h)
            if taps:  # the branch's output and the residual stream after the block
                rec[f"preact/{name}"], rec[f"act/{name}"] = y.mean(dim=(2, 3)), h.mean(dim=(2, 3))
        feats = F.relu(ln(w, "final.norm", h)).mean(dim=(2, 3))  # (B, 8w)
        return F.linear(feats, w["out.weight"], w["out.bias"]), rec  # (B, out_dim)

    return Network("resnet18_ln", width, tuple(specs), apply, layers)
