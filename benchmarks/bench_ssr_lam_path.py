"""SSR Algorithm 1's lambda set S = {0.1, ..., 0.8} at CPU scale: LeNet on MNIST.

Lin et al. (sec. IV-A): "we vary lambda in the set {0.1, 0.2, ..., 0.8} with 8 values to select
the best trade-off between the compression/speedup rate and the accuracy"; Algorithm 1 runs the
values of S in order, pruning every layer and fine-tuning after each. Here that is
``compress(model, "ssr", data, lam_path=[0.1, ..., 0.8])`` (the same lambda on conv1, conv2 and
fc1, rho = 1, as the paper's single values), which returns every point of the path
(``history["stages"]``: filters and validation top-1; ``history["stage_plans"]``: a plan that
rebuilds each point's model). Each point is rebuilt from its plan and measured: params, MACs,
latency (batch 100 real validation images, 1 thread, median, timed in turn with the baseline
over 3 rounds so that the speed-up is not the load changing), validation and test error. The
trade-off is picked **on validation**: the smallest model (MACs) whose validation error is
within ``--tol`` points (default 0.5) of the uncompressed model's; its test error is reported,
nothing else is read from the test set.

Protocol: the paper's K-step (SGD on K^l only, lr 1e-3, momentum 0.9, weight decay 5e-4,
batch 256, r = 3); departures (CPU time): ``--outer`` (default 5) AULM iterations of
``--steps`` (default 50) SGD steps per layer and lambda, and ``--ft`` (default 1) fine-tuning
epoch(s) of at most ``--ft-steps`` (default 50) batches after each lambda from lr 1e-3 (paper: 30 epochs from 1e-4 x0.1 every 10, once per
lambda); the baseline is ours (8 epochs, 99.23 %, trained on all 60k images, so its validation
error is optimistic).

    .venv/bin/python benchmarks/bench_ssr_lam_path.py            # ~15 min on one shared core
    .venv/bin/python benchmarks/bench_ssr_lam_path.py --quick    # pipeline check

Seeds (``--seed``: validation split, loader shuffling, the method's seed; the baseline is the
demo's seed-0 LeNet for every seed, its weight fingerprint recorded) run as separate processes
and are pooled by ``--merge`` (same baseline fingerprint and settings, distinct seeds):

    .venv/bin/python benchmarks/bench_ssr_lam_path.py --seed 1 --out-stem ssr_lam_path_seed1
    .venv/bin/python benchmarks/bench_ssr_lam_path.py --merge ssr_lam_path_seed0 \
        ssr_lam_path_seed1 ssr_lam_path_seed2 --out-stem ssr_lam_path

The seed-0 ssr_lam_path.json of 2026-12-01 predates the fingerprint, so ``--merge`` refuses it
(its recorded baseline params and test error match today's checkpoint but do not prove the
same weights): rerun seed 0 before pooling.

Writes benchmarks/results/<stem>.{json,md} (default stem ssr_lam_path, ssr_lam_path_seedN for a
seed N > 0; a --quick run's stem always ends in _quick).
"""

from __future__ import annotations

import argparse
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
from compactnn import metrics, models, surgery
from compactnn.api import as_compression_data
from compactnn.demo import demo_baseline

# how latencies are measured: part of the settings, so runs timed otherwise never pool
LATENCY = "interleaved with the baseline, 3 rounds, batch 100 real validation images, 1 thread"
RESULTS = Path(__file__).resolve().parent / "results"
S = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
LAYERS = ("conv1", "conv2", "fc1")


def _measure(model: nn.Module, base: nn.Module, val: Any, test: Any) -> dict[str, Any]:
    """Size, errors and latency; the speed-up is over the baseline timed in turn with the model
    (batch 100 real validation images, 1 thread, 3 rounds), so load changes cancel."""
    lat = metrics.measure_latency_interleaved(
        {"base": base, "model": model}, (1, 28, 28), rounds=3, batch_size=100, threads=1,
        repeats=7, inputs=metrics.real_batch(val, 100),
    )  # fmt: skip
    base_ms, ms = lat["base"].median_ms, lat["model"].median_ms
    return {
        "filters": "-".join(str(model.get_submodule(n).weight.shape[0]) for n in LAYERS),
        "params": int(sum(p.numel() for p in model.parameters())),
        "macs": int(metrics.count_flops(model, (1, 28, 28))) // 2,
        "ms": float(ms),
        "speedup": base_ms / float(ms),
        "val_err": 100.0 - float(metrics.accuracy(model, val, topk=(1,))["top1"]),
        "test_err": 100.0 - float(metrics.accuracy(model, test, topk=(1,))["top1"]),
    }


