"""Coordinate check: the size of every layer's activations vs width over the first steps.

Under a parameterization with a well-defined limit (mup, mf), mean |activation|
per coordinate stays flat in width after a few steps; under sp it grows with width
(Yang et al. 2022's diagnostic, as ``mup.coord_check``, for every family and
parameterization of widthwise).
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from widthwise.spec import StudySpec
from widthwise.streams import STREAMS
from widthwise.trainer import EnsembleTrainer


def coord_check(
    spec: StudySpec,
    *,
    steps: int = 3,
    widths: list[int] | None = None,
    points: int = 256,
    device: torch.device | None = None,
) -> xr.DataArray:
    """Mean |coordinate| of each tapped layer and of the output, per width and step.

    Returns a DataArray with dims (width, layer, step): step s is the network after
    s updates (0 = init), measured on ``points`` fixed inputs of the stream and
    averaged over inputs, coordinates and seeds. Layers are the family's
    ``act/<layer>`` taps plus ``out`` (the logits).
    """
    widths = widths or spec.widths
    stream = STREAMS.get(spec.data.stream)(spec.data.seed, spec.stream_options())
    x_np, y_np = stream.probe_set(points)
    rows = []
    layer_names: list[str] = []
    for width in widths:
        trainer = EnsembleTrainer(spec, width, stream, device)
        x, _ = trainer.to_tensors(x_np, y_np)  # token ids stay integers
        per_step = []
        for s in range(steps + 1):
            with torch.no_grad():
                out, taps = trainer.ensemble.forward_taps(trainer.params, x)
            acts = {k.removeprefix("act/"): v for k, v in taps.items() if k.startswith("act/")}
            acts["out"] = out
            layer_names = list(acts)
            per_step.append([float(v.abs().mean()) for v in acts.values()])
            if s < steps:
                trainer.train_step()
        rows.append(np.array(per_step).T)  # (layer, step)
    return xr.DataArray(
        np.stack(rows),
        dims=("width", "layer", "step"),
        coords={"width": widths, "layer": layer_names, "step": np.arange(steps + 1)},
        name="mean_abs_activation",
        attrs={"parameterization": spec.parameterization.name, "units": "mean |coordinate|"},
    )
