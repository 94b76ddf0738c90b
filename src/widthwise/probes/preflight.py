"""Probe options checked against the model before a run writes anything.

Some options can only be judged against the network: more eigenvalues than it has
parameters, a layer group that names none of its tensors, more sharpness batches
than probe points. :func:`probe_problems` builds the narrowest width on torch's
``meta`` device (only the parameter list is made, nothing is allocated) and asks
every probe that declares :attr:`~widthwise.probes.base.ProbeDef.model_problems`;
``widthwise run`` refuses such a spec in one line (exit 2) before the study
directory is touched, instead of failing at the first probe step.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from widthwise.probes.base import PROBES, ModelFacts

if TYPE_CHECKING:
    from widthwise.spec import StudySpec
    from widthwise.streams.base import Stream


def model_facts(spec: StudySpec, stream: Stream) -> ModelFacts:
    """Parameter names and count of one member at the narrowest width, and the probe
    points, for checking probe options."""
    from widthwise.families import build_network

    width = spec.widths[0]
    in_shape = tuple(int(s) for s in stream.in_shape)
    with torch.device("meta"):
        net = build_network(
            spec.model.family, width, in_shape, int(stream.out_dim), spec.family_options()
        )
    return ModelFacts(
        names=tuple(p.name for p in net.params),
        n_params=sum(math.prod(p.shape) for p in net.params),
        probe_points=spec.data.probe_points,
    )


def probe_problems(spec: StudySpec, stream: Stream) -> list[str]:
    """One line per probe option that cannot work with this model (empty: all can)."""
    options = spec.probe_options()
    checks = {n: PROBES.get(n).model_problems for n in options}
    if not any(checks.values()):
        return []
    facts = model_facts(spec, stream)
    problems: list[str] = []
    for name, check in checks.items():
        if check is not None:
            problems.extend(f"probes.{name}.{p}" for p in check(options[name], facts))
    return problems
