"""The ``widthwise`` command line: run, show, list, coord-check, report, compare.

Exit codes: 0 success; 2 bad input (one line on stderr naming what is wrong, no
traceback); 130 interrupted by Ctrl-C, 143 stopped by SIGTERM (either way the run
resumes where its last checkpoint left it).

``--help``, ``--version``, ``list`` and ``show`` import neither torch nor xarray
(each command imports what it needs when it starts: :data:`COMMAND_MODULES`), so
they answer at once; docs/cli.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from widthwise.errors import UserError

if TYPE_CHECKING:
    from widthwise.spec import StudySpec

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: stdout's reader went away


PIPE_WIDTH = 200
"""Columns of output that goes to a file or a pipe (not a terminal) when ``COLUMNS`` is
not set: wide enough that tables and paths are not wrapped at rich's default of 80."""


def make_console(*, stderr: bool = False) -> Console:
    """A rich Console for stdout (or stderr): ``COLUMNS`` wide when that is set, the
    terminal's width on a terminal, else :data:`PIPE_WIDTH` (logs, pipes, CI)."""
    stream = sys.stderr if stderr else sys.stdout
    columns = os.environ.get("COLUMNS", "")
    width: int | None = None
    if columns.isdigit() and int(columns) > 0:
        width = int(columns)
    elif not (hasattr(stream, "isatty") and stream.isatty()):
        width = PIPE_WIDTH
    return Console(stderr=stderr, width=width)


def version_text() -> str:
    """``widthwise X.Y.Z``: the installed distribution's version (``widthwise.__version__``
    when it is not installed)."""
    import importlib.metadata

    import widthwise

    try:
        version = importlib.metadata.version("widthwise")
    except importlib.metadata.PackageNotFoundError:
        version = widthwise.__version__
    return f"widthwise {version}"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage + line)
        raise UserError(f"{self.prog}: {message}")


def import_plugins(modules: Sequence[str]) -> None:
    """Import the modules of ``--import`` (they register families, streams, probes).

    The current directory is searched too, but last: a file in it never shadows an
    installed module (``numpy.py`` in a shared directory is not imported as numpy);
    a module that fails to import is one line naming it and the error.
    """
    if modules and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001  (any failure of user code is one line)
            raise UserError(
                f"--import: cannot import {name!r}: {type(err).__name__}: {err}"
            ) from None


def _cmd_run(args: argparse.Namespace, console: Console) -> int:
    from widthwise.executors import ExecutorFlags
    from widthwise.memory import keep_freed_memory
    from widthwise.overrides import parse_widths
    from widthwise.spec import load_spec
    from widthwise.study import dry_run, run

    import_plugins(args.imports)
    keep_freed_memory()  # this process is ours: let CPU ensembles reuse freed memory
    flags = ExecutorFlags(args.executor, args.workers, args.address, tuple(args.imports))
    sets = list(args.sets)
    sets += [f"steps={args.steps}"] if args.steps is not None else []
    sets += [f"seeds={args.seeds}"] if args.seeds is not None else []
    sets += [f"widths={parse_widths(args.widths)}"] if args.widths is not None else []
    spec = load_spec(args.spec, out=args.out, device=args.device, executor=flags or None, sets=sets)
    if args.dry_run:
        print(dry_run(spec, trusted_imports=args.imports))
        return 0
    console.print(
        f"[bold]{escape(spec.name)}[/]: {spec.model.family} × {spec.parameterization.name}, "
        f"widths {spec.widths}, "
        + (f"depths {spec.depths}, " if spec.depths else "")
        + f"{_members(spec)}, {spec.steps} steps → "
        f"{escape(str(spec.out_dir()))}"
        + (f" (executor {spec.executor.name})" if spec.executor.name != "local" else ""),
        soft_wrap=True,
    )

    def print_estimate(line: str) -> None:
        console.print(escape(line), soft_wrap=True, highlight=False)

    out = run(
        spec,
        progress=not args.quiet,
        console=make_console(stderr=True),
        allow_code=args.allow_code,
        trusted_imports=args.imports,
        estimate=None if args.quiet else print_estimate,
    )
    from widthwise.show import print_show

    print_show(out, console)
    console.print(
        f"Results in [bold]{escape(str(out))}[/]  (Python: widthwise.open_study({str(out)!r}))",
        soft_wrap=True,
    )
    return 0


