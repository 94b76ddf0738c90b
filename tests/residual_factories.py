"""A residual module for depth-muP tests of module families (tests/test_module_depth.py).

``make_resmlp(width, in_shape, out_dim, depth)``: x ↦ inp(x), then ``depth`` pre-norm
residual blocks h ← h + fc2(relu(fc1(norm(h)))), then out(h). The blocks' outputs (the
residual stream) are the modules ``blocks.<i>``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width, bias=False)
        self.fc2 = nn.Linear(width, width, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(torch.relu(self.fc1(self.norm(h))))


class ResMLP(nn.Module):
    def __init__(self, width: int, d_in: int, out_dim: int, depth: int) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, width, bias=False)
        self.blocks = nn.Sequential(*(Block(width) for _ in range(depth)))
        self.out = nn.Linear(width, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.inp(x)))


def make_resmlp(width: int, in_shape: tuple[int, ...], out_dim: int, depth: int = 2) -> ResMLP:
    return ResMLP(width, math.prod(in_shape), out_dim, depth)
