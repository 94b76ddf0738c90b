"""Trained members back out as plain ``nn.Module`` s: :func:`load_member`.

A study stores each width's stacked *raw* parameters ``w`` (seed, ...) in its
checkpoints; the network computes with the effective weights ``W = multiplier · w``
(docs/parameterizations.md). ``load_member`` folds the multipliers in and returns one
member as a module whose outputs equal the study's ``test_logits`` to float rounding,
ready for PyHessian, neural-tangents (via ``state_dict()``) or Hugging Face:

* a module family (``family: module`` or :func:`~widthwise.families.from_module`):
  the user's own class, built by the same factory, with the member's weights and its
  own per-member buffers (BatchNorm running statistics; in eval mode they are what
  the module normalizes with, as the study's probes did); a
  readout tied to the embedding keeps its multiplier as a forward pre-hook on its
  input (a tied tensor cannot hold two multipliers), and a module that calls
  :func:`widthwise.attention_scale` keeps the study's attention scale (a forward
  pre-hook on the root module);
* a built-in family: an equivalent ``nn.Module`` (:class:`FunctionalMember`) whose
  parameters have the family's tensor names, so ``state_dict()`` keys are those of
  the study's checkpoints.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from widthwise.errors import StoreError, UserError
from widthwise.families.base import Network


class FunctionalMember(nn.Module):
    """A built-in family's network at one width as an ``nn.Module``: ``forward(x)`` is
    ``network.apply(effective weights, x)``'s logits, ``forward_taps(x)`` adds the taps."""

    def __init__(
        self, network: Network, weights: Mapping[str, Tensor], output_multiplier: float = 1.0
    ) -> None:
        super().__init__()
        self.network = network
        self.output_multiplier = float(output_multiplier)  # α: the logits times α
        for name, w in weights.items():
            _register(self, name, nn.Parameter(w.clone()))

    def weights(self) -> dict[str, Tensor]:
        return dict(self.named_parameters())

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_taps(x, taps=False)[0]

    def forward_taps(self, x: Tensor, taps: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
        out, rec = self.network.apply(self.weights(), x, taps)
        return (out if self.output_multiplier == 1.0 else out * self.output_multiplier), rec


def _register(root: nn.Module, name: str, p: nn.Parameter) -> None:
    *path, leaf = name.split(".")
    mod = root
    for part in path:
        if part not in mod._modules:
            mod.add_module(part, nn.Module())
        mod = mod._modules[part]  # type: ignore[assignment]
    mod.register_parameter(leaf, p)


def _point_index(spec: Any, point: Mapping[str, float] | None, where: Path) -> int:
    """The index of sweep point ``point`` (0 without a sweep); one-line UserError."""
    points = spec.sweep_points
    if not spec.sweep:
        if point:
            raise UserError(f"point: {dict(point)!r}: {where} is not a sweep study")
        return 0
    if point is None:
        raise UserError(
            f"point: {where} is a sweep study; name one of its points, e.g. {points[0]}"
        )
    want = {k: float(v) for k, v in point.items()}
    if want not in points:
        raise UserError(f"point: {want!r} is not a point of the sweep (points: {points})")
    return points.index(want)


def _pick_checkpoint(wd: Any, step: int | str, where: str) -> dict[str, Any]:
    states = [wd.load_checkpoint(p) for p in wd.checkpoint_paths()]
    states = [s for s in states if s is not None]
    if not states:
        raise StoreError(f"{where}: no checkpoint (the width has not run)")
    if step == "last":
        return max(states, key=lambda s: int(s.get("step", -1)))
    for s in states:
        if s.get("step") == step:
            return s
    have = sorted(int(s.get("step", -1)) for s in states)
    raise StoreError(
        f"{where}: no checkpoint at step {step!r} (checkpoints kept: steps {have}; "
        "step='last' takes the newest)"
    )


def load_member(
    study_dir: str | os.PathLike[str],
    width: int,
    seed: int,
    step: int | str = "last",
    *,
    point: Mapping[str, float] | None = None,
    device: str | torch.device = "cpu",
    allow_code: bool = False,
) -> nn.Module:
    """Member ``seed`` of ``width`` of a study, at checkpoint ``step``, as an ``nn.Module``.

    Weights are effective (multipliers folded in); the module is in eval mode, on
    ``device``. ``step`` is ``"last"`` (the newest checkpoint: the end of training for
    a finished width) or the step of a kept checkpoint (the current or the previous
    one). For a parameterization that centres the output (``NetworkRules.center``)
    the module is f_θ, not the centred f_θ − f_θ0 the study trained and logged.
    Raises :class:`~widthwise.errors.StoreError` (one line) for a width, seed or step
    the study does not have. In a sweep study (docs/sweeps.md) ``point`` names the
    sweep point, e.g. ``{"lr": 0.1}`` (required there, refused elsewhere).

    A study directory is data, not code (docs/security.md): the factory its spec names
    for ``family: module`` is imported only when its module is already imported here
    (you imported it: it is yours), is part of widthwise, or ``allow_code=True``.
    """
    from widthwise.families import FAMILIES, build_network
    from widthwise.families.module import (
        ModuleApply,
        attention_hooks,
        call_factory,
        trust_factory,
    )
    from widthwise.parameterization import network_rules_for, rules_for
    from widthwise.spec import validate_spec
    from widthwise.store.study_dir import StudyDir
    from widthwise.streams import STREAMS
    from widthwise.sweep import member_output_multipliers
    from widthwise.trainer import rule_context

    study = StudyDir(Path(study_dir))
    manifest = study.read_manifest()
    spec = validate_spec(study.read_spec_dict(), source=str(study.path / "spec.yaml"))
    ref = spec.model.options.get("factory") if spec.model.family == "module" else None
    mod = ref.partition(":")[0] if isinstance(ref, str) else ""
    if ref and not allow_code and not mod.startswith("widthwise.") and mod not in sys.modules:
        raise UserError(
            f"model.options.factory: {study.path / 'spec.yaml'} names {ref!r}, whose module "
            f"{mod!r} is not imported: import it first (then it is yours) or pass "
            "allow_code=True (docs/security.md)"
        )
    trust_factory(spec)  # checked above
    if width not in manifest["widths"]:
        raise StoreError(f"{study.path}: no width {width!r} (widths: {manifest['widths']})")
    seeds = list(spec.seed_list)
    if seed not in seeds:
        raise StoreError(f"{study.path}: no seed {seed!r} (seeds: {seeds})")
    at = _point_index(spec, point, study.path)
    wd = study.width_dir(width)
    state = _pick_checkpoint(wd, step, str(wd.path))
    stream = STREAMS.get(spec.data.stream)(spec.data.seed, spec.stream_options())
    param, ctx = spec.parameterization.name, rule_context(spec, width)
    net_rules = network_rules_for(param, ctx)
    options = spec.family_options()
    net = build_network(
        spec.model.family,
        width,
        stream.in_shape,
        stream.out_dim,
        options,
        network_rules=net_rules,
    )
    rules = rules_for(param, list(net.params), ctx)
    i = at * len(seeds) + seeds.index(seed)
    weights = {p.name: rules[p.name].multiplier * state["params"][p.name][i] for p in net.params}
    alpha = member_output_multipliers(
        spec.sweep_points, len(seeds), spec.parameterization.output_multiplier
    )[i]
    apply = net.apply
    if not isinstance(apply, ModuleApply):
        return FunctionalMember(net, weights, alpha).to(device).eval()
    apply.bind_parameterization(lambda specs: rules_for(param, specs, ctx))
    entry = FAMILIES.entry(spec.model.family)
    factory = getattr(entry.obj, "_widthwise_factory", None)
    if factory is None:
        from widthwise.families.module import load_factory

        factory = load_factory(options.factory)  # type: ignore[union-attr]
    model = call_factory(
        factory,
        width,
        options.factory_kwargs(),  # type: ignore[union-attr]
        stream.in_shape,
        stream.out_dim,
        apply.label,  # type: ignore[union-attr]
    )
    named = dict(model.named_parameters())
    buffers = dict(model.named_buffers(remove_duplicate=False))
    saved = state.get("buffers") or {}
    missing = [k for k in apply.mutable if k not in saved]
    if missing:  # cannot happen for a checkpoint this widthwise wrote for this network
        raise StoreError(f"{wd.path}: the checkpoint has no per-member buffers {missing}")
    with torch.no_grad():
        for name, w in weights.items():
            named[name].copy_(w.to(named[name].dtype))
        for name in apply.mutable:  # the member's own running statistics (BatchNorm)
            b = buffers[name]
            b.copy_(saved[name][i].to(b.dtype))
    attention_hooks(model, apply.exponent, apply.readout_mult)
    if alpha != 1.0:
        model.register_forward_hook(_output_times(alpha))
    return model.to(device).eval()


def _output_times(alpha: float):  # noqa: ANN202
    """A forward hook: the module's logits times α (a tensor, or an output's ``logits``,
    as widthwise reads them: ``widthwise.families.module_apply.logits_of``)."""

    def hook(_mod: nn.Module, _args: Any, out: Any) -> Any:
        if isinstance(out, Tensor):
            return out * alpha
        if isinstance(getattr(out, "logits", None), Tensor):
            out.logits = out.logits * alpha
            return out
        if isinstance(out, tuple) and out and isinstance(out[0], Tensor):
            return (out[0] * alpha, *out[1:])
        raise TypeError(f"cannot apply output_multiplier {alpha:g} to a {type(out).__name__}")

    return hook
