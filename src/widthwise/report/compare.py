"""``build_compare``: overlay studies that differ in one setting in one report.

E.g. muP vs SP (paper Appendix E) or muP vs NTP (Appendix D): the same widths, seeds
and data, another parameterization. Colour is width, linestyle is study; the
summary names the settings that differ between the specs. Figures put the studies side
by side, one column per study (paper Fig. 15), with one width → colour map for every
panel: the union of the studies' widths.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import xarray as xr

from widthwise import analysis as wa
from widthwise.analysis.transfer import select_point, sweep_dims, tuned_point
from widthwise.errors import UserError
from widthwise.report import fig_compare
from widthwise.report import sections_transfer as st
from widthwise.report.build import write_report
from widthwise.report.section import (
    Panel,
    Section,
    flatten_samples,
    has,
    loss_label,
    spec_of,
    tidy,
)
from widthwise.store import open_study
from widthwise.summary import FINAL_WINDOW

IGNORED_KEYS = {"out", "name", "description", "device"}


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def spec_differences(specs: Sequence[dict]) -> dict[str, list[Any]]:
    """Settings (dotted keys) whose values differ between the specs, with each spec's value."""
    flat = [_flatten({k: v for k, v in s.items() if k not in IGNORED_KEYS}) for s in specs]
    keys = sorted(set().union(*flat))
    return {k: [f.get(k) for f in flat] for k in keys if len({repr(f.get(k)) for f in flat}) > 1}


def study_labels(names: Sequence[str], diffs: dict[str, list[Any]]) -> list[str]:
    """A short label per study: its parameterization when that differs (``mup``, ``sp``),
    else its value of the first differing setting (``lr=0.1``), else its name."""
    if "parameterization.name" in diffs:
        return _unique([str(v) for v in diffs["parameterization.name"]])
    if diffs:
        key, values = next(iter(diffs.items()))
        return _unique([f"{_short_key(key)}={v}" for v in values])
    return _unique(list(names))


def _short_key(key: str) -> str:
    """'parameterization.name' -> 'parameterization', 'optimizer.lr' -> 'lr'."""
    parts = key.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab} ({seen[lab]})")
    return out


