"""Procedural vision streams: unlimited, generated from the generator, never downloaded.

For machines without data sets, and for truly online training (every batch is
fresh, paper Section 2): a ``teacher_images`` stream of structured images
labelled by a fixed random conv net, and ``mnist1d``, a procedural version of
Greydanus' MNIST-1D (2020): ten 1-d digit templates, randomly padded, dilated,
scaled, translated, filled with correlated noise, perturbed with iid noise,
sheared and resampled to 40 points.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.ndimage import gaussian_filter1d

from widthwise.streams.base import STREAMS, Stream, rng_for

CONV_TEACHER_KEY = 2**31 - 20
CENTER_KEY = 2**31 - 21
MNIST1D_STATS_KEY = 2**31 - 22
REFERENCE_EXAMPLES = 2048

# -- teacher_images ------------------------------------------------------------------


class TeacherImagesOptions(BaseModel):
    """Options of the ``teacher_images`` stream."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(16, ge=4, le=1024, description="images are size × size (≤ 1024)")
    channels: int = Field(3, ge=1, le=1024, description="image channels (≤ 1024)")
    classes: int = Field(10, ge=2, le=2**14, description="number of classes (≤ 2¹⁴)")
    teacher_channels: int = Field(
        16, ge=1, le=4096, description="channels of the teacher's conv layers (≤ 4096)"
    )


