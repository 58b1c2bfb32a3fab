"""One SSR point on the cached LeNet/MNIST baseline (for tuning lambda; prints before/after).

    T=1 python benchmarks/ssr_point.py '{"lam": [0.14, 0.07, 0.045]}'

The JSON options override ``compactnn.cli.DEMO_SSR``; ``T`` = torch threads for training.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

from compactnn import data
from compactnn.api import compress
from compactnn.cli import DEMO_SSR, demo_baseline
from compactnn.methods import CompressionData


def main() -> None:
    torch.set_num_threads(int(os.environ.get("T", "2")))
    model, test, _ = demo_baseline()
    train, _ = data.get_loaders("mnist", batch_size=64, seed=0)
    cd = CompressionData(train=train, test=test, input_shape=(1, 28, 28))
    opts = dict(DEMO_SSR)
    opts.update(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})
    t0 = time.time()
    res = compress(model, "ssr", cd, progress=False, latency_batch_size=100, **opts)
    print(opts)
    print(
        {k: (v["filters_after"], v["outer_iterations"]) for k, v in res.history["layers"].items()}
    )
    print(res.summary())
    print("seconds", round(time.time() - t0, 1))


if __name__ == "__main__":
    main()
