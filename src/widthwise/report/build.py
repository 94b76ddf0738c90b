"""``build_report``: a study directory in, DIR/report/ out (HTML, PNG, SVG, CSV).

Layout of the output directory::

    report.html           self-contained page (figures embedded, inline CSS)
    figures/<name>.png    every figure, 150 dpi
    figures/<name>.svg    and as vector graphics (text as text)
    csv/<name>.csv        tidy tables of every plotted number (one row per value)
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from widthwise import __version__
from widthwise.analysis.transfer import select_point, tuned_point
from widthwise.errors import StoreError, UserError
from widthwise.report import sections_curves as sc
from widthwise.report import sections_horizon as sh
from widthwise.report import sections_repr as sr
from widthwise.report import sections_spectra as ss
from widthwise.report import sections_transfer as st
from widthwise.report.html import render_html
from widthwise.report.section import (
    TOL,
    Banner,
    Section,
    flatten_samples,
    spec_of,
    study_banner,
)
from widthwise.store import open_study

DPI = 150
CSS_PX_PER_INCH = 120  # figures are shown a little above print size: 8 pt text ≈ 13 px
COORD_CHECK_STEPS = 3
COORD_CHECK_BUDGET_S = 3.0  # run the coordinate check when it should take about this long


def study_sections(
    ds: xr.Dataset,
    *,
    tol: float = TOL,
    coord: xr.DataArray | None = None,
    coord_note: str = "",
) -> list[Section]:
    """Every section the study has data for, in the paper's order (summary first).

    ``tol``: relative tolerance of the consistency verdicts (summary, Fig. 4 section).
    A sweep study (sweep dims such as ``lr`` beside ``seed``) gets the learning-rate
    transfer section after the summary, and every other section shows the study at the
    tuned point (:func:`widthwise.analysis.transfer.tuned_point`), named in the summary.
    """
    if not (np.isfinite(tol) and tol > 0):
        raise UserError(f"The tolerance must be a number > 0. Got {tol!r}.")
    point = tuned_point(ds)  # {} without sweep dims: the study as it is
    transfer = st.transfer_section(ds) if point else None
    diverged = ds.get("diverged_step")
    n_div = (int((diverged >= 0).sum()), int(diverged.size)) if diverged is not None else (0, 0)
    note = st.tuned_note(ds, point) if point else ""
    ds = flatten_samples(select_point(ds, point) if point else ds)
    builders = (
        sc.loss_section,
        sc.logits_section,
        sc.distance_section,
        functools.partial(sc.successive_section, tol=tol),
        sr.kernels_section,
        sr.preacts_section,
        sr.attention_section,
        sr.sharpness_section,
        ss.spectra_section,
        sc.bias_variance_section,
        sc.power_law_section,
        sr.ntk_section,
    )
    sections = [s for s in (sh.horizon_section(ds, tol), sc.summary_section(ds, tol)) if s]
    if point:  # a sweep study: the transfer section, and every other one at the tuned point
        _sweep_facts(sections, ds, note, n_div)
        sections += [transfer] if transfer is not None else []
    sections += [s for s in (b(ds) for b in builders) if s is not None]
    if coord is not None or coord_note:
        sections.append(sr.coord_check_section(coord, coord_note))
    return sections


def _sweep_facts(
    sections: list[Section], ds: xr.Dataset, note: str, n_div: tuple[int, int]
) -> None:
    """Name the sweep, its diverged members (``n_div``: diverged, all) and the tuned point
    the sections show (``ds``: the study there; ``note``) in the summary card."""
    for sec in sections:
        if sec.id != "summary":
            continue
        grid = ds.attrs.get("sweep_grid", {})
        text = "; ".join(
            f"{k}: {len(v)} values, {min(v):.3g} … {max(v):.3g}" for k, v in grid.items()
        )
        at = next((i for i, (k, _) in enumerate(sec.facts) if k == "seeds"), len(sec.facts))
        div = f"; {n_div[0]} of {n_div[1]} members diverged" if n_div[0] else ""
        sec.facts.insert(at + 1, ("sweep", f"{text} (every value × every seed){div}"))
        point = st.point_text(ds.attrs.get("sweep_point", {}))
        sec.facts = [  # the card's other facts are of the shown point: say so
            (f"{k} (at {point})" if k == "diverged members" and point else k, v)
            for k, v in sec.facts
        ]
        if note:
            sec.notes.insert(0, note)


def _coord_check(ds: xr.Dataset, study_dir: Path, mode: bool | None, allow_code: bool = False):
    """(DataArray, "") when the coordinate check ran, else (None, why it did not)."""
    hint = f"run `widthwise coord-check {study_dir / 'spec.yaml'}`"
    if mode is False:
        return None, f"Skipped (not requested); {hint}."
    spec = spec_of(ds)
    steps = max(int(spec.get("steps", 1)), 1)
    est = float(np.nansum(ds.wall_time.values)) * COORD_CHECK_STEPS / steps
    if mode is None and not est <= COORD_CHECK_BUDGET_S:
        return None, f"Skipped: about {est:.0f} s of training for this study's widths; {hint}."
    from widthwise.coordinate_check import coord_check
    from widthwise.spec import validate_spec

    try:
        valid = validate_spec(spec, "study spec")
        if allow_code:
            from widthwise.families.module import trust_factory

            trust_factory(valid)
        cc = coord_check(valid, steps=COORD_CHECK_STEPS)
    except UserError as err:
        return None, f"Skipped: {err}"
    return cc, ""


def save_png(figure: Figure) -> bytes:
    """The figure as PNG. Log axes with nothing positive to show (e.g. every member
    diverged) fall back to linear, so such a panel renders empty instead of failing
    the whole report."""
    buf = io.BytesIO()
    try:
        figure.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    except ValueError as err:
        if "log-scaled" not in str(err):
            raise
        for ax in figure.axes:
            if ax.get_yscale() == "log":
                ax.set_yscale("linear")
            if ax.get_xscale() == "log":
                ax.set_xscale("linear")
        buf = io.BytesIO()
        figure.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def render_figures(sections: Sequence[Section], out: Path) -> dict[str, tuple[bytes, int]]:
    """Write every panel as PNG and SVG under out/figures; return the PNGs for embedding."""
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    images = {}
    for sec in sections:
        for panel in sec.panels:
            png = save_png(panel.figure)
            (figdir / f"{panel.name}.png").write_bytes(png)
            # the layout is fixed by now: freezing it halves the cost of the second save
            panel.figure.set_layout_engine("none")
            panel.figure.savefig(
                figdir / f"{panel.name}.svg", format="svg", metadata={"Date": None}
            )
            width = round(panel.figure.get_figwidth() * CSS_PX_PER_INCH)
            images[panel.name] = (png, width)
    return images


def write_tables(sections: Sequence[Section], out: Path) -> list[Path]:
    csvdir = out / "csv"
    csvdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for sec in sections:
        for name, df in sec.tables.items():
            path = csvdir / f"{name}.csv"
            df.to_csv(path, index=False, float_format="%.8g")
            paths.append(path)
    return paths


REPORT_MARKER = ".widthwise-report"
"""File every report directory holds: ``--out`` may replace only such a directory."""
_OURS = {"figures": (".png", ".svg"), "csv": (".csv",)}


def _check_replaceable(out: Path) -> None:
    """``out`` is absent, empty, or a report widthwise wrote; anything else is refused."""
    if not out.exists():
        return
    if not out.is_dir() or out.is_symlink():
        raise StoreError(f"out: {out} is not a directory; choose another --out")
    for entry in out.iterdir():
        name = entry.name
        if name in (REPORT_MARKER, "report.html") and entry.is_file():
            continue
        if name in _OURS and entry.is_dir() and not entry.is_symlink():
            strays = [p.name for p in entry.iterdir() if p.suffix not in _OURS[name]]
            if not strays:
                continue
            name = f"{name}/{strays[0]}"
        raise StoreError(
            f"out: {out} holds files widthwise did not write ({name}); a report replaces its "
            "directory, so choose another --out"
        )


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace ``out`` by the finished ``tmp`` (readers see the old report or the new)."""
    old = out.with_name(f".old-{out.name}-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def write_report(
    sections: Sequence[Section],
    out: Path,
    *,
    title: str,
    subtitle: str,
    banner: Banner | None = None,
) -> Path:
    """Figures, tables and report.html for ``sections`` under ``out``; returns the page.

    ``banner``: what a partial or diverged study is missing, above the sections. The
    report is built in a temporary sibling directory and swapped in whole, so a build
    killed at any moment leaves the previous report intact; ``out`` must be absent,
    empty or a report widthwise wrote (anything else is refused, nothing deleted)."""
    out = out.absolute()
    _check_replaceable(out)
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    for stale in out.parent.glob(f".*-{out.name}-*") if out.parent.is_dir() else ():
        if stale.name.startswith((".tmp-", ".old-")) and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)  # left by a build that was killed
    try:
        tmp.mkdir(parents=True)
    except OSError as err:
        raise StoreError(f"{out}: cannot create the report directory: {err}") from None
    try:
        _write_into(tmp, sections, title=title, subtitle=subtitle, banner=banner)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "report.html"