def _stack(named: dict[str, xr.DataArray], value: str) -> pd.DataFrame:
    frames = []
    for label, da in named.items():
        df = tidy(da.rename(value))
        df.insert(0, "study", label)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def compare_sections(studies: dict[str, xr.Dataset], dirs: Sequence[Path]) -> list[Section]:
    """The comparison's sections. A sweep study (sweep dims beside ``seed``) is shown at
    its tuned point (:func:`widthwise.analysis.transfer.tuned_point`) in every section but
    the learning-rate transfer one, which puts the studies' μTransfer panels side by side
    when every study swept ``lr``."""
    full = studies
    points = {lab: tuned_point(ds) for lab, ds in full.items()}
    studies = {
        lab: flatten_samples(select_point(ds, points[lab]) if points[lab] else ds)
        for lab, ds in full.items()
    }
    specs = [spec_of(ds) for ds in full.values()]
    diffs = spec_differences(specs)
    labels = list(studies)
    summary = Section(
        id="summary",
        title="Summary",
        paper="App. D, E",
        text="Studies side by side: one column per study, the panels of a quantity on one "
        "y scale; colour is width, on one scale for every study and panel. The settings "
        "that differ between the specs are listed; a fair comparison changes one of them.",
        facts=[
            (
                "differing settings",
                "; ".join(f"{k}: {' vs '.join(map(str, v))}" for k, v in diffs.items()) or "none",
            )
        ],
        table=(
            ["study", "directory", "parameterization", "widths", "seeds", "steps", "diverged"],
            [
                [
                    lab,
                    str(d),
                    str(ds.attrs.get("parameterization", "?")),
                    ", ".join(str(int(w)) for w in ds.width.values),
                    str(ds.sizes["seed"]),
                    str(spec.get("steps", "?")),
                    str(int((ds.diverged_step >= 0).sum())),
                ]
                for lab, d, ds, spec in zip(labels, dirs, full.values(), specs)
            ],
        ),
    )
    if any(points.values()):
        summary.facts.append(
            (
                "sweep point shown",
                "; ".join(
                    f"{lab}: {st.point_text(p)} (tuned at its widest width)"
                    if p
                    else f"{lab}: no sweep"
                    for lab, p in points.items()
                )
                + " — every section but the learning-rate transfer one",
            )
        )
    other = [k for k in diffs if not k.startswith(("parameterization", "optimizer"))]
    if len(diffs) > 1 and other:
        summary.notes.append(
            f"The studies differ in {len(diffs)} settings; overlays mix their effects."
        )
    sections = [summary]
    loss_name = loss_label(next(iter(studies.values())))
    widths = sorted({w for ds in studies.values() for w in ds.width.values.tolist()})
    transfer = _transfer_section(full, loss_name, widths)
    if transfer is not None:
        sections.append(transfer)
    curves: dict[str, dict[str, xr.DataArray]] = {}
    xdims, ylab = {}, {}
    for var, title, xdim in (
        ("train_loss", "training loss", "step"),
        ("test_loss", "test loss", "test_step"),
    ):
        if all(has(ds, var) for ds in studies.values()):
            curves[title] = {lab: ds[var] for lab, ds in studies.items()}
            xdims[title], ylab[title] = xdim, loss_name
    if curves:
        sec = Section(
            id="loss",
            title="Loss curves",
            paper="Fig. 2, App. E",
            text="Losses over training, one column per study; colour: width.",
            panels=[
                Panel(
                    "compare_loss_curves",
                    fig_compare.overlay_curves(curves, xdims=xdims, ylabel=ylab, widths=widths),
                    "Seed means.",
                )
            ],
        )
        for title, named in curves.items():
            sec.tables[f"compare_{title.replace(' ', '_')}"] = _stack(named, "loss")
        sections.append(sec)
        final: dict[str, dict[str, xr.DataArray]] = {}
        if "test loss" in curves:
            final["test loss, final step"] = {
                lab: ds.test_loss.isel(test_step=-1) for lab, ds in studies.items()
            }
        if "training loss" in curves:
            final[f"train loss, last {FINAL_WINDOW} steps"] = {
                lab: ds.train_loss.isel(step=slice(-FINAL_WINDOW, None)).mean("step")
                for lab, ds in studies.items()
            }
        sec = Section(
            id="final_loss",
            title="Final loss against width",
            paper="Fig. 2, 9, App. E",
            text="Where each study ends, per width: a consistent parameterization "
            "improves monotonically with width.",
            panels=[
                Panel(
                    "compare_final_loss",
                    fig_compare.overlay_vs_width(
                        final, ylabel=loss_name, widths=widths, reference=False
                    ),
                    "Seed mean and range over seeds; no reference slopes: a loss "
                    "approaches its infinite-width value c, not 0 (see the power laws).",
                )
            ],
        )
        for title, named in final.items():
            key = "test" if title.startswith("test") else "train"
            sec.tables[f"compare_final_{key}_loss"] = _stack(named, "loss")
        sections.append(sec)
    if all(has(ds, "test_logits") and ds.sizes["width"] >= 2 for ds in studies.values()):
        rmse = {
            lab: wa.scaled_rmse_to_widest(ds.test_logits, ensemble=True)
            for lab, ds in studies.items()
        }
        rmse = {lab: da.sel(width=da.width != da.width.max()) for lab, da in rmse.items()}
        sec = Section(
            id="distance",
            title="Distance to the widest",
            paper="Fig. 3 d-f",
            text="Scaled RMSE of seed-mean test logits to each study's own widest width.",
            panels=[
                Panel(
                    "compare_distance",
                    fig_compare.overlay_curves(
                        {"scaled RMSE to the widest": rmse},
                        xdims={"scaled RMSE to the widest": "test_step"},
                        ylabel={"scaled RMSE to the widest": "scaled RMSE"},
                        widths=widths,
                    ),
                    "Ensemble means; the widest of each study is not drawn.",
                )
            ],
            tables={"compare_scaled_rmse": _stack(rmse, "scaled_rmse")},
        )
        sections.append(sec)
    if all(has(ds, "sharpness_lr") or has(ds, "sharpness") for ds in studies.values()):
        sharp = {
            lab: ds["sharpness_lr" if has(ds, "sharpness_lr") else "sharpness"].isel(
                sharpness_eig=0, drop=True
            )
            for lab, ds in studies.items()
        }
        t = "top eigenvalue (lr-weighted where recorded)"
        sec = Section(
            id="sharpness",
            title="Sharpness",
            paper="Fig. 6 a",
            text="Top Hessian eigenvalue over training per study.",
            panels=[
                Panel(
                    "compare_sharpness",
                    fig_compare.overlay_curves(
                        {t: sharp},
                        xdims={t: "sharpness_step"},
                        ylabel={t: "sharpness"},
                        widths=widths,
                    ),
                    "Seed means; with fewer than 6 recorded steps, markers at the recorded steps "
                    "with the range over seeds as error bars.",
                )
            ],
            tables={"compare_sharpness": _stack(sharp, "sharpness")},
        )
        sections.append(sec)
    return sections


