"""Analysis of width-consistency studies: pure functions of xarray data, no I/O, no plotting.

Every function takes DataArrays with named dims (``dim="width"``, ``seed_dim="seed"``,
sample dims by name) and returns DataArrays or Datasets whose ``attrs`` state units
and conventions. See ``docs/analysis.md`` for the formulas and the paper figures.

    from widthwise import analysis as wa
    ds = widthwise.open_study(path)
    wa.scaled_rmse_to_widest(ds.test_logits)                   # Fig. 3 d-f
    wa.bias_variance(ds.test_logits, ds.test_target)           # Fig. 7, Appendix F
    wa.power_law_fit(ds.test_loss.isel(test_step=-1))          # Fig. 9
    wa.transfer_verdict(wa.optimal_lr(wa.loss_at(ds)))         # μTransfer (sweep studies)
"""

from widthwise.analysis._checks import AnalysisError
from widthwise.analysis.alignment import kernel_target_alignment
from widthwise.analysis.bias_variance import bias_variance, ensemble_size_curve, probe_loss
from widthwise.analysis.consistency import consistency_verdict, successive_differences
from widthwise.analysis.coordinates import coord_slopes
from widthwise.analysis.distance import (
    relative_frobenius,
    relative_frobenius_to_widest,
    scaled_rmse,
    scaled_rmse_to_widest,
)
from widthwise.analysis.horizon import consistency_horizon, consistent_width, horizon_sentence
from widthwise.analysis.limit_kernels import (
    entk_limit,
    limit_kernels_for,
    nngp_kernels,
    ntk_blocks,
    ntk_limit,
    output_nngp,
)
from widthwise.analysis.ntk_spectrum import (
    compare_loss_curves,
    cumulative_task_power,
    gradient_flow_loss,
    mode_power,
    ntk_eigen,
    sgd_flow_rate,
)
from widthwise.analysis.power_law import (
    limit_curve,
    power_law_curve,
    power_law_fit,
)
from widthwise.analysis.similarity import (
    attention_distance,
    attention_distance_to_widest,
    cka,
    cka_to_widest,
    wasserstein1,
    wasserstein1_to_widest,
)
from widthwise.analysis.spectra import curvature_to_widest, density_mean, density_w1_to_widest
from widthwise.analysis.study_horizon import horizon_summary, study_horizons
from widthwise.analysis.transfer import (
    loss_at,
    optimal_lr,
    select_point,
    sweep_dims,
    transfer_sentence,
    transfer_verdict,
    tuned_point,
    tuning_width,
)
from widthwise.analysis.uncertainty import (
    bootstrap_over_seeds,
    percentile_interval,
    standard_error_interval,
)
from widthwise.analysis.verdict import (
    kernel_distance_to_widest,
    logit_distance_to_widest,
    loss_gap_to_widest,
    mean_distance,
    plateau,
    successive_gap,
    verdict,
    width_slope,
)

__all__ = [
    "coord_slopes",
    "AnalysisError",
    "attention_distance",
    "attention_distance_to_widest",
    "bias_variance",
    "bootstrap_over_seeds",
    "cka",
    "cka_to_widest",
    "compare_loss_curves",
    "consistency_horizon",
    "consistency_verdict",
    "curvature_to_widest",
    "density_mean",
    "density_w1_to_widest",
    "consistent_width",
    "cumulative_task_power",
    "ensemble_size_curve",
    "entk_limit",
    "gradient_flow_loss",
    "horizon_sentence",
    "kernel_distance_to_widest",
    "kernel_target_alignment",
    "limit_curve",
    "loss_at",
    "limit_kernels_for",
    "logit_distance_to_widest",
    "loss_gap_to_widest",
    "mean_distance",
    "mode_power",
    "nngp_kernels",
    "ntk_blocks",
    "ntk_eigen",
    "ntk_limit",
    "optimal_lr",
    "output_nngp",
    "percentile_interval",
    "plateau",
    "power_law_curve",
    "power_law_fit",
    "probe_loss",
    "relative_frobenius",
    "relative_frobenius_to_widest",
    "scaled_rmse",
    "scaled_rmse_to_widest",
    "select_point",
    "sgd_flow_rate",
    "standard_error_interval",
    "successive_differences",
    "successive_gap",
    "sweep_dims",
    "transfer_sentence",
    "transfer_verdict",
    "tuned_point",
    "tuning_width",
    "verdict",
    "wasserstein1",
    "wasserstein1_to_widest",
    "width_slope",
    "horizon_summary",
    "study_horizons",
]
