"""SSR "-GAP" variants (Lin et al. 2019, Tables III-IV) at CPU scale: LeNet on MNIST.

The paper replaces AlexNet's / VGG-16's FC head, > 90 % of the storage, by global average
pooling and one classifier after the convs are pruned ("X-GAP", sec. IV-B/C), then fine-tunes.
LeNet's FC head is 93 % of its parameters (fc1 400,500 + fc2 5,010 of 431,080), so the same
operation is measured here on it: ``compress(model, "ssr", data, gap=True, ...)`` prunes conv1
and conv2 by AULM, swaps flatten -> fc1 -> fc2 for GAP + Linear(c, 10) (fitted by least squares
to the uncompressed model's logits), then fine-tunes. Rows:

* GAP alone (no pruning): the cost of the head swap itself;
* SSR-L2,1-GAP at two conv2 lambdas, SSR-L2,0-GAP;
* L1-GAP (Li et al.'s l1-norm filters, the paper's "L1-GAP") and Random-GAP at exactly the
  filter counts of the first SSR-L2,1-GAP row, with the same head fit and the same fine-tuning.

Every model is physically pruned; params, MACs, latency (batch 100, 1 thread, median) and test
error are measured on it. Lambdas are fixed up front (the demo's conv lambdas, chosen earlier
on validation by ``ssr_point.py``); nothing is chosen on the test set.

Protocol (extension, as ``make demo``): K-step lr 0.01 with every parameter trained, 10 outer
iterations of 100 SGD steps (batch 64); fine-tuning ``--ft`` epochs (default 8), cosine,
distillation weight 0.5 from the uncompressed model, from the lr in {1e-2, 3e-3, 1e-3} whose
one-epoch fine-tuning of the unpruned GAP model is best on a held-out 10 % of the training set
(the demo's lr 0.01 diverges with the GAP head). The paper's protocol (K-step lr
1e-3 on K^l only, batch 256, fine-tuning 30 epochs from 1e-4, x0.1 every 10) is the
``--paper`` switch. The paper reports no LeNet GAP row: its numbers (AlexNet, VGG-16) are
printed beside ours for orientation only.

    .venv/bin/python benchmarks/bench_ssr_gap.py            # ~25 min on one shared core
    .venv/bin/python benchmarks/bench_ssr_gap.py --quick    # pipeline check

Writes benchmarks/results/ssr_gap.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import compactnn
from compactnn import data as cdata
from compactnn import metrics
from compactnn.api import as_compression_data
from compactnn.cli import demo_baseline
from compactnn.methods._common import add_gap_head
from compactnn.plan import GapHead

RESULTS = Path(__file__).resolve().parent / "results"
LR_CANDIDATES = (1e-2, 3e-3, 1e-3)
HEAD = GapHead("flatten", ("fc1", "relu3", "fc2"), linear=True)
EXTENSION = {"lr": 0.01, "max_outer": 10, "w_steps": 100, "train_all": True,
             "finetune_lr": 0.01, "finetune_distill": 0.5}  # fmt: skip
PAPER_PROTOCOL = {"lr": 1e-3, "max_outer": 10, "w_steps": 100, "train_all": False,
                  "finetune_lr": 1e-4, "finetune_schedule": "paper", "finetune_distill": 0.0}  # fmt: skip
SSR_ROWS = {
    "SSR-L2,1-GAP": {"penalty": "l21", "lam": [0.14, 0.043]},
    "SSR-L2,1-GAP (weaker conv2 lambda)": {"penalty": "l21", "lam": [0.14, 0.038]},
    "SSR-L2,0-GAP": {"penalty": "l20", "lam": [0.9, 0.15]},
}
PAPER = [
    ("AlexNet SSR-L2,1-GAP (Table III)", "2.5M params, 1.8x CPU, +5.25 % top-1 error"),
    ("AlexNet SSR-L2,0-GAP (Table III)", "2.5M params, 1.8x CPU, +5.12 % top-1 error"),
    ("VGG-16 L1-GAP (Table IV)", "9.2M params, 2.1x CPU, +4.62 % top-1 error"),
    ("VGG-16 SSR-L2,1-GAP (Table IV)", "9.2M params, 2.1x CPU, +0.52 % top-1 error"),
    ("VGG-16 SSR-L2,0-GAP (Table IV)", "9.0M params, 2.1x CPU, +0.83 % top-1 error"),
]


def _measure(model: nn.Module, base_ms: float, test: Any) -> dict[str, Any]:
    lat = metrics.measure_latency(model, (1, 28, 28), batch_size=100, threads=1, repeats=30)
    return {
        "filters": "-".join(str(model.get_submodule(n).out_channels) for n in ("conv1", "conv2")),
        "params": int(sum(p.numel() for p in model.parameters())),
        "macs": int(metrics.count_flops(model, (1, 28, 28))) // 2,
        "ms": float(lat.median_ms),
        "speedup": base_ms / float(lat.median_ms),
        "test_err": 100.0 - float(metrics.accuracy(model, test, topk=(1,))["top1"]),
    }


def _finetune(model: nn.Module, teacher: nn.Module, loader: Any, cfg: dict[str, Any], ft: int,
              seed: int) -> None:  # fmt: skip
    """SSR's own final fine-tuning (``SSR._finetune``), for the rows not made by SSR."""
    from compactnn.methods.ssr import SSR

    method = SSR(finetune_epochs=ft, seed=seed, **{k: v for k, v in cfg.items()
                                                  if k.startswith("finetune_") and k != "finetune_epochs"})  # fmt: skip
    method._finetune(model, loader, epochs=ft, seed=seed + 7, masks=None, desc="ft",
                     progress=False, teacher=teacher if cfg["finetune_distill"] > 0 else None)  # fmt: skip


