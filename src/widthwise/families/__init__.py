"""Model families (registry :data:`FAMILIES`); importing this module registers the built-ins."""

from widthwise.families import mlp as _mlp  # noqa: F401  (registers "mlp")
from widthwise.families.base import FAMILIES, Network

__all__ = ["FAMILIES", "Network"]
