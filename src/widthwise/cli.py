"""The ``widthwise`` command line: run, show, list, coord-check, report, compare.

Exit codes: 0 success; 2 bad input (one line on stderr naming what is wrong, no
traceback); 130 interrupted (the run resumes where its last checkpoint left it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from widthwise.errors import UserError
from widthwise.show import print_show

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage + line)
        raise UserError(f"{self.prog}: {message}")


def _spec_executor(spec: str) -> object:
    """The ``executor`` value of a spec file as written (None if it cannot be read)."""
    from widthwise.spec import resolve_spec_path

    try:
        raw = yaml.safe_load(resolve_spec_path(spec).read_text())
    except (UserError, OSError, yaml.YAMLError, UnicodeDecodeError):
        return None  # load_spec reports the problem
    return raw.get("executor") if isinstance(raw, dict) else None


def import_plugins(modules: Sequence[str]) -> None:
    """Import the modules of ``--import`` (they register families, streams, probes).

    The current directory is searched first, as ``python -m`` would; a module that
    fails to import is one line naming it and the error.
    """
    if modules and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001  (any failure of user code is one line)
            raise UserError(
                f"--import: cannot import {name!r}: {type(err).__name__}: {err}"
            ) from None


def _cmd_run(args: argparse.Namespace, console: Console) -> int:
    from widthwise.executors import executor_override
    from widthwise.spec import load_spec
    from widthwise.study import dry_run, run

    import_plugins(args.imports)
    overrides: dict[str, object] = {"out": args.out, "device": args.device}
    if any(v is not None for v in (args.executor, args.workers, args.address)) or args.imports:
        overrides["executor"] = executor_override(
            _spec_executor(args.spec),
            args.executor,
            workers=args.workers,
            address=args.address,
            imports=args.imports,
        )
    spec = load_spec(args.spec, **overrides)
    if args.dry_run:
        print(dry_run(spec))
        return 0
    console.print(
        f"[bold]{spec.name}[/]: {spec.model.family} × {spec.parameterization.name}, "
        f"widths {spec.widths}, {len(spec.seed_list)} seeds, {spec.steps} steps → {spec.out_dir()}"
        + (f" (executor {spec.executor.name})" if spec.executor.name != "local" else "")
    )
    out = run(spec, progress=not args.quiet, console=Console(stderr=True))
    print_show(out, console)
    console.print(f"Results in [bold]{out}[/]  (Python: widthwise.open_study({str(out)!r}))")
    return 0


def _cmd_show(args: argparse.Namespace, console: Console) -> int:
    print_show(Path(args.dir), console)
    return 0


def _cmd_list(args: argparse.Namespace, console: Console) -> int:
    from widthwise.spec import bundled_specs

    table = Table(title="bundled studies (widthwise run NAME)")
    table.add_column("name", style="bold")
    table.add_column("description")
    for name, path in bundled_specs().items():
        raw = yaml.safe_load(path.read_text()) or {}
        table.add_row(name, str(raw.get("description", "")).strip().split("\n")[0])
    console.print(table)
    return 0


def _cmd_coord_check(args: argparse.Namespace, console: Console) -> int:
    from widthwise.coord_check import coord_check
    from widthwise.spec import load_spec

    import_plugins(args.imports)
    spec = load_spec(args.spec, device=args.device)
    da = coord_check(spec, steps=args.steps)
    table = Table(
        title=f"mean |activation| after {args.steps} steps ({spec.parameterization.name})"
    )
    table.add_column("layer")
    for w in da.width.values:
        table.add_column(f"width {int(w)}", justify="right")
    table.add_column("max/min", justify="right")
    last = da.isel(step=-1)
    for layer in da.layer.values:
        vals = last.sel(layer=layer).values
        table.add_row(str(layer), *[f"{v:.3g}" for v in vals], f"{vals.max() / vals.min():.2f}×")
    console.print(table)
    return 0


def _cmd_report(args: argparse.Namespace, console: Console) -> int:
    from widthwise.report import build_report

    page = build_report(args.dir, args.out, coord_check=args.coord_check, tol=args.tol)
    console.print(f"Report in [bold]{page}[/] (figures/ and csv/ beside it)")
    return 0


def _cmd_compare(args: argparse.Namespace, console: Console) -> int:
    from widthwise.report import build_compare

    page = build_compare(args.dirs, args.out)
    console.print(f"Comparison in [bold]{page}[/] (figures/ and csv/ beside it)")
    return 0


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a whole number >= 1, got 0")
    return value


def _add_import_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (your families, streams, probes); repeatable",
    )


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="widthwise", description="Width-consistency studies of neural networks.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    r = sub.add_parser("run", help="run or resume a study (a YAML spec or a bundled name)")
    r.add_argument("spec", help="path to a study YAML, or a bundled name (widthwise list)")
    r.add_argument("--out", help="study directory (default: runs/<name>)")
    r.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the spec's)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument(
        "--executor", help="local, processes, ray or slurm (default: the spec's executor.name)"
    )
    r.add_argument(
        "--workers",
        type=_positive_int,
        help="widths at once (processes: workers; ray: local CPUs; slurm: array parallelism)",
    )
    r.add_argument("--address", help="ray: join the cluster at this address (e.g. auto)")
    r.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would run (slurm: the job script) and write nothing",
    )
    _add_import_flag(r)
    r.set_defaults(fn=_cmd_run)
    s = sub.add_parser("show", help="per-width table of a study directory")
    s.add_argument("dir")
    s.set_defaults(fn=_cmd_show)
    ls = sub.add_parser("list", help="bundled example studies")
    ls.set_defaults(fn=_cmd_list)
    c = sub.add_parser("coord-check", help="activation size vs width over the first steps")
    c.add_argument("spec")
    c.add_argument("--steps", type=_non_negative_int, default=3, help="updates to take (>= 0)")
    c.add_argument("--device")
    _add_import_flag(c)
    c.set_defaults(fn=_cmd_coord_check)
    rp = sub.add_parser("report", help="HTML report, figures and CSV of a study directory")
    rp.add_argument("dir", help="study directory")
    rp.add_argument("--out", help="report directory (default: DIR/report)")
    rp.add_argument("--tol", type=float, default=0.05, help="relative verdict tolerance")
    cc = rp.add_mutually_exclusive_group()
    cc.add_argument(
        "--coord-check",
        dest="coord_check",
        action="store_const",
        const=True,
        help="also run the coordinate check (3 steps of every width; default: off)",
    )
    cc.add_argument("--no-coord-check", dest="coord_check", action="store_const", const=False)
    rp.set_defaults(fn=_cmd_report, coord_check=False)
    cm = sub.add_parser("compare", help="overlay studies that differ in one setting")
    cm.add_argument("dirs", nargs="+", metavar="DIR", help="two or more study directories")
    cm.add_argument("--out", required=True, help="report directory")
    cm.set_defaults(fn=_cmd_compare)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    console = Console()
    try:
        parser = build_parser()
        # unknown flags are named even when the command is missing (parse_args would
        # only say "a command is required")
        args, extra = parser.parse_known_args(argv)
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if args.command is None:
            parser.error(
                "a command is required: run, show, list, coord-check, report or compare "
                "(see --help)"
            )
        return args.fn(args, console)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