def _write_into(
    out: Path,
    sections: Sequence[Section],
    *,
    title: str,
    subtitle: str,
    banner: Banner | None,
) -> None:
    images = render_figures(sections, out)
    write_tables(sections, out)
    page = render_html(
        title,
        subtitle,
        sections,
        images,
        footer=f"widthwise {__version__} · {time.strftime('%Y-%m-%d %H:%M')}",
        banner=banner,
    )
    (out / "report.html").write_text(page, encoding="utf-8")
    (out / REPORT_MARKER).write_text(f"widthwise {__version__}\n")


def build_report(
    study_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    coord_check: bool | None = False,
    tol: float = TOL,
    allow_code: bool = False,
) -> Path:
    """Write the report of the study in ``study_dir`` and return the path of report.html.

    ``out_dir`` defaults to ``study_dir/report``. Sections appear only for what the
    study recorded. ``coord_check``: True runs the coordinate check on the study's spec
    (3 steps), False (default) skips it with a note naming the command, None runs it
    when that costs about 3 s or less (estimated from the study's wall time). ``tol``:
    relative tolerance of the consistency verdicts (default 0.05). ``allow_code``: the
    coordinate check of a module study may import the factory its spec names
    (docs/security.md; or import that module yourself first).
    When the study's spec names trackers, the figures are mirrored to them.
    Raises :class:`~widthwise.errors.StoreError` for a directory that is not a study.
    """
    study_dir = Path(study_dir)
    from widthwise.depth_study import is_depth_study

    if is_depth_study(study_dir):
        return build_depth_report(
            study_dir, out_dir, coord_check=coord_check, tol=tol, allow_code=allow_code
        )
    ds = open_study(study_dir)
    out = Path(out_dir) if out_dir is not None else study_dir / "report"
    coord, note = _coord_check(ds, study_dir, coord_check, allow_code)
    sections = study_sections(ds, tol=tol, coord=coord, coord_note=note)
    spec = spec_of(ds)
    grid = "".join(f"{len(v)} {k} × " for k, v in (ds.attrs.get("sweep") or {}).items())
    subtitle = (
        f"{spec.get('model', {}).get('family', '?')} × {ds.attrs.get('parameterization', '?')}, "
        f"widths {', '.join(str(int(w)) for w in ds.width.values)}, {grid}{ds.sizes['seed']} "
        f"seeds, {spec.get('steps', '?')} steps — {study_dir}"
    )
    page = write_report(
        sections,
        out,
        title=f"widthwise report: {ds.attrs.get('name', '?')}",
        subtitle=subtitle,
        banner=study_banner(ds),
    )
    if spec.get("trackers"):  # the spec's trackers get the figures (never raises)
        from widthwise.trackers import mirror_figures

        mirror_figures(study_dir, out)
    return page


