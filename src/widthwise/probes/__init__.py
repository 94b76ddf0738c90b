"""Probes (registry :data:`PROBES`); importing this module registers the built-ins.

Standalone Hessian measurements on any ``nn.Module``: :func:`sharpness` (the
``widthwise.probes.sharpness`` module is callable), :func:`trace`, :func:`density`
(:mod:`widthwise.probes.standalone`).
"""

from widthwise.probes import attention as _attention  # noqa: F401
from widthwise.probes import features as _features  # noqa: F401
from widthwise.probes import loss as _loss  # noqa: F401
from widthwise.probes import ntk as _ntk  # noqa: F401
from widthwise.probes import sharpness as _sharpness  # noqa: F401
from widthwise.probes import train_eval as _train_eval  # noqa: F401
from widthwise.probes.base import PROBES, ModelFacts, ProbeContext, ProbeDef, ProbeResult
from widthwise.probes.standalone import density, trace

__all__ = ["PROBES", "ModelFacts", "ProbeContext", "ProbeDef", "ProbeResult", "density", "trace"]
