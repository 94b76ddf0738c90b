"""The study spec: one YAML file, validated before anything runs or is written.

``load_spec(path_or_name)`` returns a :class:`StudySpec` or raises a
:class:`~widthwise.errors.SpecError` whose one line names each bad key, the value
given and what is allowed. Family, stream, probe and parameterization options are
validated by the options model of their registry entry, so plug-ins get the same
errors for free.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from widthwise.errors import SpecError, UserError
from widthwise.executors import EXECUTORS, ExecutorFlags
from widthwise.families import FAMILIES
from widthwise.parameterization import PARAMETERIZATIONS, optimizer_problem
from widthwise.probes import PROBES
from widthwise.schedule import LRSchedule, Schedule
from widthwise.streams import STREAMS, declared_loss, loss_problem
from widthwise.trackers import TRACKERS

EXAMPLES_DIR = Path(__file__).parent / "examples"


NOT_HASHED = {"out", "device", "description", "executor", "trackers"}
"""Spec keys that do not change a study's numbers (a study may resume with others)."""
HASHED_WHEN_SET: dict[str, Any] = {
    "mixed_precision": "none",
    "deterministic": False,
    "sweep": {},
    "depth_mup": None,
    "depths": None,
    "parameterization.output_multiplier": 1.0,
}
"""Keys newer than format 1, hashed only when not at these defaults (older hashes hold)."""

# -- limits: every number in a spec is finite and bounded, every document small ------

MAX_SPEC_BYTES = 1_000_000
"""Largest spec file read (a real spec is a few kB)."""
MAX_DEPTH = 50
"""Deepest nesting of mappings and lists, aliases expanded (a real spec nests 4)."""
MAX_NODES = 100_000
"""Most values a spec may hold once its YAML aliases are expanded."""
MAX_WIDTH = 2**20
MAX_SEEDS = 4096
MAX_SEED_ID = 2**32 - 1
MAX_STEPS = 10**8
MAX_BATCH = 2**20
MAX_PROBE_POINTS = 10**6
MAX_WIDTHS = 256
MAX_DEPTHS = 16
"""Most depths a study lists (each is a whole width study)."""
MAX_INT = 2**63 - 1
"""No integer anywhere in a spec (plug-in options too) may exceed int64."""
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
PATH_KEYS = frozenset({"out", "path", "cache_dir", "folder", "logdir", "dir"})
"""Keys whose strings are file paths, anywhere in a spec: their length is checked."""
MAX_PROBLEMS = 12
"""Problems named in one error line (the rest are counted)."""


class _Strict(BaseModel):
    # strict: no silent coercion (``steps: true`` is not 1, ``lr: "0.1"`` is not 0.1);
    # ints are still accepted where a float is expected; no float is inf or nan
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ModelSpec(_Strict):
    family: str = Field("mlp", description="model family (registry FAMILIES)")
    options: dict[str, Any] = Field(
        default_factory=dict, description="family options (see the family's table below)"
    )


BUILT_IN_OPTIONS = ("gamma0", "center", "readout_zero_init", "query_zero_init")
"""Options of the first parameterizations, kept as fields (so every spec's dump, and
hash, stays as it was); like any other key they are validated by the options model of
the named parameterization."""


DEPTH_MUP_FAMILIES = ("transformer", "resnet18_ln")
"""Families with residual branches tagged for depth-muP and a ``depth`` option
(``resnet18_ln``: blocks per stage; depth-muP's L counts the blocks of all stages).
Module families (``module``, ``from_module``) too: their factory takes ``depth=`` and
``model.options.residual`` names the branches (docs/depth.md)."""


def is_module_family(family: str) -> bool:
    """Whether ``family`` is a module family (its options: ``ModuleFamilyOptions``)."""
    from widthwise.families.module import ModuleFamilyOptions

    if family not in FAMILIES:
        return False
    options = FAMILIES.entry(family).options
    return isinstance(options, type) and issubclass(options, ModuleFamilyOptions)


def depth_family_problem(spec: Any, key: str) -> str | None:
    """Why ``spec``'s family cannot take ``key`` (``depth_mup``, ``depths``), or None."""
    family = spec.model.family
    if family in DEPTH_MUP_FAMILIES:
        return None
    allowed = f"allowed: {', '.join(DEPTH_MUP_FAMILIES)} and module families"
    if not is_module_family(family):
        what = "branches" if key == "depth_mup" else "blocks"
        return f"{key}: family {family!r} has no residual {what} with a depth option; {allowed}"
    options = spec.model.options or {}
    if key == "depth_mup" and not options.get("residual"):
        return (
            "depth_mup: a module family needs model.options.residual (its branches: "
            "branch_out, branch) for depth-muP (docs/depth.md)"
        )
    if key == "depth_mup" and options.get("depth") is None and spec.depths is None:
        return (
            "depth_mup: a module family needs model.options.depth (the residual blocks its "
            "factory builds, passed as depth=: depth-muP's L), or depths: [...]"
        )
    return None


class DepthMupSpec(_Strict):
    """Depth-muP (Tensor Programs VI; Bordelon et al. 2023): at ``base_depth`` blocks it
    is the plain parameterization; at depth L each residual branch is scaled by
    √(base_depth / L) (and its Adam learning rate likewise)."""

    base_depth: int = Field(
        ge=1, le=1000, description="depth at which depth-muP is the plain parameterization"
    )


