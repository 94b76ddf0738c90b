"""Cost of the eNTK and sharpness probes against their textbook baselines.

    python benchmarks/probes.py            # full run (about 4 minutes on 2 CPU cores)
    python benchmarks/probes.py --quick    # smaller sizes, about two minutes
    python benchmarks/probes.py --threads 1   # on a CPU shared with other jobs

Three measurements, every ratio taken in the same run (results: RESULTS_probes.md):

1. **eNTK**, MLP depth 3, width 1024, input dim 16, muP, one member, M = 256 probe
   points, C = 1 and C = 10 outputs, float64, full (M·C × M·C) kernel:
   ``implementation="structured"`` (``(X Xᵀ) ⊙ (G Gᵀ)``, no Jacobian) against the
   ``vmap(jacrev)`` Jacobian contraction of the PyTorch NTK tutorial
   (``empirical_ntk_jacobian_contraction``; the Jacobian is computed once, since
   x1 = x2, which makes the baseline faster than the tutorial as written).
   For C = 10 the baseline's Jacobian (M·C × 1.07M params, 22 GB in float64) does
   not fit in memory: it is run on the first ``BLOCK`` points and its time
   extrapolated as ``t_jac·(M/BLOCK) + t_contract·(M/BLOCK)²`` (Jacobian rows scale
   with M, the contraction with M²); the C = 1 row runs the baseline in full *and*
   reports the same extrapolation, as a check of it. Relative error
   ``‖K_s − K_b‖_F / ‖K_b‖_F`` on all (C = 1) or the block's (C = 10) entries.
   Peak memory: each configuration runs in its own subprocess, which reports its
   ``getrusage(RUSAGE_SELF).ru_maxrss`` (tracemalloc does not see torch's
   allocations) minus that of a subprocess that only builds the same model and
   points ("idle"); on CUDA, ``torch.cuda.max_memory_allocated``.
2. **Sharpness**, quickstart spec (muP MLP, depth 3, SGD + momentum), width 256,
   4 seeds, float64, 256 probe points, at init and after 200 steps, on the
   quickstart's Gegenbauer regression (mse, one output: one dominant outlier
   eigenvalue) and on the 10-class teacher stream (cross-entropy: ~C clustered
   outliers): Hessian-vector products until the top eigenvalue *stays* within
   relative error 1e-3 of a reference (Lanczos to residual 1e-10), Lanczos vs power
   iteration, per member (median reported).
3. **Ensemble-batched HVP**: one HVP of an E = 8 ensemble (block-diagonal, one
   jvp-of-grad pass) vs 8 HVPs of E = 1 ensembles, widths 64, 128 and 256, 256
   points, float32; interleaved rounds, best round of each. The last column is the
   batched HVP's matmul FLOP rate (≈ 9 matmul passes per layer: forward, backward
   and their tangents) as a fraction of this machine's float32 matmul peak,
   measured in the same run: near 100 %, batching can only remove overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from widthwise.ensemble import Ensemble
from widthwise.families import FAMILIES
from widthwise.families.mlp import MLPOptions
from widthwise.parameterization import RuleContext, rules_for
from widthwise.probes.ntk import empirical_ntk
from widthwise.probes.sharpness import ensemble_hvp, lanczos, power_iteration

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TARGET_NTK_SPEEDUP, TARGET_NTK_ERR = 10.0, 1e-5
TARGET_HVP_RATIO, TARGET_BATCH_SPEEDUP = 3.0, 2.0
LOAD_BEFORE = os.getloadavg()[0]


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def peak_bytes() -> int:
    if DEVICE.type == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def mlp(width: int, d_in: int, out: int, seeds: list[int], dtype=torch.float64):
    net = FAMILIES.get("mlp")(width, (d_in,), out, MLPOptions(depth=3))
    rules = rules_for("mup", list(net.params), RuleContext(width, 64, "sgd", sigma=1.4142))
    ens = Ensemble(net, rules, seeds, loss="mse", device=DEVICE, dtype=dtype)
    return ens, ens.init_params()


# -- 1. eNTK (each configuration in a subprocess) ------------------------------------------


def tutorial_contraction(
    ens: Ensemble, params: dict, x: torch.Tensor
) -> tuple[float, float, torch.Tensor]:
    """The PyTorch NTK tutorial's vmap(jacrev) contraction, x1 = x2; (t_jac, t_contract, K)."""
    raw = {k: v[0].detach() for k, v in params.items()}

    def fnet_single(p, xi):
        return ens.network.apply(ens.effective(p), xi.unsqueeze(0), False)[0].squeeze(0)

    sync()
    t0 = time.perf_counter()
    jac = torch.func.vmap(torch.func.jacrev(fnet_single), (None, 0))(raw, x)
    jac = [j.flatten(2) for j in jac.values()]  # each (M, C, n_t)
    sync()
    t1 = time.perf_counter()
    k = torch.stack([torch.einsum("Naf,Mbf->NaMb", j, j) for j in jac]).sum(0)
    sync()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, k


