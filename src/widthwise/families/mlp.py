"""Fully connected network: ``depth`` weight layers, ``depth - 1`` hidden layers of ``width``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from widthwise.families.base import FAMILIES, Network
from widthwise.parameterization import ParamSpec, Role

ACTIVATIONS = {"relu": F.relu, "tanh": torch.tanh, "gelu": F.gelu}


class MLPOptions(BaseModel):
    """Options of the ``mlp`` family."""

    model_config = ConfigDict(extra="forbid")

    depth: int = Field(
        3, ge=2, le=1000, description="weight layers (paper: '3-layer MLP' = depth 3; ≤ 1000)"
    )
    activation: Literal["relu", "tanh", "gelu"] = "relu"
    bias: bool = False


@FAMILIES.register("mlp", options=MLPOptions)
def build_mlp(width: int, in_shape: tuple[int, ...], out_dim: int, options: MLPOptions) -> Network:
    """MLP x ↦ W_out φ(... φ(W_1 x + b_1) ...) + b_out on flattened inputs.

    Roles: ``l1.weight`` input, ``l2..l{depth-1}.weight`` hidden, ``out.weight``
    output; hidden biases are vectors, the readout bias is fixed.
    """
    d_in = 1
    for s in in_shape:
        d_in *= s
    depth = options.depth
    act = ACTIVATIONS[options.activation]
    specs: list[ParamSpec] = [ParamSpec("l1.weight", (width, d_in), Role.INPUT, d_in)]
    if options.bias:
        specs.append(ParamSpec("l1.bias", (width,), Role.VECTOR, init="zeros"))
    for i in range(2, depth):
        specs.append(ParamSpec(f"l{i}.weight", (width, width), Role.HIDDEN, width))
        if options.bias:
            specs.append(ParamSpec(f"l{i}.bias", (width,), Role.VECTOR, init="zeros"))
    specs.append(ParamSpec("out.weight", (out_dim, width), Role.OUTPUT, width))
    if options.bias:
        specs.append(ParamSpec("out.bias", (out_dim,), Role.FIXED, init="zeros"))
    layers = tuple(f"l{i}" for i in range(1, depth))
    has_bias = options.bias

    def apply(w: Mapping[str, Tensor], x: Tensor, taps: bool = False):
        h = x.reshape(x.shape[0], -1)  # (B, d_in)
        recorded: dict[str, Tensor] = {}
        for name in layers:
            pre = F.linear(h, w[f"{name}.weight"], w[f"{name}.bias"] if has_bias else None)
            h = act(pre)  # (B, width)
            if taps:
                recorded[f"preact/{name}"] = pre
                recorded[f"act/{name}"] = h
        out = F.linear(h, w["out.weight"], w["out.bias"] if has_bias else None)  # (B, C)
        return out, recorded

    # only F.linear on (batch, features): ensembles run it on the stacked weights
    return Network("mlp", width, tuple(specs), apply, layers, stackable=True)
