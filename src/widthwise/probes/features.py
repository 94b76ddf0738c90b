"""Representation probes: feature kernels and preactivation distributions (paper Section 2).

Mean-field theory predicts that, at large width in muP / mean field, every hidden
layer's feature kernel ``K = φ φᵀ / N`` is deterministic (seed- and width-independent)
and that the coordinates of a preactivation vector are iid draws from one
single-site density. These probes record both so that analysis can measure the
distance to the widest width (paper Fig. 5 a-c, Fig. 11 preactivations and final
kernels, Fig. 12 kernels per layer).

Both read the family's *taps* (``Network.apply(..., taps=True)``):
``"act/<layer>"`` and ``"preact/<layer>"``, each ``(batch, width)``. A tap must be a
vector of features per example: a convolutional family pools over space (e.g. the
spatial mean of each channel) *before* tapping, so its kernels are kernels of the
spatially pooled features and ``N`` is its number of channels.

``kernels`` (step dim ``kernels_step``)
    ``feature_kernel (seed, kernels_layer, kernels_point_i, kernels_point_j)``:
    ``K[i, j] = Σ_n φ_n(x_i) φ_n(x_j) / N`` on the first ``points`` probe points (the
    coordinates of ``kernels_point_i`` / ``_j`` are their indices into ``point``),
    ``N`` = the tap's feature count (the width for MLP hidden layers). Computed in
    float64.

``preacts`` (step dim ``preacts_step``)
    Histograms of every coordinate of every selected layer's preactivation on the
    probe points, on bin edges fixed by the options (identical for every width,
    seed and step): ``preact_hist (seed, preacts_layer, preacts_bin)`` raw counts,
    ``preact_underflow`` / ``preact_overflow (seed, preacts_layer)`` counts below
    the first edge / above the last one (the last bin is closed, as in
    ``numpy.histogram``), ``preact_count (seed, preacts_layer)`` coordinates counted
    (points × width; ``hist.sum + underflow + overflow == count``), and
    ``preact_sample (seed, preacts_layer, preacts_point, preacts_neuron)``: the raw
    preactivations of the first ``sample_neurons`` neurons on the first
    ``sample_points`` probe points (NaN for neurons beyond a narrow width).
    A density estimate is ``hist / (count · bin width)``; the bin edges are the
    coordinate of ``preacts_edge``.

Both declare their dims and variables (:data:`KERNELS`, :data:`PREACTS`) and return
arrays with exactly those dims.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor

from widthwise.dataset_schema import Dim, Schema, Var, declare
from widthwise.errors import UserError
from widthwise.probes.base import PROBES, ProbeContext, ProbeDef, ProbeResult, mask_diverged
from widthwise.schedule import Schedule


class InitEndSchedule(Schedule):
    """A schedule that defaults to ``at: [init, end]`` when none of its keys is given."""

    default_schedule: ClassVar[dict[str, Any] | None] = {"at": ["init", "end"]}


def select_layers(
    available: tuple[str, ...] | list[str], requested: list[str] | None, probe: str, what: str
) -> list[str]:
    """``requested`` (validated against ``available``), or every available layer in order."""
    if requested is None:
        if not available:
            raise UserError(f"probe {probe}: the model exposes no {what}")
        return list(available)
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise UserError(
            f"probe {probe}: unknown layer(s) {', '.join(map(repr, unknown))}; "
            f"the model's {what}: {', '.join(available) or '(none)'}"
        )
    return list(requested)


def tap(taps: dict[str, Tensor], key: str, probe: str) -> Tensor:
    """The tap ``key`` (seed, batch, ...) or a UserError naming the taps there are."""
    if key not in taps:
        raise UserError(
            f"probe {probe}: the model has no tap {key!r}; taps: {', '.join(taps) or '(none)'}"
        )
    return taps[key].detach()


# -- feature kernels -----------------------------------------------------------------


class KernelOptions(InitEndSchedule):
    """Options of the ``kernels`` probe (default schedule: at init and end)."""

    layers: list[str] | None = Field(
        None, description="layers to record (Network.layers names); default: all"
    )
    points: int = Field(
        64, gt=0, le=2**14, description="M: kernels on the first M probe points (≤ 2¹⁴)"
    )
    features: Literal["act", "preact"] = Field(
        "act", description="φ = post-activations (act) or preactivations (preact)"
    )


KERNELS = declare(
    Schema(
        "kernels",
        "kernels_step",
        (
            Dim("kernels_step", "steps of the `kernels` probe", "steps"),
            Dim("kernels_layer", "recorded layer", "layer names", formerly=("kernel_layer",)),
            Dim(
                "kernels_point_i",
                "kernel row: one of the first M probe points",
                "index into `point`",
                index_of="point",
                formerly=("kpoint_i",),
            ),
            Dim(
                "kernels_point_j",
                "kernel column: one of the first M probe points",
                "index into `point`",
                index_of="point",
                formerly=("kpoint_j",),
            ),
        ),
        (
            Var(
                "feature_kernel",
                (
                    "width",
                    "seed",
                    "kernels_step",
                    "kernels_layer",
                    "kernels_point_i",
                    "kernels_point_j",
                ),
                "activation²",
                "feature kernel K = φφᵀ/N of each layer (float64)",
            ),
        ),
    )
)


def kernels_probe(ctx: ProbeContext, options: KernelOptions) -> ProbeResult:
    """feature_kernel (seed, kernels_layer, kernels_point_i, kernels_point_j) = φ φᵀ / N, float64.

    φ: the tap ``"<features>/<layer>"`` on the first M probe points, (seed, M, N).
    Paper Section 2, Fig. 5 b-c, Fig. 11, Fig. 12.
    """
    names = select_layers(ctx.ensemble.network.layers, options.layers, "kernels", "layers")
    x = ctx.probe_x[: options.points]
    with torch.no_grad():
        _, taps = ctx.ensemble.forward_taps(ctx.params, x)
        kernels = []
        for name in names:
            phi = tap(taps, f"{options.features}/{name}", "kernels")
            if phi.ndim != 3:
                raise UserError(
                    f"probe kernels: tap {options.features}/{name} has shape "
                    f"{tuple(phi.shape[1:])} per seed; features must be (batch, width) "
                    "(a convolutional family pools over space before tapping)"
                )
            phi = phi.to(torch.float64)  # (seed, M, N)
            kernels.append(phi @ phi.transpose(1, 2) / phi.shape[-1])  # (seed, M, M)
        k = torch.stack(kernels, dim=1)  # (seed, layer, M, M)
    alive = ctx.alive.cpu().numpy()
    return {
        "feature_kernel": (
            KERNELS.result_dims("feature_kernel"),
            mask_diverged(k.cpu().numpy(), alive),
        ),
        "kernels_layer": (("kernels_layer",), np.array(names)),
    }


PROBES.register(
    "kernels", options=KernelOptions, description="feature kernels φφᵀ/N per layer (Fig. 5, 12)"
)(ProbeDef(fn=kernels_probe, step_dim="kernels_step"))


# -- preactivation distributions -------------------------------------------------------


class PreactOptions(InitEndSchedule):
    """Options of the ``preacts`` probe (default schedule: at init and end)."""

    layers: list[str] | None = Field(
        None, description="layers to record (Network.layers names); default: all"
    )
    points: int | None = Field(
        None, gt=0, le=10**6, description="probe points counted; default: all"
    )
    range: tuple[float, float] = Field(
        (-5.0, 5.0), description="[first edge, last edge] of the histogram"
    )
    bins: int = Field(60, gt=0, le=10**5, description="number of equal-width bins in range (≤ 10⁵)")
    sample_points: int = Field(8, ge=0, le=10**4, description="raw sample: first points (≤ 10⁴)")
    sample_neurons: int = Field(16, ge=0, le=10**4, description="raw sample: first neurons (≤ 10⁴)")

    @model_validator(mode="after")
    def _range_increasing(self) -> PreactOptions:
        lo, hi = self.range
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(
                f"range must be two finite numbers [lo, hi] with lo < hi, got {[lo, hi]}"
            )
        return self

    def edges(self) -> np.ndarray:
        """The bins + 1 edges, float64; the same for every width, seed and step."""
        return np.linspace(self.range[0], self.range[1], self.bins + 1)


def histogram_counts(values: Tensor, edges: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-row histograms of ``values`` (rows, n) on sorted ``edges`` (bins + 1,).

    Returns (hist (rows, bins), underflow (rows,), overflow (rows,), counted (rows,)),
    all float64. Bins are [e_j, e_j+1) except the last, [e_bins-1, e_bins] (as
    numpy.histogram); NaNs are not counted; ±inf go to under/overflow.
    """
    rows, bins = values.shape[0], edges.numel() - 1
    v = values.to(torch.float64)
    idx = torch.bucketize(v, edges, right=True)  # number of edges <= v: 0 .. bins+1
    idx = torch.where(v == edges[-1], torch.full_like(idx, bins), idx)  # last bin is closed
    idx = torch.where(torch.isnan(v), torch.full_like(idx, bins + 2), idx)  # not counted
    width = bins + 3  # [underflow, bin 1..bins, overflow, nan]
    offsets = torch.arange(rows, device=v.device).unsqueeze(1) * width
    counts = torch.bincount((idx + offsets).reshape(-1), minlength=rows * width)
    counts = counts.reshape(rows, width).to(torch.float64)
    hist, under, over = counts[:, 1 : bins + 1], counts[:, 0], counts[:, bins + 1]
    return hist, under, over, counts[:, : bins + 2].sum(1)


