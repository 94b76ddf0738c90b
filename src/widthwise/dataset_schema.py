"""The schema of the ``open_study`` Dataset as data: its dims, coordinates and variables.

Each probe module declares what it records (``declare(Schema(...))`` beside its
``PROBES.register``); ``widthwise.store.open`` declares the study-level entries.
From these declarations:

- the probes build the dims of what they return (:meth:`Schema.result_dims`);
- ``open_study`` renames the dims of stores written under older names
  (:attr:`Dim.formerly`), attaches the coordinates that map a probe's points back
  to ``point`` (:attr:`Dim.index_of`) and annotates every variable with its
  ``description`` and ``units``;
- ``python -m widthwise.dataset_doc --write docs/dataset.md`` writes the tables of
  docs/dataset.md (a test keeps them current).

The naming rule (checked by a test for every declared dim): a dim is either one of
:data:`SHARED_DIMS`, which mean the same thing in every variable, or
``<probe>_<role>`` with ``role`` in :data:`ROLES`.
"""

from __future__ import annotations

from dataclasses import dataclass

SHARED_DIMS = (
    "width",
    "depth",  # a depth study's depths (docs/depth.md), before width
    "seed",
    "step",
    "point",
    "position",
    "output",
    "head",
    "query",
    "key",
    "probe",
    "lr",  # a sweep study's dims (widthwise.sweep.SWEEP_KEYS), just before seed
    "weight_decay",
    "sigma",
    "momentum",
    "beta1",
    "beta2",
    "eps",
    "output_multiplier",
)
"""Dims without a probe prefix: the same meaning (and size) wherever they appear."""

ROLES = {
    "step": "the probe's own step coordinate (steps after that many updates)",
    "layer": "layer names, as the probe recorded them",
    "point": "the first M probe points; coordinate: their indices into `point`",
    "point_i": "rows of a matrix over probe points; coordinate: indices into `point`",
    "point_j": "columns of that matrix; coordinate: indices into `point`",
    "output_i": "output unit of a row (sequence models: position × output, flattened)",
    "output_j": "output unit of a column",
    "bin": "histogram bins; coordinate: bin centers",
    "edge": "histogram bin edges (one more than bins); coordinate: the edges",
    "neuron": "the first units of a layer",
    "eig": "eigenvalue index, 0 = the largest",
}
"""Suffixes of probe dims, ``<probe>_<role>``, and what each role means."""


@dataclass(frozen=True)
class Dim:
    """A dim of the Dataset and what its coordinate holds.

    ``index_of``: the dim's coordinate holds indices into that dim (``open_study``
    attaches ``0 … size−1``: a probe's points are the first probe points), so
    ``ds.test_target.sel(point=ds.kernels_point_i)`` lines targets up with a kernel.
    ``formerly``: names of this dim in stores written by earlier versions; ``open_study``
    reads them under this name.
    """

    name: str
    meaning: str
    coordinate: str = ""
    index_of: str | None = None
    formerly: tuple[str, ...] = ()


@dataclass(frozen=True)
class Var:
    """A variable (or coordinate variable listed as one) of the Dataset, with its full dims.

    ``alt_dims``: a second form of the variable (e.g. sequence models add ``position``),
    used when ``alt_when`` holds. ``when``: the condition under which it is present at
    all (empty: whenever its probe runs).
    """

    name: str
    dims: tuple[str, ...]
    units: str
    meaning: str
    when: str = ""
    alt_dims: tuple[str, ...] | None = None
    alt_when: str = ""


