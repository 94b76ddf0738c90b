"""Infinite-width kernels of widthwise's MLP at initialization: the "limit" line.

As the width n → ∞ at init, the preactivations of every hidden layer of a fully
connected network become a Gaussian process over inputs (Neal 1996; Lee et al. 2018;
Matthews et al. 2018) and the NTK becomes deterministic (Jacot et al. 2018; Arora et
al. 2019). This module computes both exactly (numpy float64, no torch) in the
normalization of ``widthwise.families.mlp`` and its probes, so the kernels a study
records at width n can be compared with their limit (error O(n^-1/2)).

The network (families/mlp.py, depth L = weight layers, σ = ``parameterization.sigma``)
---------------------------------------------------------------------------------------
h¹ = W₁x + b₁, x^l = φ(h^l), h^{l+1} = W_{l+1}x^l + b_{l+1}, f = h^L = W_out x^{L-1} + b_out,
on flattened inputs x ∈ R^d; effective weights have std σ/√fan_in in ``sp``, ``ntp``,
``mup`` and ``mf`` alike (only the readout differs); biases start at 0. Hidden layers
are named ``l1 .. l{L-1}`` (the ``kernels`` probe's layer names), the readout ``out``.

Layer recursion (Lee et al. 2018, Eq. 4), with b² = ``bias_std``² (0 in widthwise)::

    K⁰ = x xᵀ / d                          (points, points)
    Σ^l = σ² K^{l-1} + b²                  preactivation kernel of layer l; Σ^L: logits
    K^l = E[φ(u) φ(v)],  K̇^l = E[φ'(u) φ'(v)],  (u, v) ~ N(0, Σ^l on the pair)

The ``kernels`` probe records φφᵀ/N → K^l (``features: act``) or Σ^l (``preact``).

NTK (Jacot et al. 2018, Thm. 1; Arora et al. 2019, Eq. 9). With backward kernels
P^L = 1, P^l = P^{l+1} ⊙ σ² K̇^l, the limit of the eNTK in ``ntp`` (derivatives w.r.t.
the raw w, W = σ/√fan_in · w) splits into one block per tensor::

    B[l.weight] = σ² K^{l-1} ⊙ P^l        B[l.bias] = β² P^l        (out: l = L)
    Θ = Σ_t B_t,   i.e.  Θ¹ = σ²K⁰ + β²,  Θ^{l+1} = σ²K^l + β² + Θ^l ⊙ σ²K̇^l

(β = ``bias_multiplier``: 1 for widthwise's biases, absent without biases). The eNTK
of C outputs tends to Θ[i, j] δ_cd (traced: C·Θ): the readout rows are independent.

Which kernels have a limit (:func:`entk_coefficients` derives it from the rules)
--------------------------------------------------------------------------------
At width n a parameterization scales block t by c_t(n) = mult_t² · r² · fan_in_t/σ²
(weights below the readout; biases mult_t² · r²; readout weight mult² · n/σ²; readout
bias mult²), with r² = n·(readout std)²/σ² (1 in sp and ntp). With ``lr_weighted``
c_t is multiplied by the tensor's lr scale. m = n / base_width, d = input dim:

- feature kernels K^l, Σ^l: the same limit in sp, ntp, mup, mf (and umup): every one
  gives input and hidden weights the effective std σ/√fan_in; only the readout differs.
- logits (:func:`output_nngp`): Σ^L in sp and ntp; → 0 in mup (Σ^L/m) and mf (~1/n).
- eNTK, ntp: Θ = Σ_t B_t (c_t = 1).
- eNTK, sp: none, c = n/σ² for the hidden and readout weights; eNTK/n →
  (Σ_hidden B + B[out.weight])/σ² (``normalize="width"``).
- eNTK, mup: (base_width/σ²) Σ_hidden B + B[out.bias] (r² = 1/m: the input and
  bias blocks fall like 1/m, the readout's like 1/n).
- eNTK, mf: B[out.bias]/γ0² (r² = 1/(γ0²σ²n): everything else falls like 1/n).
- eNTK_lr (Σ_t lr_t K_t, the kernel of gradient flow), ntp and mup with SGD alike:
  (d/σ²) B[l1.weight] + (base_width/σ²)(Σ_hidden B + B[out.weight]) + Σ_biases B —
  at init both move the function at the same rate; sp: none (∝ n); mf:
  Σ_{t ≠ out.bias} B_t/σ² + B[out.bias], γ0-free; mup with Adam: B[out.bias].
- umup (and any registered parameterization) the same way from its rules, e.g. its
  eNTK → B[out.bias].

Where a block vanishes its coefficient is 0; where a block grows :func:`entk_limit`
raises. The rules are monomials in n, so the exponent of each c_t(n) is exact.

Dual activations (E over the bivariate Gaussian): ``relu`` by the arc-cosine kernel of
order 1 and 0 (Cho & Saul 2009): with s = √(k11 k22 − k12²), θ = atan2(s, k12),
E[relu relu] = (s + (π − θ) k12) / 2π, E[step step] = (π − θ) / 2π. ``erf`` in closed
form (Williams 1997): (2/π) arcsin(2k12 / √((1+2k11)(1+2k22))) and
(4/π) / √((1+2k11)(1+2k22) − 4k12²). ``tanh`` and ``gelu`` have none: the expectation
is a product trapezoidal rule in (z1, z2) with u = L11 z1, v = L21 z1 + L22 z2
(Cholesky of the pair's covariance). The rule converges geometrically for functions
analytic in a strip (Trefethen & Weideman 2014): tanh's poles at Im u = ±π/2 set the
step h = min(0.7, π/(2·safety·√max k)) on |z| ≤ 9; ``safety = 6`` measures ≤ 1e-12
absolute against scipy's dblquad (Gauss–Hermite needs > 192 nodes a dim for 1e-6 when
the variance is 9, because its nodes spread out to ±√(2·nodes)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import xarray as xr
from scipy.special import erf

from widthwise.analysis._checks import AnalysisError
from widthwise.parameterization import ParamSpec, Role, RuleContext, rules_for

Activation = Literal["relu", "erf", "tanh", "gelu"]
ACTIVATIONS = ("relu", "erf", "tanh", "gelu")
_SQRT2PI = math.sqrt(2 * math.pi)


def _dtanh(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # cosh overflows to inf for |z| > 710: sech² = 0
        return 1.0 / np.cosh(z) ** 2


def _gelu(z: np.ndarray) -> np.ndarray:
    return z * 0.5 * (1.0 + erf(z / math.sqrt(2)))


def _dgelu(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + erf(z / math.sqrt(2))) + z * np.exp(-0.5 * z * z) / _SQRT2PI


_QUADRATURE: dict[str, tuple[Callable, Callable]] = {
    "tanh": (np.tanh, _dtanh),
    "gelu": (_gelu, _dgelu),
}


def gaussian_expectation(
    fn: Callable[[np.ndarray], np.ndarray],
    k11: np.ndarray,
    k22: np.ndarray,
    k12: np.ndarray,
    *,
    safety: float = 6.0,
    zmax: float = 9.0,
) -> np.ndarray:
    """E[fn(u) fn(v)], (u, v) ~ N(0, [[k11, k12], [k12, k22]]), by the trapezoidal rule.

    Elementwise over the broadcast inputs. ``fn`` must be analytic in the strip
    |Im u| < π/2 (tanh, gelu, erf, ...; module docstring for the step rule and the
    measured accuracy). Cost: (#pairs) × (2·⌈9/h⌉ + 1)² evaluations of ``fn``.
    """
    a, b, c = (np.asarray(t, dtype=np.float64) for t in np.broadcast_arrays(k11, k22, k12))
    shape = a.shape
    a, b, c = a.ravel(), b.ravel(), c.ravel()
    if a.size == 0:
        return np.zeros(shape)
    scale = math.sqrt(max(float(a.max()), float(b.max()), 1e-300))
    h = min(0.7, math.pi / (2 * safety * scale))
    n = math.ceil(zmax / h)
    z = np.linspace(-zmax, zmax, 2 * n + 1)
    w = (zmax / n) * np.exp(-0.5 * z * z) / _SQRT2PI  # (N,)
    sa = np.sqrt(np.clip(a, 0, None))
    l21 = np.divide(c, sa, out=np.zeros_like(c), where=sa > 0)
    l22 = np.sqrt(np.clip(b - l21 * l21, 0, None))
    out = np.empty_like(a)
    chunk = max(1, 2**22 // z.size**2)
    for s in range(0, a.size, chunk):
        e = slice(s, s + chunk)
        fu = fn(sa[e, None] * z)  # (p, N)
        v = l21[e, None, None] * z[None, :, None] + l22[e, None, None] * z[None, None, :]
        inner = fn(v) @ w  # (p, N): E over z2 given z1
        out[e] = (fu * inner) @ w
    return out.reshape(shape)


def dual_kernel(
    activation: str, k11: Any, k22: Any, k12: Any, *, derivative: bool = False
) -> np.ndarray:
    """E[φ(u)φ(v)] (or E[φ'(u)φ'(v)] with ``derivative``), (u, v) ~ N(0, [[k11,k12],[k12,k22]]).

    Elementwise, broadcasting the three arrays. relu, erf closed forms; tanh, gelu by
    :func:`gaussian_expectation` (module docstring). relu'(0) = 0 as in torch.
    """
    _check_activation(activation)
    a, b, c = (np.asarray(t, dtype=np.float64) for t in np.broadcast_arrays(k11, k22, k12))
    if activation == "relu":
        ab = a * b
        s = np.sqrt(np.clip(ab - c * c, 0, None))
        theta = np.arctan2(s, c)
        if derivative:
            return np.where(ab > 0, (math.pi - theta) / (2 * math.pi), 0.0)
        return (s + (math.pi - theta) * c) / (2 * math.pi)
    if activation == "erf":
        q = (1 + 2 * a) * (1 + 2 * b)
        if derivative:
            return 4 / math.pi / np.sqrt(q - 4 * c * c)
        return 2 / math.pi * np.arcsin(np.clip(2 * c / np.sqrt(q), -1, 1))
    fn, dfn = _QUADRATURE[activation]
    return gaussian_expectation(dfn if derivative else fn, a, b, c)


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise AnalysisError(
            f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}"
        )


def _dual_matrix(activation: str, sig: np.ndarray, derivative: bool) -> np.ndarray:
    """The (M, M) matrix of pairwise duals of the covariance ``sig``, on the upper triangle."""
    m = sig.shape[0]
    d = np.diag(sig)
    i, j = np.triu_indices(m)
    out = np.empty((m, m))
    out[i, j] = dual_kernel(activation, d[i], d[j], sig[i, j], derivative=derivative)
    out[j, i] = out[i, j]
    return out


@dataclass
class _Forward:
    k0: np.ndarray  # x xᵀ / d
    preact: list[np.ndarray]  # Σ^1 .. Σ^{L-1}
    act: list[np.ndarray]  # K^1 .. K^{L-1}
    dot: list[np.ndarray]  # K̇^1 .. K̇^{L-1} (if asked)
    out: np.ndarray  # Σ^L


def _forward(x: Any, depth: int, activation: str, sigma: float, bias_std: float, dot: bool):
    _check_activation(activation)
    if int(depth) != depth or depth < 1:
        raise AnalysisError(f"depth (weight layers) must be an integer >= 1, got {depth!r}")
    xs = np.asarray(x, dtype=np.float64)
    if xs.ndim < 2 or xs.shape[0] == 0:
        raise AnalysisError(f"x must be (points, *features), got shape {xs.shape}")
    xs = xs.reshape(xs.shape[0], -1)
    k0 = xs @ xs.T / xs.shape[1]
    s2, b2 = float(sigma) ** 2, float(bias_std) ** 2
    res = _Forward(k0, [], [], [], s2 * k0 + b2)
    for _ in range(1, depth):
        sig = res.out
        res.preact.append(sig)
        res.act.append(_dual_matrix(activation, sig, False))
        if dot:
            res.dot.append(_dual_matrix(activation, sig, True))
        res.out = s2 * res.act[-1] + b2
    return res


def layer_names(depth: int) -> list[str]:
    """The MLP's hidden layers ``l1 .. l{depth-1}`` (``Network.layers``, the probes' layers)."""
    return [f"l{i}" for i in range(1, depth)]


def nngp_kernels(
    x: Any,
    depth: int,
    activation: str,
    *,
    sigma: float = 1.0,
    bias_std: float = 0.0,
    features: Literal["act", "preact"] = "act",
) -> dict[str, np.ndarray]:
    """Infinite-width feature kernels {``l1`` .. ``l{depth-1}``: (points, points)}.

    ``x``: (points, *features), flattened as the MLP does. ``features="act"``: K^l =
    lim φ(h^l)φ(h^l)ᵀ/n, what the ``kernels`` probe records by default; ``"preact"``:
    Σ^l = lim h^l h^lᵀ/n. The same limit in sp, ntp, mup and mf (module docstring).
    """
    if features not in ("act", "preact"):
        raise AnalysisError(f"features must be act or preact, got {features!r}")
    f = _forward(x, depth, activation, sigma, bias_std, dot=False)
    ks = f.act if features == "act" else f.preact
    return dict(zip(layer_names(depth), ks))


def output_nngp(
    x: Any, depth: int, activation: str, *, sigma: float = 1.0, bias_std: float = 0.0
) -> np.ndarray:
    """Σ^L (points, points): the covariance of each logit at init in sp and ntp.

    Outputs are independent across c. In mup it is Σ^L/m → 0, in mf Σ^L/(γ0²σ²n) → 0.
    """
    return _forward(x, depth, activation, sigma, bias_std, dot=False).out


def ntk_blocks(
    x: Any,
    depth: int,
    activation: str,
    *,
    sigma: float = 1.0,
    bias_std: float = 0.0,
    bias_multiplier: float | None = None,
) -> dict[str, np.ndarray]:
    """Per-tensor infinite-width NTK blocks in ntp normalization, {tensor: (points, points)}.

    Keys in the order of the MLP's params (``l1.weight``, ``l1.bias``, ..., ``out.weight``,
    ``out.bias``); bias keys only if ``bias_multiplier`` is not None (β: the forward
    multiplier of a raw bias, 1 in widthwise; Jacot et al.'s NTK: bias_std = β).
    Formulas in the module docstring; per output (the limit is diagonal in outputs).
    """
    f = _forward(x, depth, activation, sigma, bias_std, dot=True)
    s2 = float(sigma) ** 2
    inputs = [f.k0, *f.act]  # K^{l-1} for l = 1 .. L
    names = [*layer_names(depth), "out"]
    p = np.ones_like(f.k0)
    rev: list[tuple[str, np.ndarray]] = []
    for li in range(depth, 0, -1):
        if bias_multiplier is not None:
            rev.append((f"{names[li - 1]}.bias", float(bias_multiplier) ** 2 * p))
        rev.append((f"{names[li - 1]}.weight", s2 * inputs[li - 1] * p))
        if li > 1:
            p = p * (s2 * f.dot[li - 2])
    return dict(reversed(rev))


def ntk_limit(
    x: Any,
    depth: int,
    activation: str,
    *,
    sigma: float = 1.0,
    bias_std: float = 0.0,
    bias_multiplier: float | None = None,
) -> np.ndarray:
    """Θ (points, points): the infinite-width NTK per output (ntp), Σ of :func:`ntk_blocks`."""
    blocks = ntk_blocks(
        x, depth, activation, sigma=sigma, bias_std=bias_std, bias_multiplier=bias_multiplier
    )
    return sum(blocks.values())  # type: ignore[return-value]


# -- eNTK of a widthwise parameterization -------------------------------------------------


def mlp_param_specs(width: int, d_in: int, out_dim: int, depth: int, bias: bool) -> list[ParamSpec]:
    """The ``mlp`` family's ParamSpecs (families/mlp.py, without building torch tensors)."""
    specs = [ParamSpec("l1.weight", (width, d_in), Role.INPUT, d_in)]
    if bias:
        specs.append(ParamSpec("l1.bias", (width,), Role.VECTOR, init="zeros"))
    for i in range(2, depth):
        specs.append(ParamSpec(f"l{i}.weight", (width, width), Role.HIDDEN, width))
        if bias:
            specs.append(ParamSpec(f"l{i}.bias", (width,), Role.VECTOR, init="zeros"))
    specs.append(ParamSpec("out.weight", (out_dim, width), Role.OUTPUT, width))
    if bias:
        specs.append(ParamSpec("out.bias", (out_dim,), Role.FIXED, init="zeros"))
    return specs


def entk_coefficients(
    parameterization: str,
    width: int,
    *,
    d_in: int,
    depth: int,
    bias: bool = False,
    sigma: float = 1.0,
    base_width: int = 64,
    optimizer: Literal["sgd", "adam"] = "sgd",
    options: Any = None,
    lr_weighted: bool = False,
) -> dict[str, float]:
    """c_t(width): eNTK block t at large ``width`` ≈ c_t · :func:`ntk_blocks` [t].

    From widthwise's own rules (``rules_for``; ``options``: the parameterization's
    options, e.g. ``{"gamma0": 1.0}`` for mf, ``{"readout_zero_init": True}`` for mup);
    formulas in the module docstring. Raises if an input or hidden weight's effective
    std is not σ/√fan_in (then the feature kernels are not the ones computed here).
    """
    ctx = RuleContext(
        width=width, base_width=base_width, optimizer=optimizer, sigma=sigma, options=options
    )
    specs = mlp_param_specs(width, d_in, 1, depth, bias)
    rules = rules_for(parameterization, specs, ctx)
    s2 = sigma**2
    out_rule = rules["out.weight"]
    r2 = width * (out_rule.multiplier * out_rule.init_std) ** 2 / s2
    coef: dict[str, float] = {}
    for p in specs:
        rule = rules[p.name]
        mult2 = rule.multiplier**2
        if p.name == "out.weight":
            c = mult2 * width / s2
        elif p.name == "out.bias":
            c = mult2
        elif p.role in (Role.INPUT, Role.HIDDEN):
            eff = rule.multiplier * rule.init_std * math.sqrt(p.fan_in)
            if not math.isclose(eff, sigma, rel_tol=1e-9):
                raise AnalysisError(
                    f"parameterization {parameterization!r}: {p.name} has effective std "
                    f"{eff:.4g}/sqrt(fan_in), not sigma={sigma:g}; no limit kernels for it"
                )
            c = mult2 * r2 * p.fan_in / s2
        else:
            c = mult2 * r2
        coef[p.name] = c * (rule.lr_scale if lr_weighted else 1.0)
    return coef


@dataclass
class EntkLimit:
    """The eNTK limit per output: ``kernel`` (points, points) = Σ ``blocks``.

    ``blocks``: {tensor: c_t · B_t}; ``coefficients``: {tensor: c_t} (0 where a block
    vanishes). The probe's full eNTK is ``kernel[i, j] δ_cd`` (:func:`entk_layout`).
    """

    kernel: np.ndarray
    blocks: dict[str, np.ndarray]
    coefficients: dict[str, float] = field(default_factory=dict)

    def layer_blocks(self) -> dict[str, np.ndarray]:
        """Blocks summed per layer (``l1.weight`` + ``l1.bias`` → ``l1``), as ``blocks: layer``."""
        out: dict[str, np.ndarray] = {}
        for name, k in self.blocks.items():
            layer = name.rsplit(".", 1)[0]
            out[layer] = out[layer] + k if layer in out else k
        return out


def _limit_coefficients(
    parameterization: str, normalize: str | None, **kw: Any
) -> dict[str, float]:
    """lim_{n→∞} c_t(n) (/n with normalize="width"); the rules are monomials in n."""
    n1 = kw["base_width"] * 2**12
    scale = (lambda n: 1.0 / n) if normalize == "width" else (lambda n: 1.0)
    c1 = entk_coefficients(parameterization, n1, **kw)
    c2 = entk_coefficients(parameterization, 2 * n1, **kw)
    out, grow = {}, []
    for t in c1:
        a, b = c1[t] * scale(n1), c2[t] * scale(2 * n1)
        if a == 0 and b == 0:
            out[t] = 0.0
            continue
        p = math.log2(abs(b / a)) if a else math.inf  # the exponent of n
        if p > 0.25:
            grow.append(f"{t} (∝ width^{p:.2g})")
        out[t] = a if abs(p) <= 0.25 else 0.0
    if grow:
        raise AnalysisError(
            f"the {parameterization} eNTK has no infinite-width limit: "
            f"{', '.join(grow)}; pass normalize='width' (sp) or width=n for the "
            "leading-order kernel at width n"
        )
    return out


def entk_limit(
    x: Any,
    depth: int,
    activation: str,
    parameterization: str = "ntp",
    *,
    sigma: float = 1.0,
    bias: bool = False,
    base_width: int | None = None,
    optimizer: Literal["sgd", "adam"] = "sgd",
    options: Any = None,
    lr_weighted: bool = False,
    normalize: Literal["width"] | None = None,
    width: int | None = None,
) -> EntkLimit:
    """The eNTK (or ``lr_weighted`` eNTK_lr) of widthwise's MLP under ``parameterization``.

    ``width=None``: the n → ∞ limit, raising :class:`AnalysisError` where there is none
    (sp, and sp's eNTK_lr, grow ∝ n: ``normalize="width"`` gives lim eNTK/n). ``width=n``:
    the leading-order deterministic kernel Σ_t c_t(n) B_t at width n (what the eNTK
    fluctuates around, relative O(n^-1/2)), e.g. for sp. ``bias``: the MLP's ``bias``
    option (biases start at 0: ``bias_std`` 0, multiplier per the rules). ``base_width``
    is needed only where the answer depends on it (mup, ntp lr-weighted). Dims: x
    (points, *features) → kernel (points, points). ``options``: the parameterization's
    options (mf needs ``{"gamma0": γ0}``).
    """
    d_in = int(np.prod(np.shape(x)[1:]))
    kw: dict[str, Any] = dict(
        d_in=d_in, depth=depth, bias=bias, sigma=sigma, optimizer=optimizer, options=options,
        lr_weighted=lr_weighted,
    )  # fmt: skip

    def coefficients(base: int) -> dict[str, float]:
        if width is None:
            return _limit_coefficients(parameterization, normalize, base_width=base, **kw)
        c = entk_coefficients(parameterization, width, base_width=base, **kw)
        return {t: v / width if normalize else v for t, v in c.items()}

    if base_width is None:
        coef = coefficients(64)
        if any(not math.isclose(coef[t], v, rel_tol=1e-9) for t, v in coefficients(128).items()):
            raise AnalysisError(
                f"the {parameterization} eNTK{'_lr' if lr_weighted else ''} depends on "
                "base_width; pass base_width="
            )
    else:
        coef = coefficients(base_width)
    b = ntk_blocks(x, depth, activation, sigma=sigma, bias_multiplier=1.0 if bias else None)
    blocks = {t: coef[t] * b[t] for t in b}
    return EntkLimit(sum(blocks.values()), blocks, coef)  # type: ignore[arg-type]


def entk_layout(kernel: np.ndarray, out_dim: int, trace_outputs: bool = False) -> np.ndarray:
    """A per-output limit (..., M, M) in the ``entk`` probe's layout.

    Full: (..., M, C, M, C) = kernel[i, j] δ_cd; ``trace_outputs``: C · kernel.
    """
    if trace_outputs:
        return out_dim * kernel
    eye = np.eye(out_dim)
    return kernel[..., :, None, :, None] * eye[:, None, :]


# -- glue: the limit of a study's probes -----------------------------------------------------


def _without_seed(dims: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(d for d in dims if d != "seed")


def limit_kernels_for(spec: Any, x: Any = None, out_dim: int | None = None) -> xr.Dataset:
    """The limit of a study's ``kernels`` and ``entk`` probe variables at init, by dims.

    ``spec``: a StudySpec, or a Dataset from ``open_study`` (its ``attrs["spec"]``).
    ``x``: the probe points (point, *in_shape) (default for a StudySpec: the stream's
    probe set); ``out_dim``: default the Dataset's ``output`` size or the stream's.
    Returns ``feature_kernel`` and, where a limit exists, ``entk``, ``entk_lr``,
    ``entk_per_layer[_lr]``, with the probes' own dims minus ``seed`` (declared in
    ``KERNELS`` / ``ENTK``) and each probe's options (defaults if not configured), so
    ``relative_frobenius(ds.feature_kernel, lim.feature_kernel, over=...)`` lines up
    by name. ``attrs["no_limit"]`` says which were left out and why. MLP family only.
    """
    import json

    from widthwise.probes.features import KERNELS, KernelOptions
    from widthwise.probes.ntk import ENTK, EntkOptions
    from widthwise.spec import StudySpec

    if isinstance(spec, xr.Dataset):
        if "spec" not in spec.attrs:
            raise AnalysisError("the Dataset has no attrs['spec']; pass the StudySpec")
        if out_dim is None and "output" in spec.sizes:
            out_dim = int(spec.sizes["output"])
        spec = StudySpec.model_validate(json.loads(spec.attrs["spec"]), strict=False)
    if spec.model.family != "mlp":
        raise AnalysisError(
            f"limit kernels exist for the mlp family only, not {spec.model.family!r}"
        )
    if x is None or out_dim is None:
        from widthwise.job import build_stream

        stream = build_stream(spec)
        out_dim = stream.out_dim if out_dim is None else out_dim
        x = stream.probe_set(spec.data.probe_points)[0] if x is None else x
    x = np.asarray(x, dtype=np.float64)
    mlp, par = spec.family_options(), spec.parameterization
    kopt = KernelOptions.model_validate(spec.probes.get("kernels", {}))
    eopt = EntkOptions.model_validate(spec.probes.get("entk", {}))
    kdims = _without_seed(KERNELS.result_dims("feature_kernel"))
    names = kopt.layers or layer_names(mlp.depth)
    feats = nngp_kernels(
        x[: kopt.points], mlp.depth, mlp.activation, sigma=par.sigma, features=kopt.features
    )
    data: dict[str, Any] = {"feature_kernel": (kdims, np.stack([feats[n] for n in names]))}
    coords: dict[str, Any] = {kdims[0]: np.array(names)}
    missing = []
    for lr, suffix in ((False, ""), (True, "_lr")):
        if lr and not eopt.lr_weighted:
            continue
        try:
            lim = entk_limit(
                x[: eopt.points], mlp.depth, mlp.activation, par.name, sigma=par.sigma,
                bias=mlp.bias, base_width=spec.base_width, optimizer=spec.optimizer.kind,
                options=par.options(), lr_weighted=lr,
            )  # fmt: skip
        except AnalysisError as err:
            missing.append(f"entk{suffix}: {err}")
            continue

        def layout(k: np.ndarray) -> np.ndarray:
            return entk_layout(k, out_dim, eopt.trace_outputs)

        name = f"entk{suffix}"
        data[name] = (
            _without_seed(ENTK.result_dims(name, alt=eopt.trace_outputs)),
            layout(lim.kernel),
        )
        if eopt.per_layer:
            blocks = lim.blocks if eopt.blocks == "tensor" else lim.layer_blocks()
            name = f"entk_per_layer{suffix}"
            dims = _without_seed(ENTK.result_dims(name, alt=eopt.trace_outputs))
            data[name] = (dims, np.stack([layout(k) for k in blocks.values()]))
            coords[dims[0]] = np.array(list(blocks))
    return xr.Dataset(
        data,
        coords=coords,
        attrs={
            "description": "infinite-width limit at init (widthwise.analysis.limit_kernels)",
            "parameterization": par.name,
            "activation": mlp.activation,
            "depth": mlp.depth,
            "sigma": par.sigma,
            "no_limit": "; ".join(missing),
        },
    )