def _print_json(data: object) -> None:
    import json

    print(json.dumps(data, indent=1, allow_nan=False))


def _cmd_show(args: argparse.Namespace, console: Console) -> int:
    from widthwise.show import print_show, show_data

    if args.json:
        _print_json(show_data(Path(args.dir)))
    else:
        print_show(Path(args.dir), console, quiet=args.quiet)
    return 0


def _cmd_list(args: argparse.Namespace, console: Console) -> int:
    from widthwise.listing import list_data, print_list

    if args.json:
        _print_json(list_data())
    else:
        print_list(console, quiet=args.quiet)
    return 0


def _members(spec: StudySpec) -> str:
    """``4 seeds``, or ``5 lr × 4 seeds = 20 members`` for a sweep."""
    seeds = f"{len(spec.seed_list)} seeds"
    if not spec.sweep:
        return seeds
    grid = " × ".join(f"{len(v)} {k}" for k, v in spec.sweep.items())
    return f"{grid} × {seeds} = {len(spec.member_ids)} members"


def _depth_list(text: str) -> list[int]:
    """``--depths 2,4,8``: distinct integers in 1..1000 (one-line UserError otherwise)."""
    try:
        depths = [int(t) for t in text.split(",")]
    except ValueError:
        depths = []
    if (
        len(depths) < 2
        or len(set(depths)) != len(depths)
        or not all(1 <= d <= 1000 for d in depths)
    ):
        raise UserError(
            f"--depths: {text!r}: at least 2 distinct integers from 1 to 1000, comma-separated"
        )
    return depths


def _cmd_describe(args: argparse.Namespace, console: Console) -> int:
    import json

    from widthwise.describe import describe, print_description
    from widthwise.spec import load_spec, refuse_code

    import_plugins(args.imports)
    spec = load_spec(args.spec)
    if not args.allow_code:
        refuse_code(spec, args.imports)  # a module family's factory is code (docs/security.md)
    if args.depth is not None and not spec.depths:
        raise UserError(f"--depth: {args.depth}: the spec lists no depths: [...]")
    if spec.depths:  # a depth study: one depth's width study
        if args.depth is not None and args.depth not in spec.depths:
            raise UserError(f"--depth: {args.depth}: not one of the spec's depths {spec.depths}")
        depth = args.depth if args.depth is not None else spec.depths[0]
        if not args.json:
            console.print(f"depth {depth} of the depth study's {spec.depths} (--depth D)")
        spec = spec.at_depth(depth)
    info = describe(spec, args.width)
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        print_description(info, console)
    return 0


def _cmd_coord_check(args: argparse.Namespace, console: Console) -> int:
    from widthwise.analysis.coordinates import coord_slopes
    from widthwise.coord_check_view import check_data, check_plot_path, print_check, write_plot
    from widthwise.coordinate_check import coord_check, coord_check_depths
    from widthwise.families.module import print_roles
    from widthwise.spec import depth_family_problem, load_spec, refuse_code, validate_spec

    import_plugins(args.imports)
    spec = load_spec(args.spec, device=args.device)
    refuse_code(spec, args.imports)  # a module family's factory is code (docs/security.md)
    plot = check_plot_path(args.plot) if args.plot else None
    specs = {spec.parameterization.name: spec}
    if args.compare:  # the same spec under another parameterization, validated as a spec
        raw = spec.model_dump(mode="json", exclude_none=True)
        if args.compare == "no-depth-mup":  # the same spec without depth-muP
            raw.pop("depth_mup", None)
        else:
            raw["parameterization"] = {"name": args.compare}  # its defaults: options differ
        other = validate_spec(raw, f"--compare {args.compare}")
        specs[args.compare] = other
    if not args.json:
        print_roles(spec, console)  # module families: the inferred roles (docs/modules.md)
    depths = _depth_list(args.depths) if args.depths else None
    problem = depth_family_problem(spec, "--depths") if depths else None
    if problem:
        raise UserError(problem)
    checks, data = {}, []
    for name, s in specs.items():
        how = {"steps": args.steps, "fixed_batch": args.fixed_batch, "stat": args.stat}
        if depths:
            cc = coord_check_depths(s, depths, **how)
            slopes = coord_slopes(cc, dim="depth")
            name = str(cc.attrs["parameterization"])
        else:
            cc = coord_check(s, **how)
            slopes = coord_slopes(cc)
        checks[name] = cc
        if args.json:
            data.append(check_data(cc, slopes))
        else:
            print_check(cc, slopes, console)
    if plot is not None:
        write_plot(checks, plot)
        if not args.json:
            console.print(escape(f"Figure in {plot}"), highlight=False)
    if args.json:
        _print_json({"checks": data, "plot": str(plot) if plot else None})
    return 0


