"""A ConvNeXt-T-like network (Liu et al. 2022) written as a plain ``nn.Module``, its
stage channels scaled by width: the paper's Appendix I model, as a widthwise family.

torchvision's ``ConvNeXt`` would do the same, but no torchvision loads with the CPU
torch here (``operator torchvision::nms does not exist``), so this is the model written
the way a user would: stem (4×4 patchify conv + LayerNorm), four stages of ConvNeXt
blocks (7×7 depthwise conv → LayerNorm → Linear 4× → GELU → Linear → layer scale,
residual), downsampling (LayerNorm + 2×2 conv, stride 2) between stages, global
average pool, LayerNorm and a linear head. ConvNeXt-T: ``width = 96``, stage
channels ``(w, 2w, 4w, 8w)``, depths ``(3, 3, 9, 3)``; no stochastic depth (its
drop-path draws from torch's global generator, which module families refuse;
``nn.Dropout`` modules get per-member masks: docs/modules.md#dropout).

    model: {family: module, options: {factory: "convnext:make_convnext",
                                      kwargs: {depths: [1, 1, 1, 1]}}}

with ``--import convnext`` (run from this directory) or ``--allow-code``. Roles
inferred: the stem is an input weight (fan-in 3·4·4), depthwise convs are vector-like
(input role, fan-in 7·7), block linears and downsampling convs hidden, the head the
readout; layer-scale gains and norms vectors.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Block(nn.Module):
    def __init__(self, dim: int, layer_scale: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)  # depthwise
        self.norm = nn.LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)  # pointwise convs as linears (channels last)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).permute(0, 3, 1, 2)  # (B, C, H, W)


class ConvNeXt(nn.Module):
    def __init__(
        self,
        in_chans: int,
        num_classes: int,
        dims: tuple[int, ...],
        depths: tuple[int, ...],
        layer_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.downsample = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0])
                )
            ]
        )
        for i in range(len(dims) - 1):
            self.downsample.append(
                nn.Sequential(LayerNorm2d(dims[i]), nn.Conv2d(dims[i], dims[i + 1], 2, stride=2))
            )
        self.stages = nn.ModuleList(
            nn.Sequential(*(Block(d, layer_scale) for _ in range(n))) for d, n in zip(dims, depths)
        )
        self.norm = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for down, stage in zip(self.downsample, self.stages):
            x = stage(down(x))
        return self.head(self.norm(x.mean(dim=(2, 3))))  # global average pool → (B, classes)


def make_convnext(
    width: int,
    in_shape: tuple[int, ...],
    out_dim: int,
    depths: tuple[int, ...] = (3, 3, 9, 3),
    layer_scale: float = 1.0,
) -> ConvNeXt:
    """Stage channels ``(w, 2w, 4w, 8w)``; ConvNeXt-T is ``width = 96`` with the default
    depths. ``layer_scale`` 1 (ConvNeXt's 1e-6 would start every block at zero under
    mup, whose vector init is the module's ones/zeros, see docs/modules.md)."""
    dims = tuple(width * 2**i for i in range(len(depths)))
    return ConvNeXt(in_shape[0], out_dim, dims, tuple(depths), layer_scale)
