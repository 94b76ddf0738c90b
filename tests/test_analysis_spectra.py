"""Spectral consistency across widths: W1 between densities and curvature vs the widest."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from widthwise.analysis import AnalysisError
from widthwise.analysis.spectra import curvature_to_widest, density_mean, density_w1_to_widest


def gaussian_densities(shifts, sd=1.0, points=801):
    """(width, seed, sharpness_step, sharpness_bin) Gaussian densities centred at
    ``shifts[width]`` on per-width grids (grids differ between widths, not seeds)."""
    widths = [64, 128, 256]
    dens = np.zeros((3, 2, 1, points))
    grid = np.zeros_like(dens)
    for i, c in enumerate(shifts):
        g = np.linspace(c - 8 * sd, c + 8 * sd + i, points)  # a different grid per width
        d = np.exp(-0.5 * ((g - c) / sd) ** 2) / (sd * np.sqrt(2 * np.pi))
        dens[i], grid[i] = d, g
    dims = ("width", "seed", "sharpness_step", "sharpness_bin")
    coords = {"width": widths, "seed": [0, 1], "sharpness_step": [10]}
    return xr.DataArray(dens, dims=dims, coords=coords), xr.DataArray(
        grid, dims=dims, coords=coords
    )


def test_w1_of_translated_densities_is_the_shift():
    dens, grid = gaussian_densities([0.5, 0.2, 0.0], sd=2.0)
    w = density_w1_to_widest(dens, grid)
    assert w.dims == ("width", "sharpness_step")
    np.testing.assert_allclose(w.sel(sharpness_step=10).values, [0.5, 0.2, 0.0], atol=1e-4)
    rel = density_w1_to_widest(dens, grid, relative=True)
    np.testing.assert_allclose(rel.values[:, 0], [0.25, 0.1, 0.0], atol=1e-4)
    assert w.attrs["reference"] == 256


def test_density_mean_keeps_the_grid_and_unit_mass():
    dens, grid = gaussian_densities([0.0, 0.0, 0.0])
    dens[0, 1] = np.nan  # a diverged seed
    grid[0, 1] = np.nan
    m = density_mean(dens, grid)
    assert "seed" not in m.density.dims
    mass = np.trapezoid(m.density.values, m.grid.values, axis=-1)
    np.testing.assert_allclose(mass, 1.0, atol=1e-6)


def test_curvature_to_widest_relative_difference_and_verdict():
    vals = np.array([[12.0, 14.0], [10.5, 9.5], [10.0, 10.2]])  # (width, seed)
    da = xr.DataArray(vals, dims=("width", "seed"), coords={"width": [64, 128, 256]})
    out = curvature_to_widest(da)
    np.testing.assert_allclose(out.relative_difference.values, [(13 - 10.1) / 10.1, -0.1 / 10.1, 0])
    np.testing.assert_allclose(out.relative_seed_sd.values[0], np.std([12, 14], ddof=1) / 10.1)
    assert out.consistent.values.tolist() == [False, True, True]
    with pytest.raises(AnalysisError, match="Dimensions"):
        curvature_to_widest(da.rename(seed="member"))
