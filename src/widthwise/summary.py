"""Per-width summary of a study (the table ``widthwise show`` prints)."""

from __future__ import annotations

import numpy as np
import xarray as xr

FINAL_WINDOW = 10  # train loss: mean of each seed's last logged steps (minibatch noise)


def width_summary(ds: xr.Dataset) -> xr.Dataset:
    """Final losses per width: mean and std over live seeds.

    Returns a Dataset over ``width`` with ``train_loss_mean/std`` (each seed's mean
    over its last ``FINAL_WINDOW`` logged steps), ``test_loss_mean/std`` (at the
    last test step), ``diverged`` (member count), ``status`` and ``wall_time``.
    """
    out = xr.Dataset(coords={"width": ds.width})
    if "train_loss" in ds:
        tail = ds.train_loss.isel(step=slice(-FINAL_WINDOW, None)).mean("step", skipna=False)
        out["train_loss_mean"] = tail.mean("seed")
        out["train_loss_std"] = tail.std("seed")
    if "test_loss" in ds:
        last = ds.test_loss.isel(test_step=-1)
        out["test_loss_mean"] = last.mean("seed")
        out["test_loss_std"] = last.std("seed")
    if "test_error" in ds:
        out["test_error_mean"] = ds.test_error.isel(test_step=-1).mean("seed")
    out["diverged"] = (ds.diverged_step >= 0).sum("seed")
    out["status"] = ds.status
    out["wall_time"] = ds.wall_time
    return out


def fmt_mean_std(mean: float, std: float) -> str:
    if not np.isfinite(mean):
        return "—"
    return f"{mean:.3g} ± {std:.1g}" if np.isfinite(std) else f"{mean:.3g}"
