"""All seeds of one width as one stacked computation (torch.func).

Parameters are stored stacked: every tensor has a leading ``seed`` dim of size E.
Members never interact: the forward pass maps member e's weights to member e's
logits, losses are summed over members before one backward pass, and optimizers
act elementwise, so each slice evolves exactly as an independent model would.

Two forward strategies compute the same function:

``vmap``  one ``torch.func.vmap`` over the seed dim (batched matmuls); wins when the
          per-member work is small (narrow networks, many seeds, GPUs).
``loop``  a Python loop over members with plain matmuls on unbound slices; wins
          on CPUs for wide layers, where batched matmul is slower than matmul.

``auto`` picks by a rule measured in ``benchmarks/ensemble.py`` (see
:func:`choose_strategy`), never by timing at run time, so a resumed run always
uses the strategy it started with and reproduces its numbers bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from widthwise.families.base import Network
from widthwise.losses import LossName
from widthwise.parameterization import ParamRule

Strategy = Literal["vmap", "loop"]

# Widest layer at which the batched (vmap) forward still beats per-member matmuls on
# a CPU; measured with benchmarks/ensemble.py (see benchmarks/RESULTS.md).
CPU_VMAP_MAX_WIDTH = 512


def choose_strategy(requested: str, width: int, device: torch.device) -> Strategy:
    """The forward strategy for ``requested`` in {auto, vmap, loop}."""
    if requested in ("vmap", "loop"):
        return requested  # type: ignore[return-value]
    if device.type != "cpu":
        return "vmap"
    return "vmap" if width <= CPU_VMAP_MAX_WIDTH else "loop"


def member_generator(seed: int, width: int) -> torch.Generator:
    """The generator of seed ``seed`` at ``width``: independent of how many seeds run."""
    state = np.random.SeedSequence([seed, width, 0x5EED]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def init_member(
    network: Network, rules: dict[str, ParamRule], seed: int, dtype: torch.dtype
) -> dict[str, Tensor]:
    """Raw initial parameters of one member, drawn on the CPU in declaration order."""
    gen = member_generator(seed, network.width)
    out = {}
    for p in network.params:
        if p.init == "zeros":
            out[p.name] = torch.zeros(p.shape, dtype=dtype)
        elif p.init == "ones":
            out[p.name] = torch.ones(p.shape, dtype=dtype)
        else:
            draw = torch.randn(p.shape, generator=gen, dtype=dtype)
            out[p.name] = draw * rules[p.name].init_std
    return out


class Ensemble:
    """A network of one width, its parameterization rules and the seeds it trains.

    ``forward(params, x)`` maps stacked raw params (seed, *shape) and a shared batch
    ``x: (batch, *in_shape)`` to logits ``(seed, batch, output)``.
    """

    def __init__(
        self,
        network: Network,
        rules: dict[str, ParamRule],
        seeds: Sequence[int],
        *,
        loss: LossName,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        strategy: str = "auto",
        center: bool = False,
    ) -> None:
        self.network = network
        self.rules = rules
        self.seeds = list(seeds)
        self.loss = loss
        self.device = device
        self.dtype = dtype
        self.strategy = choose_strategy(strategy, network.width, device)
        self.center = center
        self.params0: dict[str, Tensor] | None = None
        self._vmapped = torch.func.vmap(self._apply_member, in_dims=(0, None, None))

    @property
    def size(self) -> int:
        return len(self.seeds)

    def init_params(self) -> dict[str, Tensor]:
        """Stacked initial parameters (seed, *shape) as leaf tensors that require grad."""
        members = [init_member(self.network, self.rules, s, self.dtype) for s in self.seeds]
        params = {
            p.name: torch.stack([m[p.name] for m in members]).to(self.device).requires_grad_()
            for p in self.network.params
        }
        if self.center:
            self.params0 = {k: v.detach().clone() for k, v in params.items()}
        return params

    def effective(self, raw: dict[str, Tensor]) -> dict[str, Tensor]:
        """W = multiplier · w for every tensor (multipliers of 1 cost nothing)."""
        out = {}
        for k, w in raw.items():
            mult = self.rules[k].multiplier
            out[k] = w if mult == 1.0 else w * mult
        return out

    def _apply_member(self, raw: dict[str, Tensor], x: Tensor, taps: bool):
        return self.network.apply(self.effective(raw), x, taps)

    def _forward(self, params: dict[str, Tensor], x: Tensor, taps: bool):
        if self.strategy == "vmap":
            return self._vmapped(params, x, taps)
        names = list(params)
        outs, recs = [], []
        for slices in zip(*(params[k].unbind(0) for k in names)):
            out, rec = self._apply_member(dict(zip(names, slices)), x, taps)
            outs.append(out)
            recs.append(rec)
        stacked = {k: torch.stack([r[k] for r in recs]) for k in (recs[0] if recs else {})}
        return torch.stack(outs), stacked

    def forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """Logits (seed, batch, output); centered on the initial network under ``center``."""
        out, _ = self._forward(params, x, False)
        if self.center and self.params0 is not None:
            with torch.no_grad():
                out0, _ = self._forward(self.params0, x, False)
            out = out - out0
        return out

    def forward_taps(
        self, params: dict[str, Tensor], x: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and the family's taps, each with a leading seed dim."""
        return self._forward(params, x, True)
