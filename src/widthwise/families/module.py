"""Bring your own PyTorch model: any ``nn.Module`` whose size is set by a width is a family.

In Python, ``widthwise.families.from_module(make_model, name="my_net")`` registers a
family from a callable ``width -> nn.Module``; in a spec, ``model: {family: module,
options: {factory: "package.module:make_model", kwargs: {...}}}`` imports it (the
module is code: the spec needs ``--allow-code``, or ``--import package.module``;
docs/security.md). docs/modules.md is the guide.

How a module becomes a :class:`~widthwise.families.Network`:

* **roles** are read from its shapes at ``width`` and ``2·width`` as
  ``mup.set_base_shapes`` does (:mod:`widthwise.families.module_roles`), overridable
  in ``model.options.roles``;
* **apply** is ``torch.func.functional_call`` of the module on the effective weights
  (every alias of a tied tensor bound to the one stacked tensor), vmap-able over the
  seed dim; buffers are the module's own (constants shared by the members);
* **taps** come from forward hooks: ``act/<module>`` and ``preact/<module>`` for
  every ``nn.Linear``/conv output (or the modules ``layers:`` names), the readout's
  input as ``act/<readout>.in``, and ``attn/<module>`` for the modules ``attention:``
  names; outputs with more dims are averaged over positions/pixels to
  ``(batch, features)`` as the built-in transformer and CNN do;
* **vmap safety**: before an ensemble runs members through ``torch.func.vmap``, the
  vectorized forward and one gradient are compared with a per-member loop on a small
  batch (:meth:`ModuleApply.check_vmap`); where vmap fails or disagrees beyond
  float rounding the ensemble falls back to the loop with a notice.
* **dropout**: ``nn.Dropout``/``Dropout1d/2d/3d`` modules are kept in eval mode and
  get per-member masks from (member seed, width, step) during the training forward
  only (:mod:`widthwise.families.module_dropout`); dropout that would draw from
  torch's global generator (functional, attention, alpha) is refused with one line.

Attention: muP scales scores by 1/d_head. A module takes the scale from widthwise
with :func:`attention_scale` (``F.scaled_dot_product_attention(q, k, v,
scale=widthwise.attention_scale(d_head))``); outside widthwise it returns 1/√d_head.
A module that runs attention without it keeps 1/√d_head, and building the family
says so once.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import inspect
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from widthwise.errors import UserError
from widthwise.families.base import FAMILIES, Network
from widthwise.families.module_apply import (
    _SCALE_CALLS,
    ModuleApply,
    _CountAttention,
    attention_exponent,
    attention_hooks,
    attention_scale,
    example_input,
    logits_of,
)
from widthwise.families.module_dropout import (
    FindRandomDropout,
    check_dropout,
    member_index,
    random_dropout_error,
    training_forward,
)
from widthwise.families.module_roles import (
    _CONV,
    _CONV_T,
    InferredParam,
    RoleOverride,
    check_third_width,
    infer_roles,
    is_hf_conv1d,
)
from widthwise.parameterization import NetworkRules, Role
from widthwise.parameterization.base import BRANCH, BRANCH_OUT

__all__ = [
    "ModuleApply",
    "ModuleFamilyOptions",
    "ModuleOptions",
    "ResidualOptions",
    "attention_exponent",
    "attention_hooks",
    "attention_scale",
    "build_module",
    "tag_branches",
    "call_factory",
    "from_module",
    "load_factory",
    "logits_of",
    "print_roles",
    "roles_table",
    "trust_factory",
]


# -- options ---------------------------------------------------------------------------


class RoleOverrideOptions(BaseModel):
    """A role override with its fan-in."""

    model_config = ConfigDict(extra="forbid")
    role: Role
    fan_in: int | None = Field(None, ge=1, le=2**40)


class ResidualOptions(BaseModel):
    """Where a module's residual branches are, for depth-muP (docs/depth.md): tensor names
    or globs (a module name matches every tensor under it)."""

    model_config = ConfigDict(extra="forbid")

    branch_out: list[str] = Field(
        min_length=1,
        description="each residual branch's last linear map, e.g. 'blocks.*.fc2': depth-muP "
        "multiplies it by √(base_depth/L) (and its Adam lr)",
    )
    branch: list[str] = Field(
        default_factory=list,
        description="the rest of every branch, e.g. 'blocks.*': Adam lr × √(base_depth/L)",
    )


class ModuleFamilyOptions(BaseModel):
    """Options of a family registered with ``from_module`` (all optional)."""

    model_config = ConfigDict(extra="forbid")

    depth: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="passed to the factory as depth= (its residual blocks: depth-muP's L); "
        "depths: [...] sets it per depth",
    )
    residual: ResidualOptions | None = Field(
        None, description="the residual branches, for depth_mup (docs/depth.md)"
    )

    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments passed to the factory"
    )
    roles: dict[str, Role | RoleOverrideOptions] = Field(
        default_factory=dict,
        description="tensor name or glob -> role (input, hidden, output, vector, fixed), "
        "or {role, fan_in}: overrides the inferred role",
    )
    layers: list[str] | None = Field(
        None,
        description="submodule names or globs to tap (default: every Linear/conv output "
        "and the readout's input)",
    )
    attention: list[str] = Field(
        default_factory=list,
        description="submodules whose output is attention probabilities (B, heads, T, T)",
    )
    tokens: bool | None = Field(
        None, description="inputs are token ids (default: when the model has an nn.Embedding)"
    )

    def factory_kwargs(self) -> dict[str, Any]:
        """The factory's keyword arguments: ``kwargs``, and ``depth`` where set."""
        if self.depth is None:
            return dict(self.kwargs)
        if "depth" in self.kwargs:
            raise UserError(
                f"model.options.kwargs.depth: {self.kwargs['depth']!r} is set beside "
                f"model.options.depth: {self.depth}; give the depth in one place"
            )
        return {**self.kwargs, "depth": self.depth}

    def role_overrides(self) -> dict[str, RoleOverride]:
        out = {}
        for k, v in self.roles.items():
            out[k] = RoleOverride(v) if isinstance(v, Role) else RoleOverride(v.role, v.fan_in)
        return out


