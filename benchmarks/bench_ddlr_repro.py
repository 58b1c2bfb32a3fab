"""DDLR paper, Figs. 2-4 at CPU scale: relative test accuracy vs size ratio, DDLR vs Net-Trim.

Reference models are trained here as the paper says (sec. 4; cached), then compressed
**without retraining**:

* Fig. 2 -- spiral-mlp 2-80-80-2 on the nested spiral (820 train / 204 test points, the paper's
  80/20), trained by plain SGD (batch 32, 1000 epochs, lr 1e-3); ``fc2`` (W2, 80x80) compressed
  with N = 256 and 512 calibration points, eps fractions of sec. 4.1.
* Fig. 3 -- LeNet-5 on MNIST trained on 1024 samples with the paper's 80 %-20 % train-test split
  (819 / 205; batch 64, 30 epochs, lr 1e-3; the paper does not name the optimizer: Adam), ``fc1``
  (256x120) and ``fc2`` (120x84) compressed with N = 128 and 256 of the 819, eps fractions of
  sec. 4.2 (subsampled by default); accuracy on the 205 held-out samples, as the paper, and on
  the full 10,000-image test set beside it.
* Fig. 4 -- the paper uses CIFAR-10; it is not shipped offline here, so LeNet-5 on
  Fashion-MNIST (same protocol as Fig. 3) stands in for it.

Size ratio = stored weights of the compressed layers / their original weights, measured on the
returned modules (low rank: r(d+n); Net-Trim: COO 3 nnz as in the paper; biases, unchanged,
are excluded). Relative accuracy = compressed test top-1 / original test top-1.

    .venv/bin/python benchmarks/bench_ddlr_repro.py            # ~10-15 min on 2 shared cores
    .venv/bin/python benchmarks/bench_ddlr_repro.py --quick    # smoke run

Writes benchmarks/results/ddlr_fig{2,3,4}_*.png, ddlr_repro.json and ddlr_repro.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compactnn
from compactnn import data as cdata
from compactnn import metrics, models
from compactnn.layers import LowRankLinear, SparseLinear
from compactnn.methods import CompressionData
from compactnn.solvers.layerwise import ADMMOptions
from compactnn.train import TrainConfig, load_checkpoint, save_checkpoint, train

RESULTS = Path(__file__).resolve().parent / "results"

SPIRAL_EPS = (0.02, 0.05, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.5, 0.6)  # sec. 4.1
LENET_EPS = (0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.14, 0.16, 0.2, 0.3)  # sec. 4.2-4.3
LENET_EPS_SMALL = (0.01, 0.02, 0.04, 0.08, 0.12, 0.16, 0.3)

# The paper's protocol (sec. 4): spiral-mlp trained by plain SGD (batch 32, 1000 epochs, lr
# 1e-3); LeNet-5 trained on 1024 samples with an 80 %-20 % train-test split (batch 64, 30 epochs,
# lr 1e-3; the optimizer is not stated: Adam here), accuracy on those 205 held-out samples (the
# full 10,000-image test set is reported beside it).
EXPERIMENTS: dict[str, dict[str, Any]] = {
    "fig2_spiral": {
        "model": "spiral-mlp",
        "dataset": "spiral",
        "layers": ("fc2",),
        "N": (256, 512),
        "eps": SPIRAL_EPS,
        "train_limit": None,
        "train": {"epochs": 1000, "batch": 32, "lr": 1e-3, "optimizer": "sgd"},
        "paper": "Fig. 2 (spiral, W2)",
    },
    "fig3_mnist": {
        "model": "lenet5",
        "dataset": "mnist",
        "layers": ("fc1", "fc2"),
        "N": (128, 256),
        "eps": LENET_EPS_SMALL,
        "train_limit": 1024,
        "split": 0.8,
        "train": {"epochs": 30, "batch": 64, "lr": 1e-3, "optimizer": "adam"},
        "paper": "Fig. 3 (MNIST, LeNet-5 W1, W2)",
    },
    "fig4_fashion": {
        "model": "lenet5",
        "dataset": "fashion-mnist",
        "layers": ("fc1", "fc2"),
        "N": (128, 256),
        "eps": LENET_EPS_SMALL,
        "train_limit": 1024,
        "split": 0.8,
        "train": {"epochs": 30, "batch": 64, "lr": 1e-3, "optimizer": "adam"},
        "paper": "Fig. 4 (CIFAR-10 in the paper; Fashion-MNIST stand-in here)",
    },
}
# The protocol of the first reproduction (2026-11-23), still the reference model of
# bench_net_trim_cascade.py and bench_scale.py: Adam for the spiral too, LeNet-5 trained on all
# 1024 samples and tested on the full test set.
OURS: dict[str, dict[str, Any]] = {
    k: {
        **{f: v for f, v in e.items() if f != "split"},
        "train": {**e["train"], "optimizer": "adam"},
    }
    for k, e in EXPERIMENTS.items()
}


def _cache() -> Path:
    root = os.environ.get("COMPACTNN_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "compactnn"
    return base / "checkpoints"


def _datasets(exp: dict[str, Any]) -> tuple[TensorDataset, TensorDataset]:
    """(train, test) of an experiment: with ``split``, the ``train_limit`` subset cut into
    train / held-out test by a seeded permutation (the paper's 80 %-20 %)."""
    kw: dict[str, Any] = {"limit": exp["train_limit"]} if exp["train_limit"] else {}
    train = cdata.get_dataset(exp["dataset"], "train", seed=0, **kw)
    if "split" not in exp:
        return train, cdata.get_dataset(exp["dataset"], "test")
    x, y = train.tensors
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    k = int(exp["split"] * len(x))
    return TensorDataset(x[perm[:k]], y[perm[:k]]), TensorDataset(x[perm[k:]], y[perm[k:]])


def _full_test(exp: dict[str, Any]) -> TensorDataset | None:
    """The dataset's whole test split, for the experiments whose test set is a held-out 20 %."""
    return cdata.get_dataset(exp["dataset"], "test") if "split" in exp else None


def _reference(name: str, exp: dict[str, Any], train_ds: TensorDataset) -> tuple[nn.Module, str]:
    """Train (cross-entropy, the paper's optimizer / epochs / batch / lr) or load the cached
    baseline."""
    t = exp["train"]
    opt = t.get("optimizer", "adam")
    tag = f"ddlr_{name}_{exp['model']}_{exp['dataset']}_n{len(train_ds)}_e{t['epochs']}"
    if opt != "adam":  # the tag of the first reproduction's (Adam) models is kept as it was
        tag += f"_{opt}"
    path = _cache() / f"{tag}.safetensors"
    model = models.create(exp["model"], seed=0)
    if path.is_file():
        load_checkpoint(path, model)
        return model, f"cached {path}"
    loader = DataLoader(
        train_ds, batch_size=t["batch"], shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    cfg = TrainConfig(
        epochs=t["epochs"],
        lr=t["lr"],
        optimizer=opt,
        momentum=0.0,  # the paper's "stochastic batch gradient descent": no momentum
        weight_decay=0.0,
        schedule="constant",
        seed=0,
    )
    t0 = time.perf_counter()
    train(model, loader, config=cfg, progress=False)
    save_checkpoint(model, path, model=exp["model"], dataset=exp["dataset"], optimizer=opt)
    return model, f"trained ({opt}) in {time.perf_counter() - t0:.1f}s -> {path}"


def _stored(module: nn.Module) -> int:
    if isinstance(module, LowRankLinear):
        return module.first.weight.numel() + module.second.weight.numel()
    if isinstance(module, SparseLinear):
        return module.coo_param_count()
    if isinstance(module, nn.Linear):
        return module.weight.numel()
    raise TypeError(f"unexpected compressed layer {type(module).__name__}")


def _acc(model: nn.Module, test: DataLoader) -> float:
    return metrics.accuracy(model, test, topk=(1,))["top1"]


def run_experiment(
    name: str, exp: dict[str, Any], eps: tuple[float, ...], max_iter: int
) -> dict[str, Any]:
    train_ds, test_ds = _datasets(exp)
    model, how = _reference(name, exp, train_ds)
    test = DataLoader(test_ds, batch_size=1000)
    base = _acc(model, test)
    full_ds = _full_test(exp)
    full = None if full_ds is None else DataLoader(full_ds, batch_size=1000)
    base_full = None if full is None else _acc(model, full)
    orig = sum(model.get_submodule(n).weight.numel() for n in exp["layers"])
    print(f"[{name}] baseline top1 {base:.2f}% ({how})", flush=True)
    rows = []
    for N in exp["N"]:
        g = torch.Generator().manual_seed(N)
        idx = torch.randperm(len(train_ds), generator=g)[:N]
        xb = train_ds.tensors[0][idx]
        cd = CompressionData(train=None, calib=[xb], input_shape=tuple(xb.shape[1:]))
        for method in ("ddlr", "net-trim"):
            for frac in eps:
                t0 = time.perf_counter()
                with warnings.catch_warnings(record=True) as w:
                    warnings.simplefilter("always")
                    res = compactnn.compress(
                        model,
                        method,
                        cd,
                        layers=exp["layers"],
                        eps_frac=frac,
                        max_rows=None,
                        options=ADMMOptions(max_iter=max_iter),
                        progress=False,
                        measure=False,
                    )
                secs = time.perf_counter() - t0
                stored = sum(_stored(res.model.get_submodule(n)) for n in exp["layers"])
                acc = _acc(res.model, test)
                h = res.history["layers"]
                row = {
                    "experiment": name,
                    "N": N,
                    "method": method,
                    "eps_frac": frac,
                    "size_ratio": stored / orig,
                    "stored_weights": stored,
                    "original_weights": orig,
                    "top1": acc,
                    "rel_acc": acc / base,
                    **(
                        {}
                        if full is None
                        else {"rel_acc_full_test": _acc(res.model, full) / base_full}
                    ),
                    "seconds": secs,
                    "per_layer": {
                        n: {
                            k: h[n][k]
                            for k in (
                                "status",
                                "iterations",
                                "violation",
                                "deployed_violation",
                                "form",
                            )
                        }
                        | {
                            "rank" if method == "ddlr" else "nnz": h[n][
                                "rank" if method == "ddlr" else "nnz"
                            ]
                        }
                        for n in exp["layers"]
                    },
                    "warnings": [str(x.message) for x in w],
                }
                rows.append(row)
                ranks = ",".join(
                    str(row["per_layer"][n].get("rank", row["per_layer"][n].get("nnz")))
                    for n in exp["layers"]
                )
                print(
                    f"  N={N} {method:8s} eps={frac:<5} size={row['size_ratio']:.3f} "
                    f"rel_acc={row['rel_acc']:.4f} r/nnz={ranks} {secs:.1f}s",
                    flush=True,
                )
    return {
        "experiment": name,
        "paper": exp["paper"],
        "model": exp["model"],
        "dataset": exp["dataset"],
        "layers": list(exp["layers"]),
        "train_samples": len(train_ds),
        "test_samples": len(test_ds),
        "baseline_top1": base,
        "baseline_top1_full_test": base_full,
        "protocol": {k: exp[k] for k in ("train", "train_limit") if k in exp}
        | {"split": exp.get("split")},
        "original_weights": orig,
        "rows": rows,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ns = sorted({r["N"] for r in result["rows"]})
    fig, axes = plt.subplots(1, len(Ns), figsize=(5.2 * len(Ns), 4.2), squeeze=False)
    for ax, N in zip(axes[0], Ns, strict=True):
        for method, style in (("ddlr", "o-"), ("net-trim", "s--")):
            pts = sorted(
                (r["size_ratio"], r["rel_acc"])
                for r in result["rows"]
                if r["N"] == N and r["method"] == method
            )
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                style,
                label="DDLR" if method == "ddlr" else "Net-Trim",
            )
        ax.axhline(1.0, color="grey", lw=0.8, ls=":", label="original")
        ax.set_xlabel("size ratio (compressed / original layer weights)")
        ax.set_ylabel("relative test accuracy")
        ax.set_title(
            f"{result['paper']}\nN = {N}, baseline top-1 {result['baseline_top1']:.1f}%", fontsize=9
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _dominance(rows: list[dict[str, Any]], N: int) -> str:
    """For each Net-Trim point: best DDLR rel. acc. at a size <= its size (fair comparison)."""
    dd = [r for r in rows if r["N"] == N and r["method"] == "ddlr"]
    wins = ties = losses = 0
    for nt in (r for r in rows if r["N"] == N and r["method"] == "net-trim"):
        cand = [r["rel_acc"] for r in dd if r["size_ratio"] <= nt["size_ratio"]]
        if not cand:
            continue
        best = max(cand)
        if best > nt["rel_acc"] + 1e-9:
            wins += 1
        elif abs(best - nt["rel_acc"]) <= 1e-9:
            ties += 1
        else:
            losses += 1
    return f"{wins} better / {ties} equal / {losses} worse"


def _protocol(res: dict[str, Any]) -> str:
    p = res.get("protocol") or {}
    t = p.get("train") or {}
    if not t:
        return "Adam (first reproduction)"
    txt = (f"{t.get('optimizer', 'adam')} ({'no momentum, ' if t.get('optimizer') == 'sgd' else ''}"
           f"lr {t['lr']:g}, batch {t['batch']}, {t['epochs']} epochs)")  # fmt: skip
    if p.get("split"):
        txt += (f" on {p['train_limit']} samples split {p['split']:.0%} / {1 - p['split']:.0%} "
                "(the paper's protocol; its optimizer is not stated for LeNet-5)")  # fmt: skip
    return txt


def markdown(out: dict[str, Any]) -> str:
    lines = [
        "# DDLR paper Figs. 2-4 (no retraining), measured with compactnn",
        "",
        f"Command: `{out['command']}`  ",
        f"Machine: {out['machine']}  ",
        f"Date: {out['date']}, total {out['total_seconds']:.0f} s",
        "",
        "Size ratio = stored weights of the compressed layers / original weights (low rank "
        "r(d+n); Net-Trim COO 3 nnz; biases unchanged and excluded). Relative accuracy = "
        "compressed / original top-1 on the experiment's test set (LeNet-5: the 20 % held out of the "
        "1024 samples, as the paper; the full test set beside it). Solver: admm backend.",
        "",
    ]
    for res in out["experiments"]:
        lines += [
            f"## {res['paper']}: {res['model']} on {res['dataset']}, layers "
            f"{', '.join(res['layers'])}",
            "",
            f"Baseline top-1 {res['baseline_top1']:.2f}% ({res['train_samples']} train / "
            f"{res['test_samples']} test samples"
            + (
                f"; {res['baseline_top1_full_test']:.2f} % on the full test set"
                if res.get("baseline_top1_full_test") is not None
                else ""
            )
            + f"); original weights of the compressed layers: {res['original_weights']}. "
            f"Training: {_protocol(res)}.",
            "",
        ]
        for N in sorted({r["N"] for r in res["rows"]}):
            lines.append(
                f"DDLR vs Net-Trim, N = {N} (each Net-Trim point vs the best DDLR point "
                f"at a size <= its size): {_dominance(res['rows'], N)}"
            )
            lines.append("")
        full = any("rel_acc_full_test" in r for r in res["rows"])
        lines += [
            "| N | method | eps_frac | rank / nnz per layer | size ratio | top-1 % | "
            "rel. acc. | " + ("rel. acc. (full test set) | " if full else "") + "s |",
            "|---|---|---|---|---|---|---|---|" + ("---|" if full else ""),
        ]
        for r in res["rows"]:
            key = "rank" if r["method"] == "ddlr" else "nnz"
            per = ", ".join(
                f"{n}:{v[key]}" + ("(dense)" if v["form"] == "dense" else "")
                for n, v in r["per_layer"].items()
            )
            lines.append(
                f"| {r['N']} | {r['method']} | {r['eps_frac']} | {per} | "
                f"{r['size_ratio']:.3f} | {r['top1']:.2f} | {r['rel_acc']:.4f} | "
                + (f"{r['rel_acc_full_test']:.4f} | " if full else "")
                + f"{r['seconds']:.1f} |"
            )
        lines.append("")
    lines += ["## Verdict", ""]
    for res in out["experiments"]:
        for N in sorted({r["N"] for r in res["rows"]}):
            lines.append(f"- {res['paper']}, N = {N}: DDLR vs Net-Trim at equal or smaller size "
                         f"{_dominance(res['rows'], N)}.")  # fmt: skip
    lines += [
        "",
        "One seed, no retraining, one draw of the N calibration samples. The paper shows DDLR "
        "clearly ahead in all three figures; measured here it is clearly ahead only where the "
        "count says so (LeNet-5 / MNIST at N = 256) and mixed or behind elsewhere. With the "
        "paper's literal spiral protocol (plain SGD, lr 1e-3, 1000 epochs) the spiral network "
        "underfits (see its baseline top-1; the paper's Fig. 1 shows a fitted boundary), so "
        "Fig. 2's curve is that of a weak model; the first reproduction (Adam, "
        "`ddlr_repro.json` of 2026-11-23 in git history) had DDLR ahead at N = 256. The 205-"
        "sample held-out test sets of Figs. 3-4 move by 0.49 points per image.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 eps values, one N, smoke run")
    ap.add_argument("--only", choices=sorted(EXPERIMENTS), action="append")
    ap.add_argument("--full-eps", action="store_true", help="all 11 eps values for LeNet too")
    ap.add_argument("--max-iter", type=int, default=5000, help="ADMM iteration cap per solve")
    ap.add_argument(
        "--replot", action="store_true", help="only redraw the PNGs and .md from ddlr_repro.json"
    )
    args = ap.parse_args()
    if args.replot:
        saved = json.loads((RESULTS / "ddlr_repro.json").read_text())
        for res in saved["experiments"]:
            plot(res, RESULTS / res["png"])
        (RESULTS / "ddlr_repro.md").write_text(markdown(saved))
        return
    torch.set_num_threads(1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    out_exps = []
    for name in args.only or list(EXPERIMENTS):
        exp = dict(EXPERIMENTS[name])
        eps = LENET_EPS if (args.full_eps and exp["model"] == "lenet5") else exp["eps"]
        if args.quick:
            eps = (eps[0], eps[len(eps) // 2], eps[-1])
            exp["N"] = exp["N"][:1]
        res = run_experiment(name, exp, tuple(eps), args.max_iter)
        png = RESULTS / f"ddlr_{name}.png"
        plot(res, png)
        res["png"] = png.name
        out_exps.append(res)
    out = {
        "command": " ".join([".venv/bin/python", "benchmarks/bench_ddlr_repro.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()} CPU, 2 shared cores, 1 torch thread, torch "
        f"{torch.__version__}",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "total_seconds": time.perf_counter() - t0,
        "experiments": out_exps,
    }
    stem = "ddlr_repro_quick" if args.quick else "ddlr_repro"
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=2, default=str))
    (RESULTS / f"{stem}.md").write_text(markdown(out))
    print(f"wrote {RESULTS / stem}.json/.md in {out['total_seconds']:.0f}s")


if __name__ == "__main__":
    main()
