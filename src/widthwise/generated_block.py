"""Generated blocks of the docs: text between a BEGIN marker and ``END`` that a
module writes (``python -m widthwise.spec_doc --write docs/spec.md`` and the like)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

END = "<!-- END GENERATED -->"


def write_block(path: str | Path, begin: str, content: str) -> None:
    """Replace what lies between ``begin`` and :data:`END` in the file at ``path``."""
    p = Path(path)
    head, _, rest = p.read_text().partition(begin)
    _, _, tail = rest.partition(END)
    p.write_text(f"{head}{begin}\n\n{content}\n{END}{tail}")


def main(argv: Sequence[str], begin: str, generate: Callable[[], str]) -> None:
    """``--write PATH`` fills PATH's block; no arguments print the generated text."""
    if len(argv) == 2 and argv[0] == "--write":
        write_block(argv[1], begin, generate())
    elif not argv:
        print(generate())
    else:
        sys.exit("usage: python -m MODULE [--write PATH]")
