"""Wall time of one short training-based compression vs the number of DDP processes (issue 18).

SSR-L2,1 on LeNet-Caffe / MNIST (a trained checkpoint), a short CPU-scale schedule: AULM on
conv1, conv2, fc1 with ``max_outer`` x ``w_steps`` K-steps each, then ``finetune_steps`` steps
of fine-tuning; the **global batch is fixed** (128), so every row does the same optimisation: 1
process with batch 128, or N gloo processes (``torchrun --standalone``) with batch 128 / N each.
Every process runs one torch thread (``OMP_NUM_THREADS=1``); the 1-process row is also run with
2 threads, the fair comparison on a 2-core box. Timed: the ``compress`` call alone
(``measure=False``; data loading and process start-up reported apart), median of ``--repeats``.
The returned architectures and weights of the rows are compared (same global batch: they must
agree up to float summation order).

    .venv/bin/python benchmarks/bench_scale_ddp.py --checkpoint lenet.safetensors [--procs 1 2]

Writes benchmarks/results/scale_ddp.json and scale_ddp.md (the layer-wise / Dask rows of issue
18 are benchmarks/bench_scale.py's, results/scale.json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _lib

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
GLOBAL_BATCH = 128
SSR = {
    "lam": [0.4, 0.15, 0.25],
    "lr": 0.01,
    "max_outer": 3,
    "w_steps": 40,
    "train_all": True,
    "finetune_epochs": 1,
    "finetune_steps_per_epoch": 100,
    "finetune_lr": 0.01,
}


def worker(args: argparse.Namespace) -> None:
    """One rank (or the single process): load, compress, time; rank 0 writes one JSON row."""
    import torch
    from safetensors.torch import save_file

    from compactnn import compress, data, distributed, models
    from compactnn.train import load_checkpoint

    t_start = time.perf_counter()
    distributed.init_from_env()
    world = distributed.world_size()
    torch.set_num_threads(args.threads)
    model, _ = load_checkpoint(args.checkpoint, models.create("lenet-caffe"))
    train, test = data.get_loaders("mnist", batch_size=GLOBAL_BATCH // world, seed=0)
    t_ready = time.perf_counter()
    times, res = [], None
    for _ in range(args.repeats):
        distributed.barrier()
        t0 = time.perf_counter()
        res = compress(model, "ssr", (train, test), measure=False, progress=False, **SSR)
        distributed.barrier()
        times.append(time.perf_counter() - t0)
    assert res is not None
    if distributed.is_main():
        sd = {k: v.contiguous() for k, v in res.model.state_dict().items()}
        save_file(sd, args.weights)
        row = {
            "processes": world,
            "threads_per_process": args.threads,
            "per_rank_batch": GLOBAL_BATCH // world,
            "global_batch": GLOBAL_BATCH,
            "compress_s": times,
            "compress_median_s": statistics.median(times),
            "startup_and_load_s": t_ready - t_start,
            "filters": {k: int(v.shape[0]) for k, v in sd.items() if k.endswith(".weight")},
            "val_top1": res.validation.get("after") if res.validation else None,
        }
        Path(args.row).write_text(json.dumps(row))
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()


def _launch(n: int, threads: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    row, weights = tmp / f"row{n}x{threads}.json", tmp / f"w{n}x{threads}.safetensors"
    me = [str(Path(__file__).resolve()), "--worker", "--checkpoint", str(args.checkpoint),
          "--threads", str(threads), "--repeats", str(args.repeats), "--row", str(row),
          "--weights", str(weights)]  # fmt: skip
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [sys.executable, *me] if n == 1 else [
        str(torchrun), "--standalone", f"--nproc-per-node={n}", *me]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    out = json.loads(row.read_text())
    out["process_wall_s"] = time.perf_counter() - t0
    out["command"] = " ".join(["OMP_NUM_THREADS=" + str(threads), *cmd])
    out["weights"] = str(weights)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="trained lenet-caffe weights")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--row", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    import tempfile

    import torch
    from safetensors.torch import load_file

    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-ddp-"))
    load_before = os.getloadavg()
    rows = [_launch(n, 1, args, tmp) for n in args.procs]
    if 1 in args.procs and (os.cpu_count() or 1) > 1:
        rows.append(_launch(1, 2, args, tmp))
    ref = load_file(rows[0]["weights"])
    for r in rows:
        w = load_file(r.pop("weights"))
        same_arch = {k: v.shape for k, v in w.items()} == {k: v.shape for k, v in ref.items()}
        r["same_architecture_as_first_row"] = same_arch
        r["max_abs_weight_diff_vs_first_row"] = (
            max(float((w[k] - ref[k]).abs().max()) for k in ref) if same_arch else None
        )
    base = rows[0]["compress_median_s"]
    for r in rows:
        r["speedup_vs_first_row"] = base / r["compress_median_s"]
    doc = {
        "benchmark": "bench_scale_ddp.py: SSR on LeNet-Caffe/MNIST, wall time vs DDP processes",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores "
        "(shared with other engineers' jobs), no GPU",
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "torch": torch.__version__,
        "options": SSR,
        "global_batch": GLOBAL_BATCH,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    # the one scaling file: the same rows under "ddp" of scale.json (other keys kept)
    both = RESULTS / "scale.json"
    merged = json.loads(both.read_text()) if both.is_file() else {}
    merged["ddp"] = doc
    both.write_text(json.dumps(merged, indent=1) + "\n")
    lines = [
        "# DDP scaling: SSR on LeNet-Caffe / MNIST vs number of processes",
        "",
        f"{doc['date']}, {doc['machine']}; load average before {load_before[0]:.1f} / after "
        f"{doc['load_average_after'][0]:.1f} (1 min). torch {torch.__version__}, gloo backend.",
        f"Global batch {GLOBAL_BATCH} in every row (per-rank batch = {GLOBAL_BATCH} / "
        f"processes), same SSR options `{json.dumps(SSR)}`; time of the `compress` call "
        f"(median of {args.repeats}).",
        "",
        "| processes | threads each | per-rank batch | compress (s) | speed-up | start-up + "
        "load (s) | filters | val top-1 | same arch / max abs weight diff vs row 1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f = "-".join(str(v) for k, v in r["filters"].items() if not k.startswith("fc2"))
        diff = r["max_abs_weight_diff_vs_first_row"]
        lines.append(
            f"| {r['processes']} | {r['threads_per_process']} | {r['per_rank_batch']} | "
            f"{r['compress_median_s']:.1f} | {r['speedup_vs_first_row']:.2f}x | "
            f"{r['startup_and_load_s']:.1f} | {f} | {r['val_top1']:.2f} % | "
            f"{r['same_architecture_as_first_row']} / "
            f"{'-' if diff is None else f'{diff:.1e}'} |"
        )
    lines += [
        "",
        "Honest reading: this machine has **2 cores shared with other jobs**, so 2 processes "
        "of 1 thread compete with the 1-process, 2-thread row for the same cores; a speed-up "
        "here measures DDP's overhead (gloo all-reduce of LeNet's 431K gradients every step, "
        "a DDP wrapper per K-step) against the halved per-rank batch, not what N machines or "
        "GPUs give. On real hardware the per-rank work is fixed and the ranks do not share "
        "cores.",
        "",
        "The rows agree on the architecture; their weights differ by float summation order "
        "only (the per-rank means are averaged by the all-reduce instead of one mean over the "
        "batch), amplified by some 460 SGD steps at lr 0.01: the 1-process row on 2 threads "
        "differs from the 1-thread row by as much. On the tiny model of "
        "tests/test_distributed.py (about 70 steps) it is below 1e-7 (the test allows 1e-5).",
        "",
        f"Command: `{doc['command']}`",
    ]
    _lib.write_result(RESULTS, "scale_ddp", {"ddp": doc}, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
