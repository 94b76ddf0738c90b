"""Gegenbauer regression on the sphere (paper Appendix A.1, Section 5, Figure 10)."""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import eval_gegenbauer, gammaln

from widthwise.streams.base import STREAMS, Stream, rng_for

BETA_KEY = 2**31 - 2


def gegenbauer_norm2(degree: int, dim: int) -> float:
    """E[C_k^α(β·z)²] for z uniform on S^{dim-1}, |β| = 1, α = (dim - 2)/2.

    β·z has density ∝ (1 - t²)^(α - 1/2) on [-1, 1]; the Gegenbauer norm is
    h_k = π 2^(1-2α) Γ(k+2α) / (k! (k+α) Γ(α)²) and the density's mass is
    √π Γ(α + 1/2) / Γ(α + 1), so the ratio is the mean square.
    """
    a, k = (dim - 2) / 2, degree
    log_h = (
        math.log(math.pi)
        + (1 - 2 * a) * math.log(2)
        + gammaln(k + 2 * a)
        - gammaln(k + 1)
        - math.log(k + a)
        - 2 * gammaln(a)
    )
    log_z = 0.5 * math.log(math.pi) + gammaln(a + 0.5) - gammaln(a + 1)
    return math.exp(log_h - log_z)


class GegenbauerOptions(BaseModel):
    """Options of the ``gegenbauer`` stream."""

    model_config = ConfigDict(extra="forbid")

    dim: int = Field(
        16, ge=3, le=2**16, description="input dimension D (inputs on the sphere S^{D-1}; ≤ 2¹⁶)"
    )
    degree: int = Field(2, ge=1, le=1000, description="polynomial degree k (≤ 1000)")
    noise: float = Field(0.0, ge=0.0, le=1e6, description="std of Gaussian label noise")


class GegenbauerStream(Stream):
    """y = C_k^α(β·z) / √E[C_k^α²], z uniform on S^{D-1}, α = (D-2)/2, β a fixed random unit vector.

    The network sees ``x = √D · z`` (coordinates of order one); targets have unit
    mean square, so a zero predictor has MSE 1.
    """

    loss = "mse"
    out_dim = 1

    def __init__(self, seed: int, options: GegenbauerOptions) -> None:
        super().__init__(seed)
        self.options = options
        self.in_shape = (options.dim,)
        beta = rng_for(seed, BETA_KEY).standard_normal(options.dim)
        self.beta = beta / np.linalg.norm(beta)
        self.alpha = (options.dim - 2) / 2
        self.scale = 1.0 / math.sqrt(gegenbauer_norm2(options.degree, options.dim))

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        d = self.options.dim
        z = rng.standard_normal((n, d))
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        y = self.scale * eval_gegenbauer(self.options.degree, self.alpha, z @ self.beta)
        if self.options.noise:
            y = y + self.options.noise * rng.standard_normal(n)
        return (math.sqrt(d) * z).astype(np.float32), y[:, None].astype(np.float32)


@STREAMS.register("gegenbauer", options=GegenbauerOptions, loss="mse")
def build_gegenbauer(seed: int, options: GegenbauerOptions) -> Stream:
    """Gegenbauer polynomial regression on the sphere (MSE; paper A.1)."""
    return GegenbauerStream(seed, options)
