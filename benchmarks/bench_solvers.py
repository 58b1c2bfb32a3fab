"""Solver-speed benchmark of the layer-wise convex solvers (DDLR, Net-Trim): ADMM vs CVXPY/SCS.

Inputs (seeded): X = ReLU(G) with G ~ N(0, 1) of shape (N, d) (a ReLU-ed Gaussian, like the
input of a hidden dense layer), a random layer W0 ~ N(0, 1/d) (n x d), b ~ 0.1 N(0, 1);
Y = X W0^T + b; eps = eps_frac * ||X||_F with eps_frac = 0.1 (paper sec. 4).

Usage: .venv/bin/python benchmarks/bench_solvers.py [--quick] [--threads T] [--cases NAME ...]
Writes benchmarks/results/solvers.json and solvers.md (merging with earlier cases).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import resource
import sys
from pathlib import Path

import torch

import _lib
from compactnn.solvers.layerwise import (
    ADMMOptions,
    CvxpyOptions,
    LayerSolveResult,
    choose_rank,
    solve_ddlr,
    solve_net_trim,
)

RESULTS = Path(__file__).resolve().parent / "results"
# name: (N, d, n, run SCS?)
CASES = {
    "256x120": (256, 256, 120, True),
    "400x120": (256, 400, 120, True),
    "800x500": (256, 800, 500, True),
    "4096x4096": (2048, 4096, 4096, False),
}


def layer(N: int, d: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.relu(torch.randn(N, d, generator=g, dtype=torch.float64))
    W = torch.randn(n, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    b = 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    return X, X @ W.T + b, b


def row(res: LayerSolveResult, method: str) -> dict:
    out = {
        "status": res.status,
        "seconds": round(res.seconds, 3),
        "objective": res.objective,
        "violation": res.constraint_violation,
        "iterations": res.iterations,
    }
    if method == "ddlr":
        out["rank_elbow"] = choose_rank(res.U)
        sv = res.extras["singular_values"]
        out["rank_numeric"] = int((sv > 1e-6 * sv[0]).sum()) if sv.numel() else 0
    else:
        out["nnz"] = res.extras["nnz"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="only the 256x120 case")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cases", nargs="*", default=None)
    ap.add_argument("--methods", nargs="*", default=["ddlr", "net-trim"])
    ap.add_argument("--scs-time-limit", type=float, default=600.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.cases or (["256x120"] if args.quick else list(CASES))
    path = RESULTS / "solvers.json"
    data: dict = {"cases": {}}
    for name in names:
        N, d, n, scs = CASES[name]
        X, Y, b = layer(N, d, n)
        big = name == "4096x4096"
        for method in args.methods:
            if big and method != "ddlr":
                continue
            solve = solve_ddlr if method == "ddlr" else solve_net_trim
            opts = ADMMOptions(dtype="float32", time_limit=600.0) if big else ADMMOptions()
            entry: dict = {"N": N, "d": d, "n": n, "eps_frac": 0.1, "method": method}
            r = solve(X, Y, b, eps_frac=0.1, options=opts)
            entry["admm"] = row(r, method)
            entry["admm"]["dtype"] = opts.dtype
            print(name, method, "admm", entry["admm"], flush=True)
            if scs:
                rc = solve(
                    X,
                    Y,
                    b,
                    eps_frac=0.1,
                    backend="cvxpy",
                    options=CvxpyOptions(time_limit=args.scs_time_limit),
                )
                entry["scs"] = row(rc, method)
                entry["speedup"] = rc.seconds / r.seconds
                entry["objective_ratio_admm_over_scs"] = r.objective / rc.objective
                print(name, method, "scs", entry["scs"], flush=True)
            entry["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            data["cases"][f"{name}/{method}"] = entry
    if path.exists():  # merge with rows written by earlier (or concurrent) runs
        data = {"cases": {**json.loads(path.read_text()).get("cases", {}), **data["cases"]}}
    data["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": 2,
        "torch_threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    data["date"] = datetime.datetime.now().isoformat(timespec="seconds")
    data["command"] = " ".join([".venv/bin/python", *sys.argv])
    lines = [
        "# Layer-wise solver benchmark (DDLR / Net-Trim, eps = 0.1 ||X||_F)",
        "",
        f"Machine: {data['machine']}; date {data['date']}; last command `{data['command']}`.",
        "Inputs: X = ReLU(N(0,1)) (N x d), W0 ~ N(0, 1/d), b ~ 0.1 N(0,1), seed 0. Peak RSS is the",
        "process high-water mark when the row finished (cumulative over the run).",
        "",
        "| case | method | N | admm s | admm obj | admm viol | admm status | SCS s | SCS obj | SCS viol"
        " | SCS status | speedup | obj ratio | rank/nnz (admm) | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, e in data["cases"].items():
        a, s = e["admm"], e.get("scs")
        struct = a.get("rank_elbow", a.get("nnz"))
        if "rank_numeric" in a:
            struct = f"elbow {a['rank_elbow']} / numeric {a['rank_numeric']}"
        sc = (
            (
                f"{s['seconds']:.2f} | {s['objective']:.6g} | {s['violation']:.2e} | {s['status']} | "
                f"{e['speedup']:.1f}x | {e['objective_ratio_admm_over_scs']:.5f}"
            )
            if s
            else "- | - | - | - | - | -"
        )
        lines.append(
            f"| {key.split('/')[0]} | {e['method']} | {e['N']} | {a['seconds']:.2f} | {a['objective']:.6g} | "
            f"{a['violation']:.2e} | {a['status']} | {sc} | {struct} | {e['peak_rss_mb']:.0f} |"
        )
    _lib.write_result(RESULTS, "solvers", data, "\n".join(lines) + "\n", indent=2)


if __name__ == "__main__":
    main()
