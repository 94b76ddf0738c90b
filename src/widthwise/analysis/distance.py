"""Distance of every width to the widest width: scaled RMSE and relative Frobenius distance.

Paper Section 2, Figure 3 d-f (logits) and Figure 5 c/f (kernels): the widest
trained network is the proxy for the infinite-width limit, and a quantity is
consistent when its distance to the widest shrinks systematically with width.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import xarray as xr

from widthwise.analysis._checks import (
    AnalysisError,
    as_dims,
    plain,
    reference_of,
    require_dataarray,
    require_dims,
    widest,
)


def _rms(da: xr.DataArray, over: tuple[str, ...]) -> xr.DataArray:
    return np.sqrt((da**2).mean(over, skipna=False))


def scaled_rmse(a: xr.DataArray, b: xr.DataArray, *, over: str | Iterable[str]) -> xr.DataArray:
    """RMS(a − b) / RMS(b), the means taken jointly over the sample dims ``over``.

    ``a`` and ``b`` broadcast by dim name; the result keeps every other dim. A NaN
    anywhere in a sample (a diverged member) makes that entry NaN. Dimensionless.
    """
    over = as_dims(over)
    require_dims(a, over, "a")
    require_dims(b, over, "b")
    return _rms(a - b, over) / _rms(b, over)


def relative_frobenius(
    a: xr.DataArray, b: xr.DataArray, *, over: str | Iterable[str]
) -> xr.DataArray:
    """‖a − b‖_F / ‖b‖_F over the sample dims ``over`` (e.g. both kernel point dims).

    The same number as :func:`scaled_rmse` (numerator and denominator sum the same
    count of entries), which computes it; the name kernels are compared in.
    Dimensionless.
    """
    return scaled_rmse(a, b, over=over)


def _to_widest(fn, da, over, dim, seed_dim, ensemble, name, description) -> xr.DataArray:
    da = require_dataarray(da, "da")
    over = as_dims(over)
    require_dims(da, (dim, *over), "da")
    if dim in over or seed_dim in over:
        raise AnalysisError(
            f"'over' lists the sample dims to average over; it must not contain "
            f"dim={dim!r} or seed_dim={seed_dim!r}. Got over={over}."
        )
    arr, ref = reference_of(da, dim=dim, seed_dim=seed_dim, ensemble=ensemble, sample_dims=over)
    out = fn(arr, ref, over=over).rename(name)
    out.attrs = {
        "description": description,
        "units": "fraction of the widest's norm",
        "reference_width": plain(widest(da, dim)),
        "ensemble": int(bool(ensemble)),
        "over": list(over),
    }
    return out


def scaled_rmse_to_widest(
    da: xr.DataArray,
    *,
    over: str | Iterable[str] = ("point", "output"),
    dim: str = "width",
    seed_dim: str = "seed",
    ensemble: bool = False,
) -> xr.DataArray:
    """Scaled RMSE of each width's array to the widest width's (paper Fig. 3 d-f).

    ``RMSE_over(q_n − q_widest) / RMS_over(q_widest)`` with the means taken jointly over
    the sample dims ``over`` (default the probe points and outputs of ``test_logits``;
    any probe array works, e.g. ``over=("kernels_point_i", "kernels_point_j")`` for
    kernels).

    - ``ensemble=False`` (per seed): seed ``s`` of width n against seed ``s`` of the
      widest (seeds paired by label; different widths share no initialization, so the
      pairing is arbitrary and the distance includes both widths' seed variance).
      Dims: ``da``'s dims minus ``over``, e.g. (width, seed, test_step).
    - ``ensemble=True``: seed means first (diverged members, i.e. ones with NaN in
      their sample, left out), then compared. Dims: e.g. (width, test_step).

    The widest width is the largest ``dim`` coordinate; its own distance is 0.
    Dimensionless (a fraction of the widest's RMS).
    """
    return _to_widest(
        scaled_rmse,
        da,
        over,
        dim,
        seed_dim,
        ensemble,
        "scaled_rmse",
        "RMSE to the widest width divided by the widest's RMS",
    )


def relative_frobenius_to_widest(
    da: xr.DataArray,
    *,
    over: str | Iterable[str],
    dim: str = "width",
    seed_dim: str = "seed",
    ensemble: bool = True,
) -> xr.DataArray:
    """‖K_n − K_widest‖_F / ‖K_widest‖_F for kernels (paper Fig. 5 c/f, Fig. 12).

    ``over`` names the kernel's sample dims, e.g. ``("kernels_point_i",
    "kernels_point_j")``; other dims (layer, step, ...) are kept. ``ensemble=True`` (default) compares seed-mean
    kernels, ``False`` compares seed ``s`` with seed ``s`` of the widest. Dimensionless.
    """
    return _to_widest(
        relative_frobenius,
        da,
        over,
        dim,
        seed_dim,
        ensemble,
        "relative_frobenius",
        "relative Frobenius distance to the widest width",
    )
