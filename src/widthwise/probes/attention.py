"""The attention-map hook and probe (paper Fig. 1d, Fig. 5 d-f).

The hook is a convention between families and this probe: a family with attention
returns, among its taps (``Network.apply(..., taps=True)``), the attention
probabilities of every attention layer as ``"attn/<layer>"`` with shape
``(batch, head, query, key)`` — the softmax output, rows summing to one, after any
mask. Under muP the number of heads is fixed and d_head grows with width, so the
shape is the same at every width and the maps of different widths compare directly.

``attention`` (step dim ``attention_step``)
    ``attention (seed, attention_layer, attention_point, head, query, key)``: the maps
    of the first ``points`` probe sequences (the coordinate of ``attention_point``
    holds their indices into ``point``), for the selected layers (default: every
    ``attn/`` tap, in the family's order). Probabilities, unitless; NaN for diverged
    members. ``head``, ``query`` and ``key`` are the tap's own dims (query and key
    are positions of the sequence), shared by every probe that reads attention.
    Declared in :data:`ATTENTION`.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from widthwise.dataset_schema import Dim, Schema, Var, declare
from widthwise.errors import UserError
from widthwise.probes.base import PROBES, ProbeContext, ProbeDef, ProbeResult, mask_diverged
from widthwise.probes.features import InitEndSchedule, select_layers, tap

ATTN_PREFIX = "attn/"


class AttentionOptions(InitEndSchedule):
    """Options of the ``attention`` probe (default schedule: at init and end)."""

    layers: list[str] | None = Field(
        None, description="attention layers (tap 'attn/<layer>'); default: all, family order"
    )
    points: int = Field(
        4, gt=0, le=4096, description="maps of the first `points` probe sequences (≤ 4096)"
    )


ATTENTION = declare(
    Schema(
        "attention",
        "attention_step",
        (
            Dim("attention_step", "steps of the `attention` probe", "steps"),
            Dim(
                "attention_layer",
                "attention layer (tap `attn/<layer>`)",
                "layer names",
                formerly=("attn_layer",),
            ),
            Dim(
                "attention_point",
                "one of the first `points` probe sequences",
                "index into `point`",
                index_of="point",
                formerly=("attn_point",),
            ),
            Dim("head", "attention head (fixed across widths under muP)"),
            Dim("query", "query position (a position of the sequence)"),
            Dim("key", "key position; probabilities sum to 1 over `key`"),
        ),
        (
            Var(
                "attention",
                (
                    "width",
                    "seed",
                    "attention_step",
                    "attention_layer",
                    "attention_point",
                    "head",
                    "query",
                    "key",
                ),
                "probability",
                "attention probabilities (softmax output, after masking)",
                when="families with `attn/` taps",
            ),
        ),
    )
)


def attention_probe(ctx: ProbeContext, options: AttentionOptions) -> ProbeResult:
    """attention (seed, attention_layer, attention_point, head, query, key) from ``attn/`` taps."""
    x = ctx.probe_x[: options.points]
    with torch.no_grad():
        _, taps = ctx.ensemble.forward_taps(ctx.params, x)
    available = [k[len(ATTN_PREFIX) :] for k in taps if k.startswith(ATTN_PREFIX)]
    family = ctx.ensemble.network.family
    names = select_layers(
        available, options.layers, "attention", f"attention layers ({family!r} 'attn/' taps)"
    )
    maps = []
    for name in names:
        a = tap(taps, ATTN_PREFIX + name, "attention")  # (seed, batch, head, query, key)
        if a.ndim != 5:
            raise UserError(
                f"probe attention: tap attn/{name} has shape {tuple(a.shape[1:])} per seed; "
                "expected (batch, head, query, key)"
            )
        maps.append(a.cpu())
    stacked = torch.stack(maps, dim=1)  # (seed, layer, batch, head, query, key)
    return {
        "attention": (
            ATTENTION.result_dims("attention"),
            mask_diverged(stacked.numpy(), ctx.alive.cpu().numpy()),
        ),
        "attention_layer": (("attention_layer",), np.array(names)),
    }


PROBES.register(
    "attention",
    options=AttentionOptions,
    description="attention probabilities on fixed probe sequences (Fig. 1d, 5e)",
)(ProbeDef(fn=attention_probe, step_dim="attention_step"))
