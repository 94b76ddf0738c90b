"""Reproduce the paper's claims at laptop scale and write docs/reproduction.md's numbers.

    python examples/paper/reproduce.py                       # every claim
    python examples/paper/reproduce.py --claims C1 C3        # some claims
    python examples/paper/reproduce.py --runs /tmp/paper_runs --no-doc
    python examples/paper/reproduce.py --profile gpu --data cifar5m=~/data/cifar5m \
        --data wikitext=~/data/wikitext-103 --device cuda [--reduced]

Each claim's specs (examples/paper/c*.yaml) are run with widthwise into ``--runs``
(resumable: finished studies are skipped and their recorded wall time reused), the
claim's statistics are computed with seed-bootstrap intervals (``checks.py``) from
``widthwise.open_study``, its figures are drawn with widthwise's report figure
functions into docs/img/repro/, and the verdict follows from the checks in
``claims.py``. The generated block of docs/reproduction.md (between the BEGIN/END
GENERATED markers) is replaced unless ``--no-doc``. A claim whose data set is not
installed is skipped with one line naming what to install; the others still run.

``--profile gpu`` runs the paper-scale studies of ``examples/paper/gpu/`` instead
(``gpu_profiles.py``: ResNet-18-LN on CIFAR-5m, the muP transformer on Wikitext-103,
the lazy MLP of Fig. 10), each into ``--runs``, with ``widthwise report`` on each;
``--data STREAM=DIR`` points a profile at its data set (a profile whose data is not
given is skipped with one line), ``--reduced`` runs the few-minute versions.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from claims import CLAIMS, ClaimResult, run_claim  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reproduction.md"
IMG = ROOT / "docs" / "img" / "repro"
BEGIN = "<!-- BEGIN GENERATED: python examples/paper/reproduce.py -->"
END = "<!-- END GENERATED -->"


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell (pipes escaped)."""
    return text.replace("|", "\\|")


def claim_markdown(res: ClaimResult) -> str:
    """The generated section of one claim: command, figures, numbers, wall time, verdict."""
    c = res.claim
    specs = " ".join(f"examples/paper/{n}.yaml" for n in c.specs)
    lines = [
        f"### {c.id}: {c.title} (paper {c.paper})",
        "",
        "```bash",
        *(f"widthwise run examples/paper/{n}.yaml --out /tmp/paper_runs/{n}" for n in c.specs),
        f"python examples/paper/reproduce.py --claims {c.id}",
        "```",
        "",
        f"Specs: {specs}.",
        "",
    ]
    for fig in res.figures:
        rel = os.path.relpath(fig, DOC.parent)
        lines += [f"![{c.id} {fig.stem}]({rel})", ""]
    lines += ["| quantity | value |", "|---|---|"]
    lines += [f"| {cell(q)} | {cell(v)} |" for q, v in res.rows]
    walls = ", ".join(
        f"{n}: {'not recorded' if w is None else f'{w:.0f} s'}" for n, w in res.wall_s.items()
    )
    lines += ["", f"{WALL}{walls}.", ""]
    lines += [
        "| check | measured: estimate [95 % interval over seeds] | result | margin |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {cell(k.text)} | {cell(k.value)} | {k.result if k.passed else f'**{k.result}**'} "
        f"| {cell(k.margin)} |"
        for k in res.checks
    ]
    if c.scale_note:
        lines += ["", f"**Why not at this scale:** {c.scale_note}"]
    failed = [k.text for k in res.checks if not k.passed]
    why = (
        "every check passes"
        if not failed
        else f"{len(res.checks) - len(failed)} of {len(res.checks)} checks pass; failed: "
        + "; ".join(failed)
    )
    lines += ["", f"**Verdict: {res.verdict}** ({why}).", ""]
    lines += [f"{ROW}{summary_row(res)} -->", ""]
    return "\n".join(lines)


ROW = "<!-- summary row: "


def summary_row(r: ClaimResult) -> str:
    """The claim's row of the summary table (also kept in its section, for later merges)."""
    walls = [w for w in r.wall_s.values() if w is not None]
    wall = " + ".join(f"{w:.0f} s" for w in walls) if walls else "not recorded"
    n = sum(k.passed for k in r.checks)
    if r.skipped:
        return f"| {r.claim.id} | {r.claim.title} | {r.claim.paper} | {r.verdict} | - | - |"
    return (
        f"| {r.claim.id} | {r.claim.title} | {r.claim.paper} | **{r.verdict}** | "
        f"{n}/{len(r.checks)} | {wall} |"
    )


