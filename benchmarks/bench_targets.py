"""Budget-driven compression: each method given a target, its strength chosen on training /
validation data only, then the same run replayed with the chosen options (no search).

LeNet-Caffe (20-50-500-10) on MNIST, the cached baseline of ``make demo``. Per row: the target,
the structure returned, params / MACs kept (measured on the returned model), whether the target
is met (within its 10 % tolerance), measured speed-up (batch 100, one thread, median), test error
increase (test set read for this report only), validation drop, wall time of the whole
``compress`` call, time of the search, and wall time of one run with the chosen options replayed
(so search overhead = target run - replay run).

    .venv/bin/python benchmarks/bench_targets.py               # every row (~35 min here)
    .venv/bin/python benchmarks/bench_targets.py --rows ssr    # only rows whose name has 'ssr'

The SSR row is issue 12's acceptance run, the equivalent of
``compactnn compress ~/.cache/compactnn/checkpoints/lenet-caffe-mnist-seed0.safetensors --data
mnist --method ssr --target macs=0.04 --recipe benchmarks/recipes/ssr_lenet_budget.yaml``.

Writes benchmarks/results/targets.json and targets.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

import _lib
import compactnn
from compactnn import metrics
from compactnn.demo import demo_baseline

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RECIPES = HERE / "recipes"


def _recipe(name: str) -> dict[str, Any]:
    return yaml.safe_load((RECIPES / name).read_text())


ROWS: list[dict[str, Any]] = [
    {"name": "ssr macs=0.04", **_recipe("ssr_lenet_budget.yaml")},
    {"name": "ssr-l20 macs=0.03", **_recipe("ssr_l20_lenet_budget.yaml")},
    {
        "name": "l1-norm params=0.1",
        "method": "l1-norm",
        "target": {"params": 0.1},
        "options": {"finetune_epochs": 8, "lr": 0.01},
    },
    {
        "name": "admm-sparse params=0.3",
        "method": "admm-sparse",
        "target": {"params": 0.3},
        "options": {"steps_per_epoch": 100, "xi": 5, "finetune_epochs": 3, "lr": 0.01},
    },
    {"name": "ddlr params=0.2", "method": "ddlr", "target": {"params": 0.2}, "options": {}},
]


def _units(model: nn.Module) -> str:
    parts = []
    for n, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and "." not in n:
            parts.append(str(m.weight.shape[0]))
        elif hasattr(m, "rank") and "." not in n:
            parts.append(f"r{m.rank}")
    return "-".join(parts)


def _row(spec: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    opts = dict(spec.get("options") or {})
    common = dict(latency_batch_size=100, latency_threads=1, on_drop="warn", progress=False)
    t0 = time.perf_counter()
    res = compactnn.compress(
        model, spec["method"], "mnist", target=spec["target"], max_drop=spec.get("max_drop"),
        **common, **opts,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    replay = compactnn.compress(
        model, spec["method"], "mnist", max_drop=spec.get("max_drop"), **common, **res.chosen
    )
    wall_replay = time.perf_counter() - t1
    b, a = res.report_before, res.report_after
    same = metrics.count_params(replay.model) == metrics.count_params(res.model)
    return {
        "name": spec["name"],
        "method": spec["method"],
        "target": spec["target"],
        "options": opts,
        "structure": _units(res.model),
        "params": a.params,
        "params_kept": a.params / b.params,
        "macs": a.macs,
        "macs_kept": a.macs / b.macs,
        "met": res.target["met"],
        "strength": res.target.get("strength"),
        "trials": len(res.target.get("trace", [])),
        "search_s": res.target.get("seconds"),
        "speedup": b.latency.median_ms / a.latency.median_ms,
        "latency_ms": a.latency.median_ms,
        "baseline_latency_ms": b.latency.median_ms,
        "test_top1": a.accuracy["top1"],
        "baseline_test_top1": b.accuracy["top1"],
        "test_err_increase": b.accuracy["top1"] - a.accuracy["top1"],
        "val_drop": res.validation["drop"] if res.validation else None,
        "wall_s": wall,
        "replay_wall_s": wall_replay,
        "replay_same_params": same,
        "replay_test_top1": replay.report_after.accuracy["top1"],
        "trace": res.target.get("trace"),
        "chosen": {k: v for k, v in res.chosen.items() if v is not None},
    }


def _md(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Budget-driven compression of LeNet-Caffe on MNIST",
        "",
        f"Last run {meta['date']} · {meta['machine']} · torch {meta['torch']} · "
        f"`{meta['command']}` (each row's own date and command are in the table).",
        "",
        "Target = fraction of the original kept. The strength is chosen by a size search on the "
        "training data (no accuracy is looked at); the accuracy guard reads the validation split "
        "(10 % of the training images, which the cached baseline was trained on: its validation "
        "accuracy is optimistic). Measured on the returned model; speed-up at batch "
        "100, one thread (median); error increase on the 10,000 test images (read for this report "
        "only); search = time of the strength search inside the target run; replay = the same "
        "run with the chosen options and no search.",
        "",
        "| row | structure | params kept | MACs kept | met | speed-up | test err. increase | "
        "val drop | trials | wall (target run) | search | wall (replay) | date | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['structure']} | {100 * r['params_kept']:.2f} % | "
            f"{100 * r['macs_kept']:.2f} % | {'yes' if r['met'] else 'NO'} | "
            f"{r['speedup']:.2f}x | {r['test_err_increase']:+.2f} % | "
            f"{r['val_drop']:+.2f} | {r['trials']} | {r['wall_s'] / 60:.1f} min | "
            f"{(r['search_s'] or 0) / 60:.1f} min | {r['replay_wall_s'] / 60:.1f} min | "
            f"{r.get('date', '')} | `{r.get('command', '')}` |"
        )
    lines += ["", "Chosen options (replay with `compress(model, method, data, **chosen)`):", ""]
    for r in rows:
        lines.append(f"- {r['name']}: `{json.dumps(r['chosen'], default=str)}`")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="", help="only rows whose name contains this")
    ap.add_argument("--threads", type=int, default=2, help="torch threads while compressing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, _, ckpt = demo_baseline(progress=False)
    rows = []
    out = RESULTS / "targets.json"
    prev = json.loads(out.read_text())["rows"] if out.is_file() else []
    for spec in ROWS:
        if args.rows and args.rows not in spec["name"]:
            continue
        print(f"== {spec['name']} ...", flush=True)
        row = _row(spec, model)
        row["date"] = dt.date.today().isoformat()
        row["command"] = "python benchmarks/bench_targets.py" + (
            f" --rows {args.rows}" if args.rows else ""
        )
        row["load"] = list(os.getloadavg())
        print(json.dumps({k: v for k, v in row.items() if k != "trace"}, default=str), flush=True)
        rows.append(row)
    names = {r["name"] for r in rows}
    rows = [r for r in prev if r["name"] not in names] + rows
    rows.sort(key=lambda r: [s["name"] for s in ROWS].index(r["name"]))
    meta = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, {args.threads} torch threads, no GPU",
        "torch": torch.__version__,
        "command": "python benchmarks/bench_targets.py"
        + (f" --rows {args.rows}" if args.rows else ""),
        "baseline": str(ckpt),
    }
    doc = {"meta": meta, "rows": rows}
    _lib.write_result(RESULTS, "targets", doc, _md(rows, meta), indent=2, default=str, echo=True)


if __name__ == "__main__":
    main()
