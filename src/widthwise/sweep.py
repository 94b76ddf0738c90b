"""Hyperparameter sweeps as ensemble members (μTransfer: Yang et al. 2022, Tensor Programs V).

A spec's ``sweep: {lr: [...], weight_decay: [...], sigma: [...]}`` makes every
(sweep point × seed) pair of a width one member of the width's ensemble: the points
are the Cartesian product of the lists (in the spec's key order), and member
``m = point_index · n_seeds + seed_index``. All members see the same batches; member
``m`` starts from the initial weights of its seed (drawn with its point's ``sigma``),
so two points differ only in the swept value.

How a member's own value enters the stacked computation, exactly in exact arithmetic:

``lr``            every torch optimizer's update is linear in the learning rate given
                  its state, and the state (momentum buffer, Adam moments) does not
                  depend on it; so the optimizer steps at ``optimizer.lr`` and each
                  member's update Δ is scaled by ``lr_m / optimizer.lr`` (float rounding
                  apart, the same as a study run at ``lr_m``).
``weight_decay``  applied by the trainer instead of torch, per member, as torch would:
                  added to the gradient (sgd, adam: L2) or as ``w ← w − lr_m·wd_m·w``
                  (adamw: decoupled).
``sigma``         the init scale of each member (``init_std`` of every tensor), where the
                  parameterization uses σ only there (sp, mup, umup); where σ is a forward
                  multiplier (ntp, mf) a sweep of it is refused.

``momentum``      (sgd) and ``beta1``, ``beta2``, ``eps`` (adam, adamw): they shape the
``beta1``...      optimizer's state, so the trainer uses widthwise's own SGD / Adam
                  (:mod:`widthwise.member_optim`), torch's single-tensor algorithm with
                  these scalars as (member,) tensors: each member's state is its own.

``output_multiplier`` each member's logits times its own α
                  (:meth:`widthwise.ensemble.Ensemble.scale_output`), as
                  ``parameterization.output_multiplier`` multiplies every member's.

``nesterov`` (a switch, not a scalar) is not sweepable: one line says so.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from widthwise.parameterization import ParamRule, ParamSpec, RuleContext, rules_for

if TYPE_CHECKING:  # widthwise show reads sweeps without torch
    import torch
    from torch import Tensor

SWEEP_KEYS: dict[str, tuple[float, float, bool, bool]] = {
    "lr": (0.0, 1e3, False, True),
    "weight_decay": (0.0, 1e3, True, True),
    "sigma": (0.0, 1e3, False, True),
    "momentum": (0.0, 1.0, True, False),
    "beta1": (0.0, 1.0, True, False),
    "beta2": (0.0, 1.0, True, False),
    "eps": (0.0, 1.0, False, True),
    "output_multiplier": (0.0, 1e3, False, True),
}
"""Sweepable keys: (lower bound, upper bound, lower bound allowed, upper bound allowed)
of their values — the bounds of ``optimizer.lr``, ``optimizer.weight_decay``,
``parameterization.sigma``, ``optimizer.momentum``, ``optimizer.betas`` and
``optimizer.eps`` and ``parameterization.output_multiplier``."""

OPTIMIZER_SCALARS: dict[str, tuple[str, ...]] = {
    "momentum": ("sgd",),
    "beta1": ("adam", "adamw"),
    "beta2": ("adam", "adamw"),
    "eps": ("adam", "adamw"),
}
"""Sweep keys that shape the optimizer's state, and the optimizers that have them
(:mod:`widthwise.member_optim` steps them per member)."""

NOT_SWEEPABLE = {
    "betas": "sweep its entries as beta1 and beta2",
    "nesterov": "it is a switch, not a scalar (run a study per value)",
}
MAX_SWEEP_VALUES = 64
"""Most values one sweep key may list."""

FORWARD_SIGMA = ("ntp", "mf")
"""Parameterizations whose σ is a forward multiplier: a sweep of it is refused."""


def sweep_problems(sweep: Mapping[str, object]) -> list[str]:
    """One line per problem of a ``sweep`` mapping (empty: it is valid)."""
    problems = []
    for key, values in sweep.items():
        if key in NOT_SWEEPABLE:
            problems.append(
                f"{key!r} cannot be swept: {NOT_SWEEPABLE[key]}; allowed: {', '.join(SWEEP_KEYS)}"
            )
            continue
        if key not in SWEEP_KEYS:
            problems.append(f"unknown sweep key {key!r}; allowed: {', '.join(SWEEP_KEYS)}")
            continue
        lo, hi, lo_ok, hi_ok = SWEEP_KEYS[key]
        bound = f"{'≥' if lo_ok else '>'} {lo:g} and {'≤' if hi_ok else '<'} {hi:g}"
        if not isinstance(values, list) or not values:
            problems.append(f"{key}: {values!r}: must be a non-empty list of numbers {bound}")
            continue
        if len(values) > MAX_SWEEP_VALUES:
            problems.append(f"{key}: {len(values)} values; at most {MAX_SWEEP_VALUES}")
            continue
        for v in values:
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            if not number or not math.isfinite(v) or not _within(v, SWEEP_KEYS[key]):
                problems.append(f"{key}: {v!r}: each value must be a finite number {bound}")
                break
        else:
            if len(set(values)) != len(values):
                problems.append(f"{key}: {values!r}: values must be unique")
    return problems


def _within(v: float, bounds: tuple[float, float, bool, bool]) -> bool:
    lo, hi, lo_ok, hi_ok = bounds
    return (v >= lo if lo_ok else v > lo) and (v <= hi if hi_ok else v < hi)


def sweep_points(sweep: Mapping[str, Sequence[float]]) -> list[dict[str, float]]:
    """Every point of the sweep, the Cartesian product of its lists in key order
    (``[{}]``, one point, without a sweep)."""
    keys = list(sweep)
    return [dict(zip(keys, map(float, combo))) for combo in itertools.product(*sweep.values())]


def stored_sweep_values(entry: object, spec_sweep: object = None) -> object:
    """A manifest's sweep values ({key: values}) in the order its points follow.

    The manifest's JSON sorts mapping keys, so the order is the entry's ``keys`` list;
    a manifest written before that list existed takes it from the study's spec
    (``spec_sweep``: ``spec.yaml``'s ``sweep``, written in spec order) where given.
    Returns the values as stored when neither fits (the caller checks them)."""
    values = entry.get("values") if isinstance(entry, dict) else None
    order = entry.get("keys") if isinstance(entry, dict) else None
    if order is None and isinstance(spec_sweep, dict):
        order = list(spec_sweep)
    if isinstance(values, dict) and isinstance(order, list) and sorted(order) == sorted(values):
        return {k: values[k] for k in order}
    return values


def point_label(point: Mapping[str, float]) -> str:
    """``lr=0.1 sigma=2`` (empty without a sweep)."""
    return " ".join(f"{k}={v:g}" for k, v in point.items())


def member_label(point: Mapping[str, float], seed: int) -> str:
    """``lr=0.1 seed 2`` (``seed 2`` without a sweep)."""
    return " ".join(filter(None, [point_label(point), f"seed {seed}"]))


def describe_point_divergence(
    points: Sequence[Mapping[str, float]], n_seeds: int, diverged: Mapping[int, int]
) -> str:
    """``13/30 diverged: lr=0.25: 2/3 at steps 6–9, lr=0.5: 3/3 at step 4``: the diverged
    members (member id → step, point-major ids) grouped by sweep point; empty if none."""
    parts = []
    for i, point in enumerate(points):
        steps = [t for m, t in diverged.items() if m // n_seeds == i]
        if steps:
            lo, hi = min(steps), max(steps)
            when = f"step {lo}" if lo == hi else f"steps {lo}–{hi}"
            parts.append(f"{point_label(point)}: {len(steps)}/{n_seeds} at {when}")
    if not parts:
        return ""
    return f"{len(diverged)}/{len(points) * n_seeds} diverged: {', '.join(parts)}"


@dataclass(frozen=True)
class MemberHyper:
    """Per-member optimizer scalars of one width, each a (member,) tensor per parameter
    tensor, or None where every member shares the optimizer's own value.

    ``lr_factor[name]``: member's ``lr · lr_scale`` over the optimizer group's;
    ``weight_decay[name]``: member's ``weight_decay · wd_scale`` (applied by the trainer,
    the group's own set to 0). ``optimizer_scalars[key]``: each member's value of a swept
    :data:`OPTIMIZER_SCALARS` key (``momentum``, ``beta1``, ...), one (member,) tensor per
    key, the same for every parameter tensor.
    """

    lr_factor: dict[str, Tensor] | None
    weight_decay: dict[str, Tensor] | None
    optimizer_scalars: dict[str, Tensor] | None = None


def member_rules(
    name: str,
    params: list[ParamSpec],
    ctx: RuleContext,
    points: list[dict[str, float]],
    n_seeds: int,
) -> list[dict[str, ParamRule]]:
    """The rules of every member (point-major): the parameterization's rules with the
    point's ``sigma``. Raises ValueError where σ is a forward multiplier."""
    out = []
    for point in points:
        if "sigma" in point and name in FORWARD_SIGMA:
            raise ValueError(
                f"sweep.sigma: under {name} σ is a forward multiplier, which a sweep cannot "
                "vary per member; allowed under sp, mup and umup"
            )
        c = ctx if "sigma" not in point else _with_sigma(ctx, point["sigma"])
        rules = rules_for(name, params, c)
        out += [rules] * n_seeds
    return out


def _with_sigma(ctx: RuleContext, sigma: float) -> RuleContext:
    import dataclasses

    return dataclasses.replace(ctx, sigma=sigma)


def member_hyper(
    base: dict[str, ParamRule],
    rules: list[dict[str, ParamRule]],
    points: list[dict[str, float]],
    n_seeds: int,
    lr: float,
    weight_decay: float,
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> MemberHyper:
    """The per-member learning-rate factors and weight decays of each tensor, against the
    optimizer's groups built from ``base`` rules, ``lr`` and ``weight_decay``."""
    import torch

    lrs = [p.get("lr", lr) for p in points for _ in range(n_seeds)]
    wds = [p.get("weight_decay", weight_decay) for p in points for _ in range(n_seeds)]
    factor, decay = {}, {}
    for k, b in base.items():
        f = [lr_m * r[k].lr_scale / (lr * b.lr_scale) for lr_m, r in zip(lrs, rules)]
        if any(x != 1.0 for x in f):
            factor[k] = torch.tensor(f, device=device, dtype=dtype)
        d = [wd_m * r[k].wd_scale for wd_m, r in zip(wds, rules)]
        if any(x != weight_decay * b.wd_scale for x in d):
            decay[k] = torch.tensor(d, device=device, dtype=dtype)
    if decay:  # one tensor's decay per member means every tensor's is the trainer's
        for k in base:
            if k not in decay:
                d = [wd_m * r[k].wd_scale for wd_m, r in zip(wds, rules)]
                decay[k] = torch.tensor(d, device=device, dtype=dtype)
    scalars = {
        k: torch.tensor([p[k] for p in points for _ in range(n_seeds)], device=device, dtype=dtype)
        for k in OPTIMIZER_SCALARS
        if any(k in p for p in points)
    }
    return MemberHyper(factor or None, decay or None, scalars or None)


def member_output_multipliers(
    points: list[dict[str, float]], n_seeds: int, base: float
) -> list[float]:
    """Every member's output multiplier α (point-major): its point's, else ``base``."""
    return [float(p.get("output_multiplier", base)) for p in points for _ in range(n_seeds)]


def check_forward_rules(base: dict[str, ParamRule], rules: list[dict[str, ParamRule]]) -> None:
    """Every member's forward multiplier must be the base's (the stacked forward pass
    has one multiplier per tensor); raises ValueError naming the tensor otherwise."""
    for r in rules:
        for k, b in base.items():
            if r[k].multiplier != b.multiplier:
                raise ValueError(
                    f"sweep: tensor {k!r} would need a per-member forward multiplier "
                    f"({r[k].multiplier:g} vs {b.multiplier:g}), which is not supported"
                )
