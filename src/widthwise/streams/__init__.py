"""Data streams (registry :data:`STREAMS`); importing this module registers the built-ins."""

from widthwise.streams import gegenbauer as _gegenbauer  # noqa: F401
from widthwise.streams import teacher as _teacher  # noqa: F401
from widthwise.streams.base import STREAMS, Stream, rng_for

__all__ = ["STREAMS", "Stream", "rng_for"]