_PREACT_LAYER = ("width", "seed", "preacts_step", "preacts_layer")

PREACTS = declare(
    Schema(
        "preacts",
        "preacts_step",
        (
            Dim("preacts_step", "steps of the `preacts` probe", "steps"),
            Dim("preacts_layer", "recorded layer", "layer names", formerly=("preact_layer",)),
            Dim("preacts_bin", "histogram bin", "bin centers (float64)", formerly=("preact_bin",)),
            Dim(
                "preacts_edge",
                "histogram bin edge (bins + 1)",
                "the edges (float64)",
                formerly=("preact_edge",),
            ),
            Dim(
                "preacts_point",
                "raw sample: one of the first `sample_points` probe points",
                "index into `point`",
                index_of="point",
                formerly=("preact_point",),
            ),
            Dim(
                "preacts_neuron",
                "raw sample: one of the first `sample_neurons` units",
                formerly=("preact_neuron",),
            ),
        ),
        (
            Var(
                "preact_hist",
                (*_PREACT_LAYER, "preacts_bin"),
                "count",
                "coordinates of the layer's preactivation in each bin",
            ),
            Var("preact_underflow", _PREACT_LAYER, "count", "coordinates below the first edge"),
            Var("preact_overflow", _PREACT_LAYER, "count", "coordinates above the last edge"),
            Var(
                "preact_count",
                _PREACT_LAYER,
                "count",
                "coordinates counted: points × width (= hist summed + underflow + overflow)",
            ),
            Var(
                "preact_sample",
                (*_PREACT_LAYER, "preacts_point", "preacts_neuron"),
                "preactivation",
                "raw preactivations of the first neurons on the first points (NaN beyond a "
                "narrow width)",
            ),
        ),
    )
)