def _stem(args: argparse.Namespace) -> str:
    return _lib.stem_of(args, "ssr_lam_path")


def _write(out: dict[str, Any], out_dir: Path, stem: str) -> None:
    _lib.write_result(out_dir, stem, out, markdown, newline=True, echo=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outer", type=int, default=5)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--ft", type=int, default=1, help="fine-tuning epochs after each lambda")
    ap.add_argument("--ft-steps", type=int, default=50, help="cap on batches per fine-tuning epoch")
    ap.add_argument("--tol", type=float, default=0.5, help="validation error tolerance (points)")
    _lib.add_seed_args(ap, "ssr_lam_path", "ssr_lam_path[_seedN]")
    args = ap.parse_args(argv)
    if _lib.render_or_merge(args, argv, markdown, merge, lambda _: "ssr_lam_path"):
        return
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    lams = S[:3] if args.quick else S
    if args.quick:
        args.outer, args.steps = 2, 3
    limit = 2048 if args.quick else None
    # the baseline is the demo's seed-0 LeNet whatever --seed is; its fingerprint is recorded
    base, test, ckpt = demo_baseline(seed=0, progress=False)
    torch.manual_seed(args.seed)  # anything not seeded explicitly below
    full, _ = cdata.get_loaders("mnist", batch_size=256, seed=args.seed, limit=limit)
    cd = as_compression_data(full, val_fraction=0.1, seed=args.seed, input_shape=(1, 28, 28))
    base_row = {"lam": 0.0, **_measure(base, base, cd.val, test)}
    baseline = _lib.baseline_record(
        base, ckpt, params=base_row["params"], test_err=base_row["test_err"]
    )
    res = compactnn.compress(
        base, "ssr", cd, progress=False, measure=False, on_drop="warn", layers=list(LAYERS),
        lam_path=list(lams), penalty="l21", lr=1e-3, train_all=False, max_outer=args.outer,
        w_steps=args.steps, path_finetune_epochs=args.ft, finetune_epochs=args.ft,
        finetune_lr=1e-3, finetune_distill=0.0, finetune_steps_per_epoch=args.ft_steps,
        seed=args.seed,
    )  # fmt: skip
    plans = [*res.history["stage_plans"], res.plan]
    rows = [base_row]
    for lam, plan in zip(lams, plans, strict=True):
        point = surgery.apply(plan, models.create("lenet-caffe")).eval()
        rows.append({"lam": lam, **_measure(point, base, cd.val, test)})
        r = rows[-1]
        print(f"lam {lam}: {r['filters']} {r['params']} params, val err {r['val_err']:.2f}, "
              f"{r['speedup']:.2f}x", flush=True)  # fmt: skip
    out = {
        "command": "python " + " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()} 2-core CPU shared with other jobs, no GPU",
        "load": list(os.getloadavg()),
        "threads": args.threads,
        "quick": args.quick,
        "seed": args.seed,
        "settings": {
            "outer": args.outer,
            "steps": args.steps,
            "ft": args.ft,
            "ft_steps": args.ft_steps,
            "tol": args.tol,
            "batch_size": 256,
            "lr": 1e-3,
            "lambdas": list(lams),
            "layers": list(LAYERS),
            "train_limit": limit,
            "latency": LATENCY,
        },
        "baseline": baseline,
        "seconds": time.perf_counter() - t_all,
        "rows": rows,
        "chosen_lam": choose(rows, args.tol),
    }
    _write(out, args.out, _stem(args))


def choose(rows: list[dict[str, Any]], tol: float) -> float | None:
    """The trade-off, on validation only: the smallest model (MACs, then validation error) whose
    validation error is within ``tol`` points of the baseline's (``rows[0]``)."""
    ok = [r for r in rows[1:] if r["val_err"] <= rows[0]["val_err"] + tol]
    return min(ok, key=lambda r: (r["macs"], r["val_err"]))["lam"] if ok else None


