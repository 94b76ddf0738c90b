"""All seeds of one width as one stacked computation.

Parameters are stored stacked: every tensor has a leading ``seed`` dim of size E.
Members never interact: the forward pass maps member e's weights to member e's
logits, losses are summed over members before one backward pass, and optimizers
act elementwise, so each slice evolves exactly as an independent model would.

Two forward strategies compute the same function:

``vmap``  batched over the seed dim. For a stackable network (``Network.stackable``:
          the MLP) the family's own ``apply`` runs on the stacked weights, each
          ``F.linear`` becoming one matmul for all members (the first layer, whose
          input all members share, one plain ``mm``; later layers one ``bmm``); for
          other families one ``torch.func.vmap`` over the seed dim.
``loop``  a Python loop over members with plain matmuls on unbound slices.

``auto`` picks by a fixed rule measured with ``benchmarks/ensemble.py`` (see
:func:`choose_strategy` and benchmarks/RESULTS.md), never by timing at run time,
so a resumed run always uses the strategy it started with and reproduces its
numbers bit for bit.

Building an ensemble changes nothing outside it: the glibc malloc tuning that makes
CPU ensembles faster is opt-in (:func:`widthwise.memory.keep_freed_memory`; the
command line and the worker processes widthwise starts switch it on).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from widthwise.families.base import Network
from widthwise.families.module_apply import bound_buffers
from widthwise.families.module_dropout import member_index, training_forward
from widthwise.losses import LossName
from widthwise.member_optim import per_member
from widthwise.parameterization import ParamRule
from widthwise.torch_compat import torch_function_mode_active

Strategy = Literal["vmap", "loop"]


def choose_strategy(
    requested: str, width: int, device: torch.device, stackable: bool = False
) -> Strategy:
    """The forward strategy for ``requested`` in {auto, vmap, loop}.

    ``auto``: ``vmap`` off the CPU and for stackable networks (``Network.stackable``,
    run on the stacked weights by :class:`_Stacked`: batched matmuls on the stacked
    weights are never slower than the loop there: benchmarks/RESULTS.md);
    ``loop`` for every other family on a CPU, where torch.func.vmap's batched
    convolutions and attention lost to the per-member loop in 22 of 24 measured
    settings (benchmarks/RESULTS.md, families). A pure function of its arguments,
    so a run and its resumption agree. ``width`` is kept for rules that need it.
    """
    if requested in ("vmap", "loop"):
        return requested  # type: ignore[return-value]
    if device.type != "cpu" or stackable:
        return "vmap"
    return "loop"


class _Stacked:
    """A stacked (seed, ...) parameter as a family's ``apply`` sees it.

    Not a tensor: only ``F.linear`` accepts it (through ``__torch_function__``), as
    weight or bias, and runs the layer for all members at once; anything else
    raises. ``mult`` is the tensor's forward multiplier, folded into the matmul
    instead of scaling the weight.
    """

    __slots__ = ("tensor", "mult")

    def __init__(self, tensor: Tensor, mult: float) -> None:
        self.tensor = tensor
        self.mult = mult

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is F.linear:
            return _stacked_linear(*args, **(kwargs or {}))
        raise TypeError(f"a stacked ensemble parameter can only be used by F.linear, not {func}")


def _stacked_linear(x: Tensor, weight: _Stacked, bias: _Stacked | None = None) -> Tensor:
    """F.linear for every member: x (batch, in) shared or (seed, batch, in); weight (seed, out, in).

    Computed transposed, yᵀ = W xᵀ, so that weight gradients come out contiguous
    (no copy when autograd accumulates them) and activations stay (seed, feature,
    batch) buffers seen through transposed views. Returns (seed, batch, out).
    """
    w, mw = weight.tensor, weight.mult
    e, o, i = w.shape
    if x.dim() == 2:  # the input of all members: one (E·out, in) @ (in, batch) matmul
        w2, xt = w.reshape(e * o, i), x.t()
        if bias is None:
            yt = torch.mm(w2, xt)
        else:
            b = bias.tensor.reshape(e * o, 1)
            yt = torch.addmm(b, w2, xt, beta=bias.mult, alpha=mw)
        yt = yt.view(e, o, -1)
    else:
        if x.dim() != 3 or x.shape[0] != e:
            raise ValueError(
                f"stacked F.linear: input {tuple(x.shape)} for weight {tuple(w.shape)}"
            )
        xt = x.transpose(1, 2)
        if bias is None:
            yt = torch.bmm(w, xt)
        else:
            yt = torch.baddbmm(bias.tensor.unsqueeze(2), w, xt, beta=bias.mult, alpha=mw)
    if bias is None and mw != 1.0:
        yt = yt * mw
    return yt.transpose(1, 2)


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
        member_rules: Sequence[dict[str, ParamRule]] | None = None,
        output_multiplier: float | Sequence[float] = 1.0,
    ) -> None:
        self.network = network
        self.rules = rules
        self.seeds = list(seeds)
        if member_rules is not None and len(member_rules) != len(self.seeds):
            raise ValueError(f"{len(member_rules)} member rules for {len(self.seeds)} members")
        # each member's init rules (a sweep of sigma); the forward pass uses ``rules``
        self.member_rules = list(member_rules) if member_rules is not None else None
        self.loss = loss
        self.device = device
        self.dtype = dtype
        self.strategy = choose_strategy(strategy, network.width, device, network.stackable)
        if self.strategy == "vmap" and not getattr(network.apply, "vmappable", True):
            # a module family whose vmapped forward fails or disagrees with a per-member
            # loop (widthwise.families.module.ModuleApply.check_vmap): the loop, said once
            notice = f"{network.family}: {network.apply.vmap_notice}; seeds run one by one"
            warnings.warn(notice, stacklevel=2)
            self.strategy = "loop"
        self.center = center
        self.params0: dict[str, Tensor] | None = None
        # α: every member's logits times its own (parameterization.output_multiplier, or
        # a sweep of it); the family computes the rest
        alpha = (
            [float(output_multiplier)] * self.size
            if isinstance(output_multiplier, int | float)
            else [float(a) for a in output_multiplier]
        )
        if len(alpha) != self.size:
            raise ValueError(f"{len(alpha)} output multipliers for {self.size} members")
        self.output_multiplier = tuple(alpha)
        # a module family's dropout (widthwise.families.module_dropout): masks drawn from
        # explicit per-member generators, one unbatched draw under vmap ("same")
        self.dropout = bool(getattr(network.apply, "dropout", ()))
        # a module family's per-member buffers (BatchNorm running statistics), stacked
        # (member, *shape): updated in place by the training forward, read by every other
        # forward; trainer state (checkpointed). ``buffers0``: the initial ones (centring).
        self.buffers: dict[str, Tensor] = {}
        if getattr(network.apply, "mutable", ()):
            self.buffers = network.apply.stacked_buffers(self.size, device, dtype)  # type: ignore[attr-defined]
        self.buffers0: dict[str, Tensor] | None = None
        self.stateful = self.dropout or bool(self.buffers)
        self._vmapped = torch.func.vmap(
            self._apply_member,
            in_dims=(0, None, None, 0, 0),
            randomness="same" if self.dropout else "error",
        )

    @property
    def size(self) -> int:
        return len(self.seeds)

    def init_params(self) -> dict[str, Tensor]:
        """Stacked initial parameters (seed, *shape) as leaf tensors that require grad.

        Member m is drawn from its seed's generator with its own init rules
        (``member_rules[m]``, a sweep's sigma) or the ensemble's."""
        rules = self.member_rules or [self.rules] * len(self.seeds)
        members = [init_member(self.network, r, s, self.dtype) for r, s in zip(rules, self.seeds)]
        params = {
            p.name: torch.stack([m[p.name] for m in members]).to(self.device).requires_grad_()
            for p in self.network.params
        }
        if self.center:
            self.params0 = {k: v.detach().clone() for k, v in params.items()}
            self.buffers0 = {k: v.clone() for k, v in self.buffers.items()}
        return params

    def member_buffers(self, e: int) -> dict[str, Tensor]:
        """Member ``e``'s per-member buffers (views into :attr:`buffers`)."""
        return {k: v[e] for k, v in self.buffers.items()}

    def as_member(self, e: int) -> contextlib.AbstractContextManager[Any]:
        """Within the block ``network.apply`` called on member ``e``'s weights (a probe
        computing member by member, e.g. the eNTK) uses member ``e``'s buffers."""
        if not self.buffers:
            return contextlib.nullcontext()
        return bound_buffers(self.member_buffers(e))

    def effective(self, raw: dict[str, Tensor]) -> dict[str, Tensor]:
        """W = multiplier · w for every tensor (multipliers of 1 cost nothing)."""
        out = {}
        for k, w in raw.items():
            mult = self.rules[k].multiplier
            out[k] = w if mult == 1.0 else w * mult
        return out

    def _apply_member(
        self,
        raw: dict[str, Tensor],
        x: Tensor,
        taps: bool,
        index: int | Tensor | None = None,
        buffers: dict[str, Tensor] | None = None,
    ):
        w = self.effective(raw)
        if buffers:  # the member's own buffers (batched under vmap: updates land in its slice)
            w = {**w, **buffers}
        if index is None or not self.dropout:
            return self.network.apply(w, x, taps)
        with member_index(index):  # whose dropout masks (a batched index under vmap)
            return self.network.apply(w, x, taps)

    def scale_output(self, out: Tensor) -> Tensor:
        """``out`` (seed, ...) with member e's entries times its output multiplier α_e."""
        alpha = self.output_multiplier
        if all(a == 1.0 for a in alpha):
            return out
        if len(set(alpha)) == 1:
            return out * alpha[0]
        return out * per_member(torch.tensor(alpha), out)

    def _forward(
        self,
        params: dict[str, Tensor],
        x: Tensor,
        taps: bool,
        buffers: dict[str, Tensor] | None = None,
        strategy: Strategy | None = None,
    ):
        bufs = self.buffers if buffers is None else buffers
        out, rec = self._forward_family(params, x, taps, bufs, strategy or self.strategy)
        return self.scale_output(out), rec

    def _forward_family(
        self,
        params: dict[str, Tensor],
        x: Tensor,
        taps: bool,
        buffers: dict[str, Tensor],
        strategy: Strategy,
    ):
        if strategy == "vmap":
            # Under someone else's TorchFunctionMode (e.g. a probe intercepting F.linear)
            # the family must see per-member tensors, as torch.func.vmap shows them.
            if self.network.stackable and not torch_function_mode_active():
                return self._stacked(params, x, taps)
            index = torch.arange(self.size, device=x.device)
            return self._vmapped(params, x, taps, index, buffers)
        names = list(params)
        outs, recs = [], []
        for e, slices in enumerate(zip(*(params[k].unbind(0) for k in names))):
            bufs = {k: v[e] for k, v in buffers.items()}
            out, rec = self._apply_member(dict(zip(names, slices)), x, taps, e, bufs)
            outs.append(out)
            recs.append(rec)
        stacked = {k: torch.stack([r[k] for r in recs]) for k in (recs[0] if recs else {})}
        return torch.stack(outs), stacked

    def _stacked(self, params: dict[str, Tensor], x: Tensor, taps: bool):
        wrapped = {k: _Stacked(w, self.rules[k].multiplier) for k, w in params.items()}
        out, rec = self.network.apply(wrapped, x, taps)  # type: ignore[arg-type]
        return out, {k: v.contiguous() for k, v in rec.items()}

    def _training(self, step: int | None) -> contextlib.AbstractContextManager[Any]:
        """A training forward of update ``step`` (a module family with dropout or
        per-member buffers: dropout on with step ``step``'s masks, BatchNorm in train
        mode), or nothing."""
        if step is None or not self.stateful:
            return contextlib.nullcontext()
        return training_forward(step, self.seeds, self.network.width)

    def forward(
        self,
        params: dict[str, Tensor],
        x: Tensor,
        step: int | None = None,
        *,
        strategy: Strategy | None = None,
    ) -> Tensor:
        """Logits (seed, batch, output); centered on the initial network under ``center``.

        ``strategy``: this call's (``vmap`` or ``loop``; default the ensemble's own), the
        same function to rounding: e.g. the sharpness probe's Hessian graph, which is
        faster per member on a CPU (:func:`widthwise.probes.sharpness.hvp_strategy`).

        ``step``: a training forward pass of update ``step``: a module family's dropout
        is on, each member with its own masks from (its seed, the width, ``step``)
        (:mod:`widthwise.families.module_dropout`). Without it (every probe) dropout is
        off. The centring network f_θ0 sees the same masks as f_θ.

        Per-member buffers (:attr:`buffers`, BatchNorm running statistics): a training
        forward normalizes by the batch statistics and updates each member's running
        statistics in place; every other forward uses them (eval mode) and changes
        none. The centring network f_θ0 runs on its own initial buffers
        (:attr:`buffers0`), never updated (a training forward updates a copy)."""
        with self._training(step):
            out, _ = self._forward(params, x, False, strategy=strategy)
        if self.center and self.params0 is not None:
            bufs0 = self.buffers0 if self.buffers0 is not None else self.buffers
            if step is not None:
                bufs0 = {k: v.clone() for k, v in bufs0.items()}
            with torch.no_grad(), self._training(step):
                out0, _ = self._forward(self.params0, x, False, bufs0, strategy)
            out = out - out0
        return out

    def forward_taps(
        self, params: dict[str, Tensor], x: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and the family's taps, each with a leading seed dim."""
        return self._forward(params, x, True)
