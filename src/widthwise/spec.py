"""The study spec: one YAML file, validated before anything runs or is written.

``load_spec(path_or_name)`` returns a :class:`StudySpec` or raises a
:class:`~widthwise.errors.SpecError` whose one line names each bad key, the value
given and what is allowed. Family, stream and probe options are validated by the
options model of their registry entry, so plug-ins get the same errors for free.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from widthwise.errors import SpecError, UserError
from widthwise.executors import EXECUTORS
from widthwise.families import FAMILIES
from widthwise.parameterization import PARAMETERIZATIONS
from widthwise.probes import PROBES
from widthwise.schedule import LRSchedule, Schedule
from widthwise.streams import STREAMS
from widthwise.trackers import TRACKERS

EXAMPLES_DIR = Path(__file__).parent / "examples"


NOT_HASHED = {"out", "device", "description", "executor", "trackers"}
"""Spec keys that do not change a study's numbers (a study may resume with others)."""
HASHED_WHEN_SET = {"mixed_precision": "none", "deterministic": False}
"""Keys newer than format 1, hashed only when not at these defaults (older hashes hold)."""


class _Strict(BaseModel):
    # strict: no silent coercion (``steps: true`` is not 1, ``lr: "0.1"`` is not 0.1);
    # ints are still accepted where a float is expected
    model_config = ConfigDict(extra="forbid", strict=True)


class ModelSpec(_Strict):
    family: str = Field("mlp", description="model family (registry FAMILIES)")
    options: dict[str, Any] = Field(
        default_factory=dict, description="family options (see the family's table below)"
    )


class ParameterizationSpec(_Strict):
    name: str = Field("mup", description="sp, ntp, mup or mf (registry PARAMETERIZATIONS)")
    sigma: float = Field(1.0, gt=0, description="init scale σ: std = σ/√fan_in")
    gamma0: float | None = Field(None, gt=0, description="richness γ0 (mf only)")
    center: bool = Field(False, description="mf only: subtract the initial network's output")
    readout_zero_init: bool = Field(False, description="mup: the readout starts at zero")
    query_zero_init: bool = Field(False, description="mup: attention query weights start at zero")


class OptimizerSpec(_Strict):
    name: Literal["sgd", "adam", "adamw"] = Field("sgd", description="optimizer")
    lr: float = Field(gt=0, description="base learning rate (at base_width; η0 for mf)")
    momentum: float = Field(0.0, ge=0, lt=1, description="sgd momentum")
    nesterov: bool = Field(False, description="sgd: Nesterov momentum (needs momentum > 0)")
    weight_decay: float = Field(0.0, ge=0, description="L2 (sgd, adam) or decoupled (adamw)")
    betas: tuple[float, float] = Field((0.9, 0.999), strict=False, description="adam/adamw betas")
    eps: float = Field(1e-8, gt=0, description="adam/adamw epsilon")

    @property
    def kind(self) -> Literal["sgd", "adam"]:
        return "sgd" if self.name == "sgd" else "adam"