def _transfer_section(full: dict[str, xr.Dataset], loss_name: str, widths: list) -> Section | None:
    """The μTransfer panels of studies that all swept ``lr``, with each study's verdict."""
    if not all("lr" in sweep_dims(ds) for ds in full.values()):
        return None
    results = {}
    for lab, ds in full.items():
        try:
            results[lab] = st.transfer_results(ds)[1]
        except wa.AnalysisError:
            return None
    titles = dict(st.QUANTITIES)
    common = [v for v, _ in st.QUANTITIES if all(v in r for r in results.values())]
    if not common:
        return None
    panels = {titles[v]: {lab: r[v][:2] for lab, r in results.items()} for v in common}
    facts = []
    for lab, r in results.items():
        for v in common:
            verdict = r[v][2]
            text = wa.transfer_sentence(verdict) if verdict is not None else "one width: no verdict"
            facts.append((f"{lab}, {titles[v]}", text))
    sec = Section(
        id="transfer",
        title="Learning-rate transfer",
        paper="Yang et al. 2022 (Tensor Programs V), Fig. 1",
        text=(
            "The μTransfer panels: final loss against the learning rate per width, one "
            "column per study on one y scale; stars mark each width's optimum (parabola "
            "in log lr through the grid minimum) with its 95 % seed-bootstrap interval, × "
            "the learning rates where a member diverged (counted as infinite loss). Under "
            "μP the optima should line up; under SP they drift with width."
        ),
        facts=facts,
        panels=[
            Panel(
                "compare_transfer",
                fig_compare.transfer_panels(panels, dim="lr", ylabel=loss_name, widths=widths),
                " ".join(f"{k}: {v}." for k, v in facts[:: len(common)]),
            )
        ],
    )
    for v in common:
        frames = []
        for lab, r in results.items():
            df = st.transfer_tables({v: r[v]}, "lr")["transfer_optimum"]
            df.insert(0, "study", lab)
            frames.append(df)
        sec.tables[f"compare_transfer_optimum_{v}"] = pd.concat(frames, ignore_index=True)
    return sec


def build_compare(study_dirs: Sequence[str | Path], out_dir: str | Path) -> Path:
    """Overlay the studies in ``study_dirs`` in one report under ``out_dir``; returns the page."""
    dirs = [Path(d) for d in study_dirs]
    if len(dirs) < 2:
        raise UserError("compare needs at least two study directories")
    opened = [open_study(d) for d in dirs]  # compare_sections flattens (after the sweep)
    diffs = spec_differences([spec_of(ds) for ds in opened])
    labels = study_labels([str(ds.attrs.get("name", d.name)) for ds, d in zip(opened, dirs)], diffs)
    studies = dict(zip(labels, opened))
    sections = compare_sections(studies, dirs)
    subtitle = " vs ".join(labels)
    return write_report(sections, Path(out_dir), title="widthwise comparison", subtitle=subtitle)
