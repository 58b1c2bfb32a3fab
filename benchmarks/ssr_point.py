"""One SSR point on the cached LeNet/MNIST baseline (for tuning lambda; prints before/after).

    T=1 python benchmarks/ssr_point.py '{"lam": [0.14, 0.07, 0.045]}'
    T=1 python benchmarks/ssr_point.py '{"lam_path": [[0.1, 0.05, 0.035], [0.14, 0.07, 0.045]]}'

The JSON options override ``compactnn.cli.DEMO_SSR``; ``T`` = torch threads for training (the
pruned filter counts depend on it: float summation order changes which filters cross the
threshold). Every point run is appended to benchmarks/results/ssr_lenet_points.jsonl, so the
tuning history (failures included) is on record next to the table.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from compactnn import data
from compactnn.api import compress
from compactnn.cli import DEMO_SSR, demo_baseline
from compactnn.methods import CompressionData

LOG = Path(__file__).resolve().parent / "results" / "ssr_lenet_points.jsonl"


def main() -> None:
    threads = int(os.environ.get("T", "2"))
    torch.set_num_threads(threads)
    model, test, _ = demo_baseline()
    train, _ = data.get_loaders("mnist", batch_size=64, seed=0)
    cd = CompressionData(train=train, test=test, input_shape=(1, 28, 28))
    given = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    opts = dict(DEMO_SSR)
    opts.update(given)
    t0 = time.time()
    res = compress(model, "ssr", cd, progress=False, latency_batch_size=100, **opts)
    seconds = round(time.time() - t0, 1)
    print(opts)
    for st in res.history["stages"]:
        print("stage", st.get("filters"), st.get("top1"))
    print(res.summary())
    print("seconds", seconds)
    b, a = res.report_before, res.report_after
    rec = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {threads} training thread(s), latency 1 thread",
        "command": f"T={threads} python benchmarks/ssr_point.py '{json.dumps(given)}'",
        "options": opts,
        "filters": [s.get("filters") for s in res.history["stages"]],
        "params": a.params,
        "macs": a.macs,
        "speedup": b.latency.median_ms / a.latency.median_ms,
        "top1_before": b.accuracy["top1"],
        "top1_after": a.accuracy["top1"],
        "err_inc": b.accuracy["top1"] - a.accuracy["top1"],
        "seconds": seconds,
    }
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with LOG.open("a") as fh:
        fh.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
