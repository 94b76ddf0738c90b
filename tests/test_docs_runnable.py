"""The documentation runs: marked code blocks, every example spec, the generated API reference.

Markers (an HTML comment on the line before a fenced code block, blank lines allowed):

- ``<!-- runnable -->``: the block is executed and must succeed — ``python`` blocks
  with this interpreter, each in a fresh namespace as ``__main__`` (one interpreter
  runs every page, so torch is imported once), ``bash``/``sh`` blocks with
  ``bash -euo pipefail`` and the ``widthwise`` command on PATH;
- ``<!-- runnable: file=NAME -->``: the block is written to ``NAME`` (a spec, a module)
  for the page's later blocks.

A page's blocks run in order in one fresh temporary directory (the working directory
of every block, and on ``sys.path``), so a block may use files that earlier blocks of
the same page wrote (``runs/...``, ``my_study.yaml``). Every example spec (bundled and
``examples/paper/*.yaml``) validates as written and runs at a reduced size.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARKER = re.compile(r"^<!--\s*runnable(?::\s*file=(?P<file>[\w./-]+))?\s*-->\s*$")
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")
RUN_TIMEOUT_S = 900  # all pages together
# at least one runnable block on each of these pages
MUST_RUN = ("getting-started.md", "concepts.md", "api.md", "extending.md", "dataset.md")


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    file: str | None  # write to this file instead of running


def doc_pages() -> list[Path]:
    return sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]


def runnable_blocks(path: Path) -> list[Block]:
    """The marked blocks of one markdown page, in order; a stray marker is an error."""
    lines = path.read_text().splitlines()
    name = path.relative_to(ROOT).as_posix()
    blocks = []
    for i, text in enumerate(lines):
        m = MARKER.match(text.strip())
        if not m:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        fence = FENCE.match(lines[j].strip()) if j < len(lines) else None
        if fence is None:
            raise AssertionError(f"{name}:{i + 1}: runnable marker not followed by a ``` block")
        end = next((k for k in range(j + 1, len(lines)) if lines[k].strip() == "```"), None)
        if end is None:
            raise AssertionError(f"{name}:{j + 1}: unterminated code block")
        lang = fence.group("lang").lower()
        if m.group("file") is None and lang not in ("python", "py", "bash", "sh"):
            raise AssertionError(f"{name}:{j + 1}: cannot run a {lang or 'plain'!r} block")
        code = "\n".join(lines[j + 1 : end]) + "\n"
        blocks.append(Block(name, j + 1, lang, code, m.group("file")))
    return blocks


PAGES = {p.relative_to(ROOT).as_posix(): p for p in doc_pages()}
RUNNABLE_PAGES = sorted(
    name
    for name, p in PAGES.items()
    if any(MARKER.match(line.strip()) for line in p.read_text().splitlines())
)


def _env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(workdir), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    env["MPLBACKEND"] = "Agg"
    env["COLUMNS"] = "100"
    return env


# Runs the selected pages in one interpreter (torch and widthwise are imported once):
# each page in its own directory, its blocks in order, every python block in a fresh
# namespace as __main__, every bash block in its own bash; a page's output goes to
# its log. Modules a page wrote (e.g. its family) are forgotten after the page.
RUNNER = r"""
import json, os, subprocess, sys, traceback

pages = json.load(open(sys.argv[1]))
results = {}
for page, spec in pages.items():
    here = spec["dir"]
    os.chdir(here)
    sys.path.insert(0, here)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, spec["pythonpath"]]))
    before = set(sys.modules)
    log = open(spec["log"], "w")
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
    failed = None
    try:
        for b in spec["blocks"]:
            where = f"{page}:{b['line']}"
            print(f"=== {where} ({b['lang']})", flush=True)
            if b["file"] is not None:
                os.makedirs(os.path.dirname(b["file"]) or ".", exist_ok=True)
                with open(b["file"], "w") as f:
                    f.write(b["code"])
            elif b["lang"] in ("python", "py"):
                try:
                    exec(compile(b["code"], where, "exec"), {"__name__": "__main__"})
                except SystemExit as e:
                    if e.code not in (None, 0):
                        failed = f"{where}: SystemExit({e.code!r})"
                except BaseException:
                    traceback.print_exc()
                    failed = f"{where}: python block raised"
            else:
                rc = subprocess.run(["bash", "-euo", "pipefail", "-c", b["code"]]).returncode
                if rc:
                    failed = f"{where}: bash block exited {rc}"
            if failed:
                break
    finally:
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        os.close(saved[0]), os.close(saved[1])
        log.close()
        sys.path.remove(here)
        for name in set(sys.modules) - before:
            if (getattr(sys.modules[name], "__file__", None) or "").startswith(here):
                del sys.modules[name]
    results[page] = failed
