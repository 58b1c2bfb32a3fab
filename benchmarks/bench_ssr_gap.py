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

Every model is physically pruned; params, MACs, latency (batch 100 real validation images, 1
thread, median, timed in turn with the baseline over 3 rounds) and test error are measured on it. Lambdas are fixed up front (the demo's conv lambdas, chosen earlier
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

Seeds (``--seed``: validation split, loader shuffling, the methods' seed, hence also the
fine-tuning lr chosen on validation; the baseline is the demo's seed-0 LeNet for every seed, its
weight fingerprint recorded) run as separate processes and are pooled by ``--merge`` (same
baseline fingerprint and settings, distinct seeds; rows as mean ± sd beside a per-seed table):

    .venv/bin/python benchmarks/bench_ssr_gap.py --seed 1 --out-stem ssr_gap_seed1
    .venv/bin/python benchmarks/bench_ssr_gap.py --merge ssr_gap_seed0 ssr_gap_seed1 \
        ssr_gap_seed2 --out-stem ssr_gap

The seed-0 ssr_gap.json of 2026-12-01 predates the fingerprint, so ``--merge`` refuses it
(its recorded baseline params and test error match today's checkpoint but do not prove the
same weights): rerun seed 0 before pooling.

Writes benchmarks/results/<stem>.{json,md} (default stem ssr_gap[_paper], with _seedN for a seed
N > 0; a --quick run's stem always ends in _quick).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import _lib
import compactnn
from compactnn import data as cdata
from compactnn import metrics
from compactnn.api import as_compression_data
from compactnn.demo import demo_baseline
from compactnn.methods.blocks import add_gap_head
from compactnn.plan import GapHead

# how latencies are measured: part of the settings, so runs timed otherwise never pool
LATENCY = "interleaved with the baseline, 3 rounds, batch 100 real validation images, 1 thread"
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


def _measure(model: nn.Module, base: nn.Module, x: torch.Tensor, test: Any) -> dict[str, Any]:
    """Size, test error and latency on the batch ``x`` (1 thread); the speed-up is over the
    baseline timed in turn with the model (3 rounds), so load changes cancel."""
    lat = metrics.measure_latency_interleaved(
        {"base": base, "model": model}, (1, 28, 28), rounds=3, batch_size=len(x), repeats=10,
        inputs=x,
    )  # fmt: skip
    ms = lat["model"].median_ms
    return {
        "filters": "-".join(str(model.get_submodule(n).out_channels) for n in ("conv1", "conv2")),
        "params": int(sum(p.numel() for p in model.parameters())),
        "macs": int(metrics.count_flops(model, (1, 28, 28))) // 2,
        "ms": float(ms),
        "speedup": lat["base"].median_ms / float(ms),
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


def _stem(args: argparse.Namespace) -> str:
    return _lib.stem_of(args, "ssr_gap" + ("_paper" if args.paper else ""))


def _write(out: dict[str, Any], out_dir: Path, stem: str) -> None:
    _lib.write_result(out_dir, stem, out, markdown, newline=True, echo=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ft", type=int, default=8, help="fine-tuning epochs (every row)")
    ap.add_argument("--paper", action="store_true", help="the paper's protocol (see docstring)")
    _lib.add_seed_args(ap, "ssr_gap", "ssr_gap[_paper][_seedN]")
    args = ap.parse_args(argv)
    if _lib.render_or_merge(
        args,
        argv,
        markdown,
        merge,
        lambda out: "ssr_gap" + ("_paper" if out["protocol"] == "paper" else ""),
    ):
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
    # the baseline is the demo's seed-0 LeNet whatever --seed is; its fingerprint is recorded
    base, test, ckpt = demo_baseline(seed=0, progress=False)
    torch.manual_seed(args.seed)  # anything not seeded explicitly below
    batch = 256 if args.paper else 64
    full, _ = cdata.get_loaders("mnist", batch_size=batch, seed=args.seed, limit=limit)
    # 10 % of the training set held out (seeded): the fine-tuning lr of the GAP rows is chosen
    # on it; compress gets the same split (val only feeds its guard here)
    cd = as_compression_data(full, val_fraction=0.1, seed=args.seed, input_shape=(1, 28, 28))
    train = cd.train
    x_val = metrics.real_batch(cd.val, 100)  # latency inputs: 100 real validation images
    assert x_val is not None
    base_row = {"row": "LeNet (ours)", **_measure(base, base, x_val, test), "seconds": 0.0}
    base_err = base_row["test_err"]
    baseline = _lib.baseline_record(
        base, ckpt, params=base_row["params"], test_err=base_err
    )  # fmt: skip
    rows = [base_row]

    def add(label: str, model: nn.Module, t0: float, **extra: Any) -> None:
        r = {"row": label, **_measure(model, base, x_val, test)}
        r["seconds"] = time.perf_counter() - t0
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
        # validation top-1 (never test); the chosen lr serves every row of this seed
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
    settings = {**proto, "finetune_epochs": args.ft, "batch_size": batch,
                "train_limit": limit, "ssr_rows": SSR_ROWS, "latency": LATENCY}  # fmt: skip
    if not args.paper:
        settings["finetune_lr_candidates"] = list(LR_CANDIDATES)
    out = {
        "command": "python " + " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()} 2-core CPU shared with other jobs, no GPU",
        "load": list(os.getloadavg()),
        "threads": args.threads,
        "protocol": "paper" if args.paper else "extension",
        "quick": args.quick,
        "settings": settings,
        "baseline": baseline,
        "seed": args.seed,
        "seconds": time.perf_counter() - t_all,
        "rows": rows,
        "paper": PAPER,
    }
    _write(out, args.out, _stem(args))


# settings chosen per seed on validation, not part of the experiment's definition
_PER_SEED = ("finetune_lr", "lr_choice_val_top1")


def _recipe(run: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for two runs to be pooled (the baseline is checked separately)."""
    s = dict(run["settings"])
    if "lr_choice_val_top1" in s:  # extension: the fine-tuning lr is chosen per seed
        for k in _PER_SEED:
            s.pop(k, None)
    return {"protocol": run.get("protocol"), "threads": run.get("threads"),
            "quick": run.get("quick", False), **s}  # fmt: skip


def merge(stems: list[str], out_dir: Path = RESULTS, argv: list[str] | None = None) -> dict:
    """One report from single-seed (or already pooled) result files ``out_dir/<stem>.json``;
    SystemExit when they have different baselines or settings, or repeat a seed."""
    runs = _lib.load_poolable(stems, out_dir, _recipe)
    return pooled(runs, "python " + " ".join([Path(__file__).name, *(argv or ["--merge", *stems])]))


def pooled(runs: list[dict[str, Any]], command: str) -> dict[str, Any]:
    first = runs[0]
    return {
        "command": command,
        "date": dt.date.today().isoformat(),
        "machine": first["machine"],
        "protocol": first["protocol"],
        "quick": first.get("quick", False),
        "baseline": first["baseline"],
        "seeds": [r["seed"] for r in runs],
        "summary": summary(runs),
        "verdict": verdict(runs),
        "runs": runs,
        "paper": first["paper"],
    }


_KEYS = ("params", "macs", "ms", "speedup", "test_err", "err_increase")


def summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per row (in the first run's order): filters, and mean / sd / n of every measured number."""
    out = []
    for label in [r["row"] for r in runs[0]["rows"]]:
        per = [r for run in runs for r in run["rows"] if r["row"] == label]
        row: dict[str, Any] = {"row": label, "n": len(per),
                               "filters": _lib.filters_pm([r["filters"] for r in per])}  # fmt: skip
        for k in _KEYS:
            if all(k in r for r in per):
                row[k] = _lib.mean_sd([r[k] for r in per])
        out.append(row)
    return out


def _row(run: dict[str, Any], prefix: str) -> dict[str, Any] | None:
    """The row labelled ``prefix``, else the first whose label starts with it."""
    exact = next((r for r in run["rows"] if r["row"] == prefix), None)
    return exact or next((r for r in run["rows"] if r["row"].startswith(prefix)), None)


WEAK = "SSR-L2,1-GAP (weaker"


def verdict(runs: list[dict[str, Any]]) -> list[str]:
    """The verdict, computed from the means over the seeds (and the per-seed signs)."""
    n = len(runs)
    seeds = "one seed" if n == 1 else f"{n} seeds, mean ± sd"

    def col(prefix: str, key: str = "err_increase") -> list[float] | None:
        rs = [_row(run, prefix) for run in runs]
        return None if any(r is None for r in rs) else [r[key] for r in rs]  # type: ignore[index]

    ssr = col("SSR-L2,1-GAP")
    l1 = col("L1-GAP")
    gap = col("GAP alone")
    rnd = col("Random-GAP")
    weak = col(WEAK)
    if not (ssr and l1 and gap):
        return []
    ms = _lib.mean_sd
    d = [a - b for a, b in zip(ssr, l1, strict=True)]
    dm = ms(d)
    behind = sum(x > 0 for x in d)
    filt = _lib.filters_pm(col("SSR-L2,1-GAP", "filters"))  # type: ignore[arg-type]
    text = (
        f"Verdict ({seeds}): the head swap alone costs {_lib.pm(ms(gap), '+.2f')} points "
        "on LeNet (its 4x4 conv2 maps lose their layout under GAP). At equal filters "
        f"({filt}) SSR-L2,1-GAP is {_lib.pm(ms(ssr), '+.2f')} vs L1-GAP "
        f"{_lib.pm(ms(l1), '+.2f')}"
        + (f" and Random-GAP {_lib.pm(ms(rnd), '+.2f')}" if rnd else "")
        + f"; SSR minus L1, paired by seed: {_lib.pm(dm, '+.2f')} (SSR behind in {behind} "
        f"of {n} seed{'s' if n > 1 else ''})"
    )
    if behind == n:
        text += ": unlike the paper's VGG-16 table, SSR's filter choice does not beat L1's here."
    elif behind == 0:
        text += ": SSR's filter choice beats L1's, as in the paper's VGG-16 table."
    else:
        text += ": no consistent order between SSR's and L1's filter choice over these seeds."
    lines = [text]
    weak_params, ssr_params = col(WEAK, "params"), col("SSR-L2,1-GAP", "params")
    if (
        weak
        and weak_params
        and ssr_params
        and ms(weak)["mean"] > ms(ssr)["mean"]
        and ms(weak_params)["mean"] > ms(ssr_params)["mean"]
    ):
        worse = sum(w > s for w, s in zip(weak, ssr, strict=True))
        wf = _lib.filters_pm(col(WEAK, "filters"))  # type: ignore[arg-type]
        lines.append(
            f"The weaker-lambda row ({wf}, {_lib.pm(ms(weak), '+.2f')}) is worse on average "
            f"than the stronger one (worse in {worse} of {n} seed{'s' if n > 1 else ''}) although "
            "it keeps more parameters: not explained by these runs (the fine-tuning lr was chosen on "
            "the unpruned GAP model); it is reported as measured."
        )
    return lines


def _f(d: dict[str, float] | None, fmt: str) -> str:
    return "" if d is None else _lib.pm(d, fmt)


def markdown(out: dict[str, Any]) -> str:
    runs = _lib.runs_of(out)
    first = runs[0]
    s = first["settings"]
    n = len(runs)
    seeds = ", ".join(str(r["seed"]) for r in runs)
    commands = [r["command"] for r in runs] + ([out["command"]] if "runs" in out else [])
    minutes = _lib.mean_sd([r["seconds"] / 60 for r in runs])
    lrs = [r["settings"] for r in runs if "lr_choice_val_top1" in r["settings"]]
    base = first.get("baseline") or {}
    loads = ", ".join(f"{r['load'][0]:.1f}" for r in runs)
    lines = [
        "# SSR -GAP variants (Lin et al. Tables III-IV) at CPU scale: LeNet / MNIST",
        "",
        *(f"Command: `{c}`  " for c in commands),
        f"Date: {', '.join(sorted({r['date'] for r in runs}))}; {first['machine']}, load "
        f"{loads} at the end of each seed; "
        f"{first['threads']} torch thread for training, latency batch 100 on 1 thread (median "
        f"of 30); {_lib.pm(minutes, '.0f')} min per seed; "
        + (f"one seed ({seeds})." if n == 1 else f"{n} seeds ({seeds}), each a separate process."),
        "",
        _lib.baseline_line(
            base, "the validation split, the loaders' shuffling and the methods' seed"
        ),
        "",
        f"Protocol: **{first['protocol']}** -- K-step lr {s['lr']}, "
        f"{'every parameter' if s['train_all'] else 'K^l only (eq. 11)'}, {s['max_outer']} "
        f"outer x {s['w_steps']} SGD steps, batch {s['batch_size']}; fine-tuning "
        f"{s['finetune_epochs']} epochs from "
        + ("the lr chosen on validation per seed (below)" if lrs else f"lr {s['finetune_lr']}")
        + f", {s.get('finetune_schedule', 'cosine')} schedule, distillation weight "
        f"{s['finetune_distill']}. Every row (GAP alone, L1-GAP, Random-GAP included) gets the "
        "same head fit (least squares to the uncompressed model's logits on 2,048 training "
        "samples) and the same fine-tuning.",
    ]
    if lrs:
        lines += [
            "",
            "Fine-tuning lr chosen on validation (one epoch of the unpruned GAP model, val top-1 "
            "per candidate; never the test set): "
            + "; ".join(
                f"seed {r['seed']}: **{r['settings']['finetune_lr']:g}** ("
                + ", ".join(
                    f"{float(k):g}: {v:.2f} %"
                    for k, v in r["settings"]["lr_choice_val_top1"].items()
                )
                + ")"
                for r in runs
            )
            + ".",
        ]
    lines += [
        "",
        f"Summary over {'the seed' if n == 1 else f'{n} seeds'} (mean ± sd; filters: the common "
        "value, else per layer mean ± sd):",
        "",
        "| row | n | filters | params | MACs | CPU ms | speed-up | test err % | err. increase |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out.get("summary") or summary(runs):
        lines.append(
            f"| {r['row']} | {r['n']} | {r['filters']} | {_f(r['params'], ',.0f')} | "
            f"{_f(r['macs'], ',.0f')} | {_f(r['ms'], '.2f')} | {_f(r['speedup'], '.2f')}x | "
            f"{_f(r['test_err'], '.2f')} | {_f(r.get('err_increase'), '+.2f')} |"
        )
    lines += [
        "",
        "Per seed:",
        "",
        "| seed | row | filters | params | MACs | CPU ms | speed-up | test err % | err. increase |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for r in run["rows"]:
            inc = r.get("err_increase")
            lines.append(
                f"| {run['seed']} | {r['row']} | {r['filters']} | {r['params']:,} | "
                f"{r['macs']:,} | {r['ms']:.2f} | {r['speedup']:.2f}x | {r['test_err']:.2f} | "
                f"{'' if inc is None else f'{inc:+.2f}'} |"
            )
    lines += ["", "Paper (ImageNet, for orientation; no LeNet GAP row in the paper):", ""]
    lines += [f"- {a}: {b}" for a, b in out["paper"]]
    v = out.get("verdict") if "runs" in out else verdict(runs)
    if v:
        lines += ["", *v]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
