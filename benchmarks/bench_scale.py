"""Scaling of the layer-wise solves over workers (issue 18, item 6, layer-wise part).

Three measurements, all on this machine (a shared 2-core CPU: the load is recorded):

1. **End to end** ``compactnn.compress(lenet5, "ddlr", conv=True)`` on MNIST (the cached LeNet-5
   baseline of bench_ddlr_repro.py, 4 layers) with ``parallel`` = serial, joblib (2 workers),
   Dask with 1 and 2 workers (a LocalCluster started by the method, its start-up included) and
   Dask on an already running 2-worker cluster (``scheduler=ADDRESS``). The deployed model must
   be the same on every path (checked: max |delta weight|).
2. **A VGG-16-size layer list** (the 13 conv3x3 + fc 512-512 of ``vgg16-cifar``, lowered
   shapes d = 9 c_in, n = c_out) with synthetic activations X = ReLU(G), Y = X W0^T
   (G, W0 Gaussian; real activations change the iteration counts), N rows per layer (reduced:
   ``--rows``, default 512): every layer's DDLR solve timed serially (1 torch thread), then the
   whole list on a 2-worker Dask cluster (wall time).
3. **Projection to P workers**: the measured per-layer times t_l plus the measured transfer
   cost c_l (scatter of the layer's X, Y + gather of U on this cluster, loopback) scheduled
   with LPT (longest first onto the least loaded worker); makespan = max worker load. The
   2-worker projection is compared with the measured 2-worker wall time of (2).

Usage: .venv/bin/python benchmarks/bench_scale.py [--rows 512] [--quick]
Writes benchmarks/results/scale.json (top-level key "layerwise"; other keys, e.g. a DDP part,
are kept) and scale.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

import _lib

RESULTS = Path(__file__).resolve().parent / "results"

# vgg16-cifar: (c_in, c_out) of the 13 conv3x3, then fc 512 -> 512
VGG16 = [
    (3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
    (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512),
]  # fmt: skip


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _vgg_layers(rows: int) -> dict[str, tuple[int, int, int]]:
    out = {f"features.conv{i + 1}": (rows, 9 * ci, co) for i, (ci, co) in enumerate(VGG16)}
    out["classifier.fc1"] = (rows, 512, 512)
    return out


def _problem(N: int, d: int, n: int, seed: int) -> Any:
    from compactnn.solvers.layerwise import LayerProblem

    g = torch.Generator().manual_seed(seed)
    X = torch.relu(torch.randn(N, d, generator=g))
    W = torch.randn(n, d, generator=g) / math.sqrt(d)
    return LayerProblem(X, X @ W.T, None)


def lpt(times: list[float], workers: int) -> float:
    """Makespan of LPT (longest processing time first onto the least loaded worker)."""
    loads = [0.0] * workers
    for t in sorted(times, reverse=True):
        i = min(range(workers), key=loads.__getitem__)
        loads[i] += t
    return max(loads)


def end_to_end(quick: bool, address: str) -> list[dict[str, Any]]:
    import compactnn
    from bench_ddlr_repro import OURS as EXPERIMENTS
    from bench_ddlr_repro import _datasets, _reference

    exp = EXPERIMENTS["fig3_mnist"]
    train_ds, test_ds = _datasets(exp)
    model, how = _reference("fig3_mnist", exp, train_ds)
    loader = DataLoader(train_ds, batch_size=256)
    val = DataLoader(test_ds, batch_size=512)
    paths: list[tuple[str, dict[str, Any]]] = [
        ("serial", {}),
        ("joblib, 2 workers", {"parallel": "joblib", "n_jobs": 2}),
        ("dask LocalCluster, 1 worker (start-up included)", {"parallel": "dask", "n_jobs": 1}),
        ("dask LocalCluster, 2 workers (start-up included)", {"parallel": "dask", "n_jobs": 2}),
        ("dask scheduler=ADDRESS, 2 workers running", {"parallel": "dask", "scheduler": address}),
    ]
    if quick:
        paths = [paths[0], paths[4]]
    rows, ref = [], None
    for label, opts in paths:
        t0 = time.perf_counter()
        res = compactnn.compress(
            model, "ddlr", (loader, val), progress=False, measure=False, on_drop="warn",
            conv=True, eps_frac=0.1, max_rows=4096, calib_batches=4, **opts,
        )  # fmt: skip
        wall = time.perf_counter() - t0
        sd = res.model.state_dict()
        if ref is None:
            ref = sd
        diff = (
            max(float((sd[k] - ref[k]).abs().max()) for k in ref)
            if list(sd) == list(ref)
            else math.inf
        )
        layers = res.history["layers"]
        rows.append({
            "path": label,
            "options": {k: v for k, v in opts.items() if k != "scheduler"},
            "wall_s": round(wall, 2),
            "solve_s_sum": round(sum(st["seconds"] for st in layers.values()), 2),
            "ranks": {n: st["rank"] for n, st in layers.items()},
            "max_abs_weight_diff_vs_serial": diff,
            "load_after": _load(),
        })  # fmt: skip
        print(rows[-1], flush=True)
    rows[0]["baseline"] = how
    return rows


def transfer_cost(client: Any, N: int, d: int, n: int) -> float:
    """Seconds to scatter one layer's X, Y to a worker and gather a d x n float64 result."""
    from compactnn.solvers.layerwise import LayerProblem

    p = LayerProblem(torch.randn(N, d), torch.randn(N, n), None)

    def shape_of(q: Any) -> Any:
        return torch.zeros(q.X.shape[1], q.Y.shape[1], dtype=torch.float64)

    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        [f] = client.scatter([p], hash=False)
        client.submit(shape_of, f, pure=False).result()
        best = min(best, time.perf_counter() - t0)
        f.release()
    return best


