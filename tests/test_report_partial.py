"""A partial study: `widthwise show`, `open_study(...).status` and the report say the
same word for every width; the report names what is missing; nothing that compares
widths is shown at a step a width did not reach."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_spec_dict, write_spec

import widthwise
import widthwise.spec
import widthwise.study
from widthwise import analysis as wa
from widthwise.cli import main
from widthwise.errors import UserError
from widthwise.report import build_report
from widthwise.report.html import render_html
from widthwise.report.section import flatten_samples, study_banner
from widthwise.report.sections_curves import summary_section
from widthwise.store.lock import WidthLock

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS, STOP = 20, 7  # width 32 stops after 7 of 20 updates
WIDTHS = [16, 32, 64, 128]  # 128 never starts; 64 (the widest with results) is done


@pytest.fixture(scope="module")
def partial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 and 64 done, 32 stopped at step 7 (status ``failed``), 128 not started."""
    root = tmp_path_factory.mktemp("partial")
    out = root / "study"
    spec = write_spec(root / "tiny.yaml", tiny_spec_dict(out, widths=WIDTHS, steps=STEPS))
    real = widthwise.study.run_job
    mp = pytest.MonkeyPatch()

    def interrupt_32(job: Any, on_step: Any = None) -> Any:
        def stop(done: int, total: int, loss: float) -> None:
            if job.width == 32 and done == STOP:
                raise KeyboardInterrupt

        return real(job, on_step=stop)

    def skip_32_and_128(job: Any, on_step: Any = None) -> Any:
        if job.width in (32, 128):  # leave them as they are (a run that did not get there)
            return {"state": "failed"}
        return real(job, on_step=on_step)

    try:
        mp.setattr(widthwise.study, "run_job", interrupt_32)
        assert main(["run", str(spec), "--quiet"]) == 130
        mp.setattr(widthwise.study, "run_job", skip_32_and_128)
        with pytest.raises(UserError, match="did not finish"):
            widthwise.run(str(spec))
    finally:
        mp.undo()
    assert not (out / "width_00128").exists()
    return out


def _set_state(study: Path, width: int, state: str) -> None:
    path = study / f"width_{width:05d}" / "status.json"
    status = json.loads(path.read_text())
    status["state"] = state
    status.pop("crc32", None)  # an edited status without its checksum (else: "unknown")
    path.write_text(json.dumps(status))


def _show_states(study: Path, capsys: pytest.CaptureFixture[str]) -> dict[int, str]:
    assert main(["show", str(study)]) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells and cells[0].isdigit():
            rows[int(cells[0])] = cells[1]
    return rows


def _banner(page: str) -> dict[int, tuple[str, str]]:
    """{width: (data-state, the item's text)} of the report's banner."""
    items = re.findall(r'<li data-width="(\d+)" data-state="([^"]+)">([^<]*)</li>', page)
    return {int(w): (state, text) for w, state, text in items}


def _summary_unfinished(page: str) -> dict[int, str]:
    """{width: state word} from the summary card's "unfinished widths"."""
    m = re.search(r"<dt>unfinished widths</dt><dd>([^<]*)</dd>", page)
    assert m, "the summary names the unfinished widths"
    out = {}
    for item in m.group(1).split("; "):
        w, rest = item.split(": ", 1)
        out[int(w)] = rest.split(" at step ")[0]
    return out


def _light_report(study: Path | Any) -> str:
    """The report's banner and summary card, as build_report renders them (no figures),
    of a study directory or an opened Dataset."""
    ds = widthwise.open_study(study) if isinstance(study, Path) else study
    ds = flatten_samples(ds)
    return render_html("t", "", [summary_section(ds)], {}, banner=study_banner(ds))


def _assert_states_agree(study: Path, page: str, capsys: pytest.CaptureFixture[str]) -> None:
    shown = _show_states(study, capsys)
    ds = widthwise.open_study(study)
    opened = {int(w): str(s) for w, s in zip(ds.width.values, ds.status.values)}
    banner = _banner(page)
    assert sorted(shown) == sorted(banner) == WIDTHS
    assert shown[128] == "not started" and 128 not in opened  # no results: not in the Dataset
    for w in WIDTHS:
        state, text = banner[w]
        assert state == shown[w], (w, state, shown[w])
        assert text.startswith(f"width {w}: {shown[w]}")
        if w in opened:
            assert opened[w] == shown[w], (w, opened[w], shown[w])
    unfinished = _summary_unfinished(page)
    assert unfinished == {w: s for w, s in shown.items() if s != "done"}