def ntk_child(cfg: dict) -> dict:
    torch.manual_seed(0)
    ens, params = mlp(cfg["width"], 16, cfg["C"], [0])
    x = torch.randn(cfg["M"], 16, dtype=torch.float64, device=DEVICE)
    out: dict = {}
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if cfg["kind"] == "structured":
        times = []
        for _ in range(cfg["repeats"]):
            sync()
            t0 = time.perf_counter()
            res = empirical_ntk(ens, params, x, implementation="structured", dtype=torch.float64)
            sync()
            times.append(time.perf_counter() - t0)
        out["time"] = min(times)
        np.save(cfg["save"], res.kernel[0].cpu().numpy())
    elif cfg["kind"] == "baseline":
        m = cfg.get("block") or cfg["M"]
        t_jac, t_con, k = tutorial_contraction(ens, params, x[:m])
        out.update(t_jac=t_jac, t_contract=t_con, points=m)
        np.save(cfg["save"], k.cpu().numpy())
    out["peak_bytes"] = peak_bytes()
    return out


def run_child(cfg: dict) -> dict:
    threads = ["--threads", str(torch.get_num_threads())]
    proc = subprocess.run(
        [sys.executable, __file__, *threads, "--child", json.dumps(cfg)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {cfg} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_ntk(quick: bool, tmp: Path) -> list[dict]:
    width, m, block = (256, 64, 16) if quick else (1024, 256, 32)
    rows = []
    for c in (1, 10):
        base = {"width": width, "M": m, "C": c}
        idle = run_child({**base, "kind": "idle"})["peak_bytes"]
        s = run_child({**base, "kind": "structured", "repeats": 3, "save": str(tmp / f"s{c}.npy")})
        ks = np.load(tmp / f"s{c}.npy")
        row = {"C": c, "M": m, "width": width, "t_structured": s["time"]}
        row["mem_structured"] = s["peak_bytes"] - idle
        blk = run_child(
            {**base, "kind": "baseline", "block": block, "save": str(tmp / f"b{c}.npy")}
        )
        scale = m / block
        row["t_baseline_extrapolated"] = blk["t_jac"] * scale + blk["t_contract"] * scale**2
        row["mem_baseline_block"] = blk["peak_bytes"] - idle
        row["block"] = block
        kb = np.load(tmp / f"b{c}.npy")
        if c == 1:
            full = run_child({**base, "kind": "baseline", "save": str(tmp / f"b{c}.npy")})
            row["t_baseline"] = full["t_jac"] + full["t_contract"]
            row["mem_baseline"] = full["peak_bytes"] - idle
            kb = np.load(tmp / f"b{c}.npy")
            ref = ks
        else:
            ref = ks[:block, :, :block, :]
        row["rel_err"] = float(np.linalg.norm(ref - kb) / np.linalg.norm(kb))
        t_base = row.get("t_baseline", row["t_baseline_extrapolated"])
        row["speedup"] = t_base / row["t_structured"]
        rows.append(row)
        print(f"  eNTK C={c}: {row}", flush=True)
    return rows


# -- 2. sharpness: HVPs to 1e-3 ------------------------------------------------------------


def hvps_to_accuracy(history: list[torch.Tensor], ref: torch.Tensor, per_iter: int, rtol: float):
    """Per member: operator applications until the top estimate *stays* within rtol of ref."""
    h = torch.stack(history).cpu()  # (iters, seed)
    bad = (h - ref.cpu()).abs() > rtol * ref.abs().cpu()
    out = []
    for e in range(h.shape[1]):
        idx = torch.nonzero(bad[:, e])
        last_bad = int(idx[-1]) + 1 if len(idx) else 0
        out.append(None if last_bad >= h.shape[0] else (last_bad + 1) * per_iter)
    return out


SHARPNESS_CASES = {  # name: (stream, options); mse with 1 output vs 10-class cross-entropy
    "gegenbauer mse C=1": ("gegenbauer", {"dim": 16, "degree": 2}),
    "teacher CE C=10": ("teacher", {"dim": 16, "classes": 10}),
}


def bench_sharpness(quick: bool) -> list[dict]:
    from widthwise.spec import DataSpec, load_spec
    from widthwise.study import build_stream
    from widthwise.trainer import EnsembleTrainer

    width = 64 if quick else 256
    rows = []
    for case, (stream_name, options) in SHARPNESS_CASES.items():
        data = DataSpec(stream=stream_name, seed=0, options=options, probe_points=256)
        spec = load_spec("quickstart").model_copy(
            update={
                "widths": [width],
                "seeds": 4,
                "dtype": "float64",
                "device": str(DEVICE),
                "data": data,
            }
        )
        stream = build_stream(spec)
        trainer = EnsembleTrainer(spec, width, stream, DEVICE)
        x, y = trainer.to_tensors(*stream.probe_set(256))
        for steps in (0, 50 if quick else 200):
            while trainer.step < steps:
                trainer.train_step()
            hvp, flat = ensemble_hvp(trainer.ensemble, trainer.params, x, y)
            like = flat.flatten({k: v.detach() for k, v in trainer.params.items()})
            ref = lanczos(hvp, like, k=1, iters=300, tol=1e-10).values[:, 0]
            counts = {}
            for name, solver, cap in (("lanczos", lanczos, 150), ("power", power_iteration, 1500)):
                hist: list[torch.Tensor] = []
                # run on until the residual is 1e-5·λ (eigenvalue error far below 1e-3)
                solver(hvp, like, k=1, iters=cap, tol=1e-5, history=hist)
                counts[name] = hvps_to_accuracy(hist, ref, 1, 1e-3)
            ok = [c for c in counts["power"] if c is not None]
            row = {
                "case": case,
                "step": steps,
                "width": width,
                "sharpness": [round(float(v), 3) for v in ref],
                "lanczos": counts["lanczos"],
                "power": counts["power"],
                "lanczos_median": statistics.median(counts["lanczos"]),
                "power_median": statistics.median(ok) if len(ok) == len(counts["power"]) else None,
            }
            pm = row["power_median"] if row["power_median"] is not None else 1500
            row["ratio"] = pm / row["lanczos_median"]
            rows.append(row)
            print(f"  sharpness: {row}", flush=True)
    return rows


# -- 3. one batched HVP vs E separate ones -------------------------------------------------


def matmul_peak() -> float:
    """This machine's float32 matmul FLOP/s: best of several 1024² products."""
    a = torch.randn(1024, 1024, device=DEVICE)
    best = float("inf")
    for _ in range(10):
        sync()
        t0 = time.perf_counter()
        a @ a
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * 1024**3 / best


def bench_hvp_batching(quick: bool) -> list[dict]:
    e, rounds = 8, (3 if quick else 7)
    rows = []
    peak = matmul_peak()
    for width in (64, 128, 256):
        ens, params = mlp(width, 16, 1, list(range(e)), dtype=torch.float32)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(256, 16, generator=gen).to(DEVICE)
        y = torch.randn(256, 1, generator=gen).to(DEVICE)
        hvp, flat = ensemble_hvp(ens, params, x, y)
        v = torch.randn(e, flat.numel, generator=gen).to(DEVICE)
        singles = []
        for i in range(e):
            one = Ensemble(ens.network, ens.rules, [i], loss="mse", device=DEVICE)
            p1 = {k: t[i : i + 1].detach() for k, t in params.items()}
            h1, _ = ensemble_hvp(one, p1, x, y)
            singles.append((h1, v[i : i + 1]))
        batched_out = hvp(v)  # warm-up, and a check that both compute the same thing
        sep_out = torch.cat([h(vi) for h, vi in singles])
        err = float((batched_out - sep_out).norm() / sep_out.norm())
        tb, ts = [], []
        for _ in range(rounds):
            sync()
            t0 = time.perf_counter()
            hvp(v)
            sync()
            tb.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for h, vi in singles:
                h(vi)
            sync()
            ts.append(time.perf_counter() - t0)
        row = {
            "width": width,
            "E": e,
            "strategy": ens.strategy,
            "t_batched": min(tb),
            "t_separate": min(ts),
            "speedup": min(ts) / min(tb),
            "rel_diff": err,
            # ≈ 9 matmul passes per layer (forward, its tangent, backward, its tangent)
            "peak_fraction": 2
            * 9
            * 256
            * e
            * (16 * width + width * width + width)
            / min(tb)
            / peak,
        }
        rows.append(row)
        print(f"  HVP batching: {row}", flush=True)
    return rows


# -- report ------------------------------------------------------------------------------


def mib(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB"


def report(ntk: list[dict], sharp: list[dict], hvp: list[dict], wall: float) -> str:
    lines = [
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {DEVICE}; "
        f"{time.strftime('%Y-%m-%d')}; total {wall:.0f} s; load average before/after "
        f"{LOAD_BEFORE:.1f}/{os.getloadavg()[0]:.1f}",
        "",
        "eNTK, full kernel, float64, one member (structured vs tutorial vmap(jacrev) contraction)",
        "| C | M | width | structured | baseline | speedup | rel. error | peak mem structured | "
        "peak mem baseline |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ntk:
        if "t_baseline" in r:
            base = f"{r['t_baseline']:.2f} s (extrapolated from {r['block']} pts: "
            base += f"{r['t_baseline_extrapolated']:.2f} s)"
            mem = f"{mib(r['mem_baseline'])}"
        else:
            base = f"{r['t_baseline_extrapolated']:.1f} s (extrapolated from {r['block']} pts)"
            mem = f"{mib(r['mem_baseline_block'])} for {r['block']} pts"
        flag = (
            "ok"
            if r["speedup"] >= TARGET_NTK_SPEEDUP and r["rel_err"] <= TARGET_NTK_ERR
            else "MISS"
        )
        lines.append(
            f"| {r['C']} | {r['M']} | {r['width']} | {r['t_structured']:.3f} s | {base} | "
            f"{r['speedup']:.0f}x ({flag}) | {r['rel_err']:.1e} | {mib(r['mem_structured'])} | "
            f"{mem} |"
        )
    check = [r for r in ntk if "t_baseline" in r]
    if check:
        bias = check[0]["t_baseline_extrapolated"] / check[0]["t_baseline"]
        lines.append(
            f"(extrapolation check, C = 1: extrapolated / measured baseline = {bias:.2f}; "
            "the contraction of a small block is memory-bound, so extrapolating from it "
            f"overestimates; C = 10 speedup corrected by it: {ntk[-1]['speedup'] / bias:.0f}x)"
        )
    lines += [
        "",
        "sharpness: HVPs until the top eigenvalue stays within 1e-3 (per member; median)",
        "| case | step | width | top eigenvalue per seed | Lanczos | power | power / Lanczos |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sharp:
        flag = "ok" if r["ratio"] >= TARGET_HVP_RATIO else "MISS"
        lines.append(
            f"| {r['case']} | {r['step']} | {r['width']} | {r['sharpness']} | {r['lanczos']} "
            f"(median {r['lanczos_median']}) | {r['power']} (median {r['power_median']}) | "
            f"{r['ratio']:.1f}x ({flag}) |"
        )
    lines += [
        "",
        "one ensemble-batched HVP vs E separate HVPs (float32, 256 points)",
        "| width | E | forward strategy | batched | separate | speedup | rel. diff | "
        "batched at % of matmul peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in hvp:
        flag = "ok" if r["speedup"] >= TARGET_BATCH_SPEEDUP else "MISS"
        lines.append(
            f"| {r['width']} | {r['E']} | {r['strategy']} | {1e3 * r['t_batched']:.1f} ms | "
            f"{1e3 * r['t_separate']:.1f} ms | {r['speedup']:.1f}x ({flag}) | {r['rel_diff']:.1e} | "
            f"{100 * r['peak_fraction']:.0f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a sanity run)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(ntk_child(json.loads(args.child))))
        return
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        print("eNTK ...", flush=True)
        ntk = bench_ntk(args.quick, Path(tmp))
    print("sharpness ...", flush=True)
    sharp = bench_sharpness(args.quick)
    print("HVP batching ...", flush=True)
    hvp = bench_hvp_batching(args.quick)
    print()
    print(report(ntk, sharp, hvp, time.perf_counter() - start))


if __name__ == "__main__":
    main()
