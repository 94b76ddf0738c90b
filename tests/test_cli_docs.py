"""docs/cli.md stays true: the ``widthwise --help`` it shows, and every command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from widthwise.cli import build_parser

pytestmark = pytest.mark.quick

ROOT = Path(__file__).resolve().parents[1]
HELP_MARKER = re.compile(r"^<!-- help: (?P<cmd>widthwise[^>]*?) -->$")


def help_blocks() -> list[tuple[str, str]]:
    """(command, text) of every block in docs/cli.md marked ``<!-- help: CMD -->``."""
    lines = (ROOT / "docs" / "cli.md").read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        m = HELP_MARKER.match(line.strip())
        if m:
            start = i + 2  # the marker, then the opening fence
            end = next(k for k in range(start, len(lines)) if lines[k].strip() == "```")
            out.append((m.group("cmd"), "\n".join(lines[start:end])))
    return out


def test_help_shown_in_the_docs_is_what_it_prints() -> None:
    blocks = help_blocks()
    assert blocks, "docs/cli.md lost its <!-- help: widthwise --help --> block"
    for cmd, text in blocks:
        args = cmd.split()[1:]
        proc = subprocess.run(
            [sys.executable, "-m", "widthwise", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "100"},
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.rstrip() == text.rstrip(), f"docs/cli.md: `{cmd}` prints:\n{proc.stdout}"


def test_every_command_and_flag_is_documented() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():  # type: ignore[union-attr]
        assert f"`widthwise {name}" in text, name
        for action in command._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert flag in text, f"docs/cli.md does not mention {name} {flag}"
    assert "--version" in text
