"""Probes (registry :data:`PROBES`); importing this module registers the built-ins."""

from widthwise.probes import attention as _attention  # noqa: F401
from widthwise.probes import features as _features  # noqa: F401
from widthwise.probes import loss as _loss  # noqa: F401
from widthwise.probes import ntk as _ntk  # noqa: F401
from widthwise.probes import sharpness as _sharpness  # noqa: F401
from widthwise.probes import train_eval as _train_eval  # noqa: F401
from widthwise.probes.base import PROBES, ProbeContext, ProbeDef, ProbeResult

__all__ = ["PROBES", "ProbeContext", "ProbeDef", "ProbeResult"]
