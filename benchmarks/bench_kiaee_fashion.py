"""Kiaee et al. Tables 3(c) / 6 at CPU scale: the custom CNN along a mu path, on Fashion-MNIST.

The paper trains its custom CNN (Table 1: conv3x3 96-128-256-64, fc 256-10) on CIFAR-10 and runs
ADMM with l0 / l1 on the filter blocks W_ij for increasing mu (warm-started), reporting per mu:
accuracy, zero blocks per layer ("Filter (#)"), sparsity, training epochs and speed-up. There is no
CIFAR-10 here, so ``kiaee-cnn`` gets 1 input channel and native 28x28 Fashion-MNIST inputs (fc1 is
then 576->256 instead of 1024->256; the conv layers are those of Table 1).

For every mu we record (measured here, nothing copied):

* ``top1``: accuracy of the masked (dense, zero blocks held at zero) model on a fixed test subset
  (``--eval-limit`` first test images; 0 = all 10k); the baseline and the final model of each path
  are also evaluated on the full 10k test set.
* zero W_ij blocks per regularised layer out of the totals (conv: kernels; fc1: with the
  "kernels" structure a Linear weight's blocks are its single entries);
* sparsity % of the regularised weights (the method's number) and of all parameters;
* epochs (per mu, as counted by the method: ``epochs * admm_iterations + finetune_epochs``, one
  "epoch" being ``--steps`` SGD steps) and their running total;
* latency at batch 100 on 1 thread of the *deployable* model at that mu: filters whose blocks are
  all zero physically removed, every other zero block left in a dense conv. Zero kernels inside a
  dense convolution cost as much as non-zero ones, so there is no speed-up unless whole filters
  go; the speed-up is the ratio to the baseline latency measured in the same time window.

The per-mu model is captured by wrapping ``compactnn.methods.admm_sparse.accuracy`` (called once
per mu on the model after its masked fine-tuning) for the duration of the run; src/ is untouched.

    .venv/bin/python benchmarks/bench_kiaee_fashion.py            # full run (~10-15 min, 2 cores)
    .venv/bin/python benchmarks/bench_kiaee_fashion.py --quick    # smoke run (pipeline only)

Writes benchmarks/results/kiaee_fashion.{json,md} (``_quick`` suffix with --quick).

References:
    Kiaee, Gagne, Abbasi, "Alternating Direction Method of Multipliers for Sparse Convolutional
    Neural Networks", 2016: Algorithm 1, eqs. (6)-(10), Table 1 (CNN), Table 3(c), Table 6(a).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import json
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

import compactnn
from compactnn import data as cdata
from compactnn import metrics, models
from compactnn.cli import cache_dir
from compactnn.methods import CompressionData
from compactnn.methods import admm_sparse as admm_mod
from compactnn.methods._common import prunable_layers, prune_filters
from compactnn.train import TrainConfig, load_checkpoint, save_checkpoint, train

RESULTS = Path(__file__).resolve().parent / "results"
INPUT = (1, 28, 28)
LAYER_ORDER = ("conv1", "conv2", "conv3", "conv4", "fc1")

# Kiaee et al. Table 3(c): custom CNN on CIFAR-10 (Table 6(a) repeats sparsity/accuracy/epochs).
# Filter (#) totals there: 288-12288-32768-16384-256.
PAPER_TOTALS = "288-12288-32768-16384-256"
PAPER = {
    "l1": [
        (0, 80.00, "0-0-0-0-0", 0.00, 0, 1.00),
        (0.000, 81.24, "0-0-0-0-0", 0.00, 4, 1.00),
        (0.105, 81.44, "0-0-0-0-0", 0.00, 16, 1.00),
        (0.211, 81.46, "0-0-0-0-0", 0.00, 30, 1.00),
        (0.316, 81.24, "0-5-20-9-57", 2.40, 64, 1.21),
        (0.421, 81.48, "0-267-843-792-57", 5.11, 80, 1.37),
        (0.526, 80.92, "3-2870-8922-7161-57", 29.82, 120, 1.94),
        (0.579, 79.80, "7-5383-17189-10736-57", 50.63, 130, 2.15),
    ],
    "l0": [
        (0, 80.00, "0-0-0-0-0", 0.00, 0, 1.00),
        (0.000, 81.34, "1-2-2-1-1", 0.05, 4, 1.01),
        (0.105, 81.54, "1-2-3-2-3", 0.14, 16, 1.02),
        (0.211, 81.56, "5-3-5-5-5", 0.23, 36, 1.03),
        (0.316, 81.34, "5-8-25-17-21", 0.95, 56, 1.10),
        (0.421, 81.58, "10-273-853-800-23", 3.75, 80, 1.30),
        (0.526, 81.02, "13-2879-8933-7173-23", 28.48, 96, 1.93),
        (0.579, 79.90, "17-5395-17200-10748-23", 49.29, 117, 2.15),
    ],
}

# mu paths (rho = 1). l0 thresholds block norms at sqrt(2 mu / rho) (eq. 10), l1 shrinks them by
# mu / rho (eq. 9), so the same sparsity needs a much smaller mu with l0. Chosen by probing.
DEFAULT_MUS = {
    "l0": (1e-5, 1e-4, 1e-3, 3e-3, 6e-3),
    "l1": (3e-3, 1e-2, 3e-2, 6e-2, 1e-1),
}


def _baseline(
    args: argparse.Namespace, train_set: Any, test_full: DataLoader
) -> tuple[nn.Module, Path]:
    """Train kiaee-cnn on the training subset once; cache the checkpoint."""
    name = f"kiaee-cnn-fashion28-n{args.train_limit}-e{args.base_epochs}-seed{args.seed}"
    ckpt = cache_dir() / "checkpoints" / f"{name}.safetensors"
    model = models.create("kiaee-cnn", in_channels=1, input_size=28, seed=args.seed)
    if ckpt.is_file() and not args.retrain:
        model, _ = load_checkpoint(ckpt, model)
        print(f"loaded cached baseline {ckpt}")
        return model, ckpt
    loader = DataLoader(
        train_set,
        batch_size=64,
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    cfg = TrainConfig(
        epochs=args.base_epochs, lr=0.01, momentum=0.9, weight_decay=5e-4, seed=args.seed
    )
    t0 = time.perf_counter()
    train(model, loader, config=cfg, progress=True, desc="train kiaee-cnn")
    print(f"trained baseline in {time.perf_counter() - t0:.0f} s")
    save_checkpoint(
        model,
        ckpt,
        model="kiaee-cnn",
        model_kwargs={"in_channels": 1, "input_size": 28},
        dataset="fashion-mnist",
        input_shape=list(INPUT),
        train_limit=args.train_limit,
        epochs=args.base_epochs,
        seed=args.seed,
    )
    return model, ckpt


@contextlib.contextmanager
def _capture_per_mu(store: list[dict[str, torch.Tensor]]) -> Iterator[None]:
    """Record the model's state each time ADMM-sparse evaluates it (once per mu)."""
    original = admm_mod.accuracy

    def wrapped(model: nn.Module, *a: Any, **kw: Any) -> dict[str, float]:
        store.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return original(model, *a, **kw)

    admm_mod.accuracy = wrapped  # type: ignore[assignment]
    try:
        yield
    finally:
        admm_mod.accuracy = original  # type: ignore[assignment]


