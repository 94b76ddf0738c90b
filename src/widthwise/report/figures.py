"""Every report figure in one namespace: pure functions, arrays in, a Figure out.

Grouped by module: curves over training (:mod:`~widthwise.report.fig_curves`), seed
statistics and fits (:mod:`~widthwise.report.fig_fits`), representations
(:mod:`~widthwise.report.fig_repr`), study overlays (:mod:`~widthwise.report.fig_compare`).
"""

from widthwise.report.fig_compare import overlay_curves, overlay_vs_width
from widthwise.report.fig_curves import (
    distance_to_widest,
    logit_trajectories,
    loss_curves,
    successive_differences,
)
from widthwise.report.fig_fits import bias_variance, coord_check, power_law, sharpness
from widthwise.report.fig_repr import (
    attention_distance,
    attention_grid,
    kernel_distance,
    kernel_grid,
    ntk_spectrum,
    preact_histograms,
)

__all__ = [
    "attention_distance",
    "attention_grid",
    "bias_variance",
    "coord_check",
    "distance_to_widest",
    "kernel_distance",
    "kernel_grid",
    "logit_trajectories",
    "loss_curves",
    "ntk_spectrum",
    "overlay_curves",
    "overlay_vs_width",
    "power_law",
    "preact_histograms",
    "sharpness",
    "successive_differences",
]