def summary_table(sections: list[str]) -> str:
    """The summary table from the rows kept in the claims' sections."""
    lines = [
        "| claim | statement | paper | verdict | checks passed | wall time (per spec) |",
        "|---|---|---|---|---|---|",
    ]
    for sec in sections:
        for line in sec.splitlines():
            if line.startswith(ROW):
                lines.append(line[len(ROW) :].removesuffix(" -->"))
    return "\n".join([*lines, "", total_wall(sections)])


WALL = "Wall time (2-core shared CPU, `widthwise run`): "


def total_wall(sections: list[str]) -> str:
    """One sentence: the wall time of every spec of these claims run once (a spec two
    claims share, as C1 and C2 do, counts once), against the issue's 20-minute goal."""
    walls: dict[str, float | None] = {}
    for sec in sections:
        for line in sec.splitlines():
            if line.startswith(WALL):
                for part in line[len(WALL) :].rstrip(".").split(", "):
                    name, _, value = part.partition(": ")
                    walls[name] = None if value == "not recorded" else float(value.split()[0])
    missing = [n for n, w in walls.items() if w is None]
    total = sum(w for w in walls.values() if w is not None)
    text = (
        f"All {len(walls)} specs together, each run once: {total:.0f} s "
        f"({total / 60:.1f} min) on the 2-core CPU (goal: ≤ 20 min)"
    )
    return text + (f"; not recorded: {', '.join(missing)}." if missing else ".")


def write_doc(results: list[ClaimResult]) -> None:
    """Replace the generated block of docs/reproduction.md (claims not rerun are kept)."""
    text = DOC.read_text() if DOC.exists() else f"# Reproduction\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    old, tail = rest.split(END, 1)
    sections = {}
    for part in old.split("\n### ")[1:]:
        sections[part.split(":", 1)[0].strip()] = "### " + part.rstrip() + "\n"
    for r in results:
        sections[r.claim.id] = claim_markdown(r)
    ordered = [sections[k] for k in CLAIMS if k in sections]
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    body = "\n".join(
        [
            "",
            f"_Generated {stamp} by `python examples/paper/reproduce.py`._",
            "",
            "## Summary",
            "",
            summary_table(ordered),
            "",
            "## Claim by claim",
            "",
            *ordered,
        ]
    )
    DOC.write_text(head + BEGIN + "\n" + body.rstrip() + "\n" + END + tail)


def data_dirs(items: list[str]) -> dict[str, str]:
    """``["cifar5m=DIR", ...]`` as a dict; a malformed item is a one-line error (exit 2)."""
    out = {}
    for item in items:
        stream, sep, path = item.partition("=")
        if not sep or not stream or not path:
            raise SystemExit(f"--data: {item!r} is not STREAM=DIR (e.g. cifar5m=~/data/cifar5m)")
        out[stream] = path
    return out


def run_gpu_profiles(args: argparse.Namespace) -> int:
    """Every paper-scale profile whose data is given (gpu_profiles.py), then its report."""
    import gpu_profiles

    from widthwise.errors import UserError
    from widthwise.report import build_report

    dirs = data_dirs(args.data)
    done = 0
    for name in gpu_profiles.PROFILES:
        try:
            study = gpu_profiles.run_profile(
                name,
                args.runs,
                data_dirs=dirs,
                reduced=args.reduced,
                device=args.device,
                progress=True,
            )
        except UserError as e:
            print(f"{name}: skipped: {str(e).splitlines()[0]}", file=sys.stderr)
            continue
        print(f"{name}: {study} (report: {build_report(study)})")
        done += 1
    return 0 if done else 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--claims", nargs="+", default=list(CLAIMS), choices=list(CLAIMS))
    ap.add_argument("--runs", type=Path, default=Path("/tmp/paper_runs"))
    ap.add_argument("--no-doc", action="store_true", help="print only; leave the docs alone")
    ap.add_argument(
        "--profile",
        choices=["laptop", "gpu"],
        default="laptop",
        help="laptop: the claims' specs (default); gpu: the paper-scale studies of gpu/",
    )
    ap.add_argument("--data", action="append", default=[], metavar="STREAM=DIR")
    ap.add_argument("--reduced", action="store_true", help="gpu: the few-minute profiles")
    ap.add_argument("--device", default=None, help="gpu: e.g. cuda (default: the spec's)")
    args = ap.parse_args(argv)
    if args.profile == "gpu":
        return run_gpu_profiles(args)
    results = []
    for cid in args.claims:
        res = run_claim(cid, args.runs, figures_dir=None if args.no_doc else IMG)
        if res.skipped:
            print(f"{cid}: skipped: {res.skipped}", file=sys.stderr)
            continue
        results.append(res)
        print(f"{cid}: {res.verdict}")
        for k in res.checks:
            print(f"  [{k.result}] {k.text}: {k.value} ({k.margin})")
    print(summary_table([claim_markdown(r) for r in results]))
    if results and not args.no_doc:
        write_doc(results)
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
