"""``widthwise describe SPEC``: what a spec trains, tensor by tensor, before it runs.

For any family (built-in or a module family) at one width (default: the base width):
every trainable tensor with its shape, role, fan-in and the parameterization's rule
(forward multiplier, init std, lr and weight-decay scale; DESIGN.md "ParamRule"),
where a module family's role came from (inferred from two widths, an override, a tied
alias: docs/modules.md), the network-wide rules (attention exponent, centring), and
the parameter count of one member at every width of the study. Nothing is trained
and nothing is written; the other widths are built on torch's ``meta`` device (shapes
only), so a width of 10⁵ costs no memory.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from widthwise.spec import StudySpec

__all__ = ["describe", "print_description"]

BUILT_IN = "declared by the family"


def _network(spec: StudySpec, width: int, stream: Any) -> tuple[Any, dict[str, Any], Any]:
    """(network, rules, network rules) of ``spec`` at ``width``, as the trainer builds them."""
    from widthwise.families import build_network
    from widthwise.parameterization import network_rules_for, rules_for
    from widthwise.trainer import rule_context

    param, ctx = spec.parameterization.name, rule_context(spec, width)
    net_rules = network_rules_for(param, ctx)
    net = build_network(
        spec.model.family,
        width,
        stream.in_shape,
        stream.out_dim,
        spec.family_options(),
        network_rules=net_rules,
    )
    rules = rules_for(param, list(net.params), ctx)
    bind = getattr(net.apply, "bind_parameterization", None)
    if bind is not None:  # a module family's tied readout takes an output rule's multiplier
        bind(lambda specs: rules_for(param, specs, ctx))
    return net, rules, net_rules


def _rows(net: Any, rules: dict[str, Any]) -> list[dict[str, Any]]:
    from widthwise.families.module import roles_table
    from widthwise.families.module_apply import ModuleApply

    if isinstance(net.apply, ModuleApply):
        rows = roles_table(net, rules)
    else:
        rows = [
            {
                "name": p.name,
                "shape": tuple(p.shape),
                "role": p.role.value,
                "fan_in": p.fan_in,
                "multiplier": rules[p.name].multiplier,
                "init_std": rules[p.name].init_std if p.init == "normal" else p.init,
                "lr_scale": rules[p.name].lr_scale,
                "source": BUILT_IN,
            }
            for p in net.params
        ]
    for row in rows:
        r = rules.get(row["name"])
        row["wd_scale"] = r.wd_scale if r is not None else "-"
        row["shape"] = list(row["shape"])
    return rows


def describe(spec: StudySpec, width: int | None = None) -> dict[str, Any]:
    """What ``spec`` trains at ``width`` (default: its base width), as plain data.

    Returns ``{"family", "parameterization", "width", "tensors": [row, ...],
    "network": {"attn_exponent", "center"}, "params_per_width": {width: count},
    "members": n, "sweep_points": n, "seeds": n}``; a row has ``name``, ``shape``,
    ``role``, ``fan_in``, ``multiplier``, ``init_std`` (a number, or ``zeros``/``ones``),
    ``lr_scale``, ``wd_scale`` and ``source``. A depth study's spec: describe one depth
    (``spec.at_depth(d)``; the command line's ``--depth``).
    """
    import torch

    from widthwise.streams import STREAMS

    width = int(width or spec.base_width or spec.widths[0])
    stream = STREAMS.get(spec.data.stream)(spec.data.seed, spec.stream_options())
    net, rules, net_rules = _network(spec, width, stream)
    counts = {}
    for w in spec.widths:
        if w == width:
            n = net
        else:
            with torch.device("meta"):
                n = _network(spec, w, stream)[0]
        counts[int(w)] = int(sum(math.prod(p.shape) for p in n.params))
    return {
        "family": spec.model.family,
        "parameterization": spec.parameterization.name,
        "width": width,
        "tensors": _rows(net, rules),
        "network": {
            "attention": _has_attention(net),
            "attn_exponent": float(net_rules.attn_exponent),
            "center": bool(net_rules.center),
        },
        "params_per_width": counts,
        "members": len(spec.member_seeds),
        "sweep_points": len(spec.sweep_points),
        "seeds": len(spec.seed_list),
    }


def _has_attention(net: Any) -> bool:
    """A built-in family's query tensors (tag ``query``), or a module family (whose
    attention takes the exponent where it calls ``widthwise.attention_scale()``)."""
    from widthwise.families.module_apply import ModuleApply

    return isinstance(net.apply, ModuleApply) or any("query" in p.tags for p in net.params)


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float | int) and not isinstance(v, bool) else str(v)


def print_description(info: dict[str, Any], console: Console) -> None:
    """The table of :func:`describe`'s result, then the network rules and the counts."""
    from rich.table import Table

    table = Table(
        title=f"{info['family']} at width {info['width']} under {info['parameterization']}: "
        f"W = multiplier·w, w ~ N(0, init std²), lr·lr scale"
    )
    for col in ("tensor", "shape", "role", "fan-in", "multiplier", "init std", "lr scale"):
        table.add_column(col, justify="right" if col not in ("tensor", "role") else "left")
    table.add_column("wd scale", justify="right")
    sources = any(row["source"] != BUILT_IN for row in info["tensors"])
    if sources:  # a module family: inferred, overridden, tied
        table.add_column("from")
    for row in info["tensors"]:
        cells = [
            row["name"],
            "×".join(map(str, row["shape"])) or "-",
            row["role"],
            _num(row["fan_in"]),
            _num(row["multiplier"]),
            _num(row["init_std"]),
            _num(row["lr_scale"]),
            _num(row["wd_scale"]),
        ]
        table.add_row(*cells, *([row["source"]] if sources else []))
    console.print(table)
    net = info["network"]
    if net["attention"]:
        where = " where the module calls widthwise.attention_scale()" if sources else ""
        console.print(f"attention scores{where}: q·k / d_head^{net['attn_exponent']:g}")
    if net["center"]:
        console.print("output centred on the initial network (f − f₀: the lazy regime)")
    counts = ", ".join(f"{w}: {n:,}" for w, n in info["params_per_width"].items())
    points = info["sweep_points"]
    members = f"{info['members']} members ({points} sweep points × {info['seeds']} seeds)"
    console.print(
        f"parameters of one member by width: {counts}; "
        + (members if points > 1 else f"{info['seeds']} seeds")
        + " per width"
    )