def _deployable(
    baseline: nn.Module, state: dict[str, torch.Tensor]
) -> tuple[nn.Module, dict[str, int]]:
    """The model at one mu with its all-zero filters physically removed (as the method does)."""
    model = copy.deepcopy(baseline)
    model.load_state_dict(state)
    mods = dict(model.named_modules())
    keep: dict[str, list[int]] = {}
    for layer in prunable_layers(model):
        w = mods[layer].weight.detach()
        rows = (w.reshape(w.shape[0], -1) != 0).any(dim=1)
        if not bool(rows.all()):
            keep[layer] = [int(j) for j in torch.nonzero(rows).flatten()] or [0]
    removed = {k: int(mods[k].weight.shape[0]) - len(v) for k, v in keep.items()}
    if keep:
        model, _ = prune_filters(model, keep, INPUT)
    return model, removed


def _latency_pair(base: nn.Module, model: nn.Module, repeats: int) -> tuple[float, float]:
    """Median ms at batch 100, 1 thread, of baseline and model, measured back to back."""
    kw = dict(batch_size=100, threads=1, warmup=2, repeats=repeats)
    b = metrics.measure_latency(base, INPUT, **kw).median_ms
    m = metrics.measure_latency(model, INPUT, **kw).median_ms
    return b, m