class ModuleOptions(ModuleFamilyOptions):
    """Options of the ``module`` family: a factory named in the spec, and its options."""

    factory: str = Field(
        ...,
        max_length=300,
        description="'package.module:function' returning an nn.Module for a width "
        "(runs code: needs --allow-code or --import package.module)",
    )

    @field_validator("factory")
    @classmethod
    def _form(cls, v: str) -> str:
        mod, sep, attr = v.partition(":")
        if not sep or not mod or not attr:
            raise ValueError(f"expected 'package.module:function', got {v!r}")
        return v


# -- the factory -----------------------------------------------------------------------


def factory_modules(spec: Any) -> tuple[str, ...]:
    """The module ``spec``'s ``model.options.factory`` imports (empty for other families)."""
    ref = spec.model.options.get("factory") if spec.model.family == "module" else None
    return (ref.partition(":")[0],) if isinstance(ref, str) else ()


def trust_factory(spec: Any) -> None:
    """Import ``spec``'s factory module now: for callers that have checked that the spec
    may run code (``widthwise.run`` after ``--allow-code``/``allow_code``). Once imported
    it is the caller's, as with ``--import``; a failure is one line naming the key."""
    for mod_name in factory_modules(spec):
        _import_factory_module(mod_name, spec.model.options["factory"])


def trust_factory_modules(modules: Sequence[str]) -> None:
    """Import these factory modules (a worker: what the caller allowed,
    :attr:`widthwise.job.WidthJob.trusted_factories`). No list of allowed names is kept:
    allowing a module is importing it, and an imported module is trusted."""
    for mod_name in modules:
        _import_factory_module(mod_name, mod_name)


def _import_factory_module(mod_name: str, ref: str) -> Any:
    """``importlib.import_module(mod_name)``, the current directory searched last, any
    failure one line naming ``model.options.factory`` and ``ref``."""
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(mod_name)
    except Exception as err:  # noqa: BLE001  (any failure of user code is one line)
        raise UserError(
            f"model.options.factory: cannot import {mod_name!r} ({ref!r}): "
            f"{type(err).__name__}: {err}"
        ) from None


