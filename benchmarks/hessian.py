"""Sharpness, trace and spectral density: widthwise against PyHessian 0.1, side by side.

    pip install --no-deps pyhessian            # once, into the venv
    python benchmarks/hessian.py               # SP and muP, widths 256 and 1024 (CPU: ~15 min)
    python benchmarks/hessian.py --widths 256  # quicker
    python benchmarks/hessian.py --threads 1   # on a CPU shared with other jobs
    python benchmarks/hessian.py --trace-only  # the trace rows alone (a few minutes)

Setting: MLP depth 3 (input 32 → width → width → 10), 4 seeds, float32, cross-entropy
on 256 fixed points with random labels, weights at init (SP: all multipliers 1; muP:
base width 64), the same weights and batch for both tools. PyHessian gets one plain
``nn.Module`` per seed whose forward applies the parameterization's multipliers to the
raw weights, so both differentiate the same loss with respect to the same raw ``w``.

Measured per (parameterization, width), all four seeds:

- **top eigenvalue**: PyHessian ``hessian(...).eigenvalues(maxIter=100, tol=1e-3)``
  (power iteration, stops when the estimate changes by < tol) per seed, against the
  sharpness probe's batched Lanczos (``tol=1e-3`` on the residual, one gradient graph
  per call). Reference: scipy ``eigsh`` (``which='LA'``, tol 1e-10) on float64 HVPs
  (widths ≤ 256; wider, float64 batched Lanczos to residual 1e-7, which the tests check
  against dense Hessians).
- **top eigenvalue at PyHessian's accuracy** (work-precision): the fewest Lanczos steps
  at which every seed's error is ≤ PyHessian's own, timed alone (``matched_accuracy``).
- **trace**: PyHessian ``trace(maxIter=100, tol=1e-3)`` per seed (it stops when the
  running mean changes by < 0.1 %, whatever its error), against batched Hutchinson
  stopping once every seed's standard error is ≤ 3 % of its trace (at most 100
  probes). Reference: float64 Hutchinson with ``--ref-samples`` probes (its relative
  standard error is printed beside).
- **density**: PyHessian ``density(iter=100, n_v=1)`` (its ``torch.eig`` call, removed
  from torch, is shimmed here with ``torch.linalg.eigh``; amirgholami/PyHessian#17),
  against batched SLQ with the same 100 HVPs per seed (2 runs × 50 steps). Accuracy:
  W1 distance of each quadrature measure to a float64 reference SLQ (6 runs × 60 steps;
  width > 256: 3 × 40),
  divided by the reference's spectral range.
- **HVP batching**: one ensemble (E = 4) graph HVP against 4 HVPs of E = 1 ensembles
  (the same weights), and the former ``jvp(grad)`` ensemble HVP; best of interleaved rounds.

Wall times include building the gradient graph (PyHessian: its constructor); CPU
times (``time.process_time``, all threads) are recorded beside them, a steadier
measure on a machine shared with other jobs (the 1-minute load average is recorded
too). Errors
are the median over seeds of |estimate − reference| / |reference|.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time

import numpy as np
import torch
from torch import nn

from widthwise.ensemble import Ensemble
from widthwise.families import FAMILIES
from widthwise.families.mlp import MLPOptions
from widthwise.parameterization import RuleContext, rules_for
from widthwise.probes.hessian import hutchinson, slq
from widthwise.probes.sharpness import ensemble_hvp, lanczos

SEEDS = [0, 1, 2, 3]
EIGSH_MAX_WIDTH = 256  # wider: the float64 top-eigenvalue reference is batched Lanczos
TRACE_TOL = 0.03  # Hutchinson stops at standard error ≤ 3 % of the trace
IN, OUT, POINTS = 32, 10, 256


def shim_torch_eig() -> None:
    """PyHessian's density() calls ``torch.eig`` (removed in torch 2.0): eigh of its
    symmetric tridiagonal T, returned as torch.eig did (values as (n, 2) real/imag)."""

    def eig(a: torch.Tensor, eigenvectors: bool = False):  # noqa: FBT001, FBT002
        w, v = torch.linalg.eigh(a)
        return torch.stack([w, torch.zeros_like(w)], 1), v

    torch.eig = eig  # type: ignore[attr-defined]


def build(par: str, width: int, dtype: torch.dtype, seeds=SEEDS) -> Ensemble:
    net = FAMILIES.get("mlp")(width, (IN,), OUT, MLPOptions(depth=3))
    rules = rules_for(
        par, list(net.params), RuleContext(width=width, base_width=64, optimizer="sgd")
    )
    return Ensemble(
        net, rules, seeds, loss="cross_entropy", device=torch.device("cpu"), dtype=dtype
    )


class Member(nn.Module):
    """One seed of ``ens`` as a plain module over raw weights (multipliers applied)."""

    def __init__(self, ens: Ensemble, raw: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.ens, self.names = ens, list(raw)
        self.ws = nn.ParameterList([nn.Parameter(t.detach().clone()) for t in raw.values()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = dict(zip(self.names, self.ws))
        return self.ens.network.apply(self.ens.effective(raw), x, False)[0]


def w1(nodes_a, weights_a, nodes_b, weights_b) -> float:
    """W1 between two discrete measures (weights normalized)."""
    a, wa = np.ravel(nodes_a), np.ravel(weights_a) / np.sum(weights_a)
    b, wb = np.ravel(nodes_b), np.ravel(weights_b) / np.sum(weights_b)
    t = np.sort(np.concatenate([a, b]))
    fa = np.array([wa[a <= s].sum() for s in t])
    fb = np.array([wb[b <= s].sum() for s in t])
    return float(np.sum(np.abs(fa - fb)[:-1] * np.diff(t)))


def references(par, width, params, x, y, ref_samples):
    from scipy.sparse.linalg import LinearOperator, eigsh

    tops = []
    if width > EIGSH_MAX_WIDTH:  # float64 Lanczos of all seeds at once, to residual 1e-9
        ens = build(par, width, torch.float64)
        p64 = {k: v.double() for k, v in params.items()}
        hvp, flat = ensemble_hvp(ens, p64, x.double(), y)
        r = lanczos(hvp, flat.flatten(p64), k=1, iters=100, tol=1e-7, seed=3)
        tops = r.values[:, 0].tolist()
    for e in range(len(SEEDS) if width <= EIGSH_MAX_WIDTH else 0):
        ens1 = build(par, width, torch.float64, [SEEDS[e]])
        p1 = {k: v[e : e + 1].double() for k, v in params.items()}
        hvp, flat = ensemble_hvp(ens1, p1, x.double(), y)

        def mv(v, hvp=hvp):
            return hvp(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64))[None])[0].numpy()

        op = LinearOperator((flat.numel, flat.numel), matvec=mv, dtype=np.float64)
        tops.append(float(eigsh(op, k=1, which="LA", tol=1e-10, return_eigenvectors=False)[0]))
    ens = build(par, width, torch.float64)
    p64 = {k: v.double() for k, v in params.items()}
    hvp, flat = ensemble_hvp(ens, p64, x.double(), y)
    like = flat.flatten(p64)
    small = width <= EIGSH_MAX_WIDTH  # wider: a lighter reference (memory and time)
    tr = hutchinson(hvp, like, ref_samples, 0.0, seed=12345)
    steps, runs = (60, 6) if small else (40, 3)
    q = slq(hvp, like, steps=steps, runs=runs, seed=777)
    return np.array(tops), tr.trace.numpy(), tr.se.numpy(), q.nodes.numpy(), q.weights.numpy()


def run_pyhessian(ens, params, x, y):
    from pyhessian import hessian

    crit = nn.CrossEntropyLoss()
    out = {"eig": [], "trace": [], "trace_probes": [], "density": []}
    out.update({f"t_{k}": 0.0 for k in ("eig", "trace", "density")})
    out.update({f"c_{k}": 0.0 for k in ("eig", "trace", "density")})
    for e in range(len(SEEDS)):
        model = Member(ens, {k: v[e] for k, v in params.items()})
        torch.manual_seed(100 + e)  # PyHessian draws from the global RNG
        t0, c0 = time.perf_counter(), time.process_time()
        out["eig"].append(hessian(model, crit, data=(x, y), cuda=False).eigenvalues()[0][0])
        out["t_eig"] += time.perf_counter() - t0
        out["c_eig"] += time.process_time() - c0
        model.zero_grad(set_to_none=True)
        t0, c0 = time.perf_counter(), time.process_time()
        vhv = hessian(model, crit, data=(x, y), cuda=False).trace()
        out["trace"].append(float(np.mean(vhv)))
        out["trace_probes"].append(len(vhv))
        out["t_trace"] += time.perf_counter() - t0
        out["c_trace"] += time.process_time() - c0
        model.zero_grad(set_to_none=True)
        t0, c0 = time.perf_counter(), time.process_time()
        nodes, weights = hessian(model, crit, data=(x, y), cuda=False).density(iter=100, n_v=1)
        out["t_density"] += time.perf_counter() - t0
        out["c_density"] += time.process_time() - c0
        out["density"].append((np.array(nodes), np.array(weights)))
        model.zero_grad(set_to_none=True)
    return out


def run_widthwise(ens, params, x, y):
    out = {}
    t0, c0 = time.perf_counter(), time.process_time()
    hvp, flat = ensemble_hvp(ens, params, x, y)
    like = flat.flatten(params)
    r = lanczos(hvp, like, k=1, iters=100, tol=1e-3, seed=0)
    out["t_eig"] = time.perf_counter() - t0
    out["c_eig"] = time.process_time() - c0
    out["eig"], out["eig_hvps"] = r.values[:, 0].double().numpy(), r.hvps
    # the same with stop="eigenvalue" (the eigenvalue error estimate min(r, r²/gap))
    t0 = time.perf_counter()
    hvp, flat = ensemble_hvp(ens, params, x, y)
    r = lanczos(hvp, like, k=1, iters=100, tol=1e-3, seed=0, stop="eigenvalue")
    out["t_eig_stop"] = time.perf_counter() - t0
    out["eig_stop"], out["eig_stop_hvps"] = r.values[:, 0].double().numpy(), r.hvps
    t0, c0 = time.perf_counter(), time.process_time()
    hvp, flat = ensemble_hvp(ens, params, x, y)
    tr = hutchinson(hvp, like, 100, TRACE_TOL, seed=0, batch=8)
    out["t_trace"] = time.perf_counter() - t0
    out["c_trace"] = time.process_time() - c0
    out["trace_hvps"] = tr.hvps
    out["trace"], out["trace_se"], out["trace_samples"] = (
        tr.trace.double().numpy(),
        tr.se.numpy(),
        tr.samples,
    )
    t0, c0 = time.perf_counter(), time.process_time()
    hvp, flat = ensemble_hvp(ens, params, x, y)
    q = slq(hvp, like, steps=50, runs=2, seed=0)
    out["t_density"] = time.perf_counter() - t0
    out["c_density"] = time.process_time() - c0
    out["density"] = (q.nodes.numpy(), q.weights.numpy())
    return out


MATCH_ITERS = 16
"""Lanczos steps tried by the matched-accuracy leg (one run records every step's value)."""


def matched_accuracy(ens, params, x, y, top, ph_eig):
    """Fewest Lanczos steps whose error is ≤ PyHessian's in every seed, and their time.

    A work-precision comparison: one Lanczos run without early stop records each step's
    top Ritz value (``history``); the smallest step count k at which every seed's
    relative error to the float64 reference is at most PyHessian's own error for that
    seed is then timed alone (graph build included, best of 3). ``None`` when no k ≤
    ``MATCH_ITERS`` matches.
    """
    hvp, flat = ensemble_hvp(ens, params, x, y)
    like = flat.flatten(params)
    hist: list[torch.Tensor] = []
    lanczos(hvp, like, k=1, iters=MATCH_ITERS, tol=0.0, seed=0, history=hist)
    ph_err = np.abs(np.asarray(ph_eig) - top) / np.abs(top)
    errs = [np.abs(theta.double().numpy() - top) / np.abs(top) for theta in hist]
    k = next((i + 1 for i, err in enumerate(errs) if np.all(err <= ph_err)), None)
    if k is None:
        return None
    err = errs[k - 1]
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        hvp, flat = ensemble_hvp(ens, params, x, y)
        r = lanczos(hvp, like, k=1, iters=k, tol=0.0, seed=0)
        times.append(time.perf_counter() - t0)
    return {"steps": k, "hvps": r.hvps, "err": float(np.median(err)), "t": min(times)}


def hvp_batching(par, width, params, x, y, rounds=7, reps=5):
    ens = build(par, width, torch.float32)
    graph, flat = ensemble_hvp(ens, params, x, y, "graph")
    jvp, _ = ensemble_hvp(ens, params, x, y, "jvp")
    singles = []
    for e in range(len(SEEDS)):
        ens1 = build(par, width, torch.float32, [SEEDS[e]])
        singles.append(ensemble_hvp(ens1, {k: v[e : e + 1] for k, v in params.items()}, x, y)[0])
    v = torch.randn(len(SEEDS), flat.numel, generator=torch.Generator().manual_seed(0))

    def timed(fn):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps

    best = {"graph": [], "singles": [], "jvp": []}
    for _ in range(rounds):
        best["graph"].append(timed(lambda: graph(v)))
        best["singles"].append(timed(lambda: [s(v[e : e + 1]) for e, s in enumerate(singles)]))
        best["jvp"].append(timed(lambda: jvp(v)))
    return {k: min(t) for k, t in best.items()}


def trace_only(par, width, params, x, y, ref_n, rows) -> None:
    """PyHessian's trace against batched Hutchinson (its stopping rule, and PyHessian's
    probe count), on the float64 reference alone."""
    from pyhessian import hessian

    ens64 = build(par, width, torch.float64)
    p64 = {k: v.double() for k, v in params.items()}
    hvp64, flat64 = ensemble_hvp(ens64, p64, x.double(), y)
    ref = hutchinson(hvp64, flat64.flatten(p64), ref_n, 0.0, seed=12345, batch=8)
    tr = ref.trace.numpy()
    ens = build(par, width, torch.float32)
    crit = nn.CrossEntropyLoss()
    vals, probes, t_ph, c_ph = [], [], 0.0, 0.0
    for e in range(len(SEEDS)):
        model = Member(ens, {k: v[e] for k, v in params.items()})
        torch.manual_seed(100 + e)
        t0, c0 = time.perf_counter(), time.process_time()
        vhv = hessian(model, crit, data=(x, y), cuda=False).trace()
        t_ph, c_ph = t_ph + time.perf_counter() - t0, c_ph + time.process_time() - c0
        vals.append(float(np.mean(vhv)))
        probes.append(len(vhv))
        model.zero_grad(set_to_none=True)
    out = {}
    for name, samples, tol in (("rule", 100, TRACE_TOL), ("equal", int(np.median(probes)), 0.0)):
        t0, c0 = time.perf_counter(), time.process_time()
        hvp, flat = ensemble_hvp(ens, params, x, y)
        r = hutchinson(hvp, flat.flatten(params), samples, tol, seed=0, batch=8)
        out[name] = {
            "t": time.perf_counter() - t0,
            "cpu": time.process_time() - c0,
            "err": rel(r.trace.double().numpy(), tr),
            "probes": r.samples,
        }
    row = {
        "par": par,
        "width": width,
        "trace_ref_rel_se": float(np.median(ref.se.numpy() / np.abs(tr))),
        "pyhessian": {"t": t_ph, "cpu": c_ph, "err": rel(vals, tr), "probes": probes},
        "widthwise": out,
        "load_average": os.getloadavg()[0],
    }
    rows.append(row)
    print(
        f"{par:>4} {width:>5} | trace err PyH {row['pyhessian']['err']:.1e} ({probes} probes, "
        f"{t_ph:.2f}s, cpu {c_ph:.2f}s) | ww rule err {out['rule']['err']:.1e} "
        f"({out['rule']['probes']} probes) ×{t_ph / out['rule']['t']:.2f} (cpu ×"
        f"{c_ph / out['rule']['cpu']:.2f}) | ww {out['equal']['probes']} probes err "
        f"{out['equal']['err']:.1e} ×{t_ph / out['equal']['t']:.2f} (cpu ×"
        f"{c_ph / out['equal']['cpu']:.2f}) | ref se {row['trace_ref_rel_se']:.1e}",
        flush=True,
    )


def rel(a, b) -> float:
    return float(np.median(np.abs(np.asarray(a) - b) / np.abs(b)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="256,1024")
    ap.add_argument("--pars", default="sp,mup")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--ref-samples", type=int, default=None, help="default 300 (≤256), else 100")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    ap.add_argument(
        "--trace-only", action="store_true", help="only the trace rows (and its reference)"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shim_torch_eig()
    print(
        f"# {dt.date.today()} · {platform.processor() or platform.machine()} · "
        f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()} · torch {torch.__version__}"
    )
    rows = []
    for par in args.pars.split(","):
        for width in [int(w) for w in args.widths.split(",")]:
            gen = torch.Generator().manual_seed(width)
            x = torch.randn(POINTS, IN, generator=gen)
            y = torch.randint(0, OUT, (POINTS,), generator=gen)
            ens = build(par, width, torch.float32)
            params = ens.init_params()
            ref_n = args.ref_samples or (300 if width <= 256 else 100)
            if args.trace_only:
                trace_only(par, width, params, x, y, ref_n, rows)
                continue
            t0 = time.perf_counter()
            top, tr, tr_se, rnodes, rweights = references(par, width, params, x, y, ref_n)
            t_ref = time.perf_counter() - t0
            ph = run_pyhessian(ens, params, x, y)
            ww = run_widthwise(ens, params, x, y)
            # the trace again with as many probes as PyHessian took (its median), no rule
            n_eq = int(np.median(ph["trace_probes"]))
            t0, c0 = time.perf_counter(), time.process_time()
            hvp, flat = ensemble_hvp(ens, params, x, y)
            eq = hutchinson(hvp, flat.flatten(params), max(n_eq, 2), 0.0, seed=0, batch=8)
            t_eq, c_eq = time.perf_counter() - t0, time.process_time() - c0
            span = float(np.max(rnodes) - np.min(rnodes))
            dens_err = {
                tool: statistics.median(
                    w1(nodes, weights, rnodes[e], rweights[e]) / span
                    for e, (nodes, weights) in enumerate(dd)
                )
                for tool, dd in (
                    ("pyhessian", ph["density"]),
                    (
                        "widthwise",
                        [(ww["density"][0][e], ww["density"][1][e]) for e in range(len(SEEDS))],
                    ),
                )
            }
            hb = hvp_batching(par, width, params, x, y)
            match = matched_accuracy(ens, params, x, y, top, ph["eig"])
            row = {
                "par": par,
                "width": width,
                "top_ref": top.tolist(),
                "trace_ref": tr.tolist(),
                "trace_ref_rel_se": float(np.median(tr_se / np.abs(tr))),
                "eig_err": {"pyhessian": rel(ph["eig"], top), "widthwise": rel(ww["eig"], top)},
                "eig_stop_eigenvalue": {
                    "err": rel(ww["eig_stop"], top),
                    "t": ww["t_eig_stop"],
                    "hvps": ww["eig_stop_hvps"],
                },
                "trace_err": {"pyhessian": rel(ph["trace"], tr), "widthwise": rel(ww["trace"], tr)},
                "density_w1": dens_err,
                "t": {
                    k: {"pyhessian": ph[f"t_{k}"], "widthwise": ww[f"t_{k}"]}
                    for k in ("eig", "trace", "density")
                },
                "cpu": {
                    k: {"pyhessian": ph[f"c_{k}"], "widthwise": ww[f"c_{k}"]}
                    for k in ("eig", "trace", "density")
                },
                "load_average": os.getloadavg()[0],
                "widthwise_eig_hvps": ww["eig_hvps"],
                "widthwise_trace_samples": ww["trace_samples"],
                "widthwise_trace_hvps": ww["trace_hvps"],
                "pyhessian_trace_probes": ph["trace_probes"],
                "trace_equal_probes": {
                    "probes": max(n_eq, 2),
                    "err": rel(eq.trace.double().numpy(), tr),
                    "t": t_eq,
                    "cpu": c_eq,
                },
                "hvp_s": hb,
                "eig_matched_accuracy": match,
                "t_reference": t_ref,
            }
            rows.append(row)
            t = row["t"]
            print(
                f"{par:>4} {width:>5} | top eig err PyH {row['eig_err']['pyhessian']:.1e} "
                f"ww {row['eig_err']['widthwise']:.1e}, time ×{t['eig']['pyhessian'] / t['eig']['widthwise']:.2f} "
                f"({t['eig']['pyhessian']:.2f}s vs {t['eig']['widthwise']:.2f}s, {ww['eig_hvps']} HVPs; "
                f"stop=eigenvalue err {row['eig_stop_eigenvalue']['err']:.1e} "
                f"×{t['eig']['pyhessian'] / ww['t_eig_stop']:.2f}, {ww['eig_stop_hvps']} HVPs; "
                + (
                    f"at PyH's accuracy {match['steps']} steps, err {match['err']:.1e}, "
                    f"×{t['eig']['pyhessian'] / match['t']:.2f}"
                    if match
                    else f"PyH's accuracy not reached in {MATCH_ITERS} steps"
                )
                + ") | "
                f"trace err PyH {row['trace_err']['pyhessian']:.1e} ww {row['trace_err']['widthwise']:.1e} "
                f"(ref se {row['trace_ref_rel_se']:.1e}), time ×{t['trace']['pyhessian'] / t['trace']['widthwise']:.2f} "
                f"({ww['trace_samples']} probes; PyH {ph['trace_probes']}); at PyH's median probes "
                f"err {row['trace_equal_probes']['err']:.1e} time ×{t['trace']['pyhessian'] / t_eq:.2f} | density W1/range PyH {dens_err['pyhessian']:.3f} "
                f"ww {dens_err['widthwise']:.3f}, time ×{t['density']['pyhessian'] / t['density']['widthwise']:.2f} | "
                f"HVP ensemble ×{hb['singles'] / hb['graph']:.2f} vs per-seed, "
                f"×{hb['jvp'] / hb['graph']:.2f} vs jvp(grad) ({hb['graph'] * 1e3:.1f} ms)",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
