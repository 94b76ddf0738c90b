"""The Python API reference (docs/api.md) generated from the public names and docstrings.

``python -m widthwise.api_doc`` prints the generated part; ``--write docs/api.md``
replaces the block between the markers in that file (a test keeps it current). For
each public name: its signature (classes: their constructor, or their fields, and
their public methods) and the first paragraph of its docstring.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect
import re
from typing import Any

from pydantic import BaseModel

from widthwise.generated_block import END as END  # re-exported: tests find the block by it
from widthwise.generated_block import main, write_block
from widthwise.registry import Registry

BEGIN = "<!-- BEGIN GENERATED: python -m widthwise.api_doc --write docs/api.md -->"
WRAP = 88  # signatures longer than this put one parameter per line
NO_DOC = "*(no docstring)*"

# (module, names or None for the module's __all__, heading, intro)
SECTIONS: tuple[tuple[str, tuple[str, ...] | None, str], ...] = (
    ("widthwise", None, "the package: load, run, open"),
    ("widthwise.analysis", None, "pure functions of xarray data ([analysis.md](analysis.md))"),
    ("widthwise.report", None, "figures, HTML and CSV ([report.md](report.md))"),
    (
        "widthwise.registry",
        ("Registry", "Entry"),
        "the registry behind every pluggable thing ([extending.md](extending.md))",
    ),
    (
        "widthwise.families",
        ("Network", "build_network", "from_module"),
        "model families ([families.md](families.md))",
    ),
    (
        "widthwise.parameterization",
        (
            "Role",
            "ParamSpec",
            "RuleContext",
            "ParamRule",
            "rules_for",
            "Parameterization",
            "NetworkRules",
            "network_rules_for",
        ),
        "tensor roles and rules ([parameterizations.md](parameterizations.md))",
    ),
    ("widthwise.streams", ("Stream", "rng_for"), "data streams ([streams.md](streams.md))"),
    ("widthwise.probes", ("ProbeDef", "ProbeContext"), "probes ([probes.md](probes.md))"),
    ("widthwise.schedule", ("Schedule", "LRSchedule"), "probe and learning-rate schedules"),
    ("widthwise.trackers", ("TRACKERS",), "experiment trackers"),
)

# the order a reader meets them; names not listed follow in their __all__ order
PREFERRED = ("load_spec", "run", "open_study", "coord_check", "build_report")
ANALYSIS_MODULES = (
    "distance",
    "consistency",
    "bias_variance",
    "power_law",
    "similarity",
    "alignment",
    "ntk_spectrum",
    "_checks",
)

_ROLE = re.compile(r":(?:class|func|meth|data|attr|mod|exc):`~?([^`]+)`")


def _markdown(text: str) -> str:
    """RST-flavoured docstring text as markdown: ``x`` -> `x`, :class:`~a.B` -> `B`."""

    def role(m: re.Match[str]) -> str:
        target = m.group(1)
        return f"`{target.rsplit('.', 1)[-1] if m.group(0).count('~') else target}`"

    return _ROLE.sub(role, text).replace("``", "`")


def first_paragraph(obj: Any) -> str:
    """The first paragraph of ``obj``'s own docstring, on one line, as markdown."""
    doc = inspect.getdoc(obj) if not isinstance(obj, str | int | float) else None
    if not doc:
        return NO_DOC
    para = doc.strip().split("\n\n", 1)[0]
    return _markdown(" ".join(line.strip() for line in para.splitlines()))


def _annotation(a: Any) -> str:
    text = a if isinstance(a, str) else inspect.formatannotation(a)
    return text.replace("typing.", "").replace("NoneType", "None")


def _default(value: Any) -> str:
    text = repr(value)
    return "..." if " at 0x" in text or len(text) > 40 else text


