"""``widthwise list``: the bundled example studies, what each costs and needs.

For every example: its one-line description; its work (FLOPs of the whole run,
memory of its widest width) and, once this machine is calibrated (any ``widthwise
run``, or ``widthwise run NAME --dry-run``, measures it once in ≈ 0.2 s), the
estimated time; and the data files it reads, whether they are here, and how to get
them. Reads only YAML and JSON files (no torch): it answers at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from widthwise.bundled import (
    bundled_spec_paths,
    data_files,
    read_costs,
    read_raw,
    threads_of,
    workers_of,
)
from widthwise.calibration import Calibration, cached
from widthwise.cost import (
    WidthCost,
    calibration_phrase,
    estimate_phrase,
    format_bytes,
    format_flops,
    makespan,
    seconds,
)

if TYPE_CHECKING:
    from rich.console import Console


def _calibration(raw: dict[str, Any]) -> Calibration | None:
    device = raw.get("device", "auto")
    return cached(str(device) if isinstance(device, str) else "auto", threads_of(raw))


def _description(raw: dict[str, Any]) -> str:
    text = str(raw.get("description", "")).strip()
    return text.split("\n")[0] if text else ""


def list_data() -> dict[str, Any]:
    """Every bundled example as one JSON-able mapping (``widthwise list --json``; the
    fields are documented in docs/cli.md)."""
    costs = read_costs()
    examples = []
    used: dict[str, Calibration] = {}
    for name, path in bundled_spec_paths().items():
        raw = read_raw(path)
        cost = costs.get(name)
        cal = _calibration(raw)
        if cal is not None:
            used[f"{cal.device}, {cal.threads} threads"] = cal
        parallel = workers_of(raw)
        per_width = []
        for c in cost or []:
            per_width.append(
                {
                    "width": c.width,
                    "flops": c.flops,
                    "memory_bytes": c.memory_bytes,
                    "estimated_seconds": seconds(c, cal) if cal is not None else None,
                }
            )
        total = None
        if cost and cal is not None:
            total = makespan([seconds(c, cal) for c in cost], parallel)
        need = data_files(raw)
        examples.append(
            {
                "name": name,
                "path": str(path),
                "description": _description(raw),
                "family": (raw.get("model") or {}).get("family", "mlp")
                if isinstance(raw.get("model"), dict)
                else "mlp",
                "widths": raw.get("widths"),
                "seeds": raw.get("seeds"),
                "steps": raw.get("steps"),
                "flops": sum(c.flops for c in cost) if cost else None,
                "memory_bytes": max(c.memory_bytes for c in cost) if cost else None,
                "estimated_seconds": total,
                "estimate": estimate_phrase(cost, cal, parallel=parallel) if cost and cal else None,
                "per_width": per_width,
                "data": None
                if need is None
                else {
                    "stream": need.stream,
                    "what": need.what,
                    "path": need.path,
                    "present": need.present,
                    "how": need.how,
                },
            }
        )
    return {
        "examples": examples,
        "calibrations": [
            {
                "device": c.device,
                "threads": c.threads,
                "matmul_flops_per_s": c.matmul_flops_per_s,
                "conv_flops_per_s": c.conv_flops_per_s,
                "op_seconds": c.op_seconds,
                "measured": c.measured,
            }
            for c in used.values()
        ],
    }


def _work(cost: list[WidthCost] | None) -> str:
    if not cost:
        return "—"
    flops = sum(c.flops for c in cost)
    return f"{format_flops(flops)}, {format_bytes(max(c.memory_bytes for c in cost))}"


def print_list(console: Console, *, quiet: bool = False) -> None:
    """Print the bundled examples (``quiet``: only their names, one per line)."""
    from rich.markup import escape
    from rich.table import Table

    paths = bundled_spec_paths()
    if quiet:
        for name in paths:
            console.print(escape(name), soft_wrap=True, highlight=False)
        return
    costs = read_costs()
    table = Table(title="bundled studies (widthwise run NAME)")
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("description")
    table.add_column("estimated time", no_wrap=True)
    table.add_column("work", no_wrap=True)
    table.add_column("data", no_wrap=True)
    needs, calibrated, uncalibrated, stale = [], {}, False, []
    for name, path in paths.items():
        raw = read_raw(path)
        cost = costs.get(name)
        cal = _calibration(raw)
        if cost is None:
            stale.append(name)
            time = "—"
        elif cal is None:
            uncalibrated = True
            time = "not calibrated"
        else:
            calibrated[f"{cal.device}, {cal.threads}"] = cal
            time = estimate_phrase(cost, cal, parallel=workers_of(raw), where="")
        need = data_files(raw)
        if need is not None:
            needs.append((name, need))
        data = (
            "—"
            if need is None
            else f"{need.what.split(' (')[0]} ({'found' if need.present else 'missing'})"
        )
        table.add_row(*(escape(c) for c in (name, _description(raw), time, _work(cost), data)))
    console.print(table)
    for cal in calibrated.values():
        console.print(
            escape(
                "Times are estimates for this machine from FLOPs and kernel calls, not "
                f"measurements ({calibration_phrase(cal)}); work: FLOPs of the whole run and "
                "memory of the widest width."
            ),
            soft_wrap=True,
            highlight=False,
        )
    if uncalibrated:
        console.print(
            "Times: this machine is not calibrated yet; `widthwise run NAME --dry-run` "
            "measures it once (≈ 0.2 s) and shows the per-width estimate.",
            soft_wrap=True,
            highlight=False,
        )
    if stale:
        console.print(
            escape(
                f"No counted cost for {', '.join(stale)} (the spec changed since "
                "examples/costs.json was written: python -m widthwise.cost --write); "
                "`widthwise run NAME --dry-run` counts it."
            ),
            soft_wrap=True,
            highlight=False,
        )
    for name, need in needs:
        console.print(escape(f"{name} {need.describe()}"), soft_wrap=True, highlight=False)
