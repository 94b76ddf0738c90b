"""Command-line overrides of a spec: ``--steps``, ``--widths``, ``--seeds``, ``--set``.

``--set key.path=value`` sets any key of the YAML spec before it is validated (the
value is read as YAML: ``--set optimizer.lr=0.05``, ``--set widths=[64,128]``,
``--set probes.kernels.every=10``). The result is validated as a whole, so an
unknown key or a wrong type is the spec's own one-line error, and the study records
the spec it ran (its hash changes, so a resume stays honest).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from widthwise.errors import SpecError

MAX_SET_CHARS = 2000
"""The longest ``--set`` argument accepted."""
MAX_SET_DEPTH = 8
"""The deepest key path ``--set`` may name."""


def parse_set(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` → (["a", "b"], value read as YAML); one-line SpecError otherwise."""
    if len(text) > MAX_SET_CHARS:
        raise SpecError(f"--set: at most {MAX_SET_CHARS} characters, got {len(text)}")
    key, sep, value = text.partition("=")
    path = key.strip().split(".")
    if not sep or not all(p.strip() for p in path):
        raise SpecError(f"--set: expected KEY.PATH=VALUE (e.g. optimizer.lr=0.05), got {text!r}")
    if len(path) > MAX_SET_DEPTH:
        raise SpecError(f"--set: a key path of at most {MAX_SET_DEPTH} keys, got {key!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        raise SpecError(f"--set {key}: {value!r} is not a YAML value") from None
    if isinstance(parsed, dict | list) and _depth(parsed) > MAX_SET_DEPTH:
        raise SpecError(f"--set {key}: the value nests deeper than {MAX_SET_DEPTH} levels")
    return [p.strip() for p in path], parsed


def apply_overrides(
    raw: dict[str, Any],
    sets: Sequence[str] = (),
    *,
    steps: int | None = None,
    widths: Sequence[int] | None = None,
    seeds: int | None = None,
) -> dict[str, Any]:
    """A copy of the parsed spec ``raw`` with the overrides applied (not validated)."""
    out = _copy(raw)
    pairs: list[tuple[list[str], Any]] = [parse_set(s) for s in sets]
    for name, value in (("steps", steps), ("widths", widths), ("seeds", seeds)):
        if value is not None:
            pairs.append(([name], list(value) if name == "widths" else value))
    for path, value in pairs:
        node = out
        for i, key in enumerate(path[:-1]):
            child = node.get(key)
            if isinstance(child, str):  # a name standing for {name: ...}, e.g. parameterization
                child = {"name": child}
            elif child is None:
                child = {}
            elif not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise SpecError(f"--set {'.'.join(path)}: {where} is not a mapping in the spec")
            node[key] = child
            node = child
        node[path[-1]] = value
    return out


def parse_widths(text: str) -> list[int]:
    """``"64,128,256"`` → [64, 128, 256]; one-line SpecError otherwise."""
    try:
        widths = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise SpecError(
            f"--widths: expected whole numbers separated by commas, got {text!r}"
        ) from None
    if not widths:
        raise SpecError(f"--widths: expected whole numbers separated by commas, got {text!r}")
    return widths


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_SET_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level