class ParameterizationSpec(_Strict):
    """A parameterization and its options: any other key is an option of the named
    parameterization, validated by its options model (docs/parameterizations.md)."""

    model_config = ConfigDict(extra="allow")

    name: str = Field("mup", description="sp, ntp, mup, mf or umup (registry PARAMETERIZATIONS)")
    sigma: float = Field(1.0, gt=0, le=1e3, description="init scale σ: std = σ/√fan_in (≤ 1000)")
    gamma0: float | None = Field(None, gt=0, le=1e6, description="richness γ0 (mf only; ≤ 10⁶)")
    center: bool = Field(False, description="mf only: subtract the initial network's output")
    readout_zero_init: bool = Field(False, description="mup: the readout starts at zero")
    query_zero_init: bool = Field(False, description="mup: attention query weights start at zero")
    output_multiplier: float = Field(
        1.0,
        gt=0,
        le=1e3,
        description="α: the network's output (logits) times α, under any parameterization "
        "(mup's MuReadout output_mult; ≤ 1000; docs/parameterizations.md)",
    )

    def given_options(self) -> dict[str, Any]:
        """The options given for the named parameterization: every key but ``name`` and
        ``sigma`` that is set away from its default or named by the parameterization's
        options model, and every other key."""
        entry = PARAMETERIZATIONS.entry(self.name) if self.name in PARAMETERIZATIONS else None
        known = set(entry.options.model_fields) if entry and entry.options else set()
        given = {}
        for key in BUILT_IN_OPTIONS:
            value = getattr(self, key)
            set_here = key in known and key in self.model_fields_set
            if set_here or value != type(self).model_fields[key].default:
                given[key] = value
        return {**given, **(self.model_extra or {})}

    def options(self) -> BaseModel | None:
        """The options validated by the named parameterization's options model."""
        return PARAMETERIZATIONS.validate_options(self.name, self.given_options())


class OptimizerSpec(_Strict):
    name: Literal["sgd", "adam", "adamw"] = Field("sgd", description="optimizer")
    lr: float = Field(
        gt=0, le=1e3, description="base learning rate (at base_width; η0 for mf; ≤ 1000)"
    )
    momentum: float = Field(0.0, ge=0, lt=1, description="sgd momentum")
    nesterov: bool = Field(False, description="sgd: Nesterov momentum (needs momentum > 0)")
    weight_decay: float = Field(
        0.0, ge=0, le=1e3, description="L2 (sgd, adam) or decoupled (adamw); ≤ 1000"
    )
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.9, 0.999), strict=False, description="adam/adamw betas, each in [0, 1)"
    )
    eps: float = Field(1e-8, gt=0, le=1, description="adam/adamw epsilon (≤ 1)")

    @property
    def kind(self) -> Literal["sgd", "adam"]:
        return "sgd" if self.name == "sgd" else "adam"


class DataSpec(_Strict):
    stream: str = Field("gegenbauer", description="data stream (registry STREAMS)")
    seed: int = Field(
        0, ge=0, le=MAX_SEED_ID, description="data seed: batches depend only on (seed, step); < 2³²"
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="stream options (see the stream's table below)"
    )
    probe_points: int = Field(
        256, gt=0, le=MAX_PROBE_POINTS, description="size of the fixed test (probe) set (≤ 10⁶)"
    )


class ExecutorSpec(_Strict):
    name: str = Field("local", description="local, processes, ray or slurm (registry EXECUTORS)")
    options: dict[str, Any] = Field(
        default_factory=dict, description="executor options (see the executor's table below)"
    )