def structured_images(rng: np.random.Generator, n: int, channels: int, size: int) -> np.ndarray:
    """(n, channels, size, size) float64 images: gratings + Gaussian blobs + smooth fields.

    Each image mixes, with random weights in [0, 1]: a sinusoidal grating (1-4 cycles,
    random orientation and phase), three Gaussian blobs (random centers, widths
    0.1-0.5), and a Gaussian random field (white noise low-passed at a random length
    scale); each component has random per-channel amplitudes. Every image is then
    standardized (mean 0, std 1 over its pixels and channels).
    """
    u = np.linspace(-1.0, 1.0, size)
    yy, xx = np.meshgrid(u, u, indexing="ij")  # (size, size)
    # grating
    freq = rng.uniform(1.0, 4.0, n)
    theta = rng.uniform(0.0, np.pi, n)
    phase = rng.uniform(0.0, 2 * np.pi, n)
    proj = np.cos(theta)[:, None, None] * xx + np.sin(theta)[:, None, None] * yy
    grating = np.sin(np.pi * freq[:, None, None] * proj + phase[:, None, None])  # (n, S, S)
    grating = rng.standard_normal((n, channels))[:, :, None, None] * grating[:, None]
    # blobs
    centers = rng.uniform(-1.0, 1.0, (n, 3, 2))
    widths = rng.uniform(0.1, 0.5, (n, 3))
    d2 = (xx - centers[..., 0, None, None]) ** 2 + (yy - centers[..., 1, None, None]) ** 2
    bumps = np.exp(-d2 / (2 * widths[..., None, None] ** 2))  # (n, 3, S, S)
    amps = rng.standard_normal((n, channels, 3))
    blobs = np.einsum("nck,nkij->ncij", amps, bumps)
    # smooth random field
    length = rng.uniform(1.0, size / 4, n)  # correlation length in pixels
    k = np.fft.fftfreq(size)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    lowpass = np.exp(-2 * np.pi**2 * k2[None] * length[:, None, None] ** 2)  # (n, S, S)
    white = rng.standard_normal((n, channels, size, size))
    field = np.fft.irfft2(
        np.fft.rfft2(white) * lowpass[:, None, :, : size // 2 + 1], s=(size, size)
    )
    field /= field.std(axis=(1, 2, 3), keepdims=True) + 1e-12
    w = rng.uniform(0.0, 1.0, (n, 3))
    x = w[:, 0, None, None, None] * grating + w[:, 1, None, None, None] * blobs
    x = x + w[:, 2, None, None, None] * field
    x -= x.mean(axis=(1, 2, 3), keepdims=True)
    x /= x.std(axis=(1, 2, 3), keepdims=True) + 1e-12
    return x


class TeacherImagesStream(Stream):
    """Structured images labelled by a fixed random conv teacher (cross-entropy).

    Teacher, drawn once from the data seed: conv3×3 → tanh → 2×2 average pool →
    conv3×3 → tanh → global average pool (conv weights N(0, 1/fan_in)), then the
    pooled features are whitened (mean and covariance over 2048 fixed reference
    images) and multiplied by a random readout with orthonormal columns, so the
    logits are uncorrelated with equal variance and the classes roughly balanced;
    the label is the argmax. Inputs (channels, size, size), float32, standardized
    per image.
    """

    loss = "cross_entropy"

    def __init__(self, seed: int, options: TeacherImagesOptions) -> None:
        super().__init__(seed)
        self.options = options
        c, k, s = options.channels, options.teacher_channels, options.size
        self.in_shape = (c, s, s)
        self.out_dim = options.classes
        rng = rng_for(seed, CONV_TEACHER_KEY)
        self.w1 = rng.standard_normal((k, c, 3, 3)) / np.sqrt(9 * c)
        self.w2 = rng.standard_normal((k, k, 3, 3)) / np.sqrt(9 * k)
        self.w1_t = torch.from_numpy(self.w1.astype(np.float32))
        self.w2_t = torch.from_numpy(self.w2.astype(np.float32))
        readout = rng.standard_normal((max(k, options.classes), options.classes))
        self.readout = np.linalg.qr(readout)[0][
            :k
        ]  # (k, classes), orthonormal columns if k ≥ classes
        ref = self.features(structured_images(rng_for(seed, CENTER_KEY), REFERENCE_EXAMPLES, c, s))
        self.feature_mean = ref.mean(axis=0)
        cov = np.cov(ref - self.feature_mean, rowvar=False).reshape(k, k)
        evals, evecs = np.linalg.eigh(cov)
        self.whiten = evecs / np.sqrt(np.maximum(evals, 1e-12 * evals.max()))  # (k, k)

    def features(self, x: np.ndarray) -> np.ndarray:
        """The teacher's pooled features (n, teacher_channels), computed in float32."""
        with torch.no_grad():
            h = torch.from_numpy(x.astype(np.float32))
            h = torch.tanh(F.conv2d(h, self.w1_t, padding=1))  # (n, k, S, S)
            h = F.avg_pool2d(h, 2)  # (n, k, S/2, S/2)
            h = torch.tanh(F.conv2d(h, self.w2_t, padding=1)).mean(dim=(2, 3))  # (n, k)
        return h.numpy().astype(np.float64)

    def teacher_logits(self, x: np.ndarray) -> np.ndarray:
        """(n, classes): whitened pooled features times the fixed random readout."""
        return (self.features(x) - self.feature_mean) @ self.whiten @ self.readout

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        o = self.options
        x = structured_images(rng, n, o.channels, o.size)
        y = self.teacher_logits(x).argmax(axis=1)
        return x.astype(np.float32), y.astype(np.int64)

    def describe(self) -> dict[str, object]:
        h = hashlib.sha256(self.w1.tobytes() + self.w2.tobytes() + self.readout.tobytes())
        return {"stream": "teacher_images", "teacher_sha256": h.hexdigest()[:16]}


@STREAMS.register("teacher_images", options=TeacherImagesOptions, loss="cross_entropy")
def build_teacher_images(seed: int, options: TeacherImagesOptions) -> Stream:
    """Structured images labelled by a fixed random conv teacher (unlimited; cross-entropy)."""
    return TeacherImagesStream(seed, options)


# -- mnist1d -------------------------------------------------------------------------

# The ten 12-point digit templates of MNIST-1D (Greydanus 2020, github.com/greydanus/mnist1d).
MNIST1D_TEMPLATES = np.array(
    [
        [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
        [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
        [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
        [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
        [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
        [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
        [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
        [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
        [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
        [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
    ]
)


def mnist1d_templates() -> np.ndarray:
    """(10, 12): each template standardized, shifted to start at 0, divided by 6."""
    t = MNIST1D_TEMPLATES - MNIST1D_TEMPLATES.mean(axis=1, keepdims=True)
    t /= t.std(axis=1, keepdims=True)
    return (t - t[:, :1]) / 6.0


def resample(x: np.ndarray, lengths: np.ndarray, out_len: int) -> np.ndarray:
    """Linear resampling of the first ``lengths[i]`` points of row i onto ``out_len`` points."""
    n = len(x)
    pos = np.linspace(0.0, 1.0, out_len)[None, :] * (lengths[:, None] - 1)  # (n, out)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, lengths[:, None] - 1)
    frac = pos - lo
    rows = np.arange(n)[:, None]
    return (1 - frac) * x[rows, lo] + frac * x[rows, hi]


class MNIST1DOptions(BaseModel):
    """Options of the ``mnist1d`` stream (defaults: MNIST-1D's)."""

    model_config = ConfigDict(extra="forbid")

    seq_len: int = Field(40, ge=4, le=2**16, description="final sequence length (≤ 2¹⁶)")
    shape: Literal["flat", "channel"] = Field(
        "flat", description="flat: in_shape (seq_len,); channel: (1, seq_len)"
    )
    padding: tuple[int, int] = Field((36, 60), description="range of zeros appended to a template")
    scale_coeff: float = Field(0.4, ge=0, description="amplitude scale 1 ± scale_coeff/2")
    max_translation: int = Field(
        48, ge=1, le=2**16, description="circular shift in [0, max_translation)"
    )
    corr_noise: float = Field(0.25, ge=0, description="scale of the correlated background noise")
    iid_noise: float = Field(0.02, ge=0, description="scale of the iid noise")
    shear: float = Field(0.75, ge=0, description="scale of the linear shear")

    @model_validator(mode="after")
    def _padding_range(self) -> MNIST1DOptions:
        lo, hi = self.padding
        if not 0 <= lo <= hi:
            raise ValueError(f"padding must be [low, high] with 0 <= low <= high, got {[lo, hi]}")
        return self


class MNIST1DStream(Stream):
    """Procedural MNIST-1D: 10 classes, sequences of ``seq_len`` points (cross-entropy).

    Per example (all from the batch's generator): a uniform label; its template
    padded with p ∈ [36, 60] zeros, dilated onto 72 points, scaled by
    1 + 0.4·(u − ½), circularly shifted by k ∈ [0, 48); zero entries replaced by
    correlated noise (0.25·N(0,1) smoothed by a Gaussian of σ = 2 points), iid noise
    0.02·N(0,1) added, sheared by c·linspace(−½, ½) with c = 0.75·(u − ½), and
    resampled to 40 points. Finally standardized with a mean and std measured once
    on 4096 reference examples (MNIST-1D standardizes its fixed data set the same way).
    """

    loss = "cross_entropy"
    out_dim = 10

    def __init__(self, seed: int, options: MNIST1DOptions) -> None:
        super().__init__(seed)
        self.options = options
        n = options.seq_len
        self.in_shape = (n,) if options.shape == "flat" else (1, n)
        self.templates = mnist1d_templates()
        self.mean, self.std = 0.0, 1.0
        ref = self._raw(rng_for(seed, MNIST1D_STATS_KEY), REFERENCE_EXAMPLES)[0]
        self.mean, self.std = float(ref.mean()), float(ref.std())

    def _raw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        o = self.options
        lo, hi = o.padding
        t_len = self.templates.shape[1]
        full = t_len + hi  # length after dilation
        y = rng.integers(0, 10, size=n)
        pad = rng.integers(lo, hi + 1, size=n)
        padded = np.zeros((n, full))
        padded[:, :t_len] = self.templates[y] + 1e-8  # nonzero marks the signal
        x = resample(padded, t_len + pad, full)  # dilate
        x *= 1 + o.scale_coeff * (rng.random(n) - 0.5)[:, None]
        shift = rng.integers(0, o.max_translation, size=n)
        x = x[np.arange(n)[:, None], (np.arange(full)[None, :] - shift[:, None]) % full]
        noise = gaussian_filter1d(o.corr_noise * rng.standard_normal((n, full)), 2.0, axis=1)
        x = np.where(x != 0, x, noise)
        x = x + o.iid_noise * rng.standard_normal((n, full))
        x = x - (o.shear * (rng.random(n) - 0.5))[:, None] * np.linspace(-0.5, 0.5, full)
        x = resample(x, np.full(n, full), o.seq_len)
        return x, y

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = self._raw(rng, n)
        x = ((x - self.mean) / self.std).astype(np.float32)
        return x.reshape(n, *self.in_shape), y.astype(np.int64)

    def describe(self) -> dict[str, object]:
        return {"stream": "mnist1d", "mean": round(self.mean, 8), "std": round(self.std, 8)}


@STREAMS.register("mnist1d", options=MNIST1DOptions, loss="cross_entropy")
def build_mnist1d(seed: int, options: MNIST1DOptions) -> Stream:
    """Procedural MNIST-1D (generated, never downloaded): 10 classes of 1-d signals."""
    return MNIST1DStream(seed, options)