def _cmd_report(args: argparse.Namespace, console: Console) -> int:
    from widthwise.report import build_report

    import_plugins(args.imports)  # a module study's factory, for its coordinate check
    page = build_report(
        args.dir, args.out, coord_check=args.coord_check, tol=args.tol, allow_code=args.allow_code
    )
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


def _non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a directory name, got {text!r}")
    return text


def _positive_int(text: str) -> int:
    try:
        value = _non_negative_int(text)
    except argparse.ArgumentTypeError:
        value = 0
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
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


def _add_output_flags(parser: argparse.ArgumentParser, *, quiet: str) -> None:
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--quiet", action="store_true", help=quiet)
    out.add_argument(
        "--json", action="store_true", help="machine-readable JSON on stdout (docs/cli.md)"
    )


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="widthwise", description="Width-consistency studies of neural networks.")
    p.add_argument(
        "--version", action="version", version=version_text(), help="print the version and exit"
    )
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    r = sub.add_parser("run", help="run or resume a study (a YAML spec or a bundled name)")
    r.add_argument("spec", help="path to a study YAML, or a bundled name (widthwise list)")
    r.add_argument("--out", type=_non_empty, help="study directory (default: runs/<name>)")
    r.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the spec's)")
    r.add_argument("--quiet", action="store_true", help="no progress bar and no time estimate")
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
    r.add_argument("--steps", type=str, help="override the spec's steps (a cheap first try)")
    r.add_argument("--widths", help="override the widths, e.g. 64,128,256")
    r.add_argument("--seeds", type=str, help="override the seed count")
    r.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="set any spec key (value read as YAML), e.g. optimizer.lr=0.05; repeatable; "
        "recorded in the study's spec",
    )
    r.add_argument(
        "--allow-code",
        action="store_true",
        help="let the spec run code: executor setup lines, Ray runtime_env, worker imports "
        "(docs/security.md); only for specs you trust",
    )
    _add_import_flag(r)
    r.set_defaults(fn=_cmd_run)
    s = sub.add_parser("show", help="per-width table of a study directory")
    s.add_argument("dir", help="study directory")
    _add_output_flags(s, quiet="only the final line (widths done)")
    s.set_defaults(fn=_cmd_show)
    ls = sub.add_parser(
        "list", help="bundled example studies: cost, estimated time, data files needed"
    )
    _add_output_flags(ls, quiet="only the names, one per line")
    ls.set_defaults(fn=_cmd_list)
    c = sub.add_parser(
        "coord-check", help="coordinate size vs width over the first steps, a verdict per layer"
    )
    c.add_argument("spec")
    c.add_argument("--steps", type=_non_negative_int, default=3, help="updates to take (>= 0)")
    c.add_argument(
        "--fixed-batch",
        action="store_true",
        help="train and measure on one batch, as mup's fix_data (default: the stream, "
        "measured on probe inputs)",
    )
    c.add_argument(
        "--stat",
        choices=("mean_abs", "rms"),
        default="mean_abs",
        help="coordinate size: mean |x| (mup's l1, default) or RMS (mup's l2)",
    )
    c.add_argument(
        "--compare", metavar="PARAM", help="also check under this parameterization (e.g. sp)"
    )
    c.add_argument("--plot", metavar="PNG", help="write the figure to this .png")
    c.add_argument(
        "--depths",
        metavar="L,L,...",
        help="check along depth instead (transformer; e.g. 2,4,8,16) at the narrowest width",
    )
    c.add_argument("--json", action="store_true", help="machine-readable JSON (docs/cli.md)")
    c.add_argument("--device")
    _add_import_flag(c)
    c.set_defaults(fn=_cmd_coord_check)
    d = sub.add_parser(
        "describe",
        help="what a spec trains: every tensor's role, fan-in and rule, before it runs",
    )
    d.add_argument("spec")
    d.add_argument(
        "--width", type=_positive_int, help="the width to show (default: the base width)"
    )
    d.add_argument(
        "--depth", type=_positive_int, help="a depth study: the depth to show (default: the first)"
    )
    d.add_argument("--json", action="store_true", help="machine-readable JSON (docs/cli.md)")
    d.add_argument(
        "--allow-code",
        action="store_true",
        help="let the spec import its model factory (docs/security.md); only for specs you trust",
    )
    _add_import_flag(d)
    d.set_defaults(fn=_cmd_describe)
    rp = sub.add_parser("report", help="HTML report, figures and CSV of a study directory")
    rp.add_argument("dir", help="study directory")
    rp.add_argument("--out", type=_non_empty, help="report directory (default: DIR/report)")
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
    rp.add_argument(
        "--allow-code",
        action="store_true",
        help="let the coordinate check of a module study import its factory "
        "(docs/security.md); only for studies you trust",
    )
    _add_import_flag(rp)
    rp.set_defaults(fn=_cmd_report, coord_check=False)
    cm = sub.add_parser("compare", help="overlay studies that differ in one setting")
    cm.add_argument("dirs", nargs="+", metavar="DIR", help="two or more study directories")
    cm.add_argument("--out", type=_non_empty, required=True, help="report directory")
    cm.set_defaults(fn=_cmd_compare)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, systemd, Docker, Slurm preemption), handled as Ctrl-C:
    the current width records that it was interrupted, its lock is released, and the
    study resumes from its last checkpoint when run again."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` during the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


