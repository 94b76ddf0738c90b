"""Trackers mirror a study's scalars and its report's figures to experiment trackers
(registry :data:`TRACKERS`): Weights & Biases, MLflow, TensorBoard. Each is an
optional extra, switched on in the spec's ``trackers:`` mapping.
"""

from __future__ import annotations

from typing import Any

from widthwise.registry import Registry

TRACKERS: Registry[Any] = Registry("tracker")
