"""`--target latency=F` with the measured latency model (issue 36 item 1): per seed, the
returned model's latency timed interleaved with the original's (eager NCHW, one thread, batch 100
and batch 1), beside what the latency model predicted, the widths, the snaps and the test top-1.

    python benchmarks/bench_latency_model.py --model lenet-caffe --method l1-norm --seeds 0 1 2 \
        --out benchmarks/results/latency_model/lenet-caffe_l1-norm.json

LeNet: the shipped demo baseline (compactnn.demo.demo_baseline(seed=0)) for every seed (the
seed is compress's: split, criterion draws, fine-tuning). kiaee-cnn: the peers benchmark's
checkpoint (Fashion-MNIST padded to 32x32, 3 channels).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

import compactnn
from compactnn import data, demo, metrics, models
from compactnn.budget import latency_ratio
from compactnn.train import load_checkpoint

KIAEE_CKPT = (
    Path(__file__).parent
    / "results/checkpoints/peers-kiaee-cnn-fashion-mnist32x3-cuda-seed0.safetensors"
)


def baseline(name: str) -> tuple[Any, Any, Any]:
    """(model, train loader, test loader) of the benchmark's baseline."""
    if name == "lenet-caffe":
        model, _, _ = demo.demo_baseline(seed=0, progress=False)
        kw: dict[str, Any] = {}
        dataset = "mnist"
    else:
        kw = {"pad_to": 32, "channels": 3}
        dataset = "fashion-mnist"
        with torch.random.fork_rng(devices=[]):
            model, _ = load_checkpoint(
                KIAEE_CKPT, models.create("kiaee-cnn", in_channels=3, num_classes=10)
            )
    train, test = data.get_loaders(dataset, batch_size=64, seed=0, **kw)
    return model, train, test


def one(name: str, method: str, seed: int, target: str, opts: dict[str, Any]) -> dict[str, Any]:
    model, train, test = baseline(name)
    shape = tuple(next(iter(test))[0].shape[1:])
    t0 = time.perf_counter()
    res = compactnn.compress(model, method, (train, test), target=target, seed=seed,
                             progress=False, measure=False, on_drop="warn", **opts)  # fmt: skip
    seconds = time.perf_counter() - t0
    rows = {}
    for bs, rounds, repeats in ((100, 30, 2), (1, 20, 20)):
        got = latency_ratio(model, res.model, shape, batch_size=bs, threads=1, rounds=rounds,
                            repeats=repeats)  # fmt: skip
        rows[f"batch {bs}"] = {
            "original_ms": got.original_ms,
            "model_ms": got.model_ms,
            "ratio": got.ratio,
            "ratio_p10": got.quiet,
            "protocol": f"{rounds} rounds x {repeats} runs each, interleaved, median (and p10)",
        }
    acc0 = metrics.accuracy(model, test, topk=(1,))["top1"]
    acc = metrics.accuracy(res.model, test, topk=(1,))["top1"]
    rec = res.target or {}
    widths = {n: (m.out_channels if isinstance(m, torch.nn.Conv2d) else m.out_features)
              for n, m in res.model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}  # fmt: skip
    lat_model = rec.get("latency_model") or res.history.get("engine_info", {}).get("latency_model")
    return {
        "model": name, "method": method, "seed": seed, "target": target, "options": opts,
        "seconds": seconds, "widths": widths, "test_top1_original": acc0, "test_top1": acc,
        "interleaved": rows, "met": rec.get("met"), "kept_by_compress": rec.get("kept"),
        "prediction": {k: v for k, v in (rec.get("latency_prediction") or {}).items() if k != "table"},
        "latency_model": lat_model, "trace": rec.get("trace"),
    }  # fmt: skip


def collect(folder: Path) -> dict[str, Any]:
    """result.json: one row per run of every ``<model>_<method>.json`` in ``folder``, and
    issue 36's bar (returned latency <= 0.33 of the original, interleaved, batch 100) per
    model and method."""
    rows, bars = [], {}
    for f in sorted(folder.glob("*_*.json")):
        doc = json.loads(f.read_text())
        for r in doc["runs"]:
            b = r["interleaved"]["batch 100"]
            rows.append({
                "model": r["model"], "method": r["method"], "seed": r["seed"],
                "target": r["target"], "widths": r["widths"], "ratio_batch100": b["ratio"],
                "ratio_p10_batch100": b["ratio_p10"], "ratio_batch1": r["interleaved"]["batch 1"]["ratio"],
                "predicted_fraction": r["prediction"].get("predicted_fraction"),
                "measured_fraction_in_compress": r["prediction"].get("measured_fraction"),
                "snaps": (r["latency_model"] or {}).get("snaps"), "test_top1": r["test_top1"],
                "test_top1_original": r["test_top1_original"], "seconds": r["seconds"],
                "source": f.name,
            })  # fmt: skip
            key = f"{r['model']} {r['method']}"
            bars.setdefault(key, []).append(b["ratio"] <= 0.33)
    return {"date": "2026-12-07", "cpu": metrics.cpu_model(), "torch": torch.__version__,
            "machine": "2 cores, shared with other jobs during the runs", "rows": rows,
            "bar_latency_le_0.33": {k: f"{sum(v)} of {len(v)}" for k, v in bars.items()}}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="lenet-caffe", choices=["lenet-caffe", "kiaee-cnn"])
    ap.add_argument("--method", default="l1-norm")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--target", default="latency=0.3")
    ap.add_argument("--opt", action="append", default=[], help="KEY=JSON option of the method")
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--collect",
        action="store_true",
        help="only write OUT (result.json) from the runs beside it",
    )
    args = ap.parse_args()
    if args.collect:
        Path(args.out).write_text(json.dumps(collect(Path(args.out).parent), indent=1, default=str))
        return
    torch.set_num_threads(1)
    opts = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.opt)}
    out = Path(args.out)
    runs = []
    for seed in args.seeds:
        r = one(args.model, args.method, seed, args.target, opts)
        b = r["interleaved"]["batch 100"]
        print(f"{args.model} {args.method} seed {seed}: widths {r['widths']}, latency ratio "
              f"{b['ratio']:.3f} (p10 {b['ratio_p10']:.3f}; batch 100), predicted {r['prediction'].get('predicted_fraction')}, "
              f"top-1 {r['test_top1']:.2f} ({r['seconds']:.0f} s)", flush=True)  # fmt: skip
        runs.append(r)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"date": "2026-12-07", "cpu": metrics.cpu_model(),
                                   "torch": torch.__version__, "runs": runs}, indent=1, default=str))  # fmt: skip


if __name__ == "__main__":
    main()
