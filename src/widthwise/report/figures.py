"""Every report figure in one namespace: pure functions, arrays in, a Figure out.

Grouped by module: curves over training (:mod:`~widthwise.report.fig_curves`), seed
statistics and fits (:mod:`~widthwise.report.fig_fits`), representations
(:mod:`~widthwise.report.fig_repr`), the consistency horizon
(:mod:`~widthwise.report.fig_horizon`) and studies side by side
(:mod:`~widthwise.report.fig_compare`). The shared look — the one width → colour map
(:func:`width_colors`), log axes, legends placed off the data — is
:mod:`~widthwise.report.style`.
"""

from widthwise.report.fig_compare import overlay_curves, overlay_vs_width
from widthwise.report.fig_curves import (
    distance_to_widest,
    logit_trajectories,
    loss_curves,
    successive_differences,
)
from widthwise.report.fig_fits import bias_variance, coord_check, power_law, sharpness
from widthwise.report.fig_horizon import horizon
from widthwise.report.fig_repr import (
    attention_distance,
    attention_grid,
    kernel_distance,
    kernel_grid,
    kernel_limit_distance,
    ntk_spectrum,
    preact_histograms,
)
from widthwise.report.style import width_colors

__all__ = [
    "attention_distance",
    "attention_grid",
    "bias_variance",
    "coord_check",
    "distance_to_widest",
    "horizon",
    "kernel_distance",
    "kernel_grid",
    "kernel_limit_distance",
    "logit_trajectories",
    "loss_curves",
    "ntk_spectrum",
    "overlay_curves",
    "overlay_vs_width",
    "power_law",
    "preact_histograms",
    "sharpness",
    "successive_differences",
    "width_colors",
]
