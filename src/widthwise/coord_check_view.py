"""What ``widthwise coord-check`` shows: per layer the sizes per width, the slope in width
with its seed interval, the verdict and a hint; the PNG of ``--plot``; the ``--json``.

The numbers: :func:`widthwise.coord_check` and
:func:`widthwise.analysis.coordinates.coord_slopes` (docs/coordinate-check.md).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import xarray as xr
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from widthwise.analysis.coordinates import coord_sentence
from widthwise.errors import UserError

VERDICT_STYLE = {"flat": "green", "grows": "red", "shrinks": "red", "undetermined": "yellow"}


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


def print_check(cc: xr.DataArray, slopes: xr.Dataset, console: Console) -> None:
    """The table of one check (a parameterization), its sentence and hints."""
    last = cc.isel(step=-1).mean("seed")
    dim = _dim(cc)
    how = "fixed batch" if cc.attrs.get("fixed_batch") else "probe inputs"
    if dim == "depth":
        how += f", width {cc.attrs.get('width', '?')}"
    table = Table(
        title=escape(
            f"{cc.attrs.get('units', 'size')} after {int(cc.step[-1])} steps "
            f"({cc.attrs.get('parameterization', '?')}, {cc.sizes['seed']} seeds, {how})"
        )
    )
    table.add_column("layer", no_wrap=True)
    for w in cc[dim].values:
        table.add_column(f"{dim} {int(w)}", justify="right")
    table.add_column("slope [95 %]", justify="right", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    for layer in cc.layer.values:
        r = slopes.sel(layer=layer)
        s, lo, hi = (float(r[k]) for k in ("slope", "slope_lo", "slope_hi"))
        interval = f"{s:+.2f} [{lo:+.2f}, {hi:+.2f}]" if math.isfinite(s) else "—"
        word = str(r["verdict"].item())
        table.add_row(
            escape(str(layer)),
            *[f"{v:.3g}" for v in last.sel(layer=layer).values],
            interval,
            f"[{VERDICT_STYLE[word]}]{word}[/]",
        )
    console.print(table)
    console.print(escape(coord_sentence(slopes)), soft_wrap=True, highlight=False)
    for layer, hint in zip(slopes.layer.values, slopes.hint.values):
        if hint:
            console.print(escape(f"hint: {layer}: {hint}"), soft_wrap=True, highlight=False)


def _dim(cc: xr.DataArray) -> str:
    return "depth" if "depth" in cc.dims else "width"


def check_data(cc: xr.DataArray, slopes: xr.Dataset) -> dict[str, Any]:
    """One check as JSON-able data (``coord-check --json``; fields in docs/cli.md)."""
    last = cc.isel(step=-1).mean("seed")
    dim = _dim(cc)
    return {
        "along": dim,
        "parameterization": cc.attrs.get("parameterization"),
        "stat": cc.attrs.get("stat"),
        "fixed_batch": bool(cc.attrs.get("fixed_batch")),
        "steps": int(cc.step[-1]),
        "seeds": cc.sizes["seed"],
        f"{dim}s": [int(w) for w in cc[dim].values],
        "flat": slopes.attrs["flat"],
        "layers": [
            {
                "layer": str(layer),
                "kind": str(cc.kind.sel(layer=layer).item()),
                "size": [_num(v) for v in last.sel(layer=layer).values],
                "slope": _num(slopes.slope.sel(layer=layer)),
                "slope_lo": _num(slopes.slope_lo.sel(layer=layer)),
                "slope_hi": _num(slopes.slope_hi.sel(layer=layer)),
                "verdict": str(slopes.verdict.sel(layer=layer).item()),
                "reason": str(slopes.reason.sel(layer=layer).item()),
                "hint": str(slopes.hint.sel(layer=layer).item()),
            }
            for layer in cc.layer.values
        ],
    }


def check_plot_path(path: str) -> Path:
    """``--plot`` must name a .png in an existing directory (one-line UserError)."""
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise UserError(f"--plot: {path!r}: must be a .png file")
    if not p.parent.is_dir():
        raise UserError(f"--plot: {path!r}: directory {str(p.parent)!r} does not exist")
    return p


def write_plot(checks: dict[str, xr.DataArray], path: Path) -> None:
    """The checks' figure (one row per parameterization) as a PNG, written atomically."""
    from widthwise.report import fig_fits
    from widthwise.report.build import save_png
    from widthwise.store.files import atomic_write_bytes

    atomic_write_bytes(path, save_png(fig_fits.coord_check_rows(checks)))