class StudySpec(_Strict):
    """A width-consistency study. See docs/spec.md for every key."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        max_length=100,
        description="study name: letters, digits, _ . - (default directory runs/<name>)",
    )
    description: str = Field("", description="one line shown by `widthwise list`")
    model: ModelSpec = Field(default_factory=ModelSpec, description="family and its options")
    widths: list[int] = Field(
        min_length=1, description="strictly increasing widths, each ≤ 2²⁰ (at most 256 of them)"
    )
    base_width: int | None = Field(
        None,
        gt=0,
        le=MAX_WIDTH,
        description="width where all parameterizations agree (default: widths[0])",
    )
    seeds: int | list[int] = Field(
        4, description="a count ≤ 4096 (seeds 0..n-1) or a list of ≤ 4096 seed ids < 2³²"
    )
    parameterization: ParameterizationSpec = Field(
        default_factory=ParameterizationSpec,
        description="a name, or a mapping: name, sigma and its options (docs/parameterizations.md)",
    )
    optimizer: OptimizerSpec = Field(description="optimizer and base learning rate")
    depth_mup: DepthMupSpec | None = Field(
        None,
        description="depth-muP: residual branches × √(base_depth/depth), Adam lr likewise "
        "(transformer, resnet18_ln; docs/parameterizations.md)",
    )
    depths: list[int] | None = Field(
        None,
        description="strictly increasing depths (each ≤ 1000, at most 16): one width study per "
        "depth, analysed along depth as along width (transformer, resnet18_ln; docs/depth.md)",
    )
    sweep: dict[str, list[float]] = Field(
        default_factory=dict,
        description="hyperparameter grids trained as ensemble members: lr, weight_decay, "
        "sigma, output_multiplier, momentum (sgd), beta1, beta2, eps (adam, adamw) -> a "
        "list of values (docs/sweeps.md)",
    )
    schedule: LRSchedule = Field(default_factory=LRSchedule, description="learning-rate schedule")
    steps: int = Field(gt=0, le=MAX_STEPS, description="optimizer updates (≤ 10⁸)")
    batch_size: int = Field(
        gt=0, le=MAX_BATCH, description="examples per step, shared by every seed and width (≤ 2²⁰)"
    )
    loss: Literal["mse", "cross_entropy"] | None = Field(
        None, description="default: the stream's (mse for regression, cross_entropy for labels)"
    )
    data: DataSpec = Field(default_factory=DataSpec, description="the online data stream")
    probes: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"train_loss": {"every": 1}, "test": {"log_spaced": 20}},
        description="probe name -> options incl. its schedule (docs/probes.md)",
    )
    checkpoint_every: int | None = Field(
        None, gt=0, le=MAX_STEPS, description="steps between checkpoints (default: steps // 4)"
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    dtype: Literal["float32", "float64"] = Field("float32", description="parameter dtype")
    ensemble: Literal["auto", "vmap", "loop"] = Field(
        "auto", description="forward strategy over seeds (docs/concepts.md)"
    )
    mixed_precision: Literal["none", "bf16"] = Field(
        "none", description="bf16: autocast the training forward pass; probes stay in dtype"
    )
    deterministic: bool = Field(
        False, description="deterministic kernels only (torch.use_deterministic_algorithms)"
    )
    executor: ExecutorSpec = Field(
        default_factory=ExecutorSpec, description="where width runs execute: a name or a mapping"
    )
    trackers: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="tracker name -> options: wandb, mlflow, tensorboard (docs/trackers.md)",
    )
    out: str | None = Field(
        None,
        description="study directory (default runs/<name>); each path component ≤ 255 bytes, "
        "the whole ≤ 4096",
    )

    @field_validator("parameterization", mode="before")
    @classmethod
    def _short_parameterization(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("executor", mode="before")
    @classmethod
    def _short_executor(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("widths")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        if any(w <= 0 for w in v):
            raise ValueError("every width must be a positive integer")
        if any(w > MAX_WIDTH for w in v):
            raise ValueError(f"every width must be at most 2**20 = {MAX_WIDTH}")
        if len(v) > MAX_WIDTHS:
            raise ValueError(f"at most {MAX_WIDTHS} widths ({len(v)} given)")
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError("must be strictly increasing without duplicates")
        return v

    @field_validator("depths")
    @classmethod
    def _depths(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if len(v) < 2:
            raise ValueError("list at least 2 depths (the deepest is the reference)")
        if len(v) > MAX_DEPTHS:
            raise ValueError(f"at most {MAX_DEPTHS} depths ({len(v)} given)")
        if any(not 1 <= d <= 1000 for d in v):
            raise ValueError("every depth must be an integer from 1 to 1000")
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError("must be strictly increasing without duplicates")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, int) and not 1 <= v <= MAX_SEEDS:
            raise ValueError(f"a seed count must be between 1 and {MAX_SEEDS}")
        if isinstance(v, list) and (not v or any(s < 0 for s in v) or len(set(v)) != len(v)):
            raise ValueError("a seed list must be non-empty, unique and >= 0")
        if isinstance(v, list) and (len(v) > MAX_SEEDS or any(s > MAX_SEED_ID for s in v)):
            raise ValueError(f"a seed list holds at most {MAX_SEEDS} ids, each below 2**32")
        return v

    @field_validator("sweep", mode="before")
    @classmethod
    def _sweep(cls, v: Any) -> Any:
        from widthwise.sweep import sweep_problems

        if not isinstance(v, dict):
            raise ValueError("must be a mapping: key -> list of values (e.g. lr: [0.01, 0.1])")
        problems = sweep_problems(v)
        if problems:
            raise ValueError("; ".join(problems))
        return {k: [float(x) for x in vals] for k, vals in v.items()}

    @field_validator("out")
    @classmethod
    def _out(cls, v: str | None) -> str | None:
        if v is not None:
            problem = path_problem(v)
            if problem:
                raise ValueError(problem)
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        index = v[5:] if v.startswith("cuda:") else ""
        if v not in ("auto", "cpu", "cuda") and not (index.isdigit() and len(index) <= 4):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return v

    @model_validator(mode="after")
    def _defaults(self) -> StudySpec:
        if self.base_width is None:
            self.base_width = self.widths[0]
        if self.checkpoint_every is None:
            self.checkpoint_every = max(self.steps // 4, 1)
        return self

    def at_depth(self, depth: int) -> StudySpec:
        """The width study of one of ``depths``: ``model.options.depth = depth``, no
        ``depths``, in ``out_dir()/depth-<depth>`` (:mod:`widthwise.depth_study`)."""
        from widthwise.depth_study import depth_dirname

        model = self.model.model_copy(
            update={"options": {**(self.model.options or {}), "depth": int(depth)}}
        )
        out = str(self.out_dir() / depth_dirname(depth))
        return self.model_copy(update={"depths": None, "model": model, "out": out})

    @property
    def seed_list(self) -> list[int]:
        """The seed ids of the ensemble, in order (``seeds: 4`` → [0, 1, 2, 3])."""
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    @property
    def sweep_points(self) -> list[dict[str, float]]:
        """The sweep's points, point-major (``[{}]`` without a sweep): widthwise.sweep."""
        from widthwise.sweep import sweep_points

        return sweep_points(self.sweep)

    @property
    def member_seeds(self) -> list[int]:
        """The seed of every ensemble member: ``seed_list`` once per sweep point."""
        return self.seed_list * len(self.sweep_points)

    @property
    def member_ids(self) -> list[int]:
        """The ids the store keys members by: the seed ids without a sweep, the member
        indices ``point · n_seeds + seed index`` with one."""
        return self.seed_list if not self.sweep else list(range(len(self.member_seeds)))

    def out_dir(self) -> Path:
        """The study directory: ``out``, or ``runs/<name>``."""
        return Path(self.out) if self.out else Path("runs") / self.name

    def hash(self) -> str:
        """Hash of everything that determines the numbers: not where or how the runs execute
        (``out``, ``device``, ``executor``), not ``description`` or ``trackers``. Keys added
        after the first release count only when set away from their default, so studies
        made before them keep their hash and still resume."""
        blob = json.dumps(hashed_part(self.model_dump(mode="json")), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def family_options(self) -> BaseModel | None:
        """``model.options`` validated by the family's options model."""
        return FAMILIES.validate_options(self.model.family, self.model.options)

    def stream_options(self) -> BaseModel | None:
        """``data.options`` validated by the stream's options model."""
        return STREAMS.validate_options(self.data.stream, self.data.options)

    def probe_options(self) -> dict[str, Schedule]:
        """Each probe's options validated by its model: {probe name: options (a Schedule)}."""
        return {n: PROBES.validate_options(n, o) for n, o in self.probes.items()}  # type: ignore[misc]


def hashed_part(dump: dict[str, Any]) -> dict[str, Any]:
    """The keys of a spec's JSON dump (or of a stored ``spec.yaml``) that its hash covers:
    all but :data:`NOT_HASHED`, and :data:`HASHED_WHEN_SET` keys only away from their
    defaults."""
    payload = {k: v for k, v in dump.items() if k not in NOT_HASHED}
    for key, default in HASHED_WHEN_SET.items():
        section, _, sub = key.rpartition(".")
        if not section:
            if key in payload and payload[key] == default:
                del payload[key]
        elif isinstance(payload.get(section), dict) and payload[section].get(sub, default) == (
            default
        ):  # a nested key (parameterization.output_multiplier): a copy without it
            payload[section] = {k: v for k, v in payload[section].items() if k != sub}
    sweep = payload.get("sweep")
    if isinstance(sweep, dict) and list(sweep) != sorted(sweep):
        # the hash's JSON sorts keys, but the members follow the spec's key order: two
        # orders are two studies (sorted order hashes as before, so old studies match)
        payload["sweep_order"] = list(sweep)
    return payload


CODE_KEYS: dict[str, str] = {
    "executor.options.setup": "runs shell commands on the cluster",
    "executor.options.runtime_env": "makes Ray install and run code on every worker",
    "executor.options.imports": "imports (runs) Python modules in every worker",
    "model.options.factory": "imports (runs) a Python module to build the model",
}
"""Spec keys whose values run code, and what they do (``--allow-code`` lets them)."""


def code_in_spec(
    spec: StudySpec, trusted_imports: Sequence[str] = (), keys: Sequence[str] | None = None
) -> list[str]:
    """The keys of ``spec`` that would run code, one line each (empty: the spec runs none).

    ``trusted_imports`` are modules the caller asked for itself (the command line's
    ``--import``): they are not the spec's code. docs/security.md says why. ``keys``
    limits the check to those of :data:`CODE_KEYS`.
    """
    options = spec.executor.options
    problems = []
    for key, what in CODE_KEYS.items():
        if keys is not None and key not in keys:
            continue
        if key == "model.options.factory":  # the module family; widthwise's own are trusted
            ref = spec.model.options.get("factory") if spec.model.family == "module" else None
            mod = ref.partition(":")[0] if isinstance(ref, str) else ""
            if ref and not mod.startswith("widthwise.") and mod not in set(trusted_imports):
                problems.append(f"{key}: {what} ({_short(ref)})")
            continue
        value = options.get(key.rsplit(".", 1)[-1])
        if key.endswith(".imports") and isinstance(value, list):
            value = [m for m in value if m not in set(trusted_imports)]
        if value:
            problems.append(f"{key}: {what} ({_short(value)})")
    return problems


def refuse_code(
    spec: StudySpec, trusted_imports: Sequence[str] = (), keys: Sequence[str] | None = None
) -> None:
    """A one-line :class:`~widthwise.errors.SpecError` naming every key of ``spec`` that
    would run code (of ``keys``, when given); nothing when it runs none."""
    problems = code_in_spec(spec, trusted_imports, keys)
    if problems:
        raise SpecError(
            "; ".join(problems) + "; pass --allow-code (widthwise.run(..., allow_code=True)) "
            "if you trust this spec"
        )


def _fmt_loc(prefix: str, loc: tuple[Any, ...]) -> str:
    parts = [prefix] if prefix else []
    parts += [str(p) for p in loc if not str(p).startswith("function-")]
    return ".".join(parts) or "(top level)"


def _brief(value: Any, budget: list[int], depth: int = 0) -> str:
    """A repr of ``value`` that stops after about ``budget[0]`` characters: huge or
    deeply nested values (an expanded YAML alias bomb) cost no more than small ones."""
    if budget[0] <= 0:
        return "..."
    if isinstance(value, bool) or value is None or isinstance(value, float):
        text = repr(value)
    elif isinstance(value, int):
        bits = value.bit_length()
        text = repr(value) if bits <= 200 else f"<an integer of {bits} bits>"
    elif isinstance(value, str | bytes):
        text = repr(value[: budget[0]]) + ("..." if len(value) > budget[0] else "")
    elif isinstance(value, list | tuple | set | frozenset | dict):
        if depth >= 3:
            text = "[...]" if not isinstance(value, dict) else "{...}"
        else:
            items = itertools.islice(value.items() if isinstance(value, dict) else value, 20)
            parts = []
            for item in items:
                if budget[0] <= 0:
                    parts.append("...")
                    break
                if isinstance(value, dict):
                    k, v = item
                    part = f"{_brief(k, budget, depth + 1)}: {_brief(v, budget, depth + 1)}"
                else:
                    part = _brief(item, budget, depth + 1)
                parts.append(part)
            if len(value) > len(parts) and parts[-1:] != ["..."]:
                parts.append("...")
            open_, close = {list: "[]", tuple: "()", dict: "{}"}.get(type(value), "{}")
            text = open_ + ", ".join(parts) + close
    else:  # dates, timestamps (YAML's own types): small; anything else by its type
        text = repr(value) if type(value).__module__ == "datetime" else f"<{type(value).__name__}>"
    budget[0] -= len(text)
    return text


def _short(value: Any) -> str:
    """At most 60 characters naming ``value``, in time independent of its size."""
    text = _brief(value, [80])
    return text if len(text) <= 60 else text[:57] + "..."


def path_problem(path: str) -> str | None:
    """Why the string ``path`` cannot name a file on a POSIX file system, or None: a NUL
    byte, an empty string, a component over 255 bytes, more than 4096 bytes in all."""
    if not path:
        return "must not be empty (omit the key for the default)"
    if "\0" in path:
        return "must not contain a NUL character"
    size = len(path.encode("utf-8", "surrogateescape"))
    if size > MAX_PATH_BYTES:
        return f"a path of {size} bytes is too long (at most {MAX_PATH_BYTES})"
    for part in path.split("/"):
        n = len(part.encode("utf-8", "surrogateescape"))
        if n > MAX_NAME_BYTES:
            return f"path component {_short(part)} is {n} bytes (at most {MAX_NAME_BYTES})"
    return None


def _value_problems(raw: Any, limit: int = MAX_PROBLEMS) -> list[str]:
    """Problems no key may have, wherever it is (plug-in options too): a float that is inf
    or nan, an integer beyond int64, a path that cannot exist, nesting past MAX_DEPTH or a
    self-referencing value."""
    problems: list[str] = []
    active: set[int] = set()
    seen = [0]

    def walk(value: Any, key: str, depth: int) -> None:
        if len(problems) >= limit:
            return
        seen[0] += 1
        if seen[0] > MAX_NODES:
            if seen[0] == MAX_NODES + 1:
                problems.append(f"(top level): holds more than {MAX_NODES} values")
            return
        if depth > MAX_DEPTH:
            problems.append(f"{key}: nested deeper than {MAX_DEPTH} levels")
            return
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{key}: must be a finite number (got {value!r})")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            problems.append(f"{key}: {_short(value)} is too large (at most 2**63 - 1)")
        elif isinstance(value, str):
            leaf = key.rsplit(".", 1)[-1]
            if leaf in PATH_KEYS or key.rsplit(".", 2)[-2:-1] == ["path"]:
                why = path_problem(value)
                if why:
                    problems.append(f"{key}: {why}")
            elif "\0" in value:
                problems.append(f"{key}: must not contain a NUL character")
        elif isinstance(value, dict | list | tuple):
            if id(value) in active:
                problems.append(f"{key}: refers to itself (a recursive value)")
                return
            active.add(id(value))
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in items:
                walk(v, f"{key}.{k}" if key else str(k), depth + 1)
                if len(problems) >= limit:
                    break
            active.discard(id(value))

    walk(raw, "", 0)
    return problems


def _join(problems: Sequence[str]) -> str:
    """``problems`` on one line, the first :data:`MAX_PROBLEMS` of them named."""
    text = "; ".join(problems[:MAX_PROBLEMS])
    if len(problems) > MAX_PROBLEMS:
        text += f"; and {len(problems) - MAX_PROBLEMS} more problems"
    return text


def pydantic_problems(
    err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> list[str]:
    """One line per problem of a pydantic ``err``: the dotted key (under ``prefix``), what
    is wrong and what is allowed, as spec errors name them (an unknown key lists the
    keys ``model``, the validated model, allows where it is)."""
    out = []
    for e in err.errors():
        key = _fmt_loc(prefix, e["loc"])
        if e["type"] == "extra_forbidden":
            known = _known_keys(model, e["loc"][:-1]) if model is not None else None
            out.append(f"{key}: unknown key" + (f"; allowed: {', '.join(known)}" if known else ""))
        elif e["type"] == "missing":
            out.append(f"{key}: required key is missing")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            msg = msg if len(msg) <= 200 else msg[:197] + "..."
            out.append(f"{key}: {msg} (got {_short(e.get('input'))})")
    return out


def _known_keys(model: type[BaseModel], loc: Sequence[Any]) -> list[str] | None:
    """The keys the (nested) model at ``loc`` under ``model`` allows; None where it is
    not a model (a mapping of free keys, a list entry)."""
    m: Any = model
    for part in loc:
        if not (isinstance(m, type) and issubclass(m, BaseModel)):
            return None
        fields = m.model_fields
        name = next((n for n, f in fields.items() if part in (n, f.alias)), None)
        if name is None:
            return None
        m = _model_of(fields[name].annotation)
    if not (isinstance(m, type) and issubclass(m, BaseModel)):
        return None
    return [f.alias or n for n, f in m.model_fields.items()]


def _model_of(annotation: Any) -> Any:
    """The pydantic model in a field's annotation (``Model``, ``Model | None``), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    found = [a for a in typing.get_args(annotation) if _model_of(a) is not None]
    return _model_of(found[0]) if len(found) == 1 else None


def _parameterization_problems(spec: StudySpec) -> list[str]:
    """The name exists; its options (every key but name and sigma) validate with its
    options model, each problem on its own; the optimizer is one it is defined for."""
    p = spec.parameterization
    if p.name not in PARAMETERIZATIONS:
        return [
            f"parameterization.name: unknown parameterization {p.name!r}; "
            f"allowed: {', '.join(PARAMETERIZATIONS.names())}"
        ]
    problems = []
    model = PARAMETERIZATIONS.entry(p.name).options
    given = p.given_options()
    if model is None:
        problems += [f"parameterization.{k}: {p.name!r} takes no options" for k in given]
    else:
        try:
            model.model_validate(given)
        except ValidationError as err:
            for e in err.errors():
                key = _fmt_loc("parameterization", e["loc"])
                field = model.model_fields.get(str(e["loc"][0])) if e["loc"] else None
                if e["type"] == "extra_forbidden":
                    allowed = ", ".join(model.model_fields) or "none"
                    problems.append(f"{key}: not an option of {p.name!r} (its options: {allowed})")
                elif e["type"] == "missing":
                    about = f" ({field.description})" if field and field.description else ""
                    problems.append(f"{key}: required by {p.name!r}{about}")
                else:
                    msg = e["msg"].removeprefix("Value error, ")
                    problems.append(f"{key}: {msg} (got {_short(e.get('input'))})")
    why = optimizer_problem(p.name, spec.optimizer.name, spec.optimizer.kind)
    if why:
        problems.append(f"optimizer.name: {why}")
    return problems


def _registry_problems(spec: StudySpec) -> list[str]:
    """Checks that need the registries: names exist, options validate, combinations make sense."""
    problems: list[str] = []

    def check(
        key: str, registry: Any, name: str, options: dict[str, Any] | None, options_key: str
    ) -> Any:
        if name not in registry:
            problems.append(
                f"{key}: unknown {registry.kind} {name!r}; allowed: {', '.join(registry.names())}"
            )
            return None
        try:
            return registry.validate_options(name, options)
        except ValidationError as err:
            problems.extend(pydantic_problems(err, options_key, registry.entry(name).options))
        except UserError as err:
            problems.append(f"{key}: {err}")
        return None

    check("model.family", FAMILIES, spec.model.family, spec.model.options, "model.options")
    before = len(problems)
    stream_opts = check("data.stream", STREAMS, spec.data.stream, spec.data.options, "data.options")
    stream_ok = len(problems) == before
    check("executor.name", EXECUTORS, spec.executor.name, spec.executor.options, "executor.options")
    for name, opts in spec.trackers.items():
        if not isinstance(opts, dict):
            problems.append(f"trackers.{name}: expected a mapping of options, got {_short(opts)}")
            continue
        check(f"trackers.{name}", TRACKERS, name, opts, f"trackers.{name}")
    problems.extend(_parameterization_problems(spec))
    depth_mup = depth_family_problem(spec, "depth_mup") if spec.depth_mup else None
    depths = depth_family_problem(spec, "depths") if spec.depths is not None else None
    problems.extend(p for p in (depth_mup, depths) if p)
    if not depths and spec.depths is not None and "depth" in (spec.model.options or {}):
        problems.append(
            f"model.options.depth: {spec.model.options['depth']!r} is set beside depths: "
            f"{spec.depths}; give the depths in one place (remove model.options.depth)"
        )
    if spec.base_width is not None and spec.base_width > spec.widths[-1]:
        problems.append(
            f"base_width: {spec.base_width} is wider than the widest width {spec.widths[-1]}"
        )
    for name, opts in spec.probes.items():
        if not isinstance(opts, dict):
            problems.append(f"probes.{name}: expected a mapping of options, got {_short(opts)}")
            continue
        sched = check(f"probes.{name}", PROBES, name, opts, f"probes.{name}")
        if isinstance(sched, Schedule):
            top = sched.max_explicit_step()
            if top > spec.steps:
                problems.append(
                    f"probes.{name}.steps: step {top} is beyond the study's {spec.steps} steps"
                )
    if stream_ok and spec.loss is not None:  # the stream's declared loss: no data is read
        stream_loss = declared_loss(spec.data.stream, stream_opts)
        problem = stream_loss and loss_problem(spec.loss, stream_loss, spec.data.stream)
        if problem:
            problems.append(f"loss: {problem}")
    if spec.mixed_precision == "bf16" and spec.dtype != "float32":
        problems.append(
            f"mixed_precision: 'bf16' autocasts float32 parameters, but dtype is {spec.dtype!r} "
            "(allowed: dtype float32, or mixed_precision none)"
        )
    if spec.optimizer.nesterov and spec.optimizer.momentum == 0:
        problems.append("optimizer.nesterov: needs momentum > 0 (got momentum 0)")
    problems.extend(_sweep_problems(spec))
    if spec.schedule.name == "warmup_cosine" and spec.schedule.warmup_steps >= spec.steps:
        problems.append(
            f"schedule.warmup_steps: {spec.schedule.warmup_steps} must be below steps ({spec.steps})"
        )
    return problems


def _sweep_problems(spec: StudySpec) -> list[str]:
    """What a valid ``sweep`` cannot do with the rest of the spec (docs/sweeps.md)."""
    from widthwise.sweep import FORWARD_SIGMA, OPTIMIZER_SCALARS

    if not spec.sweep:
        return []
    problems = []
    opt = spec.optimizer.name
    for key, users in OPTIMIZER_SCALARS.items():
        if key in spec.sweep and opt not in users:
            problems.append(
                f"sweep.{key}: optimizer {opt!r} has no {key}; allowed with {' and '.join(users)}"
            )
    if spec.optimizer.nesterov and 0 in spec.sweep.get("momentum", ()):
        problems.append(
            "sweep.momentum: 0 with optimizer.nesterov: true; Nesterov momentum needs "
            "momentum > 0 (torch refuses it too)"
        )
    n_points, n_seeds = len(spec.sweep_points), len(spec.seed_list)
    if n_points * n_seeds > MAX_SEEDS:
        problems.append(
            f"sweep: {n_points} points × {n_seeds} seeds = {n_points * n_seeds} members; "
            f"at most {MAX_SEEDS} per width"
        )
    name = spec.parameterization.name
    if "sigma" in spec.sweep and name in FORWARD_SIGMA:
        problems.append(
            f"sweep.sigma: under {name} σ is a forward multiplier, which cannot vary per "
            "member; allowed under sp, mup and umup"
        )
    if "lr" in spec.sweep:  # lr_weighted operators use the lr *scales*: the same per member
        for probe, keys in {"sharpness": ("preconditioned",)}.items():
            opts = spec.probes.get(probe)
            if not isinstance(opts, dict) or probe not in PROBES:
                continue
            try:
                valid = PROBES.validate_options(probe, opts)
            except (ValidationError, UserError):
                continue
            for key in keys:
                if getattr(valid, key, False):
                    problems.append(
                        f"probes.{probe}.{key}: Adam's preconditioner includes the learning "
                        f"rate, which sweep.lr varies per member; set {key}: false in a "
                        "learning-rate sweep"
                    )
    return problems


def validate_spec(raw: Any, source: str = "spec") -> StudySpec:
    """Validate a parsed YAML mapping; all problems are reported at once, on one line
    (the first :data:`MAX_PROBLEMS` named, the rest counted)."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: expected a YAML mapping of keys, got {type(raw).__name__}")
    problems = _value_problems(raw)
    if problems:
        raise SpecError(f"{source}: " + _join(problems))
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(f"{source}: " + _join(pydantic_problems(err, model=StudySpec))) from None
    problems = _registry_problems(spec)
    if problems:
        raise SpecError(f"{source}: " + _join(problems))
    return spec


class SpecYAMLError(yaml.YAMLError):
    """A YAML document that parses but is no spec: a duplicate key, nesting deeper than
    :data:`MAX_DEPTH`, aliases expanding past :data:`MAX_NODES` values, or an alias
    that refers to itself. ``str(err)`` is one line."""


def _line(node: Node) -> str:
    return f"line {node.start_mark.line + 1}" if node.start_mark is not None else "?"


def _label(node: Node) -> str:
    text = node.value if isinstance(node, ScalarNode) else "?"
    return text if len(text) <= 40 else text[:37] + "..."


class SpecLoader(yaml.SafeLoader):
    """YAML's safe loader (no Python objects) that also refuses what no spec holds.

    While composing, nesting deeper than :data:`MAX_DEPTH` stops at once (no
    RecursionError); the composed node graph is then walked once, each node shared
    by aliases counted as often as it is used but visited once, so an alias bomb of a
    few bytes is refused in microseconds, before anything is built from it. A key
    given twice in one mapping is refused too (YAML would keep the last one silently);
    keys merged in with ``<<`` may be overridden, as YAML means them to be.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise SpecYAMLError(
                    f"line {mark.line + 1}: nested deeper than {MAX_DEPTH} levels "
                    "(a spec nests a handful)"
                )
            return super().compose_node(parent, index)  # type: ignore[misc]
        finally:
            self._depth -= 1

    def compose_document(self) -> Node | None:
        node = super().compose_document()  # type: ignore[misc]
        if node is not None:
            self._check(node)
        return node

    def _check(self, root: Node) -> None:
        memo: dict[int, tuple[int, int]] = {}  # id(node) -> (values, height), aliases expanded
        active: set[int] = set()

        def visit(node: Node, where: str, depth: int) -> tuple[int, int]:
            if depth > MAX_DEPTH:
                raise SpecYAMLError(
                    f"{where[:80]}: nested deeper than {MAX_DEPTH} levels once its aliases "
                    "are expanded"
                )
            key = id(node)
            if key in active:
                raise SpecYAMLError(f"{where[:80]}: an alias refers to itself ({_line(node)})")
            if key in memo:
                size, height = memo[key]
            else:
                active.add(key)
                size, height = 1, 0
                children: list[tuple[str, Node]] = []
                if isinstance(node, MappingNode):
                    self._no_duplicates(node, where)
                    for k, v in node.value:
                        children += [(where or "(key)", k), (_join_key(where, _label(k)), v)]
                elif isinstance(node, SequenceNode):
                    children = [(_join_key(where, str(i)), v) for i, v in enumerate(node.value)]
                for child_where, child in children:
                    s, h = visit(child, child_where, depth + 1)
                    size, height = size + s, max(height, h + 1)
                    if size > MAX_NODES:
                        raise SpecYAMLError(
                            f"{(where or '(top level)')[:80]}: holds more than {MAX_NODES} "
                            "values once its aliases are expanded (a spec holds a few hundred)"
                        )
                active.discard(key)
                memo[key] = (size, height)
            if depth + height > MAX_DEPTH:
                raise SpecYAMLError(
                    f"{(where or '(top level)')[:80]}: nested deeper than {MAX_DEPTH} levels "
                    "once its aliases are expanded"
                )
            return size, height

        visit(root, "", 0)

    def _no_duplicates(self, node: MappingNode, where: str) -> None:
        first: dict[tuple[str, Any], Node] = {}
        for k, _ in node.value:
            if not isinstance(k, ScalarNode) or k.tag == "tag:yaml.org,2002:merge":
                continue
            ident: Any = k.value
            if k.tag != "tag:yaml.org,2002:str":
                try:  # 1 and 0x1, true and yes: the same key
                    ident = self.construct_object(k)
                except Exception:  # noqa: BLE001  (a bad key is reported where it is built)
                    ident = k.value
            try:
                hash(ident)
            except TypeError:
                ident = k.value
            ident = (k.tag, ident)
            if ident in first:
                raise SpecYAMLError(
                    f"{_join_key(where, _label(k))[:80]}: duplicate key ({_line(first[ident])} "
                    f"and {_line(k)}); each key may be given once"
                )
            first[ident] = k


def _construct_int(loader: SpecLoader, node: ScalarNode) -> int:
    if ":" in node.value:  # YAML 1.1 reads 190:20:30 as 685230 (base 60): never meant
        raise SpecYAMLError(
            f"{_line(node)}: {_short(node.value)} is a base-60 number to YAML 1.1; write the "
            "number itself, or quote it for a string"
        )
    try:
        return yaml.SafeLoader.construct_yaml_int(loader, node)  # type: ignore[arg-type]
    except ValueError:  # more than 4300 digits
        raise SpecYAMLError(
            f"{_line(node)}: an integer of {len(node.value)} digits is too large "
            "(at most 2**63 - 1)"
        ) from None


def _construct_float(loader: SpecLoader, node: ScalarNode) -> float:
    if ":" in node.value:
        raise SpecYAMLError(
            f"{_line(node)}: {_short(node.value)} is a base-60 number to YAML 1.1; write the "
            "number itself, or quote it for a string"
        )
    return yaml.SafeLoader.construct_yaml_float(loader, node)  # type: ignore[arg-type]


SpecLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
SpecLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def _join_key(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def parse_spec_yaml(text: str) -> Any:
    """Parse a spec document with :class:`SpecLoader`; raises yaml.YAMLError (incl.
    :class:`SpecYAMLError`) or ValueError (an integer of more than 4300 digits)."""
    loader = SpecLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def bundled_specs() -> dict[str, Path]:
    """Bundled example specs by name (``widthwise list``)."""
    return {p.stem: p for p in sorted(EXAMPLES_DIR.glob("*.yaml"))}


def resolve_spec_path(spec: str | os.PathLike[str]) -> Path:
    """A path to an existing file, or the bundled example of that name."""
    path = Path(spec)
    try:
        if path.is_file():
            return path
    except (OSError, ValueError) as err:  # a name too long, a NUL byte
        why = getattr(err, "strerror", None) or str(err)
        raise SpecError(f"spec: {_short(str(spec))} cannot be a file ({why})") from None
    bundled = bundled_specs()
    if str(spec) in bundled:
        return bundled[str(spec)]
    raise SpecError(
        f"spec: {str(spec)!r} is neither a file nor a bundled study; "
        f"bundled: {', '.join(bundled) or '(none)'}"
    )


def load_spec(spec: str | os.PathLike[str], **overrides: Any) -> StudySpec:
    """Read and validate a study spec from a YAML file or a bundled name.

    ``overrides`` replace top-level keys (e.g. ``out=...``, ``device="cpu"``) before
    validation; ``executor`` may be :class:`~widthwise.executors.ExecutorFlags`
    (command-line choices applied to the spec's own ``executor``); ``sets`` is a
    list of ``KEY.PATH=VALUE`` overrides (:mod:`widthwise.overrides`).
    """
    path = resolve_spec_path(spec)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
        if len(data) > MAX_SPEC_BYTES:
            raise SpecError(
                f"{path}: a spec may be at most {MAX_SPEC_BYTES} bytes (this file is larger)"
            )
        raw = parse_spec_yaml(data.decode("utf-8"))
    except SpecYAMLError as err:
        raise SpecError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"{path}: cannot read spec: {err}") from None
    except (ValueError, RecursionError) as err:  # e.g. an integer of more than 4300 digits
        raise SpecError(f"{path}: not a usable spec: {str(err)[:120]}") from None
    sets = overrides.pop("sets", None) or ()
    if isinstance(raw, dict) and sets:  # --set / --steps / --widths / --seeds
        from widthwise.overrides import apply_overrides

        raw = apply_overrides(raw, sets)
    if isinstance(raw, dict):
        flags = overrides.pop("executor", None)
        if isinstance(flags, ExecutorFlags):  # command-line executor choices
            flags = flags.apply(raw.get("executor"))
        raw.update({k: v for k, v in {**overrides, "executor": flags}.items() if v is not None})
    return validate_spec(raw, str(path))
