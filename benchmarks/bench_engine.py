"""The budgeted engine (issue 33): exact budget, cost and accuracy *before fine-tuning* of
ssr / pgt / admm-sparse given only a MACs target, on the peers' baselines and data.

Per row: compress with ``target={"macs": b}``, ``finetune_epochs=0`` (the engine's own settling
included, nothing after it), one CPU thread; measured on the returned model: MACs and params
kept, validation top-1 (the split bench_peers uses; the engine's automatic choices read it),
test top-1 (report only), compress wall time, and that time in dense training epochs of the same
model on the same loader (timed here, same thread count).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_engine.py \
        --models lenet-caffe --budgets 0.05,0.25 --methods ssr,pgt --seeds 0,1,2

Writes benchmarks/results/engine.json (rows appended by key) and engine.md.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

import _lib
import bench_peers
import compactnn
from compactnn import budget, metrics
from compactnn.train import TrainConfig, train

RESULTS = Path(__file__).resolve().parent / "results"
#: model -> the device its committed baseline was trained on (bench_peers' --baseline-trained-on):
#: kiaee-cnn's is the H200 one committed with the peers rows, never retrained here
TRAINED_ON: dict[str, str] = {"kiaee-cnn": "cuda"}


def dense_epoch_seconds(model: torch.nn.Module, loader: Any) -> tuple[float, float]:
    """Wall and CPU seconds of one dense training epoch (one torch thread: the CPU time is not
    moved by other jobs on a shared machine, the wall time is)."""
    m = copy.deepcopy(model).train()
    with _lib.Stopwatch() as sw, torch.random.fork_rng(devices=[]):
        train(m, loader, config=TrainConfig(epochs=1, lr=1e-3, momentum=0.9, seed=0),
              progress=False)  # fmt: skip
    return sw.wall, sw.cpu


def row(
    model_name: str, method: str, b: float, seed: int, epoch_s: dict[str, tuple[float, float]]
) -> dict[str, Any]:
    base, where = bench_peers.baseline(
        model_name, quick=False, trained_on=TRAINED_ON.get(model_name)
    )
    tr, va, te = bench_peers.loaders(model_name, seed, quick=False)
    shape = compactnn.models.default_input_shape(model_name)
    if model_name not in epoch_s:
        epoch_s[model_name] = dense_epoch_seconds(base, tr)
    opts: dict[str, Any] = {"finetune_epochs": 0, "seed": seed}
    if method == "admm-sparse":
        opts["overprune_guard"] = False
    t, c = time.perf_counter(), time.process_time()
    res = compactnn.compress(
        base, method, (tr, va, te), target={"macs": b}, progress=True, measure=False,
        on_drop="warn", input_shape=shape, **opts,
    )  # fmt: skip
    secs, cpu = time.perf_counter() - t, time.process_time() - c
    kept = budget.measure(res.model, shape, ("macs", "params")).fractions(
        budget.measure(base, shape, ("macs", "params"))
    )
    info = res.history["engine_info"]
    return {
        "model": model_name, "method": method, "budget_macs": b, "seed": seed,
        "kept_macs": kept["macs"], "kept_params": kept["params"],
        "val_top1_base": metrics.accuracy(base, va, topk=(1,))["top1"],
        "val_top1": metrics.accuracy(res.model, va, topk=(1,))["top1"],
        "test_top1": metrics.accuracy(res.model, te, topk=(1,))["top1"],
        "test_top1_base": metrics.accuracy(base, te, topk=(1,))["top1"],
        "compress_s": secs, "dense_epoch_s": epoch_s[model_name][0],
        "compress_cpu_s": cpu, "dense_epoch_cpu_s": epoch_s[model_name][1],
        "dense_epochs": cpu / epoch_s[model_name][1],
        "engine_steps": info["steps"], "stopped_early": info["stopped_early"],
        "units": res.history["keep"], "baseline": where,
        "machine": f"CPU {platform.processor() or platform.machine()}, "
                   f"{torch.get_num_threads()} thread(s)",
        "date": dt.date.today().isoformat(),
        "command": " ".join(sys.argv),
    }  # fmt: skip


def render(rows: list[dict[str, Any]]) -> str:
    out = [
        "# Budgeted engine: one run to a MACs target, before any fine-tuning",
        "",
        "Rows: `benchmarks/bench_engine.py` (one CPU thread). Kept fractions and top-1 are measured",
        "on the returned model; no fine-tuning after the engine (its settling phase is part of",
        "the compress time). Cost = compress CPU time / the CPU time of one dense training epoch",
        "of the same model on the same loader (one torch thread, so other jobs on the shared",
        "machine do not move it; rows without `compress_cpu_s` were costed in wall time, under",
        "load). Mean ± sd over seeds (seed = split + batch order).",
        "",
        "| model | method | target MACs | kept MACs % | kept params % | val top-1 (base) | "
        "test top-1 (base) | compress s | dense epochs | seeds | units (seed 0) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["model"], r["method"], r["budget_macs"]) for r in rows})

    ms = _lib.pm_values
    for m, meth, b in keys:
        rs = [r for r in rows if (r["model"], r["method"], r["budget_macs"]) == (m, meth, b)]
        rs.sort(key=lambda r: r["seed"])
        out.append(
            f"| {m} | {meth} | {100 * b:.0f} % | {ms([100 * r['kept_macs'] for r in rs])} | "
            f"{ms([100 * r['kept_params'] for r in rs])} | {ms([r['val_top1'] for r in rs])} "
            f"({ms([r['val_top1_base'] for r in rs])}) | {ms([r['test_top1'] for r in rs])} "
            f"({ms([r['test_top1_base'] for r in rs])}) | {ms([r['compress_s'] for r in rs], '.0f')} | "
            f"{ms([r['dense_epochs'] for r in rs])} | {len(rs)} | {rs[0]['units']} |"
        )
    out += ["", "Machine / date per row in engine.json."]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="lenet-caffe")
    ap.add_argument("--methods", default="ssr,pgt,admm-sparse")
    ap.add_argument("--budgets", default="0.05,0.25")
    ap.add_argument("--seeds", default="0,1,2")
    a = ap.parse_args()
    torch.set_num_threads(1)
    path = RESULTS / "engine.json"
    epoch_s: dict[str, tuple[float, float]] = {}
    for m in a.models.split(","):
        for b in (float(x) for x in a.budgets.split(",")):
            for meth in a.methods.split(","):
                for s in (int(x) for x in a.seeds.split(",")):
                    r = row(m, meth, b, s, epoch_s)
                    key = (r["model"], r["method"], r["budget_macs"], r["seed"])
                    # re-read: other runs of this script may have written rows meanwhile
                    rows = json.loads(path.read_text()) if path.is_file() else []
                    rows = [
                        x
                        for x in rows
                        if (x["model"], x["method"], x["budget_macs"], x["seed"]) != key
                    ]
                    rows.append(r)
                    _lib.write_result(RESULTS, "engine", rows, render)
                    print(
                        json.dumps(
                            {
                                k: r[k]
                                for k in (
                                    "model",
                                    "method",
                                    "budget_macs",
                                    "seed",
                                    "kept_macs",
                                    "val_top1",
                                    "dense_epochs",
                                )
                            }
                        ),
                        flush=True,
                    )


if __name__ == "__main__":
    main()