def vgg(rows: int, quick: bool, client: Any) -> dict[str, Any]:
    from compactnn.solvers.layerwise import solve_layers

    shapes = _vgg_layers(rows)
    if quick:
        shapes = dict(list(shapes.items())[:4])
    problems = {n: _problem(*s, seed=i) for i, (n, s) in enumerate(shapes.items())}
    per_layer = {}
    t0 = time.perf_counter()
    for n, p in problems.items():
        t = time.perf_counter()
        r = solve_layers({n: p}, "ddlr", backend="serial", progress=False)[n]
        per_layer[n] = {
            "N": shapes[n][0], "d": shapes[n][1], "n": shapes[n][2],
            "solve_s": round(time.perf_counter() - t, 3), "iterations": r.iterations,
            "status": r.status, "transfer_s": round(transfer_cost(client, *shapes[n]), 4),
        }  # fmt: skip
        print(n, per_layer[n], flush=True)
    serial = time.perf_counter() - t0
    t0 = time.perf_counter()
    solve_layers(problems, "ddlr", backend="dask", dask_client=client, progress=False)
    dask2 = time.perf_counter() - t0
    times = [v["solve_s"] + v["transfer_s"] for v in per_layer.values()]
    proj = [
        {"workers": w, "projected_s": round(lpt(times, w), 2),
         "speedup": round(sum(times) / lpt(times, w), 2)}
        for w in (1, 2, 4, 8, 16, 32)
    ]  # fmt: skip
    return {
        "rows_per_layer": rows,
        "layers": per_layer,
        "serial_wall_s": round(serial, 2),
        "dask_2_workers_wall_s": round(dask2, 2),
        "projection": proj,
        "bound_s": round(max(times), 2),
        "load_after": _load(),
    }


