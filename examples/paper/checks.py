"""Checks with intervals over seeds: the statistics behind every verdict of ``claims.py``.

A claim of Vyas et al. (2023) is tested by checks; a check is a statement about a
statistic of the studies ("the log-log slope of the logit distance to the widest in
width is < 0") with a threshold fixed in ``claims.py`` from the paper's text. Each
statistic is computed on the data and on seed-bootstrap resamples
(``widthwise.analysis.bootstrap_over_seeds``: every width's seeds resampled on its
own, the widest's too; percentile interval, 95 % by default), and the check's result
is decided on the interval, never on the point estimate alone:

- ``pass``: the whole interval lies on the claimed side of the threshold (the
  *margin* is the distance from the interval's near end to the threshold);
- ``fail``: the whole interval lies on the other side (for every entry of a check
  "at every width", one entry suffices);
- ``undetermined``: otherwise, and whenever an entry has fewer than 2 finite seeds,
  no seed variation (identical members) or a non-finite value (NaN, inf).

So a check passes only when the seeds say so: pure noise (no width effect) gives
"undetermined" or "fail", NaN and constant inputs "undetermined" (tests/test_claims.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import xarray as xr

from widthwise import analysis as wa

N_BOOT = 400
"""Bootstrap replicates per statistic (percentile interval at ``LEVEL``)."""
LEVEL = 0.95
Result = Literal["pass", "fail", "undetermined"]


# --------------------------------------------------------------------------- checks


@dataclass
class Check:
    """One statement tested on an interval: threshold in ``text``, outcome in ``result``."""

    text: str
    value: str
    result: Result
    margin: str = ""

    @property
    def passed(self) -> bool:
        return self.result == "pass"


def _valid(iv: xr.Dataset) -> tuple[bool, str]:
    est, lo, hi = iv["estimate"], iv["lo"], iv["hi"]
    if not bool((np.isfinite(est) & np.isfinite(lo) & np.isfinite(hi)).all()):
        return False, "non-finite values"
    if "n_seeds" in iv and not bool((iv["n_seeds"] >= 2).all()):
        return False, "too few seeds"
    if "seed_varies" in iv and not bool(iv["seed_varies"].astype(bool).all()):
        return False, "no seed variation"
    return True, ""


def fmt(x: float) -> str:
    """A number with 3 significant digits ('nan' for NaN)."""
    x = float(x)
    return "nan" if not np.isfinite(x) else f"{x:.3g}"


def describe(iv: xr.Dataset) -> str:
    """'0.031 [0.027, 0.036]', or '64: 0.031 [0.027, 0.036], 128: ...' along one dim."""
    est = iv["estimate"]
    if est.ndim == 0:
        return f"{fmt(est)} [{fmt(iv['lo'])}, {fmt(iv['hi'])}]"
    flat = iv.stack(_entry=list(est.dims)) if est.ndim > 1 else iv
    dim = "_entry" if est.ndim > 1 else est.dims[0]
    parts = []
    for i in range(flat.sizes[dim]):
        e = flat.isel({dim: i})
        label = flat[dim].values[i]
        label = "/".join(str(v) for v in label) if isinstance(label, tuple) else str(label)
        parts.append(f"{label}: {fmt(e['estimate'])} [{fmt(e['lo'])}, {fmt(e['hi'])}]")
    return ", ".join(parts)


def compare(text: str, iv: xr.Dataset, op: Literal["<", ">"], threshold: float) -> Check:
    """``estimate op threshold`` for every entry of ``iv``, decided on [lo, hi].

    ``iv``: an interval Dataset (``estimate``, ``lo``, ``hi``, optional ``n_seeds``,
    ``seed_varies``) of any dims; the check is about every entry ("at every width").
    """
    value = describe(iv)
    ok, why = _valid(iv)
    if not ok:
        return Check(text, value, "undetermined", why)
    lo, hi = float(iv["lo"].min()), float(iv["hi"].max())
    if op == "<":
        good, bad = hi < threshold, bool((iv["lo"] >= threshold).any())
        near = hi
    else:
        good, bad = lo > threshold, bool((iv["hi"] <= threshold).any())
        near = lo
    margin = abs(threshold - near)
    scale = f" ({margin / abs(threshold):.0%} of it)" if threshold else ""
    side = "upper" if op == "<" else "lower"
    if good:
        return Check(text, value, "pass", f"{side} bound {fmt(near)}: {fmt(margin)}{scale} inside")
    if bad:
        return Check(text, value, "fail", f"interval beyond {fmt(threshold)}")
    return Check(text, value, "undetermined", f"interval straddles {fmt(threshold)}")


def all_of(text: str, checks: Iterable[Check]) -> Check:
    """One check from several (e.g. one per layer): pass if all pass, fail if one fails."""
    cs = list(checks)
    results = {c.result for c in cs}
    result: Result = (
        "fail" if "fail" in results else "undetermined" if "undetermined" in results else "pass"
    )
    return Check(
        text,
        "; ".join(f"{c.text}: {c.value}" for c in cs),
        result,
        "; ".join(c.margin for c in cs if c.margin),
    )


def verdict_of(checks: Iterable[Check]) -> str:
    """'reproduced' when every check passes, 'partly' when some do, else 'not at this scale'."""
    cs = list(checks)
    n = sum(c.passed for c in cs)
    if cs and n == len(cs):
        return "reproduced"
    return "partly" if n else "not at this scale"


# --------------------------------------------------------------------------- statistics


def boot(
    da: xr.DataArray,
    statistic: Callable[[xr.DataArray], xr.DataArray],
    *,
    sample_dims: str | Iterable[str] = (),
    independent: Iterable[str] = ("width",),
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> xr.Dataset:
    """Seed-bootstrap interval of ``statistic`` (a function of an array with a seed dim).

    ``sample_dims``: dims over which one member is one sample (a member non-finite
    anywhere there is left out). ``statistic`` must reduce ``seed`` by name and keep
    dims it does not know (``replicate``), as ``bootstrap_over_seeds`` requires.
    """
    indep = tuple(d for d in independent if d in da.dims)
    return wa.bootstrap_over_seeds(
        da,
        statistic,
        n_boot=n_boot,
        level=LEVEL,
        seed=seed,
        sample_dims=sample_dims,
        independent=indep,
    )


def _rms(x: xr.DataArray, over: tuple[str, ...]) -> xr.DataArray:
    return np.sqrt((x**2).mean(list(over))) if over else abs(x)


def widest(x: xr.DataArray, dim: str = "width") -> xr.DataArray:
    return x.sel({dim: x[dim].max()})


def but_widest(x: xr.DataArray, dim: str = "width") -> xr.DataArray:
    """``x`` without its widest entry (where a distance to the widest is 0 by definition)."""
    return x.sortby(dim).isel({dim: slice(0, -1)})


def distance_to_widest(x: xr.DataArray, over: Iterable[str] = ()) -> xr.DataArray:
    """RMS_over(m_n − m_N) / RMS_over(m_N) of seed means m (N the widest), without N."""
    over = tuple(over)
    m = x.mean("seed")
    ref = widest(m)
    return but_widest(_rms(m - ref, over) / _rms(ref, over))


def successive_distance(x: xr.DataArray, over: Iterable[str] = ()) -> xr.DataArray:
    """RMS_over(m_{i+1} − m_i) / RMS_over(m_{i+1}) of seed means, labelled by the narrower."""
    over = tuple(over)
    m = x.mean("seed").sortby("width")
    a, b = m.isel(width=slice(0, -1)), m.isel(width=slice(1, None))
    wider = b.assign_coords(width=a.width.values)
    return _rms(wider - a, over) / _rms(wider, over)


def log_slope(y: xr.DataArray, dim: str = "width") -> xr.DataArray:
    """OLS slope of log y against log of the ``dim`` labels (NaN if any y <= 0)."""
    logn = np.log(y[dim].astype(float))
    ly = np.log(y.where(y > 0))
    dx = logn - logn.mean()
    return ((ly - ly.mean(dim, skipna=False)) * dx).sum(dim, skipna=False) / (dx**2).sum()


def slope_of(
    distance: Callable[[xr.DataArray], xr.DataArray],
) -> Callable[[xr.DataArray], xr.DataArray]:
    """The statistic 'log-log slope in width of ``distance(x)``' (for :func:`boot`)."""
    return lambda x: log_slope(distance(x))