COMMAND_MODULES = {
    "run": ("widthwise.study", "widthwise.show", "widthwise.job"),
    "show": ("widthwise.show",),
    "list": ("widthwise.listing",),
    "coord-check": ("widthwise.coordinate_check", "widthwise.spec"),
    "describe": ("widthwise.describe", "widthwise.spec"),
    "report": ("widthwise.report",),
    "compare": ("widthwise.report",),
}
"""What each command imports before it starts (with stop signals deferred)."""


def _preload(modules: Sequence[str]) -> None:
    """Import ``modules`` with SIGINT and SIGTERM deferred to the end of the imports.

    An interrupt inside a C extension's import (numpy, torch) leaves the module half
    initialised, and a later import then fails with a traceback that is not the
    user's fault; so a stop request during start-up is acted on once the imports are
    done, before anything is read or written.
    """
    if threading.current_thread() is not threading.main_thread():
        for name in modules:
            importlib.import_module(name)
        return
    pending: list[int] = []
    handlers = {
        sig: signal.signal(sig, lambda signum, frame: pending.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        for name in modules:
            importlib.import_module(name)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if signal.SIGTERM in pending:
        raise Terminated()
    if pending:
        raise KeyboardInterrupt()


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code (0 ok, 2 bad input, 130 Ctrl-C, 143 SIGTERM)."""
    try:
        with _sigterm_as_interrupt():
            return _main(argv)
    except KeyboardInterrupt as err:  # also while the handler is being set or restored
        return _interrupted(err)


def _main(argv: Sequence[str] | None) -> int:
    try:
        console = make_console()
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
        _preload(COMMAND_MODULES.get(args.command, ()))
        return args.fn(args, console)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as err:
        return _interrupted(err)
    except BrokenPipeError:  # e.g. `widthwise list --json | head`: the reader left
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes
        return EXIT_BROKEN_PIPE


def _interrupted(err: KeyboardInterrupt) -> int:
    if isinstance(err, Terminated):
        print("stopped by SIGTERM; run the same command again to resume", file=sys.stderr)
        return EXIT_TERMINATED
    print("interrupted; run the same command again to resume", file=sys.stderr)
    return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