def build_depth_report(
    study_dir: Path,
    out_dir: str | Path | None = None,
    *,
    coord_check: bool | None = False,
    tol: float = TOL,
    allow_code: bool = False,
) -> Path:
    """A depth study's report: every started depth's own report in
    ``depth-<d>/report/`` (:func:`build_report`), and ``report.html`` in ``out_dir``
    (default ``study_dir/report``) with the along-depth section
    (:mod:`widthwise.report.sections_depth`); returns that page."""
    from widthwise.depth_study import depth_dirname, open_depth_study, started_depths
    from widthwise.report.sections_depth import depth_section

    for d in started_depths(study_dir):
        build_report(
            study_dir / depth_dirname(d), coord_check=coord_check, tol=tol, allow_code=allow_code
        )
    ds = open_depth_study(study_dir)
    section = depth_section(ds)
    spec = spec_of(ds)
    depths = ", ".join(str(int(d)) for d in ds["depth"].values)
    subtitle = (
        f"{spec.get('model', {}).get('family', '?')} × {ds.attrs.get('parameterization', '?')}, "
        f"depths {depths}, widths {', '.join(str(int(w)) for w in ds.width.values)}, "
        f"{ds.sizes['seed']} seeds, {spec.get('steps', '?')} steps — {study_dir}"
    )
    missing = [d for d in ds.attrs["planned_depths"] if d not in ds.attrs["depths"]]
    notes = [f"depths {missing} not started: `widthwise run` the spec runs them"] if missing else []
    for d in ds["depth"].values.tolist():
        one = study_banner(ds.sel(depth=d))
        if one is not None:
            notes.append(f"depth {d}: {one.headline} (its report says which widths)")
    banner = (
        Banner(headline="This depth study is partial", widths=[], notes=notes) if notes else None
    )
    return write_report(
        [section] if section is not None else [],
        Path(out_dir) if out_dir is not None else study_dir / "report",
        title=f"widthwise report: {ds.attrs.get('name', '?')} (along depth)",
        subtitle=subtitle,
        banner=banner,
    )
