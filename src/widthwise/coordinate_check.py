"""Coordinate check: the size of every layer's coordinates vs width over the first steps.

Under a parameterization with a well-defined limit (mup, mf) the typical size of each
layer's coordinates stays flat in width after a few steps; under sp it grows with width
(Yang et al. 2022, Tensor Programs V, Fig. 5; ``mup.coord_check``), for every family
and parameterization of widthwise. The verdict per layer:
:func:`widthwise.analysis.coordinates.coord_slopes`.

Layers are named by what they are: ``preact/<layer>`` (a linear map's output, what
``mup`` records as ``<layer>`` for an ``nn.Linear``), ``act/<layer>`` (after the
nonlinearity, or a residual block's output), ``output`` (the logits). Families tap
what they have (``docs/families.md``); a module family taps its leaf modules.

Two modes:

- default: train on the study's stream (batch t at step t); measure on ``points``
  fixed probe inputs after each update (step s = the network after s updates, 0 = init).
- ``fixed_batch=True`` (``mup``'s ``fix_data``): train on the stream's batch 0 at every
  step and measure on that batch, before each update; step s here is ``mup``'s t = s + 1
  (tested equal to ``mup.coord_check.get_coord_data`` on the same weights).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import xarray as xr

from widthwise.spec import StudySpec
from widthwise.streams import STREAMS
from widthwise.trainer import EnsembleTrainer

Stat = Literal["mean_abs", "rms"]
STATS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    # per member: reduce every dim but the leading seed dim
    "mean_abs": lambda v: v.abs().flatten(1).mean(1),  # mup's "l1"
    "rms": lambda v: v.pow(2).flatten(1).mean(1).sqrt(),  # mup's "l2"
}
UNITS = {"mean_abs": "mean |coordinate|", "rms": "RMS of coordinates"}


class _FixedBatch:
    """The stream with batch 0 at every step (``mup``'s ``fix_data``)."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def batch(self, t: int, n: int):
        return self._stream.batch(0, n)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _kind(layer: str) -> str:
    if layer == "output":
        return "output"
    return "preactivation" if layer.startswith("preact/") else "activation"


def coord_check(
    spec: StudySpec,
    *,
    steps: int = 3,
    widths: list[int] | None = None,
    points: int = 256,
    fixed_batch: bool = False,
    stat: Stat = "mean_abs",
    device: torch.device | None = None,
    on_width: Callable[[int], None] | None = None,
) -> xr.DataArray:
    """Coordinate size of each tapped layer and of the output, per width, seed and step.

    Returns ``coord_size`` (width, seed, layer, step): ``stat`` ("mean_abs": mean
    |x|, ``mup``'s l1; "rms": √mean x², ``mup``'s l2) over inputs and coordinates of
    each member. Coordinates ``kind`` (layer,) say "preactivation", "activation" or
    "output". A sweep in ``spec`` is ignored (the check runs at its base values). The
    module docstring says what is measured on in each mode. ``on_width(w)`` is called
    as each width starts (a progress bar).
    """
    if stat not in STATS:
        raise ValueError(f"stat: {stat!r}: allowed: {', '.join(STATS)}")
    if spec.sweep:
        spec = spec.model_copy(update={"sweep": {}})
    widths = widths or spec.widths
    stream = STREAMS.get(spec.data.stream)(spec.data.seed, spec.stream_options())
    if fixed_batch:
        stream = _FixedBatch(stream)
        x_np, y_np = stream.batch(0, spec.batch_size)
    else:
        x_np, y_np = stream.probe_set(points)
    reduce = STATS[stat]
    rows = []
    layer_names: list[str] = []
    for width in widths:
        if on_width is not None:
            on_width(width)
        trainer = EnsembleTrainer(spec, width, stream, device)  # type: ignore[arg-type]
        x, _ = trainer.to_tensors(x_np, y_np)  # token ids stay integers
        per_step = []
        for s in range(steps + 1):
            with torch.no_grad():
                out, taps = trainer.ensemble.forward_taps(trainer.params, x)
            sizes = {k: v for k, v in taps.items() if k.startswith(("preact/", "act/"))}
            sizes["output"] = out
            layer_names = list(sizes)
            per_step.append(torch.stack([reduce(v.double()) for v in sizes.values()]))
            if s < steps:
                trainer.train_step()
        rows.append(torch.stack(per_step, -1).cpu().numpy())  # (layer, seed, step)
    data = np.stack(rows).transpose(0, 2, 1, 3)  # (width, seed, layer, step)
    return xr.DataArray(
        data,
        dims=("width", "seed", "layer", "step"),
        coords={
            "width": widths,
            "seed": list(spec.seed_list),
            "layer": layer_names,
            "kind": ("layer", [_kind(n) for n in layer_names]),
            "step": np.arange(steps + 1),
        },
        name="coord_size",
        attrs={
            "parameterization": spec.parameterization.name,
            "units": UNITS[stat],
            "stat": stat,
            "fixed_batch": bool(fixed_batch),
            "measured_on": "the training batch 0 (before each update)"
            if fixed_batch
            else f"{points} fixed probe inputs",
        },
    )


def _depth_layers(names: list[str]) -> dict[str, str]:
    """Block taps named by position so depths compare: the first residual block's taps
    (``act/b1``, ``act/s1b1``) → ``act/first``, the last block's (``act/b{depth}``,
    ``act/s4b{depth}``) → ``act/last``, ``output`` kept; other taps (other blocks, the
    stem) dropped. Blocks are the tap names after ``kind/``, in order, but ``stem``."""
    blocks = [n.partition("/")[2] for n in names if "/" in n]
    blocks = [b for b in dict.fromkeys(blocks) if b != "stem"]
    out = {n: n for n in names if n == "output"}
    if blocks:
        for n in names:
            kind, _, block = n.partition("/")
            if block == blocks[0]:
                out[n] = f"{kind}/first"
            elif block == blocks[-1]:
                out[n] = f"{kind}/last"
    return out


def coord_check_depths(
    spec: StudySpec,
    depths: list[int],
    *,
    width: int | None = None,
    steps: int = 3,
    points: int = 256,
    fixed_batch: bool = False,
    stat: Stat = "mean_abs",
    device: torch.device | None = None,
) -> xr.DataArray:
    """The coordinate check along depth at one width (depth-muP: Tensor Programs VI).

    Builds the spec's family at every depth in ``depths`` (``model.options.depth``;
    ``depth_mup`` applies as in a study) at ``width`` (default the spec's narrowest)
    and measures as :func:`coord_check`. Returns ``coord_size`` (depth, seed, layer,
    step) with layers ``{preact,act}/first`` (block 1), ``{preact,act}/last`` (the last
    block: the residual stream after it) and ``output``. Under depth-muP the last
    block's size is flat in depth; without it the residual stream grows like √L.
    """
    if len(set(depths)) != len(depths) or len(depths) < 2 or min(depths) < 1:
        raise ValueError(f"depths: {depths!r}: at least 2 distinct depths >= 1")
    width = width or min(spec.widths)
    rows = []
    for d in depths:
        model = spec.model.model_copy(update={"options": {**spec.model.options, "depth": d}})
        at = spec.model_copy(update={"model": model, "widths": [width]})
        cc = coord_check(
            at, steps=steps, points=points, fixed_batch=fixed_batch, stat=stat, device=device
        )
        names = _depth_layers([str(n) for n in cc.layer.values])
        keep = [str(n) for n in cc.layer.values if str(n) in names]
        cc = cc.sel(layer=keep, width=width, drop=True)
        rows.append(cc.assign_coords(layer=[names[n] for n in keep]).expand_dims(depth=[d]))
    out = xr.concat(rows, "depth", join="inner")
    out.attrs = {**rows[0].attrs, "width": int(width)}
    out.attrs["parameterization"] += " + depth-muP" if spec.depth_mup else ""
    return out
