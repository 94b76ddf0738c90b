"""Probes (registry :data:`PROBES`); importing this module registers the built-ins."""

from widthwise.probes import loss as _loss  # noqa: F401
from widthwise.probes.base import PROBES, ProbeContext, ProbeDef, ProbeResult

__all__ = ["PROBES", "ProbeContext", "ProbeDef", "ProbeResult"]