def _recipe(run: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for two runs to be pooled (the baseline is checked separately)."""
    s = {k: v for k, v in run["settings"].items() if k != "seed"}
    return {"threads": run.get("threads"), "quick": run.get("quick", False), **s}


def merge(stems: list[str], out_dir: Path = RESULTS, argv: list[str] | None = None) -> dict:
    """One report from single-seed (or already pooled) result files ``out_dir/<stem>.json``;
    SystemExit when they have different baselines or settings, or repeat a seed."""
    runs = _lib.load_poolable(stems, out_dir, _recipe)
    first = runs[0]
    return {
        "command": "python " + " ".join([Path(__file__).name, *(argv or ["--merge", *stems])]),
        "date": dt.date.today().isoformat(),
        "machine": first["machine"],
        "quick": first.get("quick", False),
        "baseline": first["baseline"],
        "seeds": [_lib.run_seed(r) for r in runs],
        "summary": summary(runs),
        "chosen": chosen_summary(runs),
        "runs": runs,
    }


_KEYS = ("params", "macs", "ms", "speedup", "val_err", "test_err")


def _pool_rows(per: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "n": len(per),
        "filters": _lib.filters_pm([r["filters"] for r in per]),
    }
    row.update({k: _lib.mean_sd([r[k] for r in per]) for k in _KEYS})
    return row


def summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per lambda (0 = the baseline): filters and mean / sd / n of every measured number."""
    lams = [r["lam"] for r in runs[0]["rows"]]
    return [
        {"lam": lam, **_pool_rows([r for run in runs for r in run["rows"] if r["lam"] == lam])}
        for lam in lams
    ]


def chosen_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The point chosen on validation in each seed, and mean ± sd of the chosen points (their
    test error and its increase over the baseline's are reported, never used to choose)."""
    per_seed = []
    for run in runs:
        lam = run["chosen_lam"]
        base = run["rows"][0]
        r = next((r for r in run["rows"] if lam is not None and r["lam"] == lam), None)
        per_seed.append(
            {"seed": _lib.run_seed(run), "lam": lam}
            | ({} if r is None else {**r, "err_increase": r["test_err"] - base["test_err"]})
        )
    got = [p for p in per_seed if p["lam"] is not None]
    pooled = _pool_rows(got) if got else {"n": 0}
    if got:
        pooled["lam"] = _lib.mean_sd([p["lam"] for p in got])
        pooled["err_increase"] = _lib.mean_sd([p["err_increase"] for p in got])
    return {"per_seed": per_seed, "pooled": pooled, "seeds_without_point": len(per_seed) - len(got)}


def _lam(lam: float) -> str:
    return "- (baseline)" if lam == 0 else f"{lam:.1f}"


def markdown(out: dict[str, Any]) -> str:
    runs = _lib.runs_of(out)
    first = runs[0]
    s = first["settings"]
    n = len(runs)
    seeds = ", ".join(str(_lib.run_seed(r)) for r in runs)
    commands = [r["command"] for r in runs] + ([out["command"]] if "runs" in out else [])
    minutes = _lib.mean_sd([r["seconds"] / 60 for r in runs])
    loads = ", ".join(f"{r['load'][0]:.1f}" for r in runs)
    base = first.get("baseline") or {}
    pm = _lib.pm
    lines = [
        "# SSR Algorithm 1, lambda set S = {0.1, ..., 0.8}: LeNet / MNIST (CPU scale)",
        "",
        *(f"Command: `{c}`  " for c in commands),
        f"Date: {', '.join(sorted({r['date'] for r in runs}))}; {first['machine']}, load "
        f"{loads} at the end of each seed; {first['threads']} torch thread; "
        f"{pm(minutes, '.0f')} min per seed; "
        + (f"one seed ({seeds})." if n == 1 else f"{n} seeds ({seeds}), each a separate process."),
        "",
        _lib.baseline_line(
            base,
            "the validation split (so the baseline's validation error too), the loaders' shuffling and the method's seed",
        ),
        "",
        "Protocol: the paper's K-step (K^l only, lr 1e-3, batch 256, rho = 1, r = 3), the same "
        "lambda on conv1 / conv2 / fc1, the values of S in order, pruning after each. "
        f"Departures: {s['outer']} AULM iterations x {s['steps']} SGD steps per layer and "
        f"lambda; {s['ft']} fine-tuning epoch(s) of at most "
        f"{s.get('ft_steps', '(not recorded by this run)')} batches from lr "
        "1e-3 after each lambda and at the end (paper: 30 epochs from 1e-4). Each point is "
        "rebuilt from the plan the run returned and measured.",
        "",
        f"Summary over {'the seed' if n == 1 else f'{n} seeds'} (mean ± sd; filters: the common "
        "value, else per layer mean ± sd):",
        "",
        "| lambda | n | filters | params | MACs | CPU ms | speed-up | val err % | test err % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out.get("summary") or summary(runs):
        lines.append(
            f"| {_lam(r['lam'])} | {r['n']} | {r['filters']} | {pm(r['params'], ',.0f')} | "
            f"{pm(r['macs'], ',.0f')} | {pm(r['ms'], '.2f')} | {pm(r['speedup'], '.2f')}x | "
            f"{pm(r['val_err'], '.2f')} | {pm(r['test_err'], '.2f')} |"
        )
    lines += [
        "",
        "Per seed:",
        "",
        "| seed | lambda | filters | params | MACs | CPU ms | speed-up | val err % | test err % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for r in run["rows"]:
            mark = " **(chosen on validation)**" if r["lam"] == run["chosen_lam"] else ""
            lines.append(
                f"| {_lib.run_seed(run)} | {_lam(r['lam'])}{mark} | {r['filters']} | {r['params']:,} | "
                f"{r['macs']:,} | {r['ms']:.2f} | {r['speedup']:.2f}x | {r['val_err']:.2f} | "
                f"{r['test_err']:.2f} |"
            )
    ch = out.get("chosen") or chosen_summary(runs)
    rule = (
        f"smallest MACs with validation error <= the seed's baseline + {s['tol']} points; the "
        "test set is read only to report the chosen point"
    )
    lines += [
        "",
        f"Trade-off picked on validation per seed ({rule}):",
        "",
        "| seed | lambda | filters | params | MACs | speed-up | val err % | test err % | "
        "increase over baseline |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in ch["per_seed"]:
        if p["lam"] is None:
            lines.append(f"| {p['seed']} | none within {s['tol']} points | | | | | | | |")
            continue
        lines.append(
            f"| {p['seed']} | {p['lam']:.1f} | {p['filters']} | {p['params']:,} | "
            f"{p['macs']:,} | {p['speedup']:.2f}x | {p['val_err']:.2f} | {p['test_err']:.2f} | "
            f"{p['err_increase']:+.2f} |"
        )
    c = ch["pooled"]
    lines.append("")
    if c["n"] == 0:
        lines.append(
            f"No point is within {s['tol']} points of the baseline's validation error in any "
            f"of the {n} seed(s)."
        )
    else:
        picked = [p["lam"] for p in ch["per_seed"] if p["lam"] is not None]
        counts = ", ".join(f"{lam:.1f} in {picked.count(lam)}" for lam in sorted(set(picked)))
        lines.append(
            f"Chosen points, {'one seed' if n == 1 else f'{n} seeds'} (mean ± sd over the "
            f"{c['n']} seed(s) with a point; lambda {counts} of {n}"
            + (f"; none in {ch['seeds_without_point']}" if ch["seeds_without_point"] else "")
            + f"): filters {c['filters']}, {pm(c['params'], ',.0f')} params, "
            f"{pm(c['macs'], ',.0f')} MACs, {pm(c['speedup'], '.2f')}x, validation error "
            f"{pm(c['val_err'], '.2f')} %, test error {pm(c['test_err'], '.2f')} % "
            f"({pm(c['err_increase'], '+.2f')} over the baseline). Paper (Table I, Caffe LeNet, "
            "30-epoch fine-tuning): SSR-L2,1 3-11-108 (21K, +0.05 %) and 2-8-77 (11K, +0.18 %)."
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