json.dump(results, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def page_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Run every selected page once; ``{page: (failure or None, log path)}``."""
    selected = [
        item.callspec.params["page"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_runnable_blocks_run"
    ]
    root = tmp_path_factory.mktemp("docs")
    plan = {}
    for i, page in enumerate(dict.fromkeys(selected)):
        workdir = root / f"page{i}"
        workdir.mkdir()
        blocks = [
            {"line": b.line, "lang": b.lang, "code": b.code, "file": b.file}
            for b in runnable_blocks(PAGES[page])
        ]
        plan[page] = {
            "dir": str(workdir),
            "log": str(root / f"page{i}.log"),
            "blocks": blocks,
            "pythonpath": os.environ.get("PYTHONPATH", ""),
        }
    (root / "plan.json").write_text(json.dumps(plan))
    (root / "runner.py").write_text(RUNNER)
    out = root / "results.json"  # absolute: the runner changes directory per page
    proc = subprocess.run(
        [sys.executable, str(root / "runner.py"), str(root / "plan.json"), str(out)],
        cwd=root,
        env=_env(root),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the docs runner itself failed:\n{proc.stdout}\n{proc.stderr}")
    results = json.loads(out.read_text())
    return {page: (results[page], Path(plan[page]["log"])) for page in plan}


@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_runnable_blocks_run(page: str, page_runs) -> None:
    failure, log = page_runs[page]
    if failure:
        pytest.fail(
            f"{failure}\n--- output of the page ---\n{log.read_text()[-8000:]}", pytrace=False
        )


def test_pages_have_runnable_blocks() -> None:
    for name in MUST_RUN:
        blocks = runnable_blocks(DOCS / name)
        assert any(b.file is None for b in blocks), f"docs/{name} has no runnable block"


def test_every_marker_is_well_formed() -> None:
    for path in doc_pages():  # raises on a stray marker or an unknown language
        runnable_blocks(path)


# --- every example spec runs at a reduced size ---------------------------------------

REDUCED_STEPS = 4


def example_specs() -> list[tuple[str, Path]]:
    from widthwise.spec import bundled_specs

    bundled = [(f"bundled:{name}", p) for name, p in bundled_specs().items()]
    paper = [(f"paper:{p.stem}", p) for p in sorted((ROOT / "examples" / "paper").glob("*.yaml"))]
    transfer = [
        (f"transfer:{p.stem}", p) for p in sorted((ROOT / "examples" / "transfer").glob("*.yaml"))
    ]
    return bundled + paper + transfer


def _reduce_probe(options: dict[str, Any] | None) -> dict[str, Any]:
    o = dict(options or {})
    if o.get("steps") is not None:
        kept = [s for s in o["steps"] if s <= REDUCED_STEPS]
        if kept:
            o["steps"] = kept
        else:
            del o["steps"]
            o.setdefault("at", ["init", "end"])
    if o.get("every"):
        o["every"] = min(o["every"], 2)
    if o.get("log_spaced"):
        o["log_spaced"] = min(o["log_spaced"], 3)
    for key in ("points", "batch_points", "sample_points", "sample_neurons"):
        if isinstance(o.get(key), int):
            o[key] = min(o[key], 16)
    if isinstance(o.get("iters"), int):
        o["iters"] = min(o["iters"], 10)
    return o


def reduced(raw: dict[str, Any], out: Path) -> dict[str, Any]:
    """The spec at a size that runs in about a second: 2 widths, 2 seeds, 4 steps."""
    r = copy.deepcopy(raw)
    r["widths"] = r["widths"][:2]
    if r.get("base_width") is not None and r["base_width"] > r["widths"][-1]:
        r["base_width"] = r["widths"][0]
    r["seeds"] = 2
    r["steps"] = REDUCED_STEPS
    r["batch_size"] = min(r["batch_size"], 16)
    r["checkpoint_every"] = 2
    r["device"] = "cpu"
    r["out"] = str(out)
    r.pop("executor", None)  # local, in this process
    r.pop("trackers", None)  # no accounts, no network
    schedule = r.get("schedule")
    if isinstance(schedule, dict) and schedule.get("warmup_steps"):
        schedule["warmup_steps"] = min(schedule["warmup_steps"], REDUCED_STEPS - 1)
    data = r.setdefault("data", {})
    data["probe_points"] = min(data.get("probe_points", 256), 32)
    if r.get("probes"):
        r["probes"] = {name: _reduce_probe(o) for name, o in r["probes"].items()}
    return r


@pytest.mark.parametrize(
    "path", [p for _, p in example_specs()], ids=[i for i, _ in example_specs()]
)
def test_example_spec_runs_reduced(path: Path, tmp_path: Path) -> None:
    import numpy as np

    import widthwise
    from widthwise.errors import SpecError, UserError
    from widthwise.spec import validate_spec
    from widthwise.study import build_stream

    raw = yaml.safe_load(path.read_text())
    stream = raw.get("data", {}).get("stream", "gegenbauer")
    try:
        full = widthwise.load_spec(path)  # validates as written
        spec = validate_spec(reduced(raw, tmp_path / "study"), f"{path} (reduced)")
        build_stream(spec)
    except SpecError:
        raise
    except UserError as err:  # e.g. a local dataset that is not on this machine
        pytest.skip(f"{path.name}: data stream {stream!r} needs local files: {err}")
    assert full.description, f"{path.name}: no description"
    out = widthwise.run(spec)
    ds = widthwise.open_study(out)
    assert list(ds.width.values) == spec.widths
    assert (ds.status == "done").all()
    assert ds.sizes["seed"] == 2
    if "train_loss" in ds:
        assert np.isfinite(ds.train_loss.values).any()


# --- the generated API reference is current ------------------------------------------


def test_api_reference_is_current() -> None:
    from widthwise.api_doc import BEGIN, END

    # a fresh interpreter: test modules may have registered test-only entries here
    fresh = subprocess.run(
        [sys.executable, "-m", "widthwise.api_doc"], capture_output=True, text=True, check=True
    ).stdout
    text = (DOCS / "api.md").read_text()
    assert BEGIN in text and END in text, "docs/api.md lost its generated block markers"
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert block.strip() == fresh.strip(), (
        "docs/api.md is stale: run python -m widthwise.api_doc --write docs/api.md"
    )


def test_api_reference_covers_the_public_names() -> None:
    import widthwise
    import widthwise.analysis

    text = (DOCS / "api.md").read_text()
    for module in (widthwise, widthwise.analysis):
        for name in module.__all__:
            assert f"### `{module.__name__}.{name}`" in text, f"{module.__name__}.{name}"


def test_dataset_reference_is_current() -> None:
    from widthwise.dataset_doc import BEGIN, END

    fresh = subprocess.run(
        [sys.executable, "-m", "widthwise.dataset_doc"], capture_output=True, text=True, check=True
    ).stdout
    text = (DOCS / "dataset.md").read_text()
    assert BEGIN in text and END in text, "docs/dataset.md lost its generated block markers"
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert block.strip() == fresh.strip(), (
        "docs/dataset.md is stale: run python -m widthwise.dataset_doc --write docs/dataset.md"
    )


# --- the benchmark summary quotes RESULTS.md ------------------------------------------


def test_benchmark_summary_numbers_come_from_results() -> None:
    summary = (DOCS / "benchmarks.md").read_text()
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    # ratios, rates, sizes, errors and times: the number itself must occur in RESULTS.md
    quoted = re.findall(r"(\d[\d,]*(?:\.\d+)?(?:e-\d+)?)(×| GFLOP/s| MiB| s\b|)", summary)
    missing = sorted({n + u for n, u in quoted if (u or "e-" in n) and n not in results})
    assert not missing, f"docs/benchmarks.md quotes numbers not in RESULTS.md: {missing}"


# --- links between pages resolve -------------------------------------------------------

LINK = re.compile(r"\]\((?!https?://|mailto:)([^)\s]+)\)")


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", title)))
    return out


@pytest.mark.parametrize("page", sorted(PAGES))
def test_relative_links_resolve(page: str) -> None:
    source = PAGES[page]
    text = re.sub(r"```.*?```", "", source.read_text(), flags=re.S)  # not inside code
    broken = []
    for target in LINK.findall(text):
        file, _, anchor = target.partition("#")
        path = (source.parent / file).resolve() if file else source
        if not path.exists() or anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(target)
    assert not broken, f"{page}: links to missing files or headings: {broken}"