def _ssr_opts(proto: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in proto.items() if k != "lr_choice_val_top1"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ft", type=int, default=8, help="fine-tuning epochs (every row)")
    ap.add_argument("--paper", action="store_true", help="the paper's protocol (see docstring)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--render", type=Path, help="re-write the .md of this results JSON")
    args = ap.parse_args(argv)
    if args.render is not None:
        args.render.with_suffix(".md").write_text(markdown(json.loads(args.render.read_text())))
        return
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    proto = dict(PAPER_PROTOCOL if args.paper else EXTENSION)
    if args.paper and args.ft == 8:
        args.ft = 30
    limit = 2048 if args.quick else None
    if args.quick:
        proto.update(max_outer=2, w_steps=5)
        args.ft = 1
    base, test, _ = demo_baseline(progress=False)
    batch = 256 if args.paper else 64
    full, _ = cdata.get_loaders("mnist", batch_size=batch, seed=args.seed, limit=limit)
    # 10 % of the training set held out (seeded): the fine-tuning lr of the GAP rows is chosen
    # on it; compress gets the same split (val only feeds its guard here)
    cd = as_compression_data(full, val_fraction=0.1, seed=args.seed, input_shape=(1, 28, 28))
    train = cd.train
    base_ms = float(metrics.measure_latency(base, (1, 28, 28), batch_size=100, threads=1,
                                            repeats=30).median_ms)  # fmt: skip
    base_row = {"row": "LeNet (ours)", **_measure(base, base_ms, test), "seconds": 0.0}
    base_err = base_row["test_err"]
    rows = [base_row]

    def add(label: str, model: nn.Module, t0: float, **extra: Any) -> None:
        r = {"row": label, **_measure(model, base_ms, test), "seconds": time.perf_counter() - t0}
        r["err_increase"] = r["test_err"] - base_err
        r.update(extra)
        rows.append(r)
        print(f"{label}: {r['filters']} {r['params']} params {r['speedup']:.2f}x "
              f"err +{r['err_increase']:.2f}", flush=True)  # fmt: skip

    teacher = copy.deepcopy(base).eval()
    # GAP alone: the head swap and the same fine-tuning, nothing pruned
    t0 = time.perf_counter()
    gap_only, fit = add_gap_head(base, teacher, HEAD, train, (1, 28, 28))
    if not args.paper:
        # the fine-tuning lr: one epoch of each candidate on the unpruned GAP model, best
        # validation top-1 (never test); the chosen lr serves every row
        lr_val = {}
        for lr in LR_CANDIDATES:
            trial = copy.deepcopy(gap_only)
            _finetune(trial, teacher, train, {**proto, "finetune_lr": lr}, 1, args.seed)
            lr_val[lr] = float(metrics.accuracy(trial, cd.val, topk=(1,))["top1"])
            print(f"lr {lr}: val top-1 {lr_val[lr]:.2f}", flush=True)
        proto["finetune_lr"] = max(lr_val, key=lambda k: lr_val[k])
        proto["lr_choice_val_top1"] = lr_val
    _finetune(gap_only, teacher, train, proto, args.ft, args.seed)
    add("GAP alone (no pruning)", gap_only, t0, fit=fit)
    first: nn.Module | None = None
    for label, opts in SSR_ROWS.items():
        t0 = time.perf_counter()
        res = compactnn.compress(
            base, "ssr", cd, progress=False, measure=False, on_drop="warn", gap=True,
            finetune_epochs=args.ft, seed=args.seed, **_ssr_opts(proto), **opts,
        )  # fmt: skip
        add(label, res.model, t0, lam=opts["lam"], penalty=opts["penalty"],
            fit=res.history["gap"])  # fmt: skip
        first = first or res.model
    assert first is not None
    keep = {n: first.get_submodule(n).out_channels for n in ("conv1", "conv2")}
    for crit in ("l1-norm", "random"):
        t0 = time.perf_counter()
        res = compactnn.compress(
            base, crit, cd, progress=False, measure=False, on_drop="warn", keep=keep,
            finetune_epochs=0, seed=args.seed,
        )  # fmt: skip
        model, fit = add_gap_head(res.model, teacher, HEAD, train, (1, 28, 28))
        _finetune(model, teacher, train, proto, args.ft, args.seed)
        label = {"l1-norm": "L1-GAP", "random": "Random-GAP"}[crit]
        add(f"{label} @ SSR-L2,1-GAP filters", model, t0, fit=fit)
    out = {
        "command": "python " + " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()} 2-core CPU shared with other jobs, no GPU",
        "load": list(os.getloadavg()),
        "threads": args.threads,
        "protocol": "paper" if args.paper else "extension",
        "settings": {**proto, "finetune_epochs": args.ft, "batch_size": batch},
        "seed": args.seed,
        "seconds": time.perf_counter() - t_all,
        "rows": rows,
        "paper": PAPER,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "ssr_gap" + ("_paper" if args.paper else "") + ("_quick" if args.quick else "")
    (args.out / f"{stem}.json").write_text(json.dumps(out, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(out))
    print((args.out / f"{stem}.md").read_text())


def markdown(out: dict[str, Any]) -> str:
    s = out["settings"]
    lines = [
        "# SSR -GAP variants (Lin et al. Tables III-IV) at CPU scale: LeNet / MNIST",
        "",
        f"Command: `{out['command']}`  ",
        f"Date: {out['date']}; {out['machine']}, load {out['load'][0]:.1f} at the end; "
        f"{out['threads']} torch thread for training, latency batch 100 on 1 thread (median "
        f"of 30); {out['seconds'] / 60:.0f} min in all; one seed ({out['seed']}).",
        "",
        f"Protocol: **{out['protocol']}** -- K-step lr {s['lr']}, "
        f"{'every parameter' if s['train_all'] else 'K^l only (eq. 11)'}, {s['max_outer']} "
        f"outer x {s['w_steps']} SGD steps, batch {s['batch_size']}; fine-tuning "
        f"{s['finetune_epochs']} epochs from lr {s['finetune_lr']} "
        f"({s.get('finetune_schedule', 'cosine')}), distillation weight "
        f"{s['finetune_distill']}. Every row (GAP alone, L1-GAP, Random-GAP included) gets the "
        "same head fit (least squares to the uncompressed model's logits on 2,048 training "
        "samples) and the same fine-tuning."
        + (
            " Fine-tuning lr chosen on validation (one epoch of the unpruned GAP model, val "
            "top-1 per candidate: "
            + ", ".join(f"{float(k):g}: {v:.2f} %" for k, v in s["lr_choice_val_top1"].items())
            + ")."
            if "lr_choice_val_top1" in s
            else ""
        ),
        "",
        "| row | filters | params | MACs | CPU ms | speed-up | test err % | err. increase |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        inc = r.get("err_increase")
        lines.append(
            f"| {r['row']} | {r['filters']} | {r['params']:,} | {r['macs']:,} | {r['ms']:.2f} | "
            f"{r['speedup']:.2f}x | {r['test_err']:.2f} | "
            f"{'' if inc is None else f'{inc:+.2f}'} |"
        )
    lines += ["", "Paper (ImageNet, for orientation; no LeNet GAP row in the paper):", ""]
    lines += [f"- {a}: {b}" for a, b in out["paper"]]
    rows = {r["row"]: r for r in out["rows"]}
    ssr = rows.get("SSR-L2,1-GAP")
    l1 = next((r for k, r in rows.items() if k.startswith("L1-GAP")), None)
    gap = rows.get("GAP alone (no pruning)")
    rnd = next((r for k, r in rows.items() if k.startswith("Random-GAP")), None)
    weak = rows.get("SSR-L2,1-GAP (weaker conv2 lambda)")
    if ssr and l1 and gap:
        d = ssr["err_increase"] - l1["err_increase"]
        lines += [
            "",
            f"Verdict (one seed): the head swap alone costs {gap['err_increase']:+.2f} points on "
            "LeNet (its 4x4 conv2 maps lose their layout under GAP). At equal filters "
            f"({ssr['filters']}) SSR-L2,1-GAP is {ssr['err_increase']:+.2f} vs L1-GAP "
            f"{l1['err_increase']:+.2f} (SSR {'loses' if d > 0 else 'wins'} by {abs(d):.2f})"
            + (f" and Random-GAP {rnd['err_increase']:+.2f}" if rnd else "")
            + (
                ": unlike the paper's VGG-16 table, SSR's filter choice does not beat L1's here."
                if d > 0
                else ": SSR's filter choice beats L1's, as in the paper's VGG-16 table."
            ),
        ]
        if weak and weak["err_increase"] > ssr["err_increase"]:
            lines.append(
                f"The weaker-lambda row ({weak['filters']}, {weak['err_increase']:+.2f}) is worse "
                "than the stronger one although it keeps more filters: not explained by this run "
                "(one seed; the fine-tuning lr was chosen on the unpruned GAP model); it is "
                "reported as measured."
            )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
