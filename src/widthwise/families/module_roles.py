"""Roles of a user's ``nn.Module`` inferred from its shapes at two widths, as ``mup`` does.

``mup.set_base_shapes(model, base, delta=...)`` compares every parameter's shape in
two models of different widths: a dimension that changes is a width ("infinite")
dimension. We do the same with the model at ``width`` and at ``2·width`` (built on
the meta device, so no memory is spent), then read the role from *where* the width
dims sit, which needs the tensor's layout (which dim is fan-in):

=================================== ============================ ===================
owner                               layout                       fan-in
=================================== ============================ ===================
``nn.Linear``                       (out, in)                    in
``nn.Conv{1,2,3}d``                 (out, in/groups, *k)         in/groups · Πk
``nn.ConvTranspose{1,2,3}d``        (in, out/groups, *k)         in · Πk
Hugging Face ``Conv1D``             (in, out) (transposed)       in
``nn.Embedding``                    (vocab, dim): a lookup       1
anything else, ≥ 2 dims             (out, in, ...) if all dims
                                    scale, else ambiguous        Π shape[1:]
=================================== ============================ ===================

From the layout: fan-out and fan-in both scale → ``hidden``; only fan-out →
``input`` (embeddings, the first layer, depthwise convs); only fan-in → ``output``
(the readout); 1-d tensors with a width dim → ``vector``; no width dim →
``fixed``. These are mup's matrix-like (two infinite dims) and vector-like (one)
tensors, with mup's ``MuReadout`` as the ``output`` role.

A tensor shared by an ``nn.Embedding`` and a readout (tied input/output embeddings,
as GPT-2) is one tensor with the embedding's role ``input`` (mup: vector-like, its
learning rate that of an embedding), and the readout's forward multiplier is
applied to the readout's *input*, exactly as ``mup.MuSharedReadout`` divides its
input by the width multiplier.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from widthwise.errors import UserError
from widthwise.parameterization import ParamSpec, Role

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def is_hf_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2): a linear layer storing its weight as (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def layout_of(module: nn.Module, attr: str, ndim: int) -> tuple[str, int | None, tuple[int, ...]]:
    """(layout name, fan-out dim, fan-in dims) of parameter ``attr`` of ``module``."""
    if attr == "weight" and ndim >= 2:
        if isinstance(module, nn.Embedding):
            return "embedding", 1, ()
        if isinstance(module, nn.Linear):
            return "linear", 0, (1,)
        if isinstance(module, _CONV):
            return "conv", 0, tuple(range(1, ndim))
        if isinstance(module, _CONV_T):
            return "conv_transposed", 1, (0, *range(2, ndim))
        if is_hf_conv1d(module):
            return "hf_conv1d", 1, (0,)
    return "raw", None, ()


@dataclass(frozen=True)
class InferredParam:
    """One trainable tensor of a module family, with the role read from its shapes."""

    name: str  # the first name ``named_parameters`` gives it
    aliases: tuple[str, ...]  # every other name of the same tensor (tied weights)
    shape: tuple[int, ...]  # at this width
    shape2: tuple[int, ...]  # at the second width
    role: Role
    fan_in: int
    layout: str
    init: str = "normal"
    source: str = "inferred"  # or "override"
    tags: frozenset[str] = field(default_factory=frozenset)

    def spec(self) -> ParamSpec:
        return ParamSpec(self.name, self.shape, self.role, self.fan_in, self.init, self.tags)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RoleOverride:
    """A role given in ``model.options.roles``, and optionally the fan-in."""

    role: Role
    fan_in: int | None = None


def _init_kind(p: torch.Tensor) -> str:
    """``ones``/``zeros`` when the module starts the tensor so (norm gains, biases)."""
    if p.device.type == "meta" or p.numel() == 0:
        return "normal"
    with torch.no_grad():
        if bool((p == 1).all()):
            return "ones"
        if bool((p == 0).all()):
            return "zeros"
    return "normal"


def owners(model: nn.Module) -> dict[int, list[tuple[str, nn.Module, str]]]:
    """{id(parameter): [(full name, owning module, attribute), ...]} in module order."""
    out: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        for attr, p in mod._parameters.items():
            if p is None:
                continue
            full = f"{mname}.{attr}" if mname else attr
            entries = out.setdefault(id(p), [])
            if full not in [e[0] for e in entries]:
                entries.append((full, mod, attr))
    return out


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def infer_roles(
    model: nn.Module,
    model2: nn.Module,
    width: int,
    width2: int,
    overrides: Mapping[str, RoleOverride] | None = None,
) -> tuple[list[InferredParam], dict[str, str]]:
    """Every unique trainable tensor of ``model`` with its role, and the tied readouts.

    ``model2`` is the same factory at ``width2``. Returns the tensors in
    ``named_parameters`` order and ``{readout module name: tied parameter name}``
    for readouts that share an embedding's weight. Raises a one-line
    :class:`UserError` for a tensor whose role its shapes do not decide (naming it
    and its shapes at both widths), when the two widths have different parameter
    names, when no tensor changes with width, and for an override naming no tensor.
    """
    overrides = dict(overrides or {})
    shapes2 = {n: tuple(p.shape) for n, p in model2.named_parameters(remove_duplicate=False)}
    own = owners(model)
    names1 = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    missing = [n for n in names1 if n not in shapes2]
    extra = [n for n in shapes2 if n not in set(names1)]
    if missing or extra:
        which = missing or extra
        raise UserError(
            f"model.options.factory: the model has different parameters at widths {width} and "
            f"{width2} ({which[0]!r} only at width {width if missing else width2}); a family "
            "must have the same tensors at every width, only their sizes may change"
        )
    used: set[str] = set()
    out: list[InferredParam] = []
    tied_readouts: dict[str, str] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        entries = own.get(id(p), [(name, model, name.rsplit(".", 1)[-1])])
        all_names = [e[0] for e in entries]
        if name not in all_names:
            all_names.insert(0, name)
        s1, s2 = tuple(p.shape), shapes2[name]
        scaled = [i for i, (a, b) in enumerate(zip(s1, s2)) if a != b]
        where = f"{name!r} has shape {_fmt(s1)} at width {width} and {_fmt(s2)} at width {width2}"
        ratios = {s2[i] / s1[i] for i in scaled}
        over = _match_override(all_names, overrides, used)
        if len(ratios) > 1 and over is None:
            raise UserError(
                f"model.options.roles: {where}: its dims scale by different ratios "
                f"({', '.join(f'{r:g}' for r in sorted(ratios))}), so no single width dim "
                f"decides its role; give it one, e.g. roles: {{{name!r}: hidden}}"
            )
        # the layout: an embedding wins (tied embedding/readout), then any known layer
        layouts = [(layout_of(m, a, p.dim()), e) for e, (_, m, a) in enumerate(entries)]
        known = [lo for lo in layouts if lo[0][0] != "raw"]
        emb = [lo for lo in known if lo[0][0] == "embedding"]
        (layout, d_out, d_in), first = (emb or known or layouts)[0]
        init = _init_kind(p)
        tags: frozenset[str] = frozenset()
        if p.dim() == 0 or not scaled:
            role, fan_in = Role.FIXED, max(1, math.prod(s1[1:]) if p.dim() >= 2 else 1)
        elif p.dim() == 1:
            role, fan_in = Role.VECTOR, 1
        elif layout == "embedding":
            if 0 in scaled:
                role = None
            else:
                role, fan_in, tags = Role.INPUT, 1, frozenset({"embedding"})
        elif layout == "raw":
            if len(scaled) == p.dim():
                role, fan_in = Role.HIDDEN, math.prod(s1[1:])
            else:
                role = None
        else:
            assert d_out is not None
            fan_in = math.prod(s1[i] for i in d_in)
            if layout == "conv":
                fan_in = math.prod(s1[1:])
            out_scales = d_out in scaled
            in_scales = any(i in scaled for i in d_in)
            if out_scales and in_scales:
                role = Role.HIDDEN
            elif out_scales:
                role = Role.INPUT
            elif in_scales:
                role = Role.OUTPUT
            else:  # only kernel dims scale: nothing we know
                role = None
        source = "inferred"
        if over is not None:
            role, source = over.role, "override"
            if over.fan_in is not None:
                fan_in = over.fan_in
            elif role in (Role.VECTOR, Role.FIXED) and p.dim() < 2:
                fan_in = 1
            elif layout == "raw":
                fan_in = 1 if role is Role.INPUT else math.prod(s1[1:]) if p.dim() >= 2 else 1
        if role is None:
            raise UserError(
                f"model.options.roles: {where}, and its shapes do not say whether it is an "
                f"input, hidden or output weight (a {type(entries[first][1]).__name__} "
                f"parameter, layout unknown); give its role, e.g. roles: {{{name!r}: input}}"
            )
        out.append(
            InferredParam(
                name,
                tuple(n for n in all_names if n != name),
                s1,
                s2,
                role,
                int(fan_in),
                layout,
                init,
                source,
                tags,
            )
        )
        # a readout sharing the embedding's tensor: its multiplier goes on its input
        if layout == "embedding" and role is Role.INPUT:
            for ((lo, _, _), _), (full, mod, attr) in zip(layouts, entries):
                if lo in ("linear", "hf_conv1d", "raw") and mod is not entries[first][1]:
                    tied_readouts[full[: -len(attr) - 1] if full != attr else ""] = name
    unused = [k for k in overrides if k not in used]
    if unused:
        names = [q.name for q in out]
        raise UserError(
            f"model.options.roles.{unused[0]}: names no trainable tensor of the model "
            f"(its tensors: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''})"
        )
    if all(q.shape == q.shape2 for q in out):
        raise UserError(
            f"model.options.factory: no parameter changes between widths {width} and {width2}: "
            "the factory must build a model whose size is set by its width argument"
        )
    return out, tied_readouts


def check_third_width(
    params: list[InferredParam], model3: nn.Module, width: int, width3: int
) -> None:
    """Roles come from two widths, w and 2w (as ``mup``'s base and delta shapes); a third,
    ``width3``, disambiguates a dim that scales between some widths and not others (a
    clamped size like ``max(64, width)``: fixed from w to 2w, growing after), which the
    first two would misread. Such a tensor, unless its role is overridden, is a one-line
    :class:`UserError` naming its shapes at the three widths."""
    shapes3 = {n: tuple(p.shape) for n, p in model3.named_parameters(remove_duplicate=False)}
    for p in params:
        s3 = shapes3.get(p.name)
        if s3 is None or len(s3) != len(p.shape):
            raise UserError(
                f"model.options.factory: the model has different parameters at widths "
                f"{width} and {width3} ({p.name!r} only at width {width}); a family must "
                "have the same tensors at every width, only their sizes may change"
            )
        if p.source == "override":
            continue
        for i, (a, b, c) in enumerate(zip(p.shape, p.shape2, s3)):
            if (a != b) != (b != c):
                raise UserError(
                    f"model.options.roles: {p.name!r} has shape {_fmt(p.shape)} at width "
                    f"{width}, {_fmt(p.shape2)} at width {2 * width} and {_fmt(s3)} at width "
                    f"{width3}: its dim {i} scales with width only between some of them, so "
                    f"its role is not decided; give it one, e.g. roles: {{{p.name!r}: hidden}}"
                )


def _match_override(
    names: list[str], overrides: Mapping[str, RoleOverride], used: set[str]
) -> RoleOverride | None:
    """The override whose key (a name or glob pattern) matches one of ``names``."""
    hit = None
    for key, value in overrides.items():
        if any(n == key or fnmatch.fnmatchcase(n, key) for n in names):
            used.add(key)
            hit = hit or value
    return hit
