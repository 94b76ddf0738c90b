"""Hyperparameter transfer across width: the optimal learning rate per width and a verdict.

μTransfer (Yang et al. 2022, "Tensor Programs V: Tuning Large Neural Networks via
Zero-Shot Hyperparameter Transfer", Fig. 1 and Section 3): under μP the loss-vs-lr
curves of different widths share their minimum, so an lr tuned on a narrow model is
optimal for a wide one; under SP the optimum drifts (roughly ∝ 1/width for the hidden
layers with SGD). A sweep study (``sweep: {lr: [...]}``) trains every (lr × seed) pair
of a width as members of one ensemble; ``open_study`` returns its arrays with one dim
per sweep key before ``seed``, e.g. ``train_loss`` (width, lr, seed, step).

Pipeline::

    loss = loss_at(ds, "train_loss")          # (width, lr, seed), coord `diverged`
    opt = optimal_lr(loss)                    # (width,): optimum, interval, edge flags
    v = transfer_verdict(opt, tol_factor=2)   # (pair,): factor, interval, verdict
    transfer_sentence(v)                      # "the optimal lr moves by 1.2× [...]"

Conventions (``docs/analysis.md``, "Transfer"):

- **Statistic.** Per width, the seed-mean loss at each grid point; its argmin on the
  grid, refined by the vertex of the parabola through the minimum and its two
  neighbours in log-lr (the grid need not be evenly spaced). The vertex lies between
  the neighbours, so the refinement never leaves the bracket the grid proves.
- **Diverged members** count as infinite loss: a grid point at which any seed
  diverged is not optimal (its seed mean is +inf), not a missing value. A point with
  no member at all (a width that did not reach the step) is missing: the optimum of
  that width is NaN.
- **Grid edge.** An argmin at the first or last grid point is the edge value, flagged
  ``at_edge`` (the optimum may lie beyond the grid; nothing is extrapolated). An
  argmin whose neighbour diverged is the grid value, flagged ``next_to_diverged``
  (bracketed, but no parabola through an infinite value).
- **Interval.** Seed bootstrap (:func:`~widthwise.analysis.uncertainty.bootstrap_over_seeds`):
  a replicate resamples each width's seeds with its own draws and keeps every drawn
  seed's whole curve over the grid (seed s at every lr starts from the same weights,
  so points of a width are paired by seed); the optimum is recomputed per replicate.
  The interval reflects seed noise, not the grid's resolution: between grid points
  only the parabola moves.
- **Verdict** (:func:`transfer_verdict`): the factor r = optimum(n₁)/optimum(n₀) with
  the percentile interval of its replicates; "transfers" when the whole interval lies
  in [1/tol, tol], "does not transfer" when it lies outside, otherwise "undetermined"
  (straddles, < 2 seeds, no seed variation, an optimum at the grid edge, NaN).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
import xarray as xr

from widthwise.analysis._checks import AnalysisError, plain, require_dataarray, require_dims
from widthwise.analysis._resample import REPLICATE
from widthwise.analysis.uncertainty import Method, bootstrap_over_seeds, percentile_interval
from widthwise.summary import FINAL_WINDOW  # train loss: mean of the last 10 steps
from widthwise.sweep import SWEEP_KEYS

SWEEP_DIMS = tuple(SWEEP_KEYS)
"""Dims a sweep study may have (``widthwise.sweep``), for Datasets without ``attrs["sweep"]``."""


TOL_FACTOR = 2.0
"""Default tolerance of :func:`transfer_verdict`: the optimum may move by at most ×2,
one step of a ×2 learning-rate grid (the resolution Yang et al. 2022 sweep at, log₂ lr
steps in Fig. 1 and 3). Fixed before looking at any result."""

BASIN = 0.05
"""The basin of an optimum: the contiguous grid points around the argmin whose seed-mean
loss is within 5 % of the minimum (reported beside the verdict: a wide basin means the
optimum sits in a flat valley, where which grid point wins says little)."""

VERDICTS = ("transfers", "does not transfer", "undetermined")
RULE = (
    "transfers if the factor's interval lies within [1/tol, tol]; does not transfer if it "
    "lies outside; otherwise (straddles, < 2 seeds, an optimum at the grid edge, NaN) "
    "undetermined"
)
_PART = "_transfer_part"  # (loss, diverged) as one sample of two entries
_SPEC_KEYS = {
    "lr": ("optimizer", "lr"),
    "weight_decay": ("optimizer", "weight_decay"),
    "sigma": ("parameterization", "sigma"),
    "momentum": ("optimizer", "momentum"),
    "eps": ("optimizer", "eps"),
    "beta1": ("optimizer", "betas", 0),
    "beta2": ("optimizer", "betas", 1),
}


# -- the sweep's dims and points ----------------------------------------------------------


def sweep_dims(obj: xr.Dataset | xr.DataArray) -> tuple[str, ...]:
    """The sweep dims of a study's Dataset (or one of its arrays), in spec order.

    ``attrs["sweep"]`` (``open_study``: key → values) where present, else the known sweep
    keys (:data:`SWEEP_DIMS`) among the dims; only keys that are dims count (a Dataset
    selected at one point has none).
    """
    keys = list(obj.attrs.get("sweep", None) or ()) or list(SWEEP_DIMS)
    return tuple(k for k in keys if k in obj.dims)


def _step_dim_of(da: xr.DataArray) -> str:
    dims = [d for d in da.dims if d == "step" or str(d).endswith("_step")]
    if len(dims) != 1:
        raise AnalysisError(
            f"Cannot tell the step dim of {da.name!r} (dims {list(map(str, da.dims))}); "
            "pass step_dim=."
        )
    return str(dims[0])


def _last_reached(ds: xr.Dataset | None, da: xr.DataArray, step_dim: str, width_dim: str):
    """(width,) the last step each width reached; +inf for a done width (the rule of
    ``widthwise.report.section.last_reached``: the status's ``step_reached`` or the last
    step with any finite value, whichever is later)."""
    others = [d for d in da.dims if d not in (width_dim, step_dim)]
    seen = da[step_dim].where(np.isfinite(da).any(others)).max(step_dim).fillna(-1)
    if ds is None:
        return seen.astype(np.float64)
    if "step_reached" in ds:
        seen = np.maximum(seen, ds["step_reached"].astype(np.float64))
    if "status" in ds:
        seen = xr.where(ds["status"] == "done", np.inf, seen)
    return seen.astype(np.float64)


def loss_at(
    ds: xr.Dataset | xr.DataArray,
    var: str = "train_loss",
    step: int | Literal["final"] | None = None,
    *,
    window: int | None = None,
    step_dim: str | None = None,
    width_dim: str = "width",
) -> xr.DataArray:
    """The loss of every member (width, sweep point, seed) at a chosen step.

    ``ds``: a study's Dataset (``var`` picks the variable: ``train_loss`` (width, [sweep
    dims], seed, step), ``test_loss`` (..., test_step)) or one such DataArray.
    ``step="final"`` (default, also ``None``): the mean of each member over the last
    ``window`` steps that *every* width reached (``status``/``step_reached``; default
    :data:`FINAL_WINDOW` for the training loss, 1 for any other); an int: that step
    (a coordinate value). A member that diverged (NaN from its divergence step on) or a
    width that did not reach the step is NaN. Returns the DataArray (dims of ``var``
    minus the step dim), units of the loss, with the boolean coordinate ``diverged``
    (True: the member diverged at or before the last step used; ``diverged_step`` where
    recorded, else a non-finite value at a step its width reached) and ``attrs`` naming
    the steps used.
    """
    dataset = ds if isinstance(ds, xr.Dataset) else None
    if dataset is not None:
        if var not in dataset:
            found = sorted(str(v) for v in dataset.data_vars if str(v).endswith("loss"))
            raise AnalysisError(f"The study has no {var!r}. Expected one of {found}.")
        da = dataset[var]
    else:
        da = require_dataarray(ds, "ds")
    sd = step_dim or _step_dim_of(da)
    require_dims(da, (sd, width_dim), var)
    da = da.sortby(sd)
    last = _last_reached(dataset, da, sd, width_dim)
    steps = da[sd].values
    if step is None or step == "final":
        n = window if window is not None else (FINAL_WINDOW if sd == "step" else 1)
        if not (isinstance(n, int) and n >= 1):
            raise AnalysisError(f"The 'window' parameter must be an int >= 1. Got {window!r}.")
        common = steps[steps <= float(last.min())]
        used = common[-n:] if len(common) else steps[-1:]
    else:
        if step not in set(steps.tolist()):
            raise AnalysisError(
                f"Step {step!r} is not a recorded {sd} of {var}. Expected one of "
                f"{steps[:3].tolist()} … {steps[-3:].tolist()} (or 'final')."
            )
        used = np.asarray([step])
    window_da = da.sel({sd: used})
    out = window_da.mean(sd, skipna=False)
    reached = (xr.DataArray(used, dims=sd) <= last).all(sd)
    if dataset is not None and "diverged_step" in dataset:
        div = dataset["diverged_step"]
        diverged = (div >= 0) & (div <= used[-1])
        diverged = diverged.broadcast_like(out).transpose(*out.dims)
    else:
        diverged = ~np.isfinite(out) & reached
    out = out.assign_coords(diverged=diverged.astype(bool))
    out.attrs = {
        "description": f"{var} per member at {sd} {plain(used[0])}…{plain(used[-1])}"
        if len(used) > 1
        else f"{var} per member at {sd} {plain(used[0])}",
        "units": da.attrs.get("units", "units of the loss"),
        "var": var,
        "step_dim": sd,
        "steps": [plain(s) for s in used],
    }
    return out.rename(var)


# -- the optimum per width ------------------------------------------------------------------


def _vertex(y: np.ndarray, g: np.ndarray):
    """Refined argmin of y (..., L) (+inf: diverged, NaN: missing) on grid g (L,).

    Returns (x, y_min, index, edge (-1 low, +1 high, 0 inside), next_to_diverged,
    valid): the vertex of the parabola through the grid minimum and its neighbours
    (clipped to them), the grid value at the edge or beside a diverged point; x NaN
    where any point is missing or every point diverged.
    """
    y = np.asarray(y, dtype=np.float64)
    n = y.shape[-1]
    valid = ~np.isnan(y).any(-1) & np.isfinite(y).any(-1)
    yy = np.where(np.isnan(y), np.inf, y)
    i = np.argmin(yy, axis=-1)

    def at(k):
        return np.take_along_axis(yy, k[..., None], -1)[..., 0]

    il, ir = np.maximum(i - 1, 0), np.minimum(i + 1, n - 1)
    ym, yl, yr = at(i), at(il), at(ir)
    gl, gm, gr = g[il], g[i], g[ir]
    edge = np.where(i == 0, -1, np.where(i == n - 1, 1, 0))
    inside = (edge == 0) & valid
    near_div = inside & ~(np.isfinite(yl) & np.isfinite(yr))
    fit = inside & ~near_div
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        d1, d2 = gm - gl, gm - gr
        num = d1**2 * (ym - yr) - d2**2 * (ym - yl)
        den = d1 * (ym - yr) - d2 * (ym - yl)
        xv = np.clip(np.where(den != 0, gm - 0.5 * num / den, gm), gl, gr)
        pv = (
            yl * (xv - gm) * (xv - gr) / ((gl - gm) * (gl - gr))
            + ym * (xv - gl) * (xv - gr) / ((gm - gl) * (gm - gr))
            + yr * (xv - gl) * (xv - gm) / ((gr - gl) * (gr - gm))
        )
    x = np.where(fit, xv, gm)
    ymin = np.where(fit, np.minimum(pv, ym), ym)
    x, ymin = np.where(valid, x, np.nan), np.where(valid, ymin, np.nan)
    return x, ymin, i, np.where(valid, edge, 0), near_div, valid


def _basin(y: np.ndarray, g: np.ndarray) -> np.ndarray:
    """(lo, hi) grid values of the basin of y (L,) (see :data:`BASIN`); NaN if none."""
    yy = np.where(np.isfinite(y), y, np.inf)
    if not np.isfinite(yy).any():
        return np.array([np.nan, np.nan])
    i = int(np.argmin(yy))
    limit = yy[i] + BASIN * abs(yy[i])
    lo = hi = i
    while lo > 0 and yy[lo - 1] <= limit:
        lo -= 1
    while hi < len(yy) - 1 and yy[hi + 1] <= limit:
        hi += 1
    return np.array([g[lo], g[hi]])


def _cells(x: xr.DataArray, seed_dim: str, all_div: xr.DataArray) -> xr.DataArray:
    """Seed-mean loss per grid point from (…, seed, _PART) members: +inf where any member
    diverged (or every member diverged in the data), NaN where no member is present."""
    loss, div = x.isel({_PART: 0}, drop=True), x.isel({_PART: 1}, drop=True) > 0.5
    present = np.isfinite(loss)
    any_div = (div & present).any(seed_dim)
    mean = loss.where(present & ~div).mean(seed_dim)
    none = ~present.any(seed_dim)
    return xr.where(any_div | all_div, np.inf, xr.where(none, np.nan, mean))


def _position(cells: xr.DataArray, dim: str, g: np.ndarray) -> xr.DataArray:
    return xr.apply_ufunc(
        lambda y: _vertex(y, g)[0], cells, input_core_dims=[[dim]], output_dtypes=[float]
    )


def optimal_lr(
    loss: xr.DataArray,
    dim: str = "lr",
    *,
    seed_dim: str = "seed",
    width_dim: str = "width",
    diverged: xr.DataArray | None = None,
    scale: Literal["auto", "log", "linear"] = "auto",
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    method: Method = "expanded",
) -> xr.Dataset:
    """Per width, the optimum of the seed-mean loss along the sweep dim ``dim``.

    ``loss``: (width, dim, seed, [other sweep dims]) — e.g. :func:`loss_at`'s output; its
    ``diverged`` coordinate (or ``diverged=``, or +inf values) marks diverged members,
    which count as infinite loss. ``scale``: the axis of the parabola, "log" (log of the
    values; default for positive grids, as in Yang et al. 2022's log₂ lr axes) or
    "linear" (e.g. a weight-decay grid that includes 0). The statistic, edge rule and
    interval are the module docstring's; other dims (other sweep keys) are kept.

    Returns a Dataset over (width, other dims): ``optimum`` (units of ``dim``) with its
    seed-bootstrap interval ``optimum_lo``/``optimum_hi`` (``level``, ``method`` as
    :func:`~widthwise.analysis.uncertainty.percentile_interval`), ``grid_optimum`` (the
    argmin on the grid), ``loss_at_optimum`` (the parabola's minimum, else the grid
    minimum), ``at_edge``, ``edge`` ("low", "high", ""), ``next_to_diverged``,
    ``n_seeds`` (fewest members at any grid point), ``seed_varies``; over (width, dim,
    other dims) ``loss_mean`` (+inf where a member diverged), ``n_diverged`` and
    ``n_members``; ``position`` and ``position_replicates`` (replicate, width, ...): the
    optimum on the fitting scale (ln of the value for "log"), which
    :func:`transfer_verdict` reads.
    """
    loss = require_dataarray(loss, "loss")
    require_dims(loss, (dim, seed_dim), "loss")
    for bad in (REPLICATE, _PART):
        if bad in loss.dims:
            raise AnalysisError(f"loss must not have a dim named {bad!r}.")
    if dim not in loss.coords:
        raise AnalysisError(f"loss needs coordinate values along {dim!r} (the swept values).")
    loss = loss.sortby(dim)
    grid = np.asarray(loss[dim].values, dtype=np.float64)
    if scale == "auto":
        scale = "log" if (grid > 0).all() else "linear"
    if scale not in ("log", "linear"):
        raise AnalysisError(
            f"The 'scale' parameter must be 'auto', 'log' or 'linear'. Got {scale!r}."
        )
    if scale == "log" and not (grid > 0).all():
        raise AnalysisError(
            f"A log scale needs positive {dim} values; got {grid.tolist()}. Pass scale='linear'."
        )
    if len(grid) < 3:
        raise AnalysisError(f"An optimum needs at least 3 values of {dim}; got {grid.tolist()}.")
    g = np.log(grid) if scale == "log" else grid
    if diverged is None:
        diverged = loss.coords.get("diverged", None)
    loss = loss.drop_vars("diverged", errors="ignore")
    div = np.isposinf(loss)
    if diverged is not None:
        div = div | diverged.drop_vars("diverged", errors="ignore").astype(bool)
    div = div.broadcast_like(loss).transpose(*loss.dims)
    values = loss.where(~div, 0.0)
    values = values.where(np.isfinite(values) | div)  # -inf, stray inf: missing
    x = xr.concat([values, div.astype(np.float64).where(np.isfinite(values))], dim=_PART)
    x = x.transpose(*loss.dims, _PART)
    present = np.isfinite(values)
    all_div = (div & present).all(seed_dim) & present.any(seed_dim)
    indep = (width_dim,) if width_dim in loss.dims else ()

    reps: list[xr.DataArray] = []
    # A grid point whose members are all identical (every one collapsed to the same
    # constant-output loss, e.g. dead ReLUs at a large lr) has no seed spread: the
    # bootstrap leaves it out of every resample, but any resample of it has that mean.
    members = values.where(~div)
    spread = (members.max(seed_dim) > members.min(seed_dim)) | all_div
    full = _cells(x, seed_dim, all_div)
    const = full.where(~spread & np.isfinite(full))

    def statistic(a: xr.DataArray) -> xr.DataArray:
        cells = _cells(a, seed_dim, all_div)
        if REPLICATE in a.dims:
            cells = cells.fillna(const)
        pos = _position(cells, dim, g)
        if REPLICATE in a.dims:
            reps.append(pos)
        return pos

    def counts(c: xr.DataArray) -> xr.DataArray:  # grid points every member of which
        return c.where(~all_div).min(dim)  # diverged need no spread: they are +inf

    interval = bootstrap_over_seeds(
        x,
        statistic,
        n_boot=n_boot,
        level=level,
        seed=seed,
        dim=seed_dim,
        sample_dims=(_PART,),
        independent=indep,
        method=method,
        counts=counts,
    )
    cells = _cells(x, seed_dim, all_div)
    parts = xr.apply_ufunc(
        lambda y: _vertex(y, g)[1:5],
        cells,
        input_core_dims=[[dim]],
        output_core_dims=[[], [], [], []],
    )
    ymin, index, edge, near_div = parts
    # Seed spread is needed where the optimum is decided (the grid minimum and its two
    # neighbours), not at far-off points where every member collapsed to the same
    # constant-output loss (dead ReLUs at a large lr) or diverged.
    k = xr.DataArray(np.arange(len(grid)), dims=dim, coords={dim: loss[dim]})
    bracket = np.abs(k - index) <= 1
    varies = spread.where(bracket, True).all(dim) & np.isfinite(interval["estimate"])
    if reps:
        interval = percentile_interval(
            interval["estimate"],
            xr.concat(reps, REPLICATE),
            interval["n_seeds"],
            varies,
            level=level,
            method=method,
        )
    basin = xr.apply_ufunc(
        lambda y: _basin(y, grid),
        cells,
        input_core_dims=[[dim]],
        output_core_dims=[["_end"]],
        vectorize=True,
    )
    back = np.exp if scale == "log" else (lambda v: v)
    pos = interval["estimate"]
    out = xr.Dataset(
        {
            "optimum": back(pos),
            "optimum_lo": back(interval["lo"]),
            "optimum_hi": back(interval["hi"]),
            "grid_optimum": xr.DataArray(
                grid[index.values], dims=index.dims, coords=index.coords
            ).where(np.isfinite(pos)),
            "loss_at_optimum": ymin,
            "at_edge": (edge != 0) & np.isfinite(pos),
            "edge": xr.where(edge < 0, "low", xr.where(edge > 0, "high", "")).where(
                np.isfinite(pos), ""
            ),
            "next_to_diverged": near_div.astype(bool),
            "n_seeds": interval["n_seeds"],
            "seed_varies": interval["seed_varies"],
            "loss_mean": cells,
            "n_diverged": (div & present).sum(seed_dim),
            "n_members": present.sum(seed_dim),
            "basin_lo": basin.isel(_end=0, drop=True),
            "basin_hi": basin.isel(_end=1, drop=True),
            "position": pos,
            "position_replicates": xr.concat(reps, REPLICATE)
            if reps
            else pos.expand_dims({REPLICATE: 0}),
        }
    )
    for name in ("optimum", "optimum_lo", "optimum_hi", "grid_optimum"):
        out[name].attrs["units"] = f"{dim} (the swept value)"
    out.attrs = {
        **interval.attrs,
        "dim": dim,
        "scale": scale,
        "seed": seed,
        "loss": loss.attrs.get("description", str(loss.name)),
        "description": (
            f"argmin over {dim} of the seed-mean loss, refined by a parabola in "
            f"{'log ' if scale == 'log' else ''}{dim} through the minimum and its neighbours; "
            "diverged members count as infinite loss (Yang et al. 2022, μTransfer)"
        ),
    }
    return out


# -- the verdict ----------------------------------------------------------------------------


def _pairs(widths: list, which: Iterable[str]) -> list[tuple[str, object, object]]:
    out: list[tuple[str, object, object]] = []
    for kind in which:
        if kind == "ends":
            out.append(("ends", widths[0], widths[-1]))
        elif kind == "consecutive":
            for a, b in zip(widths[:-1], widths[1:]):
                if ("ends", a, b) not in out:
                    out.append(("consecutive", a, b))
        else:
            raise AnalysisError(
                f"The 'pairs' parameter must list 'ends' and/or 'consecutive'. Got {kind!r}."
            )
    return out


def _label(w) -> str:
    w = float(w)
    return str(int(w)) if w.is_integer() else f"{w:g}"


def transfer_verdict(
    opt: xr.Dataset,
    tol_factor: float = TOL_FACTOR,
    *,
    width_dim: str = "width",
    pairs: Iterable[str] = ("ends", "consecutive"),
) -> xr.Dataset:
    """Does the optimum move by at most ×``tol_factor`` between widths?

    ``opt``: :func:`optimal_lr`'s Dataset. For each pair of widths n₀ < n₁ — the
    narrowest and widest (``"ends"``) and every consecutive pair (``"consecutive"``) —
    the factor r = optimum(n₁) / optimum(n₀) (on a linear scale the ratio of the values)
    with the percentile interval of the bootstrap replicates' ratios (each width's seeds
    resampled on their own; level and method of ``opt``). ``verdict``:

    - "transfers": the interval lies within [1/tol, tol];
    - "does not transfer": it lies above tol or below 1/tol;
    - "undetermined": it straddles a bound; or an optimum of the pair sits at the grid
      edge (it may lie beyond the grid); or fewer than 2 seeds; no seed variation; any
      value not finite. Non-finite inputs never give "transfers".

    ``tol_factor`` (default :data:`TOL_FACTOR` = 2: one step of a ×2 lr grid, the
    resolution of the sweeps in Yang et al. 2022; fixed before looking at results)
    must be > 1. Returns a Dataset over ``pair`` (labels "64-1024"; coords ``kind``,
    ``width_from``, ``width_to``) and the other dims of ``opt``: ``factor``,
    ``factor_lo``, ``factor_hi``, ``verdict``, ``reason``, ``n_seeds``; the optima
    ``optimum_from``/``optimum_to``. ``attrs``: ``tol_factor``, ``rule``, ``dim``.
    """
    need = {"position", "position_replicates", "at_edge", "n_seeds", "seed_varies"}
    if not isinstance(opt, xr.Dataset) or not need <= set(opt.variables):
        raise AnalysisError(
            f"The 'opt' parameter must be the Dataset optimal_lr returns (with {sorted(need)})."
        )
    if not (np.isfinite(tol_factor) and tol_factor > 1):
        raise AnalysisError(f"The 'tol_factor' parameter must be a number > 1. Got {tol_factor!r}.")
    require_dims(opt, width_dim, "opt")
    opt = opt.sortby(width_dim)
    widths = opt[width_dim].values.tolist()
    if len(widths) < 2:
        raise AnalysisError(f"A transfer verdict needs at least 2 widths; got {widths}.")
    log = opt.attrs.get("scale", "log") == "log"
    rows = []
    for kind, a, b in _pairs(widths, pairs):
        pa, pb = opt.sel({width_dim: a}, drop=True), opt.sel({width_dim: b}, drop=True)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            if log:
                est = np.exp(pb["position"] - pa["position"])
                rep = np.exp(pb["position_replicates"] - pa["position_replicates"])
            else:
                est = pb["position"] / pa["position"]
                rep = pb["position_replicates"] / pa["position_replicates"]
        n = np.minimum(pa["n_seeds"], pb["n_seeds"])
        varies = pa["seed_varies"].astype(bool) & pb["seed_varies"].astype(bool)
        iv = percentile_interval(
            est,
            rep,
            n,
            varies,
            level=opt.attrs.get("level", 0.95),
            method=opt.attrs.get("method", "expanded"),
        )
        lo, hi = iv["lo"], iv["hi"]
        edge = pa["at_edge"].astype(bool) | pb["at_edge"].astype(bool)
        finite = np.isfinite(est) & np.isfinite(lo) & np.isfinite(hi)
        inside = (lo >= 1 / tol_factor) & (hi <= tol_factor)
        outside = (hi < 1 / tol_factor) | (lo > tol_factor)
        cases = [  # later entries win
            ("undetermined", "interval straddles the tolerance", xr.ones_like(est, dtype=bool)),
            ("does not transfer", "interval outside the tolerance", outside),
            ("transfers", "interval within the tolerance", inside),
            ("undetermined", "non-finite values", ~finite),
            ("undetermined", "no seed variation", ~varies),
            ("undetermined", "too few seeds", ~(n >= 2)),
            ("undetermined", _edge_reason(pa, pb, a, b), edge),
            ("undetermined", "not measured", ~np.isfinite(est)),
        ]
        word = xr.full_like(est, "", dtype=object)
        why = xr.full_like(est, "", dtype=object)
        for w, r, cond in cases:
            word, why = xr.where(cond, w, word), xr.where(cond, r, why)
        rows.append(
            xr.Dataset(
                {
                    "factor": est,
                    "factor_lo": lo,
                    "factor_hi": hi,
                    "verdict": word.astype(str),
                    "reason": why.astype(str),
                    "n_seeds": n,
                    "optimum_from": np.exp(pa["position"]) if log else pa["position"],
                    "optimum_to": np.exp(pb["position"]) if log else pb["position"],
                    **{
                        f"basin_{end}_{side}": p[f"basin_{side}"]
                        for end, p in (("from", pa), ("to", pb))
                        for side in ("lo", "hi")
                        if f"basin_{side}" in p
                    },
                }
            )
            .expand_dims(pair=[f"{_label(a)}-{_label(b)}"])
            .assign_coords(kind=("pair", [kind]), width_from=("pair", [a]), width_to=("pair", [b]))
        )
    out = xr.concat(rows, "pair")
    out.attrs = {
        "tol_factor": float(tol_factor),
        "rule": RULE,
        "dim": opt.attrs.get("dim", "lr"),
        "width_dim": width_dim,
        "level": opt.attrs.get("level", 0.95),
        "description": "factor by which the optimum moves from width_from to width_to",
    }
    return out


def _edge_reason(pa: xr.Dataset, pb: xr.Dataset, a, b) -> str:
    """'optimum at the grid edge' (scalar text: which width, where the data say so)."""
    where = []
    for p, w in ((pa, a), (pb, b)):
        if bool(np.asarray(p["at_edge"]).any()):
            where.append(_label(w))
    return "optimum at the grid edge" + (f" (width {', '.join(where)})" if where else "")


def _num(x: float) -> str:
    return f"{x:.3g}" if np.isfinite(x) else "—"


def transfer_sentence(v: xr.Dataset, pair: str | int = 0) -> str:
    """One sentence for people, from :func:`transfer_verdict`'s Dataset, e.g. "the optimal
    lr moves by 1.2× [0.9, 1.6] from width 64 to 1024: transfers (tolerance 2×)".

    ``pair``: a pair label ("64-1024") or position (default 0: the narrowest and widest).
    With other dims (other sweep keys) one clause per index, "at weight_decay=0.01: ...".
    """
    row = v.sel(pair=pair) if isinstance(pair, str) else v.isel(pair=pair)
    dim, tol = v.attrs.get("dim", "lr"), v.attrs.get("tol_factor", TOL_FACTOR)
    a, b = _label(row["width_from"].item()), _label(row["width_to"].item())
    rest = [d for d in row["factor"].dims]
    axis = v.attrs.get("width_dim", "width")  # "depth" along a depth study
    if not rest:
        return _clause(row, dim, a, b, tol, axis)
    stacked = row.stack(_i=rest)
    parts = []
    for i in range(stacked.sizes["_i"]):
        r = stacked.isel(_i=i)
        at = ", ".join(f"{d}={plain(r[d].values):g}" for d in rest)
        parts.append(f"at {at}: {_clause(r, dim, a, b, tol, axis)}")
    return "; ".join(parts)


def _clause(r: xr.Dataset, dim: str, a: str, b: str, tol: float, axis: str = "width") -> str:
    f, lo, hi = (float(r[k]) for k in ("factor", "factor_lo", "factor_hi"))
    word, why = str(r["verdict"].item()), str(r["reason"].item())
    tol_s = f"tolerance {tol:g}×"
    if not np.isfinite(f):
        return f"the optimal {dim} from {axis} {a} to {b} is not measured: undetermined ({why})"
    iv = f" [{_num(lo)}, {_num(hi)}]" if np.isfinite(lo) and np.isfinite(hi) else " [no interval]"
    moves = (
        f"the optimal {dim} moves by {_num(f)}×{iv} from {axis} {a} to {b} "
        f"({_num(float(r['optimum_from']))} → {_num(float(r['optimum_to']))})"
    )
    basins = ""
    if all(f"basin_{e}_{x}" in r for e in ("from", "to") for x in ("lo", "hi")):
        fl, fh, tl, th = (float(r[f"basin_{e}_{x}"]) for e in ("from", "to") for x in ("lo", "hi"))
        if all(np.isfinite(v) for v in (fl, fh, tl, th)):
            overlap = " (they overlap)" if max(fl, tl) <= min(fh, th) else ""

            def span(lo: float, hi: float) -> str:
                return _num(lo) if lo == hi else f"{_num(lo)}–{_num(hi)}"

            basins = (
                f"; loss within {BASIN:.0%} of its minimum at {dim} {span(fl, fh)} "
                f"at {axis} {a}, {span(tl, th)} at {b}{overlap}"
            )
    if word == "undetermined":
        return f"{moves}: undetermined ({why}; {tol_s}){basins}"
    return f"{moves}: {word} ({tol_s}){basins}"


# -- the tuned point the other report sections show ------------------------------------------


def _point_means(ds: xr.Dataset, var: str | None):
    var = var or ("train_loss" if "train_loss" in ds else "test_loss")
    loss = loss_at(ds, var)
    div = loss.coords["diverged"] | np.isposinf(loss)
    mean = loss.where(~div).mean("seed")
    return xr.where(div.any("seed"), np.inf, mean).where(
        np.isfinite(loss).any("seed") | div.any("seed")
    )


def tuning_width(ds: xr.Dataset, var: str | None = None) -> float:
    """The width :func:`tuned_point` tunes at: the widest with a finite final loss at
    some sweep point (NaN if none)."""
    dims = sweep_dims(ds)
    if not dims:
        return float("nan")
    mean = _point_means(ds, var)
    ok = np.isfinite(mean).any(list(dims))
    widths = ds["width"].values[ok.values]
    return float(widths.max()) if len(widths) else float("nan")


def tuned_point(ds: xr.Dataset, var: str | None = None) -> dict[str, float]:
    """The sweep point with the lowest final loss (seed mean) at the widest width.

    ``var``: the training loss (default; else the test loss), at "final" as in
    :func:`loss_at`; a point where a member diverged is never chosen. The widest width
    is the widest with a finite value (:func:`tuning_width`). Returns {sweep key:
    value} over every sweep dim (the joint argmin of the grid); ``{}`` without sweep
    dims; the first point when no point has a finite loss.
    """
    dims = sweep_dims(ds)
    if not dims:
        return {}
    mean = _point_means(ds, var)
    w = tuning_width(ds, var)
    if not np.isfinite(w):
        return {d: float(ds[d].values[0]) for d in dims}
    at = mean.sel(width=w).transpose(*dims)
    flat = np.where(np.isfinite(at.values), at.values, np.inf)
    idx = np.unravel_index(int(np.argmin(flat)), flat.shape)
    return {d: float(ds[d].values[i]) for d, i in zip(dims, idx)}


def select_point(ds: xr.Dataset, point: Mapping[str, float]) -> xr.Dataset:
    """The study at one sweep point, as a study without a sweep would be.

    Selects ``point`` ({key: value}, e.g. :func:`tuned_point`'s) along the sweep dims and
    drops them; the spec in ``attrs["spec"]`` gets the point's values in place of the
    base ones (``optimizer.lr``, ``optimizer.weight_decay``, ``parameterization.sigma``)
    and no ``sweep``, so what reads the spec (the sharpness threshold 2/lr) sees the
    point's values; ``attrs["sweep_point"]`` records the point, ``attrs["sweep_grid"]``
    the sweep (``attrs["sweep"]`` is dropped).
    """
    dims = sweep_dims(ds)
    unknown = [k for k in point if k not in dims]
    if unknown:
        raise AnalysisError(
            f"Dimensions {unknown} are not sweep dims. Expected one of {list(dims)}."
        )
    out = ds.sel({k: v for k, v in point.items()}, method="nearest", drop=True)
    attrs = dict(ds.attrs)
    grid = attrs.pop("sweep", None) or {d: ds[d].values.tolist() for d in dims}
    attrs["sweep_grid"] = {k: [float(x) for x in v] for k, v in grid.items()}
    attrs["sweep_point"] = {k: float(v) for k, v in point.items()}
    try:
        spec: Any = json.loads(attrs.get("spec", "{}"))
    except (TypeError, ValueError):
        spec = None
    if isinstance(spec, dict):
        spec.pop("sweep", None)
        for k, v in point.items():
            section, key, *entry = _SPEC_KEYS.get(k, (None, None))
            if section is None:
                continue
            sub = spec.get(section)
            if isinstance(sub, dict) and entry:  # one entry of a pair (betas)
                pair = list(sub.get(key) or (0.9, 0.999))
                pair[entry[0]] = float(v)
                sub[key] = pair
            elif isinstance(sub, dict):
                sub[key] = float(v)
            elif section == "parameterization" and isinstance(sub, str):
                spec[section] = {"name": sub, key: float(v)}
        attrs["spec"] = json.dumps(spec)
    out.attrs = attrs
    return out
