"""Net-Trim, parallel vs cascade (Aghasi et al. 2017, sec. 2.2), on the DDLR paper's Fig. 3 setup.

The reference LeNet-5 of ``bench_ddlr_repro.py`` (MNIST, 1024 training samples, cached) has its
``fc1`` and ``fc2`` re-fit by Net-Trim **without retraining** from N = 256 calibration samples:

* parallel (the DDLR paper's baseline): every layer on the original network's input, epsilon =
  eps_frac * ||X||_F;
* cascade (``cascade=gamma``): layers in forward order on the compressed network's input; fc1 as
  in the parallel scheme, fc2 with epsilon = gamma * the original fc2's masked residual on that
  input and the inactive bound that keeps the original fc2 feasible.

A sweep, not a selection: every point is reported; nothing is chosen on the test set.

    .venv/bin/python benchmarks/bench_net_trim_cascade.py          # ~5 min on 2 shared cores

Writes benchmarks/results/net_trim_cascade.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ddlr_repro as ddlr_bench  # noqa: E402
import compactnn  # noqa: E402
from compactnn.methods import CompressionData  # noqa: E402
from compactnn.solvers.layerwise import ADMMOptions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
EPS = (0.02, 0.04, 0.08, 0.16)
SCHEMES: dict[str, float | None] = {"parallel": None, "cascade 1.05": 1.05, "cascade 1.2": 1.2}


def _parallel_at(rows: list[dict[str, Any]], size: float) -> float | None:
    """Top-1 of the parallel scheme at ``size`` by linear interpolation of its sweep (None
    outside the swept sizes)."""
    pts = sorted((r["size_ratio"], r["top1"]) for r in rows if r["gamma"] is None)
    for (s0, a0), (s1, a1) in zip(pts, pts[1:], strict=False):
        if s0 <= size <= s1:
            return a0 + (a1 - a0) * (size - s0) / (s1 - s0) if s1 > s0 else a0
    return None


def markdown(out: dict[str, Any]) -> str:
    rows = out["rows"]
    lines = [
        "# Net-Trim: parallel vs cascade (Aghasi et al. sec. 2.2), no retraining",
        "",
        f"Command: `{out['command'].strip()}`  ",
        f"Machine: {out['machine']}, load {out['load_at_end'][0]:.1f} at the end; "
        f"torch {out['torch']}  ",
        f"Date: {out['date']}, total {out['seconds']:.0f} s",
        "",
        f"LeNet-5 on MNIST ({out['train_samples']} training samples, the DDLR paper's Fig. 3 "
        f"protocol), baseline top-1 {out['baseline_top1']:.2f} %; fc1 + fc2 re-fit from "
        f"N = {out['N']} samples (one draw, one seed); size ratio = COO 3 nnz / original "
        "weights of fc1 + fc2. Cascade: fc1 as parallel, fc2 on the compressed fc1's output "
        "with epsilon = gamma x the original fc2's masked residual. Last column: the cascade "
        "point's top-1 minus the parallel sweep's top-1 interpolated at the same size.",
        "",
        "| eps_frac | scheme | nnz fc1 | nnz fc2 | eps fc2 | size ratio | top-1 % | rel. acc. "
        "| vs parallel at equal size | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = None if r["gamma"] is None else _parallel_at(rows, r["size_ratio"])
        diff = "" if ref is None else f"{r['top1'] - ref:+.2f}"
        lines.append(
            f"| {r['eps_frac']} | {r['scheme']} | {r['nnz']['fc1']} | {r['nnz']['fc2']} | "
            f"{r['eps']['fc2']:.3g} | {r['size_ratio']:.3f} | {r['top1']:.2f} | "
            f"{r['rel_acc']:.4f} | {diff} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--N", type=int, default=256, help="calibration samples (paper: 128, 256)")
    ap.add_argument("--max-iter", type=int, default=5000, help="ADMM iteration cap per solve")
    ap.add_argument("--markdown-only", action="store_true", help="re-render the .md from .json")
    args = ap.parse_args()
    if args.markdown_only:
        out = json.loads((RESULTS / "net_trim_cascade.json").read_text())
        (RESULTS / "net_trim_cascade.md").write_text(markdown(out))
        return
    torch.set_num_threads(1)
    exp = ddlr_bench.OURS["fig3_mnist"]
    train_ds, test_ds = ddlr_bench._datasets(exp)
    model, how = ddlr_bench._reference("fig3_mnist", exp, train_ds)
    test = DataLoader(test_ds, batch_size=1000)
    base = ddlr_bench._acc(model, test)
    layers = exp["layers"]
    orig = sum(model.get_submodule(n).weight.numel() for n in layers)
    g = torch.Generator().manual_seed(args.N)
    xb = train_ds.tensors[0][torch.randperm(len(train_ds), generator=g)[: args.N]]
    cd = CompressionData(train=None, calib=[xb], input_shape=tuple(xb.shape[1:]))
    print(f"baseline top1 {base:.2f}% ({how})", flush=True)
    t_all = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for frac in EPS:
        for scheme, gamma in SCHEMES.items():
            t0 = time.perf_counter()
            res = compactnn.compress(
                model, "net-trim", cd, layers=layers, eps_frac=frac, cascade=gamma,
                max_rows=None, options=ADMMOptions(max_iter=args.max_iter), progress=False,
                measure=False,
            )  # fmt: skip
            h = res.history["layers"]
            stored = sum(ddlr_bench._stored(res.model.get_submodule(n)) for n in layers)
            acc = ddlr_bench._acc(res.model, test)
            row = {
                "eps_frac": frac,
                "scheme": scheme,
                "gamma": gamma,
                "nnz": {n: h[n]["nnz"] for n in layers},
                "eps": {n: h[n]["eps"] for n in layers},
                "status": {n: h[n]["status"] for n in layers},
                "size_ratio": stored / orig,
                "top1": acc,
                "rel_acc": acc / base,
                "seconds": time.perf_counter() - t0,
            }
            rows.append(row)
            print(
                f"eps={frac:<5} {scheme:13s} nnz={row['nnz']} size={row['size_ratio']:.3f} "
                f"top1={acc:.2f} {row['seconds']:.1f}s",
                flush=True,
            )
    out = {
        "command": "python benchmarks/bench_net_trim_cascade.py " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared), 1 torch thread",
        "load_at_end": os.getloadavg(),
        "torch": torch.__version__,
        "model": exp["model"],
        "dataset": exp["dataset"],
        "train_samples": len(train_ds),
        "N": args.N,
        "layers": list(layers),
        "baseline_top1": base,
        "original_weights": orig,
        "seconds": time.perf_counter() - t_all,
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "net_trim_cascade.json").write_text(json.dumps(out, indent=2))
    (RESULTS / "net_trim_cascade.md").write_text(markdown(out))
    print(f"wrote {RESULTS / 'net_trim_cascade.md'}")


if __name__ == "__main__":
    main()