def load_factory(ref: str) -> Callable[..., Any]:
    """The callable ``'package.module:function'`` names, imported as ``--import`` does
    (the current directory searched last); any failure is one line naming the key.

    A spec is data (docs/security.md): the module is imported only when it is already
    imported (``--import``, :func:`trust_factory` after ``--allow-code``, or your own
    ``import``) or is part of widthwise; otherwise a one-line error says how to allow it.
    """
    mod_name, _, attr = ref.partition(":")
    if mod_name not in sys.modules and not mod_name.startswith("widthwise."):
        raise UserError(
            f"model.options.factory: importing {mod_name!r} ({ref!r}) runs its code; "
            f"pass --import {mod_name} or --allow-code (widthwise.run(..., allow_code=True)), "
            "or import it yourself first (docs/security.md)"
        )
    obj: Any = _import_factory_module(mod_name, ref)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(
                f"model.options.factory: {mod_name!r} has no attribute {attr!r} ({ref!r})"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(
            f"model.options.factory: {ref!r} is a {type(obj).__name__}, not a callable "
            "width -> nn.Module"
        )
    return obj


def _label(factory: Callable[..., Any]) -> str:
    mod = getattr(factory, "__module__", "?")
    return f"{mod}:{getattr(factory, '__qualname__', type(factory).__name__)}"


def _takes(factory: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def call_factory(
    factory: Callable[..., Any],
    width: int,
    kwargs: Mapping[str, Any],
    in_shape: tuple[int, ...],
    out_dim: int,
    label: str,
) -> nn.Module:
    """``factory(width, **kwargs)`` (plus ``in_shape``/``out_dim`` where it takes them)."""
    extra = dict(kwargs)
    if "in_shape" not in extra and _takes(factory, "in_shape"):
        extra["in_shape"] = tuple(in_shape)
    if "out_dim" not in extra and _takes(factory, "out_dim"):
        extra["out_dim"] = out_dim
    try:
        model = factory(width, **extra)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001  (any failure of user code is one line)
        msg = " ".join(str(err).split())[:200]
        raise UserError(
            f"model.options.factory: {label!r} raised {type(err).__name__} at width {width}: {msg}"
        ) from None
    if not isinstance(model, nn.Module):
        raise UserError(
            f"model.options.factory: {label!r} returned a {type(model).__name__} at width "
            f"{width}, not a torch.nn.Module"
        )
    return model


def _on_meta(factory, width, kwargs, in_shape, out_dim, label) -> nn.Module:  # noqa: ANN001
    """The model at ``width`` with no memory spent (meta device); on the CPU if that fails."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return call_factory(factory, width, kwargs, in_shape, out_dim, label)
    except UserError:
        raise
    except Exception:  # noqa: BLE001  (a factory that cannot build on meta: build it for real)
        pass
    return call_factory(factory, width, kwargs, in_shape, out_dim, label)


def _is_tap_default(mod: nn.Module) -> bool:
    return isinstance(mod, (nn.Linear, *_CONV, *_CONV_T)) or is_hf_conv1d(mod)


# -- the family ------------------------------------------------------------------------


def _check_supported(model: nn.Module, label: str) -> None:
    check_dropout(model, label)  # alpha dropout, attention dropout: one line


def _resolve_taps(
    model: nn.Module, options: ModuleFamilyOptions, readouts: set[str]
) -> tuple[dict[str, bool], list[str], list[str]]:
    """(tapped module -> channels first, readout modules whose input is tapped, attention)."""
    modules = dict(model.named_modules())
    names = [n for n in modules if n]

    def matching(pattern: str, key: str) -> list[str]:
        hits = [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise UserError(
                f"{key}: {pattern!r} matches no submodule of the model (its modules: {shown})"
            )
        return hits

    attention: list[str] = []
    for pat in options.attention:
        attention += [n for n in matching(pat, "model.options.attention") if n not in attention]
    if options.layers is None:
        chosen = [n for n in names if _is_tap_default(modules[n]) and n not in readouts]
        readout_inputs = sorted(readouts, key=names.index)
    else:
        chosen = []
        for pat in options.layers:
            chosen += [n for n in matching(pat, "model.options.layers") if n not in chosen]
        readout_inputs = []
    taps = {n: isinstance(modules[n], _CONV + _CONV_T) for n in chosen}
    return taps, readout_inputs, attention


def build_module_network(
    factory: Callable[..., Any],
    family: str,
    width: int,
    in_shape: tuple[int, ...],
    out_dim: int,
    options: ModuleFamilyOptions,
    network_rules: NetworkRules | None = None,
    label: str | None = None,
) -> Network:
    """The :class:`Network` of the module ``factory`` builds at ``width``."""
    label = label or _label(factory)
    kwargs = options.factory_kwargs()
    model = call_factory(factory, width, kwargs, in_shape, out_dim, label)
    model2 = _on_meta(factory, 2 * width, kwargs, in_shape, out_dim, label)
    _check_supported(model, label)
    params, tied = infer_roles(model, model2, width, 2 * width, options.role_overrides())
    del model2
    model3 = _on_meta(factory, 4 * width, kwargs, in_shape, out_dim, label)
    check_third_width(params, model3, width, 4 * width)  # a dim scaling only sometimes
    del model3
    if options.residual is not None:
        params = tag_branches(params, options.residual)
    owners_of_output = set()
    by_id = {id(p): n for n, p in model.named_parameters()}
    for mname, mod in model.named_modules():
        for p in mod.parameters(recurse=False):
            if any(q.name == by_id.get(id(p)) and q.role is Role.OUTPUT for q in params):
                owners_of_output.add(mname)
    readouts = owners_of_output | set(tied)
    taps, readout_inputs, attention = _resolve_taps(model, options, readouts)
    tokens = options.tokens
    if tokens is None:
        tokens = any(isinstance(m, nn.Embedding) for m in model.modules())
    exponent = (network_rules or NetworkRules()).attn_exponent
    apply = ModuleApply(
        model,
        params,
        taps,
        readout_inputs,
        attention,
        tied,
        exponent,
        tokens,
        in_shape,
        out_dim,
        label,
    )
    if not any(p.is_meta for p in model.parameters()):
        apply.set_mutable(_check_forward(apply, label, exponent))
    elif sum(p.numel() for p in model.parameters()) <= CHECK_ON_CPU_VALUES:
        # built on meta (memory estimates, cost counting: before anything is written): the
        # forward is checked on a real copy, so a failing model stops the study there
        with torch.device("cpu"):
            real = call_factory(factory, width, kwargs, in_shape, out_dim, label)
            check = ModuleApply(
                real, params, {}, [], [], tied, exponent, tokens, in_shape, out_dim, label
            )
            apply.set_mutable(_check_forward(check, label, exponent))
    layers = tuple([*taps, *(f"{r}.in" for r in readout_inputs)])
    return Network(family, width, tuple(p.spec() for p in params), apply, layers)


def tag_branches(params: list[InferredParam], residual: ResidualOptions) -> list[InferredParam]:
    """``params`` with depth-muP's tags: :data:`BRANCH_OUT` on the tensors ``branch_out``
    names, :data:`BRANCH` on the other tensors ``branch`` names (a pattern matches a
    tensor's name or any alias, or a module name above it). A pattern matching no
    tensor is a one-line :class:`UserError`."""
    names = {p.name: (p.name, *p.aliases) for p in params}

    def hits(pattern: str) -> set[str]:
        return {
            n
            for n, all_names in names.items()
            if any(
                fnmatch.fnmatchcase(a, pattern) or fnmatch.fnmatchcase(a, f"{pattern}.*")
                for a in all_names
            )
        }

    outs: set[str] = set()
    inside: set[str] = set()
    for key, patterns, into in (
        ("branch_out", residual.branch_out, outs),
        ("branch", residual.branch, inside),
    ):
        for pat in patterns:
            found = hits(pat)
            if not found:
                raise UserError(
                    f"model.options.residual.{key}: {pat!r} names no tensor; tensors: "
                    f"{', '.join(list(names)[:8])}{' ...' if len(names) > 8 else ''}"
                )
            into |= found
    out = []
    for p in params:
        tag = BRANCH_OUT if p.name in outs else BRANCH if p.name in inside else None
        out.append(p if tag is None else dataclasses.replace(p, tags=p.tags | {tag}))
    return out


CHECK_ON_CPU_VALUES = 20_000_000
"""A module built on the meta device is also built on the CPU and its forward checked
when it has at most this many parameter values (80 MB in float32)."""


def _note(label: str, text: str) -> None:
    """A notice (Python's warning filters show each once per place; no state here)."""
    warnings.warn(f"{label}: {text}", UserWarning, stacklevel=3)


def _check_forward(apply: ModuleApply, label: str, exponent: float) -> list[str]:
    """One eval forward and one training forward with the module's own weights: the
    output fits the stream, the attention scale is the parameterization's (or a notice
    says it is not), no buffer changes in eval mode. Returns the buffers the training
    forward changes (with BatchNorm's running statistics: per-member state)."""
    gen = torch.Generator().manual_seed(0)
    x = example_input(apply.tokens, apply.in_shape, apply.out_dim, 2, gen)
    named = dict(apply.model.named_parameters())
    own = {p.name: named[p.name] for p in apply.params}
    before = _SCALE_CALLS[0]
    counter = _CountAttention()
    finder = FindRandomDropout()  # dropout from torch's global generator: refused
    unwatch = finder.watch(apply.model)
    saved = {k: b.detach().clone() for k, b in apply.buffers.items()}
    work = {k: saved[k].clone() for k in apply.buffer_aliases}  # the training forward's
    evals: dict[str, torch.Tensor] = {}
    rng = torch.get_rng_state()
    try:
        with torch.no_grad(), counter, finder:
            with training_forward(0, (0,), 0), member_index(0):
                apply({**own, **work}, x)
            changed = [k for k, b in work.items() if not torch.equal(b, saved[k])]
            apply.set_mutable([*apply.mutable, *(k for k in changed if k not in apply.mutable)])
            evals = {k: saved[k].clone() for k in apply.mutable}
            out, _ = apply({**own, **evals}, x)  # eval mode: no buffer may change
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001  (the user's forward failing is one line)
        msg = " ".join(str(err).split())[:200]
        raise UserError(
            f"model.options.factory: {label!r}: the model's forward failed on a batch of "
            f"shape {tuple(x.shape)}: {type(err).__name__}: {msg}"
        ) from None
    finally:
        unwatch()
        drew = not torch.equal(rng, torch.get_rng_state())
        torch.set_rng_state(rng)
    if finder.found:
        raise random_dropout_error(label, finder.found)
    if drew:  # another random op (torch.rand, bernoulli, RReLU): members would share draws
        raise random_dropout_error(label, None)
    for k, b in saved.items():
        if not torch.equal(b, apply.buffers[k]) or (
            k in evals and not torch.equal(b, evals[k])
        ):  # in-place state in eval mode: members would share it
            apply.buffers[k].copy_(b)
            raise UserError(
                f"model.options.factory: {label!r}: buffer {k!r} changes during the forward "
                "pass in eval mode (the probes' forward; members would share it): update it "
                "only when self.training (per-member state, as BatchNorm's running "
                "statistics), make it a constant or compute it in forward"
            )
    if out.shape[0] != 2 or out.shape[-1] != apply.out_dim:
        raise UserError(
            f"model.options.factory: {label!r}: the model's output has shape "
            f"{tuple(out.shape)} for a batch of shape {tuple(x.shape)}; the stream needs "
            f"(batch, ..., {apply.out_dim})"
        )
    scaled = _SCALE_CALLS[0] > before
    has_attention = counter.calls > 0 or any(
        isinstance(m, nn.MultiheadAttention) or "attention" in type(m).__name__.lower()
        for m in apply.model.modules()
    )
    if has_attention and not scaled and exponent != 0.5:
        _note(
            label,
            f"its attention is left at 1/sqrt(d_head): the module never calls "
            f"widthwise.attention_scale(), and the parameterization asks for "
            f"1/d_head**{exponent:g} (docs/modules.md#attention)",
        )
    return list(apply.mutable)


@FAMILIES.register(
    "module",
    options=ModuleOptions,
    network_rules=True,
    description="your own nn.Module from a factory 'package.module:function' (docs/modules.md)",
)
def build_module(
    width: int,
    in_shape: tuple[int, ...],
    out_dim: int,
    options: ModuleOptions,
    *,
    network_rules: NetworkRules | None = None,
) -> Network:
    """The module ``options.factory`` builds at ``width``, roles inferred from its shapes."""
    factory = load_factory(options.factory)
    return build_module_network(
        factory, "module", width, in_shape, out_dim, options, network_rules, options.factory
    )


def from_module(
    make_model: Callable[..., nn.Module],
    name: str | None = None,
    *,
    description: str = "",
) -> str:
    """Register ``make_model`` (``width -> nn.Module``) as a family; returns its name.

    ``make_model(width, **kwargs)`` gets the spec's ``model.options.kwargs`` (and
    ``in_shape``/``out_dim`` when it has such parameters). The family's options are
    :class:`ModuleFamilyOptions` (``kwargs``, ``roles``, ``layers``, ``attention``,
    ``tokens``). Registering the same callable under the same name again is a no-op.
    """
    name = name or getattr(make_model, "__name__", "module_family")
    if name in FAMILIES:
        entry = FAMILIES.entry(name)
        if getattr(entry.obj, "_widthwise_factory", None) is make_model:
            return name
        raise ValueError(f"family {name!r} is already registered")
    label = _label(make_model)

    def build(
        width: int,
        in_shape: tuple[int, ...],
        out_dim: int,
        options: ModuleFamilyOptions,
        *,
        network_rules: NetworkRules | None = None,
    ) -> Network:
        return build_module_network(
            make_model, name, width, in_shape, out_dim, options, network_rules, label
        )

    build._widthwise_factory = make_model  # type: ignore[attr-defined]
    build.__doc__ = description or f"nn.Module family from {label}"
    FAMILIES.register(name, options=ModuleFamilyOptions, network_rules=True)(build)
    return name


def is_module_network(network: Network) -> bool:
    """Whether ``network`` is a module family's (its ``apply`` holds the user's module)."""
    return isinstance(network.apply, ModuleApply)


def roles_table(network: Network, rules: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per tensor: name, shape, role, fan-in, multiplier, init std, lr scale,
    where the role came from (inferred or override) and its aliases."""
    apply = network.apply
    if not isinstance(apply, ModuleApply):
        raise TypeError("roles_table needs a module family's network")
    rows = []
    for p in apply.params:
        r = rules[p.name]
        rows.append(
            {
                "name": p.name,
                "shape": p.shape,
                "role": p.role.value,
                "fan_in": p.fan_in,
                "multiplier": r.multiplier,
                "init_std": r.init_std if p.init == "normal" else p.init,
                "lr_scale": r.lr_scale,
                "source": p.source + (f" (tied: {', '.join(p.aliases)})" if p.aliases else ""),
            }
        )
    for mod, mult in apply.readout_mult.items():
        rows.append(
            {
                "name": f"{mod} (tied readout)",
                "shape": (),
                "role": "output",
                "fan_in": 0,
                "multiplier": mult,
                "init_std": "-",
                "lr_scale": "-",
                "source": "input × multiplier",
            }
        )
    return rows


def print_roles(spec: Any, console: Any, width: int | None = None) -> None:
    """Print the inferred roles and rules of ``spec``'s module family at ``width``
    (default: the base width), as ``widthwise describe`` does; nothing for built-in
    families."""
    from widthwise.describe import describe, print_description

    entry = FAMILIES.entry(spec.model.family)
    if entry.obj is not build_module and not hasattr(entry.obj, "_widthwise_factory"):
        return
    print_description(describe(spec, width), console)
