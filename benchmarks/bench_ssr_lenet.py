"""SSR Table I at CPU scale: LeNet (20-50-500-10) on MNIST, every method on the same baseline.

Rows: SSR-L2,1, SSR-L2,0, SSR-L1, ADMM-S (l0 / l1 on filters), and Random / L1-norm / APoZ /
magnitude at exactly the filter counts SSR-L2,1 ended with. Every number is measured here on the
physically pruned model: filters, MACs ("FLOPs" in the paper), params, CPU ms for a batch of 100
on one thread (median), speed-up, top-1 error increase over our own baseline.

    .venv/bin/python benchmarks/bench_ssr_lenet.py            # full run (~10-15 min on 2 cores)
    .venv/bin/python benchmarks/bench_ssr_lenet.py --quick    # smoke run (subset of steps)

Writes benchmarks/results/ssr_lenet_mnist.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import compactnn
from compactnn import data as cdata
from compactnn import metrics
from compactnn.cli import DEMO_SSR, demo_baseline
from compactnn.methods import CompressionData

RESULTS = Path(__file__).resolve().parent / "results"

# SSR paper, Table I (LeNet on MNIST; CPU ms at batch 100, one thread of a Xeon E5-2620)
PAPER = [
    {
        "method": "LeNet",
        "filters": "20-50-500",
        "flops": "2.3M",
        "params": "0.43M",
        "cpu_ms": 26.4,
        "speedup": 1.0,
        "err_inc": 0.0,
    },
    {
        "method": "SSR-L1",
        "filters": "-",
        "flops": "-",
        "params": "9K",
        "cpu_ms": 20.2,
        "speedup": 1.31,
        "err_inc": 0.12,
    },
    {
        "method": "SSR-L2,1",
        "filters": "3-11-108",
        "flops": "118K",
        "params": "21K",
        "cpu_ms": 6.6,
        "speedup": 4.00,
        "err_inc": 0.05,
    },
    {
        "method": "SSR-L2,1",
        "filters": "2-8-77",
        "flops": "67K",
        "params": "11K",
        "cpu_ms": 4.8,
        "speedup": 5.50,
        "err_inc": 0.18,
    },
    {
        "method": "SSR-L2,0",
        "filters": "2-11-146",
        "flops": "93K",
        "params": "28K",
        "cpu_ms": 5.6,
        "speedup": 4.71,
        "err_inc": 0.05,
    },
    {
        "method": "SSR-L2,0",
        "filters": "2-8-79",
        "flops": "67K",
        "params": "11K",
        "cpu_ms": 4.9,
        "speedup": 5.39,
        "err_inc": 0.20,
    },
]


def _filters(model: nn.Module) -> str:
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return "-".join(str(m.weight.shape[0]) for m in layers[:-1])


def _row(
    name: str,
    model: nn.Module,
    base: dict[str, Any],
    test,
    seconds: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    rep = metrics.report(
        model, (1, 28, 28), data=test, batch_size=100, threads=1, repeats=50, warmup=10, topk=(1,)
    )
    top1 = rep.accuracy["top1"]
    row = {
        "method": name,
        "filters": _filters(model),
        "macs": rep.macs,
        "params": rep.params,
        "cpu_ms_batch100": rep.latency.median_ms,
        "speedup": base["cpu_ms_batch100"] / rep.latency.median_ms if base else 1.0,
        "top1": top1,
        "err_inc": (base["top1"] - top1) if base else 0.0,
        "compress_seconds": seconds,
    }
    if extra:
        row.update(extra)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few steps: checks the pipeline only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="run only these rows (by method label)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    t_all = time.perf_counter()
    baseline, test_loader, ckpt = demo_baseline(seed=args.seed)
    train_loader, _ = cdata.get_loaders("mnist", batch_size=64, seed=args.seed)
    cd = CompressionData(
        train=train_loader, test=test_loader, input_shape=(1, 28, 28), name="mnist"
    )
    q = args.quick
    ft = dict(
        finetune_epochs=1 if q else DEMO_SSR["finetune_epochs"],
        finetune_steps_per_epoch=20 if q else None,
        finetune_lr=0.01,
    )
    ssr_common = dict(max_outer=2 if q else 10, w_steps=10 if q else 150, train_all=True, **ft)
    admm = dict(
        xi=2 if q else 3,
        steps_per_epoch=10 if q else 100,
        lr=0.01,
        finetune_epochs=1,
        structure="filters",
    )
    runs: list[tuple[str, str, dict[str, Any]]] = [
        ("SSR-L2,1", "ssr", {**DEMO_SSR, **ssr_common} if q else dict(DEMO_SSR)),
        (
            "SSR-L2,0",
            "ssr",
            {**DEMO_SSR, **(ssr_common if q else {}), "penalty": "l20", "lam": [0.9, 1.0, 0.6]},
        ),
        (
            "SSR-L1",
            "ssr",
            {**DEMO_SSR, **(ssr_common if q else {}), "penalty": "l1", "lam": [0.01, 0.005, 0.002]},
        ),
        ("ADMM-S l0 (filters)", "admm-sparse", dict(penalty="l0", mus=(0.3, 0.6, 0.9), **admm)),
        ("ADMM-S l1 (filters)", "admm-sparse", dict(penalty="l1", mus=(0.05, 0.1, 0.15), **admm)),
    ]
    rows: list[dict[str, Any]] = []
    base_row = _row("LeNet (ours)", baseline, {}, test_loader, 0.0)
    rows.append(base_row)
    print(f"baseline: top1 {base_row['top1']:.2f} %  {base_row['cpu_ms_batch100']:.2f} ms")
    ssr21_keep: dict[str, int] | None = None
    for label, method, opts in runs:
        if args.only and label not in args.only:
            continue
        t0 = time.perf_counter()
        res = compactnn.compress(copy.deepcopy(baseline), method, cd, measure=False, **opts)
        extra = {"options": {k: v for k, v in opts.items()}}
        if method == "ssr" and opts["penalty"] == "l1":
            extra["nonzero_params"] = res.history.get("nonzero_params")
        if method == "admm-sparse":
            extra["mu_path"] = res.history["path"]
        rows.append(_row(label, res.model, base_row, test_loader, time.perf_counter() - t0, extra))
        print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("options", "mu_path")}))
        if label == "SSR-L2,1":
            layers = [
                n for n, m in res.model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
            ]
            ssr21_keep = {
                n: int(dict(res.model.named_modules())[n].weight.shape[0]) for n in layers[:-1]
            }
    if ssr21_keep is not None:
        for crit in ("random", "l1-norm", "apoz", "magnitude"):
            if args.only and crit not in args.only:
                continue
            t0 = time.perf_counter()
            res = compactnn.compress(
                copy.deepcopy(baseline),
                crit,
                cd,
                measure=False,
                keep=ssr21_keep,
                finetune_epochs=ft["finetune_epochs"],
                lr=0.01,
                finetune_steps_per_epoch=ft["finetune_steps_per_epoch"],
            )
            rows.append(
                _row(
                    f"{crit} @ SSR-L2,1 filters",
                    res.model,
                    base_row,
                    test_loader,
                    time.perf_counter() - t0,
                )
            )
            print(json.dumps(rows[-1]))
    out = {
        "benchmark": "SSR Table I (LeNet on MNIST), CPU scale",
        "command": "python benchmarks/bench_ssr_lenet.py" + (" --quick" if q else ""),
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads for training, latency on 1 thread",
        "baseline_checkpoint": str(ckpt),
        "total_seconds": time.perf_counter() - t_all,
        "rows": rows,
        "paper": PAPER,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "ssr_lenet_mnist" + ("_quick" if q else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=2, default=str))
    md = [
        f"# {out['benchmark']}",
        "",
        f"Command: `{out['command']}`  ",
        f"Date: {out['date']}  ",
        f"Machine: {out['machine']}",
        "",
        "## Measured here",
        "",
        "| method | filters | MACs | params | CPU ms (b=100, 1 thr) | speed-up | top-1 | err. increase |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        params = f"{r['params']:,}" + (
            f" ({r['nonzero_params']:,} non-zero)" if r.get("nonzero_params") else ""
        )
        md.append(
            f"| {r['method']} | {r['filters']} | {r['macs']:,} | {params} | "
            f"{r['cpu_ms_batch100']:.2f} | {r['speedup']:.2f}x | {r['top1']:.2f} % | {r['err_inc']:+.2f} % |"
        )
    md += [
        "",
        "## Paper (Lin et al. 2019, Table I)",
        "",
        "| method | filters | FLOPs | params | CPU ms | speed-up | err. increase |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in PAPER:
        md.append(
            f"| {p['method']} | {p['filters']} | {p['flops']} | {p['params']} | {p['cpu_ms']} | "
            f"{p['speedup']:.2f}x | +{p['err_inc']:.2f} % |"
        )
    (RESULTS / f"{stem}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
