"""Data streams (registry :data:`STREAMS`); importing this module registers the built-ins."""

from widthwise.streams import cifar as _cifar  # noqa: F401
from widthwise.streams import cifar5m as _cifar5m  # noqa: F401
from widthwise.streams import gegenbauer as _gegenbauer  # noqa: F401
from widthwise.streams import idx as _idx  # noqa: F401
from widthwise.streams import imagefolder as _imagefolder  # noqa: F401
from widthwise.streams import teacher as _teacher  # noqa: F401
from widthwise.streams import text as _text  # noqa: F401
from widthwise.streams import vision as _vision  # noqa: F401
from widthwise.streams.base import STREAMS, Stream, rng_for

__all__ = ["STREAMS", "Stream", "rng_for"]
