"""Classification by a fixed random teacher network."""

from __future__ import annotations

import hashlib

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from widthwise.streams.base import STREAMS, Stream, rng_for

TEACHER_KEY = 2**31 - 3


class TeacherOptions(BaseModel):
    """Options of the ``teacher`` stream."""

    model_config = ConfigDict(extra="forbid")

    dim: int = Field(16, ge=1, le=2**14, description="input dimension (≤ 2¹⁴)")
    classes: int = Field(10, ge=2, le=2**14, description="number of classes (≤ 2¹⁴)")
    teacher_width: int = Field(
        64, ge=1, le=2**14, description="hidden units of the teacher (≤ 2¹⁴)"
    )


class TeacherStream(Stream):
    """x ~ N(0, I_D); label = argmax of a fixed random two-layer tanh teacher's logits.

    The teacher, ``W2 tanh(W1 x / √D) / √h``, is drawn once from the data seed.
    """

    loss = "cross_entropy"

    def __init__(self, seed: int, options: TeacherOptions) -> None:
        super().__init__(seed)
        self.options = options
        self.in_shape = (options.dim,)
        self.out_dim = options.classes
        rng = rng_for(seed, TEACHER_KEY)
        self.w1 = rng.standard_normal((options.teacher_width, options.dim))
        self.w2 = rng.standard_normal((options.classes, options.teacher_width))

    def teacher_logits(self, x: np.ndarray) -> np.ndarray:
        h = np.tanh(x @ self.w1.T / np.sqrt(self.options.dim))
        return h @ self.w2.T / np.sqrt(self.options.teacher_width)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.standard_normal((n, self.options.dim))
        y = self.teacher_logits(x).argmax(axis=1)
        return x.astype(np.float32), y.astype(np.int64)

    def describe(self) -> dict[str, object]:
        digest = hashlib.sha256(self.w1.tobytes() + self.w2.tobytes()).hexdigest()[:16]
        return {"teacher_sha256": digest}


@STREAMS.register("teacher", options=TeacherOptions, loss="cross_entropy")
def build_teacher(seed: int, options: TeacherOptions) -> Stream:
    """Labels from a fixed random teacher network (cross-entropy)."""
    return TeacherStream(seed, options)
