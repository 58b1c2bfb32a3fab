"""Issue 17 follow-up: group PGT at the chosen Table 2 setting (conv2 s 1.05, fc s 4.5, the
``--table2`` schedule) with fine-tuning lr 0.001 instead of 0.01.

    .venv/bin/python benchmarks/pgt_ftlr_followup.py SEED   # appends to pgt_t2_ftlr_rows.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pgt as b  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    seed = int(sys.argv[1])
    opts = {**b.T2_COMMON, "finetune_lr": 0.001, "layers": b.LENET_LAYERS, "seed": seed}
    spec = {
        "kind": "pgt",
        "s": {"conv2": 1.05, "fc1": 4.5},
        "opts": opts,
        "layers": list(b.LENET_LAYERS),
        "conv2_s": 1.05,
        "fc_s": 4.5,
        "seed": seed,
        "tag": "t2-ftlr0.001",
        "penalty": "group",
    }
    r = b._task(spec)
    r.pop("_model")
    with (b.RESULTS / "pgt_t2_ftlr_rows.jsonl").open("a") as fh:
        fh.write(json.dumps(r) + "\n")
    keys = ("seed", "units", "params", "val_before_ft", "val_top1", "test_top1", "seconds")
    print(json.dumps({k: r[k] for k in keys}), flush=True)


if __name__ == "__main__":
    main()
