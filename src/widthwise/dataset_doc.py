"""The Dataset schema of docs/dataset.md, generated from :mod:`widthwise.dataset_schema`.

``python -m widthwise.dataset_doc`` prints the generated part; ``--write
docs/dataset.md`` replaces the block between the markers in that file (a test keeps
it current). Every dim, coordinate and variable comes from the declarations the
probes and ``open_study`` use, so the tables cannot drift from the code.
"""

from __future__ import annotations

from widthwise.dataset_schema import (
    ROLES,
    SCHEMAS,
    SHARED_DIMS,
    Schema,
    Var,
    legacy_dims,
)
from widthwise.generated_block import END as END  # re-exported: tests find the block by it
from widthwise.generated_block import main, write_block

BEGIN = "<!-- BEGIN GENERATED: python -m widthwise.dataset_doc --write docs/dataset.md -->"
FIRST = ("study", "train_loss", "test")
"""Schemas in the order a reader meets them; the other probes follow by name."""


def _schemas() -> list[Schema]:
    import widthwise.probes  # noqa: F401  (registers the built-in probes and their schemas)
    import widthwise.store.open  # noqa: F401  (declares the study-level schema)

    rest = sorted(n for n in SCHEMAS if n not in FIRST)
    return [SCHEMAS[n] for n in (*FIRST, *rest) if n in SCHEMAS]


def _where(schema: Schema) -> str:
    return "study" if schema.name == "study" else f"`{schema.name}` probe"


def _code(names: tuple[str, ...]) -> str:
    return "(" + ", ".join(names) + ")"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def dims_table(schemas: list[Schema]) -> str:
    rows = ["| dim | added by | meaning | coordinate |", "|---|---|---|---|"]
    for s in schemas:
        for d in s.dims:
            rows.append(
                f"| `{d.name}` | {_where(s)} | {_cell(d.meaning)} | {_cell(d.coordinate) or '—'} |"
            )
    return "\n".join(rows)


def _dims_cell(v: Var) -> str:
    text = _code(v.dims)
    if v.alt_dims is not None:
        text += f"; {_code(v.alt_dims)} for {v.alt_when}"
    return _cell(text)


def variables_table(schemas: list[Schema]) -> str:
    rows = ["| variable | dims | units | meaning | present |", "|---|---|---|---|---|"]
    for s in schemas:
        for v in s.variables:
            when = v.when or ("always" if s.name == "study" else f"with `{s.name}`")
            rows.append(
                f"| `{v.name}` | {_dims_cell(v)} | {_cell(v.units)} | {_cell(v.meaning)} | "
                f"{_cell(when)} |"
            )
    return "\n".join(rows)


def roles_table() -> str:
    rows = ["| role | meaning |", "|---|---|"]
    rows += [f"| `<probe>_{role}` | {_cell(text)} |" for role, text in ROLES.items()]
    return "\n".join(rows)


def legacy_table() -> str:
    rows = ["| earlier name | read as |", "|---|---|"]
    rows += [f"| `{old}` | `{new}` |" for old, new in sorted(legacy_dims().items())]
    return "\n".join(rows)


def dataset_reference() -> str:
    """The generated part of docs/dataset.md."""
    schemas = _schemas()
    shared = ", ".join(f"`{d}`" for d in SHARED_DIMS)
    return "\n\n".join(
        [
            "### Dims and coordinates",
            dims_table(schemas),
            "### Variables",
            "Probe variables carry their probe's step dim; every variable has "
            "`description` and `units` attrs.",
            variables_table(schemas),
            "### Naming rule",
            f"A dim is either shared — {shared}: the same meaning wherever it appears — "
            "or belongs to one probe and is named `<probe>_<role>`:",
            roles_table(),
            "### Dims of stores written by earlier versions",
            "`open_study` reads these under their current names (the variables' names "
            "and values are unchanged):",
            legacy_table(),
        ]
    )


def write_into(path: str) -> None:
    """Replace the generated block of ``path`` with the current reference."""
    write_block(path, BEGIN, dataset_reference())


if __name__ == "__main__":
    import sys

    main(sys.argv[1:], BEGIN, dataset_reference)
