"""The report's Hessian spectrum section: density per width, trace over training,
per-layer curvature, and CSVs holding the analysis' numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import tiny_spec_dict, write_spec

import widthwise
from widthwise.analysis.spectra import density_w1_to_widest
from widthwise.report.build import build_report
from widthwise.report.sections_spectra import spectra_section

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated"),
]


@pytest.mark.slow
def test_spectra_section_draws_density_and_trace(tmp_path, single_thread):
    probes = {
        "train_loss": {"every": 1},
        "sharpness": {
            "steps": [0, 8],
            "trace": True,
            "trace_samples": 20,
            "density": True,
            "density_steps": 20,
            "density_runs": 2,
            "density_points": 64,
            "blocks": "layer",
        },
    }
    spec = tiny_spec_dict(tmp_path / "study", steps=8, probes=probes)
    out = widthwise.run(write_spec(tmp_path / "tiny.yaml", spec))
    page = build_report(out, tmp_path / "report").read_text()
    assert 'id="spectra"' in page and "Hessian spectrum" in page
    figs = tmp_path / "report" / "figures"
    assert (figs / "spectral_density.png").is_file() and (figs / "hessian_trace.png").is_file()
    ds = widthwise.open_study(out)
    want = density_w1_to_widest(
        ds.sharpness_lr_density, ds.sharpness_lr_density_grid, relative=True
    )
    got = pd.read_csv(tmp_path / "report" / "csv" / "spectral_density_w1.csv")
    got = got.set_index(["width", "sharpness_step"])["w1_relative"]
    for w in ds.width.values:
        for s in ds.sharpness_step.values:
            np.testing.assert_allclose(got[(w, s)], float(want.sel(width=w, sharpness_step=s)))
    assert float(want.sel(width=32).max()) == 0.0  # the widest against itself
    # every density integrates to 1 on its grid
    mass = np.trapezoid(ds.sharpness_lr_density.values, ds.sharpness_lr_density_grid.values)
    np.testing.assert_allclose(mass, 1.0, atol=2e-3)
    assert "largest top eigenvalue at the widest width" in page


def synthetic(trace_shift=0.0):
    """Two widths, two seeds, two steps: Gaussian densities, traces and block tops."""
    widths, seeds, steps, bins = [32, 64], [0, 1], [0, 10], 101
    grid = np.broadcast_to(np.linspace(-5, 5, bins), (2, 2, 2, bins)).copy()
    centre = np.array([0.5, 0.0])[:, None, None, None]
    dens = np.exp(-0.5 * (grid - centre) ** 2) / np.sqrt(2 * np.pi)
    d4 = ("width", "seed", "sharpness_step", "sharpness_bin")
    d3 = ("width", "seed", "sharpness_step")
    tr = np.array([[[5.0, 6.0], [5.2, 6.2]], [[5.0, 6.0], [5.1, 6.1]]])
    tr[0, :, 1] += trace_shift  # width 32 at the last step
    block = np.zeros((2, 2, 2, 2))
    block[..., 1] = 3.0
    block[..., 0] = 1.0
    return xr.Dataset(
        {
            "sharpness_lr_density": (d4, dens),
            "sharpness_lr_density_grid": (d4, grid),
            "sharpness_lr_trace": (d3, tr),
            "sharpness_lr_block_top": ((*d3, "sharpness_layer"), block),
        },
        coords={
            "width": widths,
            "seed": seeds,
            "sharpness_step": steps,
            "sharpness_layer": ["l1", "out"],
        },
    )


def test_spectra_section_from_arrays():
    sec = spectra_section(synthetic())
    assert sec is not None and sec.id == "spectra"
    assert [p.name for p in sec.panels] == ["spectral_density", "hessian_trace"]
    w1 = sec.tables["spectral_density_w1"].set_index(["width", "sharpness_step"])["w1_relative"]
    np.testing.assert_allclose(w1[(32, 10)], 0.5, atol=2e-3)  # shift 0.5 / sd 1
    np.testing.assert_allclose(w1[(64, 10)], 0.0, atol=1e-12)
    assert "32: 0.5" in sec.text
    assert "every width agrees with the widest" in sec.text
    assert "is out." in sec.text  # the block with the largest top eigenvalue
    far = spectra_section(synthetic(trace_shift=5.0))
    assert "widths 32 differ from the widest" in far.text
    assert spectra_section(synthetic().drop_vars(list(synthetic().data_vars))) is None