def _zero_fraction_all(state: dict[str, torch.Tensor]) -> float:
    total = sum(v.numel() for v in state.values())
    zeros = sum(int((v == 0).sum()) for v in state.values())
    return 100.0 * zeros / total


def _run_path(
    penalty: str,
    mus: tuple[float, ...],
    baseline: nn.Module,
    cd: CompressionData,
    test_full: DataLoader,
    args: argparse.Namespace,
) -> dict[str, Any]:
    opts: dict[str, Any] = dict(
        penalty=penalty,
        structure="kernels",
        mus=mus,
        rho=1.0,
        xi=args.xi,
        delta=1,
        nu=args.nu,
        steps_per_epoch=args.steps,
        finetune_epochs=1,
        lr=1e-3,
        seed=args.seed,
    )
    states: list[dict[str, torch.Tensor]] = []
    t0 = time.perf_counter()
    with _capture_per_mu(states):
        res = compactnn.compress(
            copy.deepcopy(baseline), "admm-sparse", cd, measure=False, progress=False, **opts
        )
    seconds = time.perf_counter() - t0
    path = res.history["path"]
    if len(states) != len(path):
        raise RuntimeError(f"captured {len(states)} models for {len(path)} mu values")
    rows: list[dict[str, Any]] = []
    cum = 0
    for entry, state in zip(path, states, strict=True):
        dep, removed = _deployable(baseline, state)
        b_ms, m_ms = _latency_pair(baseline, dep, args.lat_repeats)
        cum += int(entry["epochs"])
        row = {
            "mu": entry["mu"],
            "top1_subset": entry["top1"],
            "zero_blocks": entry["zero_blocks"],
            "blocks": entry["blocks"],
            "filter_col": "-".join(str(entry["zero_blocks"][k]) for k in LAYER_ORDER),
            "sparsity_percent": entry["sparsity_percent"],
            "sparsity_percent_all_params": _zero_fraction_all(state),
            "epochs": entry["epochs"],
            "epochs_cumulative": cum,
            "admm_iterations": entry["admm_iterations"],
            "guard": entry["guard"],
            "seconds": entry["seconds"],
            "removed_filters": removed,
            "params_deployable": metrics.count_params(dep),
            "macs_deployable": metrics.count_flops(dep, INPUT) // 2,
            "latency_ms_baseline": b_ms,
            "latency_ms": m_ms,
            "speedup": b_ms / m_ms,
        }
        if removed:  # filter removal drops their (ReLU'd) bias too: measure the deployed model
            row["top1_subset_deployable"] = metrics.accuracy(dep, cd.test, topk=(1,))["top1"]
        rows.append(row)
        print(
            json.dumps(
                {
                    k: row[k]
                    for k in (
                        "mu",
                        "top1_subset",
                        "filter_col",
                        "sparsity_percent",
                        "epochs",
                        "speedup",
                    )
                }
            )
        )
    final_top1 = metrics.accuracy(res.model, test_full, topk=(1,))["top1"]
    return {
        "penalty": penalty,
        "options": opts,
        "seconds": seconds,
        "rows": rows,
        "final": {
            "top1_full_test": final_top1,
            "params": metrics.count_params(res.model),
            "removed_filters": res.history["removed_filters"],
            "nonzero_params": res.history["nonzero_params"],
        },
    }


def _speedup_note(out: dict[str, Any]) -> str:
    """An honest reading of the measured speed-ups of this run."""
    rows = [r for p in out["paths"] for r in p["rows"]]
    if any(r["removed_filters"] for r in rows):
        return (
            "Some filters were removed: see the 'filters removed' column for the rows it affects."
        )
    su = [r["speedup"] for r in rows]
    return (
        "In this run no filter lost all its blocks, so every deployable model has the baseline's "
        f"architecture ({out['baseline']['macs']:,} MACs): the measured ratios "
        f"{min(su):.2f}-{max(su):.2f} are timing noise of a shared 2-core machine, not speed-ups."
    )