def preacts_probe(ctx: ProbeContext, options: PreactOptions) -> ProbeResult:
    """Histograms and a raw sample of each layer's preactivations on the probe points.

    preact_hist (seed, preacts_layer, preacts_bin); preact_underflow, preact_overflow,
    preact_count (seed, preacts_layer); preact_sample (seed, preacts_layer,
    preacts_point, preacts_neuron). Paper Section 2, Fig. 5 a, Fig. 11.
    """
    names = select_layers(ctx.ensemble.network.layers, options.layers, "preacts", "layers")
    x = ctx.probe_x if options.points is None else ctx.probe_x[: options.points]
    edges = torch.as_tensor(options.edges(), dtype=torch.float64, device=x.device)
    sp, sn = options.sample_points, options.sample_neurons
    with torch.no_grad():
        _, taps = ctx.ensemble.forward_taps(ctx.params, x)
        hists, unders, overs, counts, samples = [], [], [], [], []
        for name in names:
            pre = tap(taps, f"preact/{name}", "preacts")  # (seed, batch, width)
            e = pre.shape[0]
            hist, under, over, counted = histogram_counts(pre.reshape(e, -1), edges)
            hists.append(hist)
            unders.append(under)
            overs.append(over)
            counts.append(counted)
            flat = pre.reshape(e, pre.shape[1], -1)  # (seed, batch, features)
            sample = torch.full((e, sp, sn), float("nan"), dtype=torch.float64)
            got = flat[:, :sp, :sn].to(torch.float64).cpu()
            sample[:, : got.shape[1], : got.shape[2]] = got
            samples.append(sample)
    alive = ctx.alive.cpu().numpy()

    def stack(parts: list[Tensor]) -> np.ndarray:
        return mask_diverged(torch.stack([p.cpu() for p in parts], dim=1).numpy(), alive)

    parts = {
        "preact_hist": hists,
        "preact_underflow": unders,
        "preact_overflow": overs,
        "preact_count": counts,
        "preact_sample": samples,
    }
    out: ProbeResult = {"preacts_layer": (("preacts_layer",), np.array(names))}
    for var, values in parts.items():
        out[var] = (PREACTS.result_dims(var), stack(values))
    return out


def preact_coords(options: PreactOptions) -> dict[str, tuple[tuple[str, ...], Any]]:
    """Bin centers and edges (float64); layer names are recorded at run time."""
    edges = options.edges()
    return {
        "preacts_bin": (("preacts_bin",), 0.5 * (edges[:-1] + edges[1:])),
        "preacts_edge": (("preacts_edge",), edges),
    }


PROBES.register(
    "preacts",
    options=PreactOptions,
    description="preactivation histograms on fixed bins and a raw sample (Fig. 5, 11)",
)(ProbeDef(fn=preacts_probe, step_dim="preacts_step", coords=preact_coords))
