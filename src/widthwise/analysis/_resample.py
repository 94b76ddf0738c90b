"""Seed resampling machinery shared by ``uncertainty.py`` and ``verdict.py`` (private).

A study array is split into blocks (ensemble, seed, index, sample): every ensemble
(one width, one sweep point) is resampled with its own draws; steps, layers and
other index dims share a replicate's draws, so a replicate resamples whole member
curves; sample dims (points, outputs, kernel entries) decide which members are
finite. Seed means of resamples are weighted sums, so distances between seed means
need only the members' E×E Gram matrices (O(E²) per index and replicate).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from widthwise.analysis._checks import AnalysisError, as_dims, require_dataarray, require_dims

REPLICATE = "replicate"
_BUDGET = 1 << 22  # gathered values per chunk of replicates (32 MiB of float64)
_INDEX_BUDGET = 1 << 24  # replicate weights held at once (128 MiB of float64)


class SeedLayout:
    """A DataArray split into (ensemble, seed, index, sample) blocks for resampling.

    ``independent`` dims (e.g. width, sweep points) are separate ensembles with their
    own draws; the remaining non-sample dims (steps, layers) share one replicate's
    draws, so a replicate resamples whole member curves.
    """

    def __init__(self, da, dim: str, sample_dims: tuple[str, ...], independent: tuple[str, ...]):
        require_dims(da, (dim, *sample_dims, *independent), "da")
        if REPLICATE in da.dims:
            raise AnalysisError(f"da must not have a dim named {REPLICATE!r}.")
        self.da, self.dim = da, dim
        self.indep = independent
        self.sample = sample_dims
        self.shared = tuple(d for d in da.dims if d not in (dim, *sample_dims, *independent))
        self.block_dims = (*self.indep, dim, *self.shared)
        arr = da.transpose(*self.block_dims, *self.sample).values.astype(np.float64)
        self.shape = arr.shape
        ni = int(np.prod(arr.shape[: len(self.indep)], dtype=np.int64))
        self.e = da.sizes[dim]
        ns = int(np.prod(arr.shape[len(self.indep) + 1 : len(self.block_dims)], dtype=np.int64))
        self.x = arr.reshape(ni, self.e, ns, -1)  # (I, E, S, P)
        self.alive = np.isfinite(self.x).all(-1)  # (I, E, S)
        self.n_alive = self.alive.sum(1)  # (I, S)
        self.order = np.argsort(~self.alive, axis=1, kind="stable")  # finite members first
        first = np.take_along_axis(self.x, self.order[:, :1, :, None], axis=1)
        differs = ((self.x != first) & self.alive[..., None]).any(-1)
        self.varies = differs.any(1) & (self.n_alive >= 2)  # (I, S)

    def block(self, values: np.ndarray, *, replicate: bool = False, seed: bool = False):
        """numpy (B?, I, [E], S) -> DataArray with the block dims (coords kept)."""
        dims = [d for d in self.block_dims if seed or d != self.dim]
        shape = [self.da.sizes[d] for d in dims]
        if replicate:
            dims, shape = [REPLICATE, *dims], [values.shape[0], *shape]
        coords = {k: c for k, c in self.da.coords.items() if set(c.dims) <= set(dims)}
        coords = {k: c for k, c in coords.items() if self.dim not in c.dims}
        return xr.DataArray(values.reshape(shape), dims=dims, coords=coords)

    def counts(self) -> tuple[xr.DataArray, xr.DataArray]:
        """(n_seeds, seed_varies) per ensemble and index: dims (*independent, *shared)."""
        return self.block(self.n_alive), self.block(self.varies)

    def uniforms(self, n_boot: int, seed: int) -> np.ndarray:
        """(B, I, E) uniforms: everything a replicate draws (``numpy.random.Generator``)."""
        return np.random.default_rng(seed).random((n_boot, self.x.shape[0], self.e))

    def draws(self, n_boot: int, seed: int, min_seeds: int):
        """Yield (member (b, I, E, S), keep (b, I, E, S)) for chunks of replicates.

        Each replicate draws, per ensemble, E uniforms u; at an index with k finite
        members, draw j picks the floor(u_j k)-th finite member for j < k, and positions
        j >= k are unused (keep False): the resample has k members, like the data.
        """
        u = self.uniforms(n_boot, seed)
        k = self.n_alive[None, :, None, :]
        ok = (self.n_alive >= min_seeds) & self.varies
        keep_base = (np.arange(self.e)[None, None, :, None] < k) & ok[None, :, None, :]
        chunk = max(1, _BUDGET // max(1, self.x.size))
        for s in range(0, n_boot, chunk):
            uc = u[s : s + chunk, :, :, None]
            idx = np.minimum((uc * k).astype(np.int64), np.maximum(k - 1, 0))
            order = np.broadcast_to(self.order[None], (len(uc), *self.order.shape))
            member = np.take_along_axis(order, idx, axis=2)
            yield member, np.broadcast_to(keep_base, member.shape)

    def estimate_weights(self) -> np.ndarray:
        """(I, E, S) weights of the plain seed mean of the finite members."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.alive / np.where(self.n_alive > 0, self.n_alive, np.nan)[:, None, :]