@pytest.mark.parametrize("state", ["failed", "interrupted", "running"])
def test_show_dataset_and_report_say_the_same_state(
    partial: Path, tmp_path: Path, state: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """failed: as the interrupt left it; interrupted: status "running" without a live
    writer (a killed process); running: a live process holds the width's writer lock."""
    study = tmp_path / "study"
    shutil.copytree(partial, study)
    _set_state(study, 32, "failed" if state == "failed" else "running")
    lock = WidthLock(study / "width_00032")
    if state == "running":
        lock.acquire()
    try:
        page = _light_report(study)
        _assert_states_agree(study, page, capsys)
        assert _show_states(study, capsys)[32] == state
        assert widthwise.open_study(study).status.sel(width=32).item() == state
    finally:
        lock.release()


def test_open_study_holds_nan_at_unreached_steps(partial: Path) -> None:
    """What open_study puts at a step a width did not reach, and what the analysis makes
    of it: NaN, never zeros or values of an earlier step."""
    ds = widthwise.open_study(partial)
    assert ds.step_reached.sel(width=32).item() == STOP
    assert ds.step_reached.sel(width=16).item() == ds.step_reached.sel(width=64).item() == STEPS
    assert ds.attrs["steps"] == STEPS and ds.attrs["planned_widths"] == WIDTHS
    late = ds.test_step.values[ds.test_step.values > STOP]
    assert len(late) and np.isnan(ds.test_logits.sel(width=32, test_step=late)).all()
    assert np.isnan(ds.train_loss.sel(width=32, step=slice(STOP, None))).all()
    for ensemble in (False, True):
        d = wa.scaled_rmse_to_widest(ds.test_logits, ensemble=ensemble).sel(test_step=late)
        assert np.isnan(d.sel(width=32)).all()
        assert np.isfinite(d.sel(width=[16, 64])).all()
        assert (d.sel(width=64) == 0).all()
        diffs = wa.successive_differences(
            ds.test_logits, over=("point", "output"), ensemble=ensemble, relative=True
        ).sel(test_step=late)
        assert np.isnan(diffs).all()  # both pairs (16-32, 32-64) contain width 32


def test_report_names_what_is_missing_and_shows_nothing_unreached(
    partial: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = tmp_path / "study"
    shutil.copytree(partial, study)
    _set_state(study, 32, "running")  # killed: `show` says interrupted
    out = tmp_path / "report"
    page = build_report(study, out).read_text()
    _assert_states_agree(study, page, capsys)
    banner = _banner(page)
    # (2) the banner is above the first section and names the missing widths and steps
    assert page.index('id="banner"') < page.index('<section id="summary"')
    assert "not done: 32, 128" in page
    assert f"reached step {STOP} of {STEPS}" in banner[32][1]
    assert "not started" in banner[128][1]
    assert banner[16][0] == banner[64][0] == "done"
    ds = widthwise.open_study(study)
    last_common = int(ds.test_step.values[ds.test_step.values <= STOP][-1])
    assert f"at step {last_common}, the last test step every width reached" in page
    # (3) no distance or verdict value at a step a width did not reach
    for name in ("scaled_rmse_single", "scaled_rmse_ensemble"):
        df = pd.read_csv(out / "csv" / f"{name}.csv")
        late = df[df.test_step > STOP]
        assert late[late.width == 32].scaled_rmse.isna().all()
        assert late[late.width != 32].scaled_rmse.notna().all()
        assert set(df.test_step) == set(ds.test_step.values)  # the widest (64) reached all
    for name in ("successive_test_loss", "successive_test_logits"):
        df = pd.read_csv(out / "csv" / f"{name}.csv")
        assert df[df.test_step > STOP].successive_difference.isna().all()
        assert df[df.test_step <= STOP].successive_difference.notna().all()
    for name in ("verdict_test_loss", "verdict_test_logits"):
        df = pd.read_csv(out / "csv" / f"{name}.csv")
        assert df.test_step.max() == last_common  # no verdict at a step 32 did not reach
    rows = re.findall(r"<tr><td>(test [a-z]+)</td><td>(\d+)</td><td>([^<]*)</td></tr>", page)
    assert rows and all(int(step) == last_common for _, step, _ in rows)
    bv = pd.read_csv(out / "csv" / "bias_variance.csv")
    late = bv[bv.test_step > STOP]
    assert late[late.width == 32][["single_loss", "ensemble_loss", "bias"]].isna().all().all()
    assert "Partial study: step" in page  # the bias/variance caption says which step


def test_diverged_members_are_named_in_the_banner(tmp_path: Path) -> None:
    """Every width done, members diverged: the banner lists them per width."""
    raw = tiny_spec_dict(
        tmp_path / "study",
        widths=[16, 32],
        steps=4,
        model={"family": "mlp", "options": {"depth": 3}},
        optimizer={"name": "sgd", "lr": 1000.0},
        probes={"train_loss": {"every": 1}, "test": {"every": 2}},
        checkpoint_every=4,
    )
    d = widthwise.run(widthwise.spec.validate_spec(raw, "diverged"))
    ds = widthwise.open_study(d)
    banner = study_banner(ds)
    assert banner is not None and banner.headline.startswith("Diverged members")
    for w, state, line in banner.widths:
        assert state == "done"
        steps = ds.diverged_step.sel(width=w).values
        assert (steps >= 0).sum() >= 1, (w, steps)  # lr 1000 (the spec's maximum) blows up
        assert f"{(steps >= 0).sum()}/2 diverged" in line
        for s, t in zip(ds.seed.values, steps):
            assert (f"seed {s} at step {t}" in line) == (t >= 0), (s, t, line)
    assert set(_banner(_light_report(ds))) == {16, 32}


def test_a_finished_study_has_no_banner(partial: Path, tmp_path: Path) -> None:
    ds = widthwise.open_study(partial).sel(width=[16, 64])
    ds.attrs["planned_widths"] = [16, 64]
    assert study_banner(ds) is None
    assert 'id="banner"' not in _light_report(ds)