def signature(name: str, obj: Any, *, wrap: bool = True, returns: bool = True) -> str:
    """``name(param: type = default, ...) -> return``; wrapped one parameter a line if long."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return f"{name}(...)"
    parts: list[str] = []
    star_done = False
    previous = None
    for p in sig.parameters.values():
        if p.name == "self":
            continue
        if previous == inspect.Parameter.POSITIONAL_ONLY and p.kind != previous:
            parts.append("/")
        if p.kind == inspect.Parameter.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        text = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}.get(
            p.kind, ""
        ) + p.name
        if p.kind == inspect.Parameter.VAR_POSITIONAL:
            star_done = True
        if p.annotation is not inspect.Parameter.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not inspect.Parameter.empty:
            text += f" = {_default(p.default)}" if ":" in text else f"={_default(p.default)}"
        parts.append(text)
        previous = p.kind
    if previous == inspect.Parameter.POSITIONAL_ONLY:
        parts.append("/")
    ret = ""
    if returns and sig.return_annotation is not inspect.Signature.empty:
        ret = f" -> {_annotation(sig.return_annotation)}"
    one_line = f"{name}({', '.join(parts)}){ret}"
    if len(one_line) <= WRAP or not wrap:
        return one_line
    return f"{name}(\n" + "".join(f"    {p},\n" for p in parts) + f"){ret}"


def _code(text: str) -> str:
    return f"```text\n{text}\n```"


def _methods(cls: type) -> list[str]:
    """One line per public method or property defined on ``cls`` itself."""
    out = []
    for name, member in cls.__dict__.items():
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            line = f"- `{name}` (property)"
        elif isinstance(member, staticmethod | classmethod):
            line = f"- `{signature(name, member.__func__, wrap=False)}`"
        elif inspect.isfunction(member):
            line = f"- `{signature(name, member, wrap=False)}`"
        else:
            continue
        doc = first_paragraph(member)
        out.append(line if doc == NO_DOC else f"{line}: {doc}")
    return out


def _bases(cls: type) -> str:
    names = [b.__name__ for b in cls.__bases__ if b is not object]
    return f"({', '.join(names)})" if names else ""


def entry(module: str, name: str, obj: Any) -> str:
    """The markdown of one public name."""
    head = f"### `{module}.{name}`\n"
    if isinstance(obj, Registry):
        names = ", ".join(f"`{n}`" for n in obj.names())
        return (
            f"{head}\nA `Registry` of kind `{obj.kind}`; built-in entries: "
            f"{names or '(none)'} ([spec.md](spec.md)).\n"
        )
    if isinstance(obj, str):
        return f"{head}\n`{name} = {obj!r}`\n"
    if inspect.isclass(obj):
        if issubclass(obj, BaseException):
            return f"{head}\n{_code(f'class {name}{_bases(obj)}')}\n\n{first_paragraph(obj)}\n"
        if issubclass(obj, enum.Enum):
            members = ", ".join(f"`{m.name} = {m.value!r}`" for m in obj)
            body = f"{first_paragraph(obj)}\n\nMembers: {members}."
            return f"{head}\n{_code(f'class {name}{_bases(obj)}')}\n\n{body}\n"
        if issubclass(obj, BaseModel):
            fields = ", ".join(f"`{f}`" for f in obj.model_fields)
            sig = _code(f"class {name}(pydantic.BaseModel)")
            body = f"{first_paragraph(obj)}\n\nFields: {fields}."
        else:
            kind = "@dataclass\n" if dataclasses.is_dataclass(obj) else ""
            sig = _code(f"{kind}class {signature(name, obj, returns=False)}")
            body = first_paragraph(obj)
        methods = _methods(obj)
        tail = "\n\n" + "\n".join(methods) if methods else ""
        return f"{head}\n{sig}\n\n{body}{tail}\n"
    return f"{head}\n{_code(signature(name, obj))}\n\n{first_paragraph(obj)}\n"


def _order(obj: Any) -> int:
    """Functions first, then classes, registries, errors, constants."""
    if isinstance(obj, Registry):
        return 2
    if inspect.isclass(obj):
        return 3 if issubclass(obj, BaseException) else 1
    return 4 if isinstance(obj, str) else 0


def module_section(module: str, names: tuple[str, ...] | None, intro: str) -> str:
    mod = importlib.import_module(module)
    public = list(names if names is not None else mod.__all__)
    parts = [f"## `{module}` — {intro}\n"]
    if module == "widthwise.analysis":  # grouped by the module that defines each function
        groups: dict[str, list[str]] = {}
        for n in public:
            groups.setdefault(getattr(mod, n).__module__.rsplit(".", 1)[-1], []).append(n)

        def rank(short: str) -> int:
            return ANALYSIS_MODULES.index(short) if short in ANALYSIS_MODULES else 99

        for short in sorted(groups, key=rank):
            members = groups[short]
            if short == "_checks":
                parts.append("### errors\n")
            else:
                doc = first_paragraph(importlib.import_module(f"{module}.{short}"))
                parts.append(f"### {short}\n\n{doc}\n")
            parts += [
                entry(module, n, getattr(mod, n)).replace("### ", "#### ", 1) for n in members
            ]
        return "\n".join(parts)

    def rank(n: str) -> tuple[int, int]:
        return _order(getattr(mod, n)), PREFERRED.index(n) if n in PREFERRED else 99

    public.sort(key=rank)
    parts += [entry(module, n, getattr(mod, n)) for n in public]
    return "\n".join(parts)


def api_reference() -> str:
    """The generated part of docs/api.md."""
    return "\n".join(module_section(*s) for s in SECTIONS)


def write_into(path: str) -> None:
    """Replace the generated block of ``path`` with the current reference."""
    write_block(path, BEGIN, api_reference())


if __name__ == "__main__":
    import sys

    main(sys.argv[1:], BEGIN, api_reference)