@dataclass(frozen=True)
class Schema:
    """What one probe (or the study itself, ``name="study"``) adds to the Dataset."""

    name: str
    step_dim: str | None
    dims: tuple[Dim, ...]
    variables: tuple[Var, ...]

    def var(self, name: str) -> Var:
        """The declared variable ``name`` (KeyError naming the declared ones otherwise)."""
        for v in self.variables:
            if v.name == name:
                return v
        raise KeyError(f"{self.name}: no variable {name!r}; declared: {self.names()}")

    def names(self) -> list[str]:
        return [v.name for v in self.variables]

    def result_dims(self, name: str, alt: bool = False) -> tuple[str, ...]:
        """Dims of ``name`` as the probe returns it: the Dataset's minus width and step dim."""
        v = self.var(name)
        dims = v.alt_dims if alt else v.dims
        if dims is None:
            raise KeyError(f"{self.name}: variable {name!r} has one form only")
        return tuple(d for d in dims if d not in ("width", self.step_dim))


SCHEMAS: dict[str, Schema] = {}
"""Declared schemas by probe name (``"study"``: the study-level dims and variables)."""


def declare(schema: Schema) -> Schema:
    """Add ``schema`` under its name (once); returns it."""
    if schema.name in SCHEMAS:
        raise ValueError(f"a schema for {schema.name!r} is already declared")
    SCHEMAS[schema.name] = schema
    return schema


def legacy_dims() -> dict[str, str]:
    """{former dim name: current name} over every declared dim."""
    return {old: d.name for s in SCHEMAS.values() for d in s.dims for old in d.formerly}


def declared_dims() -> dict[str, Dim]:
    """Every declared dim by name (a shared dim declared twice must agree)."""
    return {d.name: d for s in SCHEMAS.values() for d in s.dims}


def declared_vars() -> dict[str, Var]:
    """Every declared variable by name."""
    return {v.name: v for s in SCHEMAS.values() for v in s.variables}


def follows_naming_rule(schema: Schema, dim: str) -> bool:
    """True when ``dim`` is shared or ``<schema.name>_<role>`` (``step`` for train_loss)."""
    if dim in SHARED_DIMS:
        return True
    prefix = f"{schema.name}_"
    return dim.startswith(prefix) and dim[len(prefix) :] in ROLES


# -- probes whose own modules do not declare their schema (yet) ----------------------------

declare(
    Schema(
        "train_loss",
        "step",
        (Dim("step", "steps of `train_loss` (0 … steps−1)", "steps"),),
        (
            Var(
                "train_loss",
                ("width", "seed", "step"),
                "loss",
                "minibatch loss of step t, before update t (MSE: mean over batch and outputs; "
                "cross-entropy: nats)",
            ),
        ),
    )
)

declare(
    Schema(
        "test",
        "test_step",
        (Dim("test_step", "steps of the `test` probe (0 … steps)", "steps"),),
        (
            Var("test_loss", ("width", "seed", "test_step"), "loss", "loss on the probe set"),
            Var(
                "test_error",
                ("width", "seed", "test_step"),
                "fraction",
                "classification error on the probe set",
                when="classification streams",
            ),
            Var(
                "test_logits",
                ("width", "seed", "test_step", "point", "output"),
                "logit",
                "network outputs on the probe set",
                when="`logits: true` (default)",
                alt_dims=("width", "seed", "test_step", "point", "position", "output"),
                alt_when="sequence models",
            ),
        ),
    )
)

declare(
    Schema(
        "train_eval",
        "train_eval_step",
        (Dim("train_eval_step", "steps of the `train_eval` probe", "steps"),),
        (
            Var(
                "train_eval_loss",
                ("width", "seed", "train_eval_step"),
                "loss",
                "loss on a fixed sample of the training set (offline streams)",
            ),
            Var(
                "train_eval_error",
                ("width", "seed", "train_eval_step"),
                "fraction",
                "classification error on that sample",
                when="classification streams",
            ),
        ),
    )
)


__all__ = [
    "ROLES",
    "SCHEMAS",
    "SHARED_DIMS",
    "Dim",
    "Schema",
    "Var",
    "declare",
    "declared_dims",
    "declared_vars",
    "follows_naming_rule",
    "legacy_dims",
]