def layout(da, dim, seed_dim, over, independent) -> tuple[SeedLayout, int]:
    da = require_dataarray(da, "da")
    extra = as_dims(independent)
    if dim in over or seed_dim in over or dim in extra:
        raise AnalysisError(
            f"'over' and 'independent' must not contain dim={dim!r} or seed_dim={seed_dim!r}."
        )
    return SeedLayout(da, seed_dim, as_dims(over), (dim, *extra)), da.sizes[dim]


def out_array(lay: SeedLayout, values, dim: str, labels, replicate: bool) -> xr.DataArray:
    """(B?, Q, K, S) numpy -> DataArray (replicate?, dim, *independent, *shared)."""
    dims = [d for d in lay.block_dims if d != lay.dim]
    shape = [len(labels) if d == dim else lay.da.sizes[d] for d in dims]
    if replicate:
        dims, shape = [REPLICATE, *dims], [values.shape[0], *shape]
    coords = {
        k: c
        for k, c in lay.da.coords.items()
        if set(c.dims) <= set(dims) and dim not in c.dims and lay.dim not in c.dims
    }
    return xr.DataArray(np.reshape(values, shape), dims=dims, coords={**coords, dim: labels})


def _pattern_weights(u: np.ndarray, k: np.ndarray, order: np.ndarray) -> np.ndarray:
    """(B, I, E) weights of the resampled seed means where ensemble i has k_i finite members
    in ``order`` (finite first): member at position r gets #{j < k: floor(u_j k) = r} / k,
    the same picks as :meth:`SeedLayout.draws`."""
    b, i, e = u.shape
    idx = np.minimum((u * k[None, :, None]).astype(np.int64), np.maximum(k - 1, 0)[None, :, None])
    valid = np.broadcast_to(np.arange(e)[None, None, :] < k[None, :, None], idx.shape)
    flat = (np.arange(b * i).reshape(b, i, 1) * e + idx)[valid]
    cnt = np.bincount(flat, minlength=b * i * e).reshape(b, i, e)
    rank = np.broadcast_to(np.argsort(order, axis=1)[None], cnt.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.take_along_axis(cnt, rank, axis=2) / np.where(k > 0, k, np.nan)[None, :, None]


def _wsum(w: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Σ_e w[b, q, k, e] y[q, k, e, ...] -> (B, Q, K, ...) as one broadcast matmul."""
    bb, q, k, e = w.shape
    rest = y.shape[3:]
    out = np.matmul(w.reshape(bb, q * k, 1, e), y.reshape(q * k, e, -1))
    return out.reshape(bb, q, k, *rest)


def _moments(w, x, a, b, gram: bool, need) -> dict[str, np.ndarray]:
    """Sums over the sample of |m_a|² (aa), |m_b|² (bb), |m_a − m_b|² (dd) and
    Σ_e w_e |x_e|² (sa) for the seed means m = Σ_e w_e x_e of width pairs (a, b);
    w (B, W, K, E), x (W, K, E, S, P) -> each (B, Q, K, S); only the names in ``need``."""
    out = {"sa": _wsum(w[:, a], (x[a] ** 2).sum(-1))} if "sa" in need else {}
    if not gram:  # few sample entries: form the means
        m = _wsum(w, x)  # (B, W, K, S, P)
        ma, mb = m[:, a], m[:, b]
        parts = {"aa": lambda: ma**2, "bb": lambda: mb**2, "dd": lambda: (ma - mb) ** 2}
        out.update({k: f().sum(-1) for k, f in parts.items() if k in need})
        return out
    g = np.einsum("wkisp,wkjsp->wkijs", x, x)  # E×E Gram per index
    gab = np.einsum("qkisp,qkjsp->qkijs", x[a], x[b])
    for name, (p, gg, q) in {"aa": (a, g[a], a), "ab": (a, gab, b), "bb": (b, g[b], b)}.items():
        out[name] = (_wsum(w[:, p], gg) * w[:, q, :, :, None]).sum(3)
    out["dd"] = np.maximum(out["aa"] - 2 * out.pop("ab") + out["bb"], 0.0)
    return out


def seed_mean_moments(lay: SeedLayout, nw: int, a, b, n_boot: int, seed: int, need):
    """Estimate and replicate moments (see :func:`_moments`) of width pairs (a, b).

    ``need`` names the moments wanted (aa, bb, dd, sa). Returns (estimate dict (Q, K,
    S), replicate dict (B, Q, K, S), sample size P,
    n_alive (W, K, S), varies (W, K, S)). Indices where every ensemble has the same
    finite members share one weight matrix, so a replicate costs O(E) (or O(E²) with
    many sample entries) per index and width.
    """
    x = np.where(lay.alive[..., None], lay.x, 0.0)
    x = x.reshape(nw, -1, *x.shape[1:])  # (W, K, E, S, P)
    kk, e, ns, p = x.shape[1:]
    west = lay.estimate_weights().reshape(nw, kk, e, ns)
    m = np.einsum("wkes,wkesp->wksp", west, x)  # exact seed means
    est = {
        "sa": np.einsum("qkes,qkes->qks", west[a], (x[a] ** 2).sum(-1)),
        "aa": (m[a] ** 2).sum(-1),
        "bb": (m[b] ** 2).sum(-1),
        "dd": ((m[a] - m[b]) ** 2).sum(-1),
    }
    u = lay.uniforms(n_boot, seed)
    key = np.concatenate([lay.n_alive[:, None, :], lay.order], axis=1).reshape(-1, ns).T
    _, first, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)
    rep: dict[str, np.ndarray] = {}
    for gi, s0 in enumerate(first):
        w = _pattern_weights(u, lay.n_alive[:, s0], lay.order[:, :, s0])
        w = w.reshape(n_boot, nw, kk, e)
        if len(first) == 1:  # the same finite members at every index: no scatter
            rep = _moments(w, x, a, b, p > e, need)
            break
        steps = np.flatnonzero(inv.ravel() == gi)
        for k, v in _moments(w, x[:, :, :, steps], a, b, p > e, need).items():
            rep.setdefault(k, np.empty((n_boot, len(a), kk, ns)))[..., steps] = v
    shape = (nw, kk, ns)
    return est, rep, p, lay.n_alive.reshape(shape), lay.varies.reshape(shape)


def in_chunks(da: xr.DataArray, sample_dims, fixed_dims, n_boot: int, fn):
    """``fn(da)``, split along the largest dim that is neither a sample nor a fixed dim
    when the replicate weights (n_boot × every non-sample entry) would exceed the
    budget; the pieces are concatenated. The draws depend only on (seed, n_boot,
    ensembles, seeds), so the result equals the unsplit one (e.g. 20 000 loss steps)."""
    sizes = {d: n for d, n in da.sizes.items() if d not in sample_dims}
    cost = n_boot * int(np.prod(list(sizes.values()), dtype=np.int64))
    free = [d for d in sizes if d not in fixed_dims]
    if cost <= _INDEX_BUDGET or not free:
        return fn(da)
    d = max(free, key=lambda k: sizes[k])
    c = max(1, _INDEX_BUDGET // max(1, cost // sizes[d]))
    parts = [fn(da.isel({d: slice(i, i + c)})) for i in range(0, sizes[d], c)]
    return xr.concat(parts, d, combine_attrs="override")


def _slope(logn: np.ndarray, q: np.ndarray) -> np.ndarray:
    """OLS slope of log q on log n along axis 1 of q (..., W, ...); NaN if any q <= 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.where(q > 0, np.log(q), np.nan)
    shape = [1] * q.ndim
    shape[1] = -1
    xc = (logn - logn.mean()).reshape(shape)
    return (xc * (y - y.mean(1, keepdims=True))).sum(1) / (xc**2).sum()


PARTS = ("estimate", "replicates", "n_seeds", "seed_varies")


def slope_part(da, *, quantity, over, dim, seed_dim, n_boot, seed) -> xr.Dataset:
    """Estimate, replicates and counts of the slope for one chunk of the shared dims."""
    lay, nw = layout(da, dim, seed_dim, over, ())
    labels = np.asarray(
        (da[dim].values if dim in da.coords else np.arange(da.sizes[dim])), dtype=np.float64
    )
    ref = int(np.argmax(labels))
    keep = np.array([i for i in range(nw) if quantity != "bias" or i != ref])
    other = np.full_like(keep, ref) if quantity == "bias" else keep
    need = {"variance": {"sa", "aa"}, "bias": {"dd"}, "mean": {"aa"}}[quantity]
    est, rep, p, n_alive, vv = seed_mean_moments(lay, nw, keep, other, n_boot, seed, need)

    def q_of(m):  # moments (b?, W', K, S) -> the quantity per width
        if quantity == "variance":
            return (m["sa"] - m["aa"]) / p
        return m["dd"] / p if quantity == "bias" else np.sqrt(m["aa"] / p)

    with np.errstate(invalid="ignore", divide="ignore"):
        logn = np.log(labels[keep])
        est, rep = _slope(logn, q_of(est)[None])[0], _slope(logn, q_of(rep))
    n = n_alive.min(0)
    varies = vv.all(0)
    one = np.asarray([0])
    arrays = ((est, 0), (rep, 1), (n, 0), (varies, 0))
    parts = [out_array(lay, v, dim, one, r).isel({dim: 0}, drop=True) for v, r in arrays]
    return xr.Dataset(dict(zip(PARTS, parts)))
