"""When a probe runs, and how the learning rate moves over training."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

SCHEDULE_KEYS = ("every", "steps", "log_spaced", "at")
"""The keys of a :class:`Schedule` that choose steps."""


class Schedule(BaseModel):
    """Steps at which a probe runs; the union of the fields that are set.

    Steps count optimizer updates already taken: step 0 is the initial network,
    step ``steps`` the final one. ``every: k`` gives 0, k, 2k, ... (and the end);
    ``steps`` an explicit list; ``log_spaced: n`` about n steps spaced
    logarithmically from 1 to the end (plus 0); ``at`` names ``init``/``end``.

    A probe's options model may set ``default_schedule`` (e.g. ``{"at": ["init",
    "end"]}``): it applies only when the options set none of the four schedule keys,
    so ``{every: 100}`` means exactly every 100 steps (and the end), nothing more.
    Without a default, a schedule must set one of them.
    """

    model_config = ConfigDict(extra="forbid")

    default_schedule: ClassVar[dict[str, Any] | None] = None
    """The schedule used when the options set none of every/steps/log_spaced/at."""

    # strict ints: ``every: "5"`` and ``every: true`` are not 5 and 1
    every: StrictInt | None = Field(
        None, gt=0, le=10**8, description="every k-th step: 0, k, 2k, ... and the end"
    )
    steps: list[StrictInt] | None = Field(
        None, max_length=10**5, description="explicit steps (0 = init; at most 10⁵)"
    )
    log_spaced: StrictInt | None = Field(
        None,
        gt=0,
        le=10**4,
        description="about n log-spaced steps from 1 to the end, plus 0 (≤ 10⁴)",
    )
    at: list[Literal["init", "end"]] | None = Field(None, description="init and/or end")

    @model_validator(mode="before")
    @classmethod
    def _apply_default(cls, data: Any) -> Any:
        default = cls.default_schedule
        if default is None:
            return data
        if data is None:
            data = {}
        if isinstance(data, dict) and all(data.get(k) is None for k in SCHEDULE_KEYS):
            data = {**data, **default}
        return data

    @model_validator(mode="after")
    def _something_set(self) -> Schedule:
        if self.every is None and self.steps is None and self.log_spaced is None and not self.at:
            raise ValueError("a schedule needs one of every, steps, log_spaced or at")
        if self.steps is not None and any(s < 0 for s in self.steps):
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        return self

    def resolve(self, total_steps: int, *, include_end: bool = True) -> list[int]:
        """Sorted unique steps in [0, total_steps] (or [0, total_steps) without the end)."""
        last = total_steps if include_end else total_steps - 1
        out: set[int] = set()
        if self.every is not None:
            out.update(range(0, last + 1, self.every))
            if include_end:
                out.add(total_steps)
        if self.steps is not None:
            out.update(self.steps)
        if self.log_spaced is not None:
            out.add(0)
            grid = np.geomspace(1, max(last, 1), self.log_spaced)
            out.update(int(round(s)) for s in grid)
        for a in self.at or []:
            out.add(0 if a == "init" else last)
        return sorted(s for s in out if 0 <= s <= last)

    def max_explicit_step(self) -> int:
        """The largest step listed in ``steps`` (0 when none are listed)."""
        return max(self.steps) if self.steps else 0


class LRSchedule(BaseModel):
    """Learning-rate factor over training: constant, cosine, or linear warmup + cosine."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["constant", "cosine", "warmup_cosine"] = Field(
        "constant", description="constant, cosine decay, or linear warmup then cosine"
    )
    warmup_steps: StrictInt = Field(
        0, ge=0, le=10**8, description="warmup_cosine: linear warmup steps"
    )
    min_lr_ratio: float = Field(
        0.0, ge=0.0, le=1.0, allow_inf_nan=False, description="cosine floor as a fraction of lr"
    )

    def factor(self, step: int, total_steps: int) -> float:
        """Multiplier of the base lr at update ``step`` (0-based) of ``total_steps``."""
        if self.name == "constant":
            return 1.0
        warm = self.warmup_steps if self.name == "warmup_cosine" else 0
        if step < warm:
            return (step + 1) / warm
        span = max(total_steps - warm, 1)
        progress = min((step - warm) / span, 1.0)
        cos = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cos
