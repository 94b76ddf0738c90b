"""A plain convolutional net: ``depth`` 3×3 convolutions of ``width`` channels, global pool, readout.

Width is the number of channels of every conv layer (docs/concepts.md, "Widths"). The
network is the CNN analogue of the depth-L MLP (paper Section 2, Fig. 2-5 style
vision runs): x ↦ W_out · mean_hw φ(conv_L(... φ(conv_1 x) ...)) + b_out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from widthwise.errors import UserError
from widthwise.families.base import FAMILIES, Network
from widthwise.parameterization import ParamSpec, Role

ACTIVATIONS = {"relu": F.relu, "tanh": torch.tanh, "gelu": F.gelu}
KERNEL = 3


class CNNOptions(BaseModel):
    """Options of the ``cnn`` family."""

    model_config = ConfigDict(extra="forbid")

    depth: int = Field(
        3, ge=1, le=1000, description="3×3 conv layers (each of `width` channels; ≤ 1000)"
    )
    activation: Literal["relu", "tanh", "gelu"] = Field("relu", description="nonlinearity φ")
    bias: bool = Field(True, description="conv biases (vectors) and a readout bias (fixed)")
    downsample: Literal["stride", "avgpool", "maxpool"] = Field(
        "stride",
        description="how layers in `downsample_layers` halve H and W: stride 2 in that conv, "
        "or a 2×2 pool after its activation",
    )
    downsample_layers: list[int] = Field(
        default_factory=list,
        description="1-based conv layers that halve the spatial size (default: none)",
    )

    @model_validator(mode="after")
    def _layers_exist(self) -> CNNOptions:
        bad = [i for i in self.downsample_layers if not 1 <= i <= self.depth]
        if bad:
            raise ValueError(f"downsample_layers must lie in 1..depth={self.depth}, got {bad}")
        return self


def image_shape(in_shape: tuple[int, ...], family: str) -> tuple[int, int, int]:
    """(C, H, W) of a stream's ``in_shape``: (C, H, W) as is, (H, W) as one channel."""
    if len(in_shape) == 3:
        return in_shape  # type: ignore[return-value]
    if len(in_shape) == 2:
        return (1, *in_shape)
    raise UserError(
        f"model.family: {family!r} needs image inputs of shape (C, H, W) or (H, W); "
        f"the stream gives {tuple(in_shape)}"
    )


@FAMILIES.register("cnn", options=CNNOptions)
def build_cnn(width: int, in_shape: tuple[int, ...], out_dim: int, options: CNNOptions) -> Network:
    """Conv net on images ``x: (B, C, H, W)`` (or ``(B, H, W)``) → logits ``(B, out_dim)``.

    Tensors and roles (fan-in = in_channels · 3 · 3):

    ``c1.weight (width, C, 3, 3)`` input; ``c{i}.weight (width, width, 3, 3)`` hidden
    for i = 2..depth; ``c{i}.bias (width,)`` vector; ``out.weight (out_dim, width)``
    output; ``out.bias (out_dim,)`` fixed.

    Taps (``layers`` = ``c1..c{depth}``): ``preact/c{i}`` and ``act/c{i}`` are the
    spatial means of the conv output and of its activation, ``(B, width)``.
    """
    c_in, _, _ = image_shape(in_shape, "cnn")
    act = ACTIVATIONS[options.activation]
    has_bias = options.bias
    layers = tuple(f"c{i}" for i in range(1, options.depth + 1))
    down = set(options.downsample_layers)
    specs: list[ParamSpec] = []
    for i, name in enumerate(layers, start=1):
        fan_in = (c_in if i == 1 else width) * KERNEL * KERNEL
        shape = (width, c_in if i == 1 else width, KERNEL, KERNEL)
        role = Role.INPUT if i == 1 else Role.HIDDEN
        specs.append(ParamSpec(f"{name}.weight", shape, role, fan_in))
        if has_bias:
            specs.append(ParamSpec(f"{name}.bias", (width,), Role.VECTOR, init="zeros"))
    specs.append(ParamSpec("out.weight", (out_dim, width), Role.OUTPUT, width))
    if has_bias:
        specs.append(ParamSpec("out.bias", (out_dim,), Role.FIXED, init="zeros"))
    by_stride = options.downsample == "stride"
    stride = {f"c{i}": 2 if (i in down and by_stride) else 1 for i in range(1, options.depth + 1)}
    pool = {f"c{i}": None if (by_stride or i not in down) else options.downsample for i in down}

    def apply(w: Mapping[str, Tensor], x: Tensor, taps: bool = False):
        h = x.reshape(x.shape[0], c_in, x.shape[-2], x.shape[-1])  # (B, C, H, W)
        recorded: dict[str, Tensor] = {}
        for name in layers:
            b = w[f"{name}.bias"] if has_bias else None
            pre = F.conv2d(h, w[f"{name}.weight"], b, stride=stride[name], padding=1)
            h = act(pre)  # (B, width, H', W')
            if pool.get(name) == "avgpool":
                h = F.avg_pool2d(h, 2)
            elif pool.get(name) == "maxpool":
                h = F.max_pool2d(h, 2)
            if taps:
                recorded[f"preact/{name}"] = pre.mean(dim=(2, 3))  # (B, width)
                recorded[f"act/{name}"] = h.mean(dim=(2, 3))
        feats = h.mean(dim=(2, 3))  # global average pool: (B, width)
        out = F.linear(feats, w["out.weight"], w["out.bias"] if has_bias else None)  # (B, C_out)
        return out, recorded

    return Network("cnn", width, tuple(specs), apply, layers)