class DataSpec(_Strict):
    stream: str = Field("gegenbauer", description="data stream (registry STREAMS)")
    seed: int = Field(0, ge=0, description="data seed: batches depend only on (seed, step)")
    options: dict[str, Any] = Field(
        default_factory=dict, description="stream options (see the stream's table below)"
    )
    probe_points: int = Field(256, gt=0, description="size of the fixed test (probe) set")


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
    widths: list[int] = Field(min_length=1, description="strictly increasing widths")
    base_width: int | None = Field(
        None, gt=0, description="width where all parameterizations agree (default: widths[0])"
    )
    seeds: int | list[int] = Field(4, description="a count (seeds 0..n-1) or a list of seed ids")
    parameterization: ParameterizationSpec = Field(
        default_factory=ParameterizationSpec, description="a name, or a mapping (keys below)"
    )
    optimizer: OptimizerSpec = Field(description="optimizer and base learning rate")
    schedule: LRSchedule = Field(default_factory=LRSchedule, description="learning-rate schedule")
    steps: int = Field(gt=0, description="optimizer updates")
    batch_size: int = Field(gt=0, description="examples per step, shared by every seed and width")
    loss: Literal["mse", "cross_entropy"] | None = Field(
        None, description="default: the stream's (mse for regression, cross_entropy for labels)"
    )
    data: DataSpec = Field(default_factory=DataSpec, description="the online data stream")
    probes: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"train_loss": {"every": 1}, "test": {"log_spaced": 20}},
        description="probe name -> options incl. its schedule (docs/probes.md)",
    )
    checkpoint_every: int | None = Field(
        None, gt=0, description="steps between checkpoints (default: steps // 4)"
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
    out: str | None = Field(None, description="study directory (default runs/<name>)")

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
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError("must be strictly increasing without duplicates")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, int) and v <= 0:
            raise ValueError("a seed count must be >= 1")
        if isinstance(v, list) and (not v or any(s < 0 for s in v) or len(set(v)) != len(v)):
            raise ValueError("a seed list must be non-empty, unique and >= 0")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda") and not (v.startswith("cuda:") and v[5:].isdigit()):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return v

    @model_validator(mode="after")
    def _defaults(self) -> StudySpec:
        if self.base_width is None:
            self.base_width = self.widths[0]
        if self.checkpoint_every is None:
            self.checkpoint_every = max(self.steps // 4, 1)
        return self

    @property
    def seed_list(self) -> list[int]:
        """The seed ids of the ensemble, in order (``seeds: 4`` → [0, 1, 2, 3])."""
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    def out_dir(self) -> Path:
        """The study directory: ``out``, or ``runs/<name>``."""
        return Path(self.out) if self.out else Path("runs") / self.name

    def hash(self) -> str:
        """Hash of everything that determines the numbers: not where or how the runs execute
        (``out``, ``device``, ``executor``), not ``description`` or ``trackers``. Keys added
        after the first release count only when set away from their default, so studies
        made before them keep their hash and still resume."""
        payload = self.model_dump(mode="json", exclude=NOT_HASHED)
        for key, default in HASHED_WHEN_SET.items():
            if payload.get(key) == default:
                del payload[key]
        blob = json.dumps(payload, sort_keys=True).encode()
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


def _fmt_loc(prefix: str, loc: tuple[Any, ...]) -> str:
    parts = [prefix] if prefix else []
    parts += [str(p) for p in loc if not str(p).startswith("function-")]
    return ".".join(parts) or "(top level)"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _pydantic_problems(err: ValidationError, prefix: str = "") -> list[str]:
    out = []
    for e in err.errors():
        key = _fmt_loc(prefix, e["loc"])
        if e["type"] == "extra_forbidden":
            out.append(f"{key}: unknown key")
        elif e["type"] == "missing":
            out.append(f"{key}: required key is missing")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            out.append(f"{key}: {msg} (got {_short(e.get('input'))})")
    return out


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
            problems.extend(_pydantic_problems(err, options_key))
        except UserError as err:
            problems.append(f"{key}: {err}")
        return None

    check("model.family", FAMILIES, spec.model.family, spec.model.options, "model.options")
    stream_opts = check("data.stream", STREAMS, spec.data.stream, spec.data.options, "data.options")
    check("executor.name", EXECUTORS, spec.executor.name, spec.executor.options, "executor.options")
    for name, opts in spec.trackers.items():
        if not isinstance(opts, dict):
            problems.append(f"trackers.{name}: expected a mapping of options, got {_short(opts)}")
            continue
        check(f"trackers.{name}", TRACKERS, name, opts, f"trackers.{name}")
    p = spec.parameterization
    if p.name not in PARAMETERIZATIONS:
        problems.append(
            f"parameterization.name: unknown parameterization {p.name!r}; "
            f"allowed: {', '.join(PARAMETERIZATIONS.names())}"
        )
    if p.name == "mf" and p.gamma0 is None:
        problems.append("parameterization.gamma0: required for mf (richness γ0 > 0, e.g. 1.0)")
    if p.name != "mf" and p.gamma0 is not None:
        problems.append(f"parameterization.gamma0: only used by mf, not by {p.name!r}")
    for flag in ("readout_zero_init", "query_zero_init"):
        if getattr(p, flag) and p.name != "mup":
            problems.append(f"parameterization.{flag}: a mup option, not used by {p.name!r}")
    if p.center and p.name != "mf":
        problems.append(f"parameterization.center: only mf can center, not {p.name!r}")
    if p.name == "mf" and spec.optimizer.kind != "sgd":
        problems.append(
            f"optimizer.name: mf is defined for sgd (paper Appendix C), got "
            f"{spec.optimizer.name!r}; use mup for adam"
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
    if stream_opts is not None and spec.loss is not None:
        stream = STREAMS.get(spec.data.stream)(spec.data.seed, stream_opts)
        if stream.loss == "cross_entropy" and spec.loss == "mse":
            pass  # mse on one-hot labels is allowed
        elif stream.loss == "mse" and spec.loss == "cross_entropy":
            problems.append(
                f"loss: stream {spec.data.stream!r} has real-valued targets; "
                "cross_entropy needs a classification stream (allowed: mse)"
            )
    if spec.mixed_precision == "bf16" and spec.dtype != "float32":
        problems.append(
            f"mixed_precision: 'bf16' autocasts float32 parameters, but dtype is {spec.dtype!r} "
            "(allowed: dtype float32, or mixed_precision none)"
        )
    if spec.optimizer.nesterov and spec.optimizer.momentum == 0:
        problems.append("optimizer.nesterov: needs momentum > 0 (got momentum 0)")
    if spec.schedule.name == "warmup_cosine" and spec.schedule.warmup_steps >= spec.steps:
        problems.append(
            f"schedule.warmup_steps: {spec.schedule.warmup_steps} must be below steps ({spec.steps})"
        )
    return problems


def validate_spec(raw: Any, source: str = "spec") -> StudySpec:
    """Validate a parsed YAML mapping; all problems are reported at once, on one line."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: expected a YAML mapping of keys, got {type(raw).__name__}")
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(f"{source}: " + "; ".join(_pydantic_problems(err))) from None
    problems = _registry_problems(spec)
    if problems:
        raise SpecError(f"{source}: " + "; ".join(problems))
    return spec


def bundled_specs() -> dict[str, Path]:
    """Bundled example specs by name (``widthwise list``)."""
    return {p.stem: p for p in sorted(EXAMPLES_DIR.glob("*.yaml"))}


def resolve_spec_path(spec: str | os.PathLike[str]) -> Path:
    """A path to an existing file, or the bundled example of that name."""
    path = Path(spec)
    if path.is_file():
        return path
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
    validation.
    """
    path = resolve_spec_path(spec)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"{path}: cannot read spec: {err}") from None
    if isinstance(raw, dict):
        raw.update({k: v for k, v in overrides.items() if v is not None})
    return validate_spec(raw, str(path))
