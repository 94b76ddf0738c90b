"""The paper's claims at laptop scale: every check of every claim, and every check fed noise.

Not in the default run: ``OMP_NUM_THREADS=1 pytest -m repro tests/test_repro.py``. The
module runs every spec of ``examples/paper/`` once (the same studies as
``reproduce.py`` and docs/reproduction.md; ~20 minutes on a quiet 2-core CPU; set
``WIDTHWISE_PAPER_RUNS`` to reuse finished runs, e.g. /tmp/paper_runs), then

- asserts every check of every claim has the outcome ``claims.py`` states: "pass",
  except the checks a claim lists in ``expected_fail`` with the reason it cannot be
  shown at this scale, which must not pass;
- feeds every claim's analysis the same studies with every measured array replaced by
  pure noise (no width effect; 4 draws, a check may pass on at most one of them by
  chance), by NaN and by a constant (no check may pass), so that a check that can pass
  on such data, a check that cannot fail, is caught.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

pytestmark = pytest.mark.repro

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "paper"))

import claims  # noqa: E402

import widthwise  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("WIDTHWISE_PAPER_RUNS")
    return Path(env) if env else tmp_path_factory.mktemp("paper_runs")


@pytest.fixture(scope="module")
def results(runs: Path) -> dict[str, claims.ClaimResult]:
    return {cid: claims.run_claim(cid, runs) for cid in claims.CLAIMS}


def report(res: claims.ClaimResult) -> str:
    return "\n".join(f"[{c.result}] {c.text}: {c.value} ({c.margin})" for c in res.checks)


@pytest.mark.parametrize("cid", list(claims.CLAIMS))
def test_every_check(cid: str, results: dict[str, claims.ClaimResult]) -> None:
    res = results[cid]
    assert not res.skipped, res.skipped
    expected_fail = res.claim.expected_fail
    assert res.checks, cid
    for c in res.checks:
        if any(c.text.startswith(p) for p in expected_fail):
            assert not c.passed, f"{cid}: expected not to pass at this scale\n{report(res)}"
        else:
            assert c.passed, f"{cid}: {c.text!r} did not pass\n{report(res)}"


def perturbed(ds: xr.Dataset, mode: str, rng: np.random.Generator) -> xr.Dataset:
    """``ds`` with every float array that has a width dim replaced (noise / NaN / constant).

    Noise: i.i.d. normal with the array's own mean and standard deviation (no width or
    seed structure); constant: the array's mean everywhere.
    """
    out = ds.copy()
    for name, v in ds.data_vars.items():
        if v.dtype.kind != "f" or "width" not in v.dims:
            continue
        vals = v.values[np.isfinite(v.values)]
        mean = float(vals.mean()) if vals.size else 0.0
        std = float(vals.std()) if vals.size else 1.0
        if mode == "noise":
            new = mean + std * rng.standard_normal(v.shape)
        elif mode == "nan":
            new = np.full(v.shape, np.nan)
        else:
            new = np.full(v.shape, mean)
        out[name] = v.copy(data=new.astype(v.dtype))
    return out


NOISE_DRAWS = 4
"""Noise data sets per claim (C6, whose analysis takes minutes, gets one). A check decided
on a 95 % interval passes pure noise by chance at most ~2.5 % of the time, so "never on
one draw" would be a coin toss over ~40 checks; a check that passes on 2 of 4 draws
(chance ~0.4 %) is one that cannot tell noise from a width effect."""


def analyze(claim: claims.Claim, dsets: dict[str, xr.Dataset]) -> list[claims.Check] | None:
    """The claim's checks on ``dsets``; None when the analysis refuses the data."""
    with np.errstate(all="ignore"):
        try:
            return claim.analyze(dsets)[1]
        except widthwise.analysis.AnalysisError:
            return None  # refusing the data is as good as not passing


@pytest.mark.parametrize("mode", ["noise", "nan", "constant"])
@pytest.mark.parametrize("cid", list(claims.CLAIMS))
def test_checks_fail_on_bad_data(cid: str, mode: str, runs: Path, results) -> None:
    claim = claims.CLAIMS[cid]
    assert not results[cid].skipped, results[cid].skipped
    studies = {n: widthwise.open_study(runs / n) for n in claim.specs}
    draws = (1 if cid == "C6" else NOISE_DRAWS) if mode == "noise" else 1
    passes: dict[str, int] = {}
    for draw in range(draws):
        rng = np.random.default_rng(draw)
        checks = analyze(claim, {n: perturbed(ds, mode, rng) for n, ds in studies.items()})
        for c in checks or []:
            passes[c.text] = passes.get(c.text, 0) + c.passed
    allowed = 1 if draws > 1 else 0
    bad = {t: n for t, n in passes.items() if n > allowed}
    assert not bad, f"{cid} on {mode}: these checks passed (times of {draws}): {bad}"