def markdown(r: dict[str, Any]) -> str:
    lw = r["layerwise"]
    m = lw["machine"]
    out = [
        "# Layer-wise solves vs workers (DDLR)",
        "",
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, **shared** with other "
        f"engineers: load average {m['load_before']} before, see each row after), torch "
        f"{m['torch']}, dask/distributed {m['distributed']}. Command: `{lw['command']}`.",
        "No GPU was lent to this task; all numbers are CPU.",
        "",
        "## End to end: `compactnn.compress(lenet5, 'ddlr', conv=True)` on MNIST",
        "",
        "| path | wall s | sum of layer solves s | ranks | max abs weight diff vs serial |",
        "|---|---|---|---|---|",
    ]
    for row in lw["end_to_end"]:
        ranks = ", ".join(f"{k} {v}" for k, v in row["ranks"].items())
        out.append(
            f"| {row['path']} | {row['wall_s']} | {row['solve_s_sum']} | {ranks} | "
            f"{row['max_abs_weight_diff_vs_serial']:.1e} |"
        )
    v = lw["vgg16"]
    e2e = {row["path"]: row for row in lw["end_to_end"]}
    ser = e2e.get("serial")
    two = [r for r in lw["end_to_end"] if "2 workers" in r["path"]]
    if ser and two:
        share = max(r["solve_s_sum"] for r in two) / ser["solve_s_sum"]
        out += [
            "",
            f"The deployed models are identical on every path (max |delta weight| "
            f"{max(r['max_abs_weight_diff_vs_serial'] for r in lw['end_to_end']):.1e}). With two "
            f"workers the layers' own solve times add up to {share:.1f}x the serial sum: on this "
            "shared machine two worker processes together got about the CPU that one process "
            "gets, so the wall time does not drop here. conv=True at eps_frac=0.1 is a timing "
            "workload (every layer solved), not an accuracy recommendation.",
        ]
    out += [
        "",
        f"## VGG-16-size layer list (13 conv3x3 + fc 512-512), N = {v['rows_per_layer']} rows",
        "",
        "Synthetic activations with the layers' lowered shapes (see the script docstring); each",
        "solve on 1 torch thread; transfer = scatter X, Y + gather U on this loopback cluster.",
        "",
        "| layer | N x d -> n | solve s | iterations | transfer s |",
        "|---|---|---|---|---|",
    ]
    for n, st in v["layers"].items():
        out.append(
            f"| {n} | {st['N']} x {st['d']} -> {st['n']} | {st['solve_s']} | "
            f"{st['iterations']} | {st['transfer_s']} |"
        )
    p2 = next(p["projected_s"] for p in v["projection"] if p["workers"] == 2)
    out += [
        "",
        f"Serial wall: **{v['serial_wall_s']} s**; 2 Dask workers measured: "
        f"**{v['dask_2_workers_wall_s']} s** (speed-up "
        f"{v['serial_wall_s'] / v['dask_2_workers_wall_s']:.2f}x; LPT projection for 2 workers "
        f"with a free core each: {p2} s). The two workers share the 2 cores with the other "
        "engineers' jobs, so this machine cannot show the speed-up; the projection below is "
        "what the measured per-layer times give on workers with a core each.",
        "",
        "### Projection to P workers",
        "",
        "makespan(P) = LPT schedule of t_l = solve_l + transfer_l over P workers (longest first "
        "onto the least loaded worker); it ignores scheduler latency (ms per task) and assumes "
        "one free core per worker. Lower bound: the largest layer, "
        f"{v['bound_s']} s (one task per layer). The per-layer times were measured at load "
        f"{v['load_after']} on 2 cores, so the absolute seconds are this box's; the speed-up "
        "column is what carries over to a cluster (with its own transfer cost in t_l: measure "
        "it there with this script).",
        "",
        "| workers | projected s | speed-up vs 1 |",
        "|---|---|---|",
    ]
    for p in v["projection"]:
        out.append(f"| {p['workers']} | {p['projected_s']} | {p['speedup']} |")
    out.append("")
    if "ddp" in r:  # written by bench_scale_ddp.py
        d = r["ddp"]
        out += [
            "",
            "## Training-based methods vs DDP processes (`bench_scale_ddp.py`)",
            "",
            f"SSR on LeNet-Caffe / MNIST, global batch {d['global_batch']}; command "
            f"`{d['command']}`; load average {d['load_average_before']} before, "
            f"{d['load_average_after']} after. Details: `scale_ddp.md`.",
            "",
            "| processes x threads | compress, median (s) | speed-up vs the first row |",
            "|---|---|---|",
        ]
        for x in d["rows"]:
            out.append(
                f"| {x['processes']} x {x['threads_per_process']} | {x['compress_median_s']:.1f} | "
                f"{x['speedup_vs_first_row']:.2f}x |"
            )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--quick", action="store_true", help="a few layers / paths (smoke run)")
    ap.add_argument("--md-only", action="store_true", help="rewrite scale.md from scale.json")
    args = ap.parse_args()
    if args.md_only:
        (RESULTS / "scale.md").write_text(
            markdown(json.loads((RESULTS / "scale.json").read_text()))
        )
        return
    torch.set_num_threads(1)
    import distributed

    from compactnn.solvers.layerwise import local_cluster

    load0 = _load()
    with local_cluster(2) as cluster, distributed.Client(cluster) as client:
        e2e = end_to_end(args.quick, cluster.scheduler_address)
        v = vgg(args.rows, args.quick, client)
    path = RESULTS / "scale.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    result["layerwise"] = {
        "command": "python benchmarks/bench_scale.py"
        + (f" --rows {args.rows}" if args.rows != 512 else "")
        + (" --quick" if args.quick else ""),
        "machine": {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load_before": load0,
            "torch": torch.__version__,
            "distributed": distributed.__version__,
            "gpu": None,
        },
        "end_to_end": e2e,
        "vgg16": v,
    }
    _lib.write_result(RESULTS, "scale", result, markdown, newline=True, echo=True)


if __name__ == "__main__":
    main()