def _markdown(out: dict[str, Any]) -> str:
    base = out["baseline"]
    totals = "-".join(str(out["blocks"][k]) for k in LAYER_ORDER)
    md = [
        f"# {out['benchmark']}",
        "",
        f"Command: `{out['command']}`  ",
        f"Date: {out['date']}  ",
        f"Machine: {out['machine']}  ",
        f"Total time: {out['total_seconds']:.0f} s",
        "",
        out["setup"],
        "",
        f"Baseline (mu = 0 row): top-1 {base['top1_full_test']:.2f} % on the full 10k test set, "
        f"{base['top1_subset']:.2f} % on the {out['eval_subset']}-image test subset used per mu; "
        f"{base['params']:,} params; {base['latency_ms']:.1f} ms at batch 100, 1 thread.",
        "",
    ]
    for p in out["paths"]:
        md += [
            f"## Measured here: {p['penalty']}-norm (total {p['seconds']:.0f} s; final model "
            f"top-1 {p['final']['top1_full_test']:.2f} % on the full test set, "
            f"{p['final']['params']:,} params)",
            "",
            f"Filter (#) = zero W_ij blocks per layer conv1-conv2-conv3-conv4-fc1 out of {totals} "
            "(fc1 blocks are single weights).",
            "",
            "| mu | top-1 (subset) | Filter (#) | sparsity % (reg. layers) | sparsity % (all params) "
            "| epochs (cum.) | filters removed | CPU ms b=100 (base) | speed-up |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| 0 | {base['top1_subset']:.2f} | 0-0-0-0-0 | 0.00 | 0.00 | 0 | - | "
            f"{base['latency_ms']:.1f} | 1.00 |",
        ]
        for r in p["rows"]:
            rem = "-".join(str(r["removed_filters"].get(k, 0)) for k in LAYER_ORDER)
            acc = f"{r['top1_subset']:.2f}"
            if "top1_subset_deployable" in r:
                acc += f" ({r['top1_subset_deployable']:.2f} deployed)"
            md.append(
                f"| {r['mu']:g} | {acc} | {r['filter_col']} | {r['sparsity_percent']:.2f} | "
                f"{r['sparsity_percent_all_params']:.2f} | {r['epochs']} ({r['epochs_cumulative']}) "
                f"| {rem} | {r['latency_ms']:.1f} ({r['latency_ms_baseline']:.1f}) | "
                f"{r['speedup']:.2f} |"
            )
        md.append("")
    md += [
        "## Paper (Kiaee et al. 2016, Table 3(c) / Table 6(a): custom CNN on CIFAR-10)",
        "",
        f"Filter (#) out of {PAPER_TOTALS}; epochs are full CIFAR-10 epochs; speed-up as reported.",
        "",
        "| penalty | mu | accuracy % | Filter (#) | sparsity % | epochs | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for pen in ("l1", "l0"):
        for mu, acc, filt, sp, ep, su in PAPER[pen]:
            md.append(f"| {pen} | {mu:g} | {acc:.2f} | {filt} | {sp:.2f} | {ep} | {su:.2f} |")
    md += ["", "## Notes", ""] + [f"- {n}" for n in out["notes"]]
    return "\n".join(md) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny run: checks the pipeline only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-limit", type=int, default=10000, help="training subset size")
    ap.add_argument("--base-epochs", type=int, default=2)
    ap.add_argument("--retrain", action="store_true", help="ignore the cached baseline")
    ap.add_argument("--penalties", nargs="*", default=["l0", "l1"], choices=["l0", "l1"])
    ap.add_argument("--mus-l0", type=float, nargs="*", default=None)
    ap.add_argument("--mus-l1", type=float, nargs="*", default=None)
    ap.add_argument("--xi", type=int, default=2, help="max ADMM iterations per mu")
    ap.add_argument("--nu", type=int, default=2, help="epochs per W-step <= nu (paper: 15)")
    ap.add_argument("--steps", type=int, default=10, help="SGD steps per 'epoch'")
    ap.add_argument("--eval-limit", type=int, default=2000, help="test images per mu (0 = all)")
    ap.add_argument("--lat-repeats", type=int, default=10)
    ap.add_argument("--out", default=None, help="output stem (default kiaee_fashion[_quick])")
    args = ap.parse_args()
    if args.quick:
        args.xi, args.nu, args.steps, args.eval_limit, args.lat_repeats = 1, 1, 3, 500, 3
    torch.set_num_threads(2)
    t_all = time.perf_counter()
    train_set = cdata.get_dataset("fashion-mnist", "train", limit=args.train_limit, seed=args.seed)
    test_set = cdata.get_dataset("fashion-mnist", "test")
    test_full = DataLoader(test_set, batch_size=1000, shuffle=False)
    n_eval = len(test_set) if args.eval_limit <= 0 else min(args.eval_limit, len(test_set))
    test_sub = DataLoader(Subset(test_set, range(n_eval)), batch_size=500, shuffle=False)
    baseline, ckpt = _baseline(args, train_set, test_full)
    baseline.eval()
    train_loader = DataLoader(
        train_set,
        batch_size=64,
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    cd = CompressionData(train=train_loader, test=test_sub, input_shape=INPUT, name="fashion-mnist")
    base = {
        "top1_full_test": metrics.accuracy(baseline, test_full, topk=(1,))["top1"],
        "top1_subset": metrics.accuracy(baseline, test_sub, topk=(1,))["top1"],
        "params": metrics.count_params(baseline),
        "macs": metrics.count_flops(baseline, INPUT) // 2,
        "latency_ms": metrics.measure_latency(
            baseline, INPUT, batch_size=100, threads=1, warmup=2, repeats=args.lat_repeats
        ).median_ms,
    }
    print(f"baseline: {json.dumps(base)}")
    mods = dict(baseline.named_modules())
    blocks = {k: int(mods[k].weight.shape[0] * mods[k].weight.shape[1]) for k in LAYER_ORDER}
    given = {"l0": args.mus_l0, "l1": args.mus_l1}
    paths = []
    for pen in args.penalties:
        mus = tuple(given[pen]) if given[pen] else DEFAULT_MUS[pen]
        if args.quick:
            mus = mus[1::2][:2]
        paths.append(_run_path(pen, mus, baseline, cd, test_full, args))
    q = args.quick
    cmd = "python benchmarks/bench_kiaee_fashion.py" + (" --quick" if q else "")
    out = {
        "benchmark": "Kiaee et al. Table 3(c)/6(a) (custom CNN, mu path), Fashion-MNIST, CPU scale",
        "command": cmd,
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, 2 torch threads for training "
        "(shared with other jobs), latency on 1 thread",
        "baseline_checkpoint": str(ckpt),
        "setup": (
            f"kiaee-cnn (1x28x28 input, fc1 576->256) trained {args.base_epochs} epochs on "
            f"{args.train_limit} Fashion-MNIST training images (SGD lr 0.01 cosine, batch 64). "
            f"ADMM-sparse: structure kernels (W_ij), rho 1, lr 1e-3, batch 64, xi {args.xi}, "
            f"delta 1, nu {args.nu}, one 'epoch' = {args.steps} SGD steps, 1 masked fine-tuning "
            "epoch per mu, 50 % over-pruning guard, warm start along the mu path."
        ),
        "eval_subset": n_eval,
        "blocks": blocks,
        "total_seconds": time.perf_counter() - t_all,
        "baseline": base,
        "paths": paths,
        "paper": {"totals": PAPER_TOTALS, "rows": PAPER},
        "notes": [
            "Speed-up is measured on the deployable model: only filters whose W_ij blocks are all "
            "zero are removed; zero kernels inside a dense conv give no speed-up, so a speed-up "
            "above ~1 appears only with removed filters (ratios near 1 are timing noise on a "
            "shared machine). The paper's speed-ups assume a sparse implementation.",
            "Epochs here are capped 'epochs' of a few SGD steps (see setup), not full passes; the "
            "paper's column counts full CIFAR-10 epochs.",
            "fc1 blocks: for a Linear layer the 'kernels' structure is element-wise, so fc1 counts "
            "single weights (the paper's 5th column counts 256 units).",
            "Sparsity % (reg. layers) is the method's number (zero weights / weights of conv1-4 "
            "and fc1); 'all params' also counts fc2 and every bias.",
        ],
    }
    out["notes"].append(_speedup_note(out))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = args.out or ("kiaee_fashion" + ("_quick" if q else ""))
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=2, default=str))
    md = _markdown(out)
    (RESULTS / f"{stem}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
