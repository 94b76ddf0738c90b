"""The spec reference (docs/spec.md) generated from the validated schema and registries."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from widthwise.generated_block import END as END  # re-exported: tests find the block by it
from widthwise.generated_block import main, write_block
from widthwise.registry import Registry


def _type_name(field: FieldInfo) -> str:
    text = str(field.annotation).replace("typing.", "").replace("NoneType", "None")
    text = text.replace("<class '", "").replace("'>", "")
    for prefix in ("widthwise.spec.", "widthwise.schedule."):
        text = text.replace(prefix, "")
    return text.replace("|", "\\|")


def _default(field: FieldInfo) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    if field.default_factory is not None:
        try:
            value: Any = field.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return "(see below)"
        return "(see below)" if isinstance(value, BaseModel) else f"`{value}`"
    return f"`{field.default!r}`" if field.default not in ("", None) else f"`{field.default}`"


def _constraints(field: FieldInfo) -> str:
    out = []
    for m in field.metadata:
        for attr, sym in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
            v = getattr(m, attr, None)
            if v is not None:
                out.append(f"{sym} {v}")
        if getattr(m, "min_length", None):
            out.append(f"length ≥ {m.min_length}")
    return ", ".join(out)


def model_table(model: type[BaseModel], prefix: str = "") -> str:
    """A markdown table of a pydantic model's fields: key, type, default, allowed, meaning."""
    rows = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for name, field in model.model_fields.items():
        rows.append(
            f"| `{prefix}{name}` | {_type_name(field)} | {_default(field)} | "
            f"{_constraints(field)} | {field.description or ''} |"
        )
    return "\n".join(rows)


def registry_section(title: str, registry: Registry[Any], key: str) -> str:
    parts = [f"## {title}\n"]
    for name in registry.names():
        entry = registry.entry(name)
        parts.append(f"### `{name}`\n\n{entry.description}\n")
        if entry.options is not None:
            parts.append(model_table(entry.options, key.replace("<name>", name) + ".") + "\n")
    return "\n".join(parts)


def spec_reference() -> str:
    """The generated part of docs/spec.md."""
    from widthwise.executors import EXECUTORS
    from widthwise.families import FAMILIES
    from widthwise.parameterization import PARAMETERIZATIONS
    from widthwise.probes import PROBES
    from widthwise.schedule import LRSchedule
    from widthwise.spec import (
        DataSpec,
        ExecutorSpec,
        ModelSpec,
        OptimizerSpec,
        ParameterizationSpec,
        StudySpec,
    )
    from widthwise.streams import STREAMS
    from widthwise.trackers import TRACKERS

    sections = [
        "## Top level\n\n" + model_table(StudySpec),
        "## `model`\n\n" + model_table(ModelSpec, "model."),
        "## `parameterization`\n\n"
        + model_table(ParameterizationSpec, "parameterization.")
        + "\n\nNames: "
        + ", ".join(f"`{n}` ({PARAMETERIZATIONS.entry(n).description})" for n in PARAMETERIZATIONS),
        "## `optimizer`\n\n" + model_table(OptimizerSpec, "optimizer."),
        "## `schedule`\n\n" + model_table(LRSchedule, "schedule."),
        "## `data`\n\n" + model_table(DataSpec, "data."),
        "## `executor`\n\n" + model_table(ExecutorSpec, "executor."),
        registry_section(
            "Parameterizations (`parameterization.name`)", PARAMETERIZATIONS, "parameterization"
        ),
        registry_section("Families (`model.family`)", FAMILIES, "model.options"),
        registry_section("Streams (`data.stream`)", STREAMS, "data.options"),
        registry_section("Probes (`probes.<name>`)", PROBES, "probes.<name>"),
        registry_section("Executors (`executor.name`)", EXECUTORS, "executor.options"),
        registry_section("Trackers (`trackers.<name>`)", TRACKERS, "trackers.<name>"),
    ]
    return "\n\n".join(sections) + "\n"


BEGIN = "<!-- BEGIN GENERATED: python -m widthwise.spec_doc --write docs/spec.md -->"


def write_into(path: str) -> None:
    """Replace the generated block of ``path`` with the current reference."""
    write_block(path, BEGIN, spec_reference())


if __name__ == "__main__":
    import sys

    main(sys.argv[1:], BEGIN, spec_reference)
