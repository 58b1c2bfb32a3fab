"""Net-Trim, parallel vs cascade (Aghasi et al. 2017, sec. 2.2), on the DDLR paper's Fig. 3 setup.

The reference LeNet-5 of ``bench_ddlr_repro.py`` (MNIST, 1024 training samples, cached) has its
``fc1`` and ``fc2`` re-fit by Net-Trim **without retraining** from N = 256 calibration samples:

* parallel (the DDLR paper's baseline): every layer on the original network's input, epsilon =
  eps_frac * ||X||_F;
* cascade (``cascade=gamma``): layers in forward order on the compressed network's input; fc1 as
  in the parallel scheme, fc2 with epsilon = gamma * the original fc2's masked residual on that
  input and the inactive bound that keeps the original fc2 feasible.

A sweep, not a selection: every point is reported; nothing is chosen on the test set.

Seeds (``--seeds``, default 0 1 2): every number is mean ± sd over them, with a per-seed table.
A seed changes the reference model (``bench_ddlr_repro._reference``: initialisation, batch
order, training seed; its own cached model, seed 0 keeping the single-seed name), the 1024
training samples drawn from MNIST and the draw of the N calibration samples; the test set (the
full MNIST test set) is fixed. Seed 0 reproduces the single-seed run, and the committed
single-seed ``net_trim_cascade.json`` (2026-12-01) is read as seed 0 by ``--merge``.

    .venv/bin/python benchmarks/bench_net_trim_cascade.py --seeds 0 1 2  # ~3-5 min per seed
    .venv/bin/python benchmarks/bench_net_trim_cascade.py --quick        # smoke (*_quick files)
    # seeds as separate processes, then pooled (refused for different settings or seeds twice):
    .venv/bin/python benchmarks/bench_net_trim_cascade.py --seeds 1 --out net_trim_cascade_seed1
    .venv/bin/python benchmarks/bench_net_trim_cascade.py \
        --merge net_trim_cascade_seed0 net_trim_cascade_seed1 net_trim_cascade_seed2

Writes benchmarks/results/<--out>.json and .md (default net_trim_cascade; --quick adds _quick).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

import _lib
import bench_ddlr_repro as ddlr_bench
import compactnn
from compactnn.methods import CompressionData
from compactnn.solvers.layerwise import ADMMOptions

RESULTS = Path(__file__).resolve().parent / "results"
EPS = (0.02, 0.04, 0.08, 0.16)
EPS_QUICK = (0.02, 0.16)
SCHEMES: dict[str, float | None] = {"parallel": None, "cascade 1.05": 1.05, "cascade 1.2": 1.2}


def _parallel_at(rows: list[dict[str, Any]], size: float) -> float | None:
    """Top-1 of the parallel scheme at ``size`` by linear interpolation of its sweep (None
    outside the swept sizes)."""
    pts = sorted((r["size_ratio"], r["top1"]) for r in rows if r["gamma"] is None)
    for (s0, a0), (s1, a1) in zip(pts, pts[1:], strict=False):
        if s0 <= size <= s1:
            return a0 + (a1 - a0) * (size - s0) / (s1 - s0) if s1 > s0 else a0
    return None


_pm = ddlr_bench._pm


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--N", type=int, default=256, help="calibration samples (paper: 128, 256)")
    ap.add_argument("--max-iter", type=int, default=5000, help="ADMM iteration cap per solve")
    ap.add_argument("--quick", action="store_true", help=f"eps {EPS_QUICK} only, smoke run")
    ddlr_bench.add_seed_args(ap, "net_trim_cascade")
    ap.add_argument(
        "--markdown-only", action="store_true", help="re-render <--out>.md from <--out>.json"
    )
    return ap


def _settings(run: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for two runs to be pooled."""
    return {
        **{k: run[k] for k in ("model", "dataset", "train_samples", "N", "layers", "max_iter")},
        "original_weights": run["original_weights"],
        "eps": sorted({r["eps_frac"] for r in run["rows"]}),
        "schemes": sorted({(r["scheme"], r["gamma"] or 0.0) for r in run["rows"]}),
    }


def _legacy_run(old: dict[str, Any]) -> dict[str, Any]:
    """A results JSON of the single-seed format (no ``runs``) as the run of seed 0 (its ADMM
    iteration cap read back from its command line)."""
    argv = shlex.split(old["command"])
    script = next(i for i, a in enumerate(argv) if a.endswith("bench_net_trim_cascade.py"))
    args = _parser().parse_args(argv[script + 1 :])
    return {**copy.deepcopy(old), "seed": 0, "max_iter": args.max_iter}


def _runs_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["runs"] if "runs" in doc else [_legacy_run(doc)]


def pool(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One results document from per-seed runs; ValueError when their settings differ or a seed
    appears twice."""
    return ddlr_bench.pool_runs(runs, _settings, "net_trim_cascade")


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    """Baseline and every (eps, scheme) point as mean ± sd over the seeds; the cascade-minus-
    parallel difference at equal size is taken per seed, then pooled."""
    runs = doc["runs"]
    layers = runs[0]["layers"]
    points = []
    for first in runs[0]["rows"]:
        key = (first["eps_frac"], first["scheme"])
        rows = [next(r for r in run["rows"] if (r["eps_frac"], r["scheme"]) == key) for run in runs]
        diffs = {}
        for run, r in zip(runs, rows, strict=True):
            ref = None if r["gamma"] is None else _parallel_at(run["rows"], r["size_ratio"])
            diffs[str(run["seed"])] = None if ref is None else r["top1"] - ref
        got = [d for d in diffs.values() if d is not None]
        points.append(
            {
                "eps_frac": key[0],
                "scheme": key[1],
                "gamma": first["gamma"],
                "nnz": {n: _lib.mean_sd([r["nnz"][n] for r in rows]) for n in layers},
                "eps_fc2": _lib.mean_sd([r["eps"]["fc2"] for r in rows]),
                **{
                    f: _lib.mean_sd([r[f] for r in rows]) for f in ("size_ratio", "top1", "rel_acc")
                },
                "seconds": _lib.mean_sd([r["seconds"] for r in rows]),
                "vs_parallel": _lib.mean_sd(got) if got else None,
                "by_seed": {
                    str(run["seed"]): {
                        "size_ratio": r["size_ratio"],
                        "top1": r["top1"],
                        "vs_parallel": diffs[str(run["seed"])],
                    }
                    for run, r in zip(runs, rows, strict=True)
                },
            }
        )
    return {
        "baseline_top1": _lib.mean_sd([run["baseline_top1"] for run in runs]),
        "baseline_by_seed": {str(run["seed"]): run["baseline_top1"] for run in runs},
        "points": points,
    }


def markdown(doc: dict[str, Any]) -> str:
    runs = doc["runs"]
    st = doc["settings"]
    n = len(runs)
    summ = summarize(doc)
    lines = [
        "# Net-Trim: parallel vs cascade (Aghasi et al. sec. 2.2), no retraining",
        "",
        f"Command: `{doc['command'].strip()}`  ",
        f"Machine: {doc['machine']}; torch {runs[0]['torch']}  ",
        f"Date: {doc['date']}; seeds {', '.join(str(r['seed']) for r in runs)} (n = {n}); "
        + ", ".join(
            f"seed {r['seed']}: {r['seconds']:.0f} s, load {r['load_at_end'][0]:.1f} at the end, "
            f"{r['date']}"
            for r in runs
        ),
        "",
        f"LeNet-5 on MNIST ({st['train_samples']} training samples, the DDLR paper's Fig. 3 "
        f"protocol), baseline top-1 {_pm(summ['baseline_top1'], '.2f', unit=' %')} on the full "
        f"test set; fc1 + fc2 re-fit from N = {st['N']} samples (one draw per seed); ADMM "
        f"iteration cap {st['max_iter']}; size ratio = COO 3 nnz / original weights of fc1 + "
        "fc2. Cascade: fc1 as parallel, fc2 on the compressed fc1's output with epsilon = gamma x "
        "the original fc2's masked residual. 'vs parallel': the cascade point's top-1 minus the "
        "parallel sweep's top-1 interpolated at the same size, in the same seed (n counts the "
        "seeds where that size lies inside the parallel sweep).",
        "",
        f"Every value is mean ± sd (sample sd) over the n = {n} seeds. A seed changes the "
        "reference model (initialisation, batch order, training seed), its 1024 MNIST training "
        "samples and the calibration draw; the test set is fixed. Nothing is chosen on it.",
        "",
        "| eps_frac | scheme | nnz fc1 | nnz fc2 | eps fc2 | size ratio | top-1 % | rel. acc. "
        "| vs parallel at equal size (points) | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in summ["points"]:
        lines.append(
            f"| {p['eps_frac']} | {p['scheme']} | {_pm(p['nnz']['fc1'], '.0f', n=False)} | "
            f"{_pm(p['nnz']['fc2'], '.0f', n=False)} | {_pm(p['eps_fc2'], '.3g', n=False)} | "
            f"{_pm(p['size_ratio'], '.3f', n=False)} | {_pm(p['top1'], '.2f')} | "
            f"{_pm(p['rel_acc'], n=False)} | "
            f"{'' if p['vs_parallel'] is None else _pm(p['vs_parallel'], '+.2f')} | "
            f"{p['seconds']['mean']:.1f} |"
        )
    seeds = list(summ["baseline_by_seed"])
    lines += [
        "",
        "Per seed (size ratio / top-1 % / vs parallel); baseline top-1 "
        + ", ".join(f"seed {s}: {v:.2f} %" for s, v in summ["baseline_by_seed"].items())
        + ":",
        "",
        "| eps_frac | scheme | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|---|" + "---|" * len(seeds),
    ]
    for p in summ["points"]:
        cells = " | ".join(
            f"{v['size_ratio']:.3f} / {v['top1']:.2f}"
            + ("" if v["vs_parallel"] is None else f" / {v['vs_parallel']:+.2f}")
            for v in p["by_seed"].values()
        )
        lines.append(f"| {p['eps_frac']} | {p['scheme']} | {cells} |")
    lines += ["", "## Verdict", ""]
    for scheme in dict.fromkeys(p["scheme"] for p in summ["points"] if p["gamma"] is not None):
        pts = [p for p in summ["points"] if p["scheme"] == scheme and p["vs_parallel"]]
        if not pts:
            lines.append(f"- {scheme}: no point inside the parallel sweep's sizes.")
            continue
        means = [p["vs_parallel"]["mean"] for p in pts]
        ahead = sum(m > 0 for m in means)
        lines.append(
            f"- {scheme} vs parallel at equal size, mean over {n} seed{'s' if n > 1 else ''}: "
            + ", ".join(f"eps {p['eps_frac']}: {_pm(p['vs_parallel'], '+.2f')}" for p in pts)
            + f" points; cascade ahead on the mean at {ahead} of {len(pts)} points."
        )
    return "\n".join(lines) + "\n"


def _write(doc: dict[str, Any], stem: str) -> None:
    _lib.write_result(RESULTS, stem, doc, markdown, indent=2)


def _document(runs: list[dict[str, Any]], command: str) -> dict[str, Any]:
    return {
        **pool(runs),
        "command": command,
        "machine": "; ".join(dict.fromkeys(r["machine"] for r in runs)),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def merge(stems: list[str], out_stem: str) -> dict[str, Any]:
    """Pool the seeds of finished result stems (either format) into ``out_stem``."""
    runs = [run for s in stems for run in _runs_of(json.loads((RESULTS / f"{s}.json").read_text()))]
    cmds = list(dict.fromkeys(r["command"].strip() for r in runs))
    return _document(
        runs,
        "; ".join(cmds)
        + f"; .venv/bin/python benchmarks/bench_net_trim_cascade.py --merge {' '.join(stems)} "
        f"--out {out_stem}",
    )


def run_seed(args: argparse.Namespace, seed: int, command: str) -> dict[str, Any]:
    """One seed's sweep: reference model, calibration draw and every (eps, scheme) point."""
    exp = ddlr_bench.OURS["fig3_mnist"]
    train_ds, test_ds = ddlr_bench._datasets(exp, seed)
    model, how = ddlr_bench._reference("fig3_mnist", exp, train_ds, seed)
    test = DataLoader(test_ds, batch_size=1000)
    base = ddlr_bench._acc(model, test)
    layers = exp["layers"]
    orig = sum(model.get_submodule(n).weight.numel() for n in layers)
    g = torch.Generator().manual_seed(ddlr_bench._calib_seed(args.N, seed))
    xb = train_ds.tensors[0][torch.randperm(len(train_ds), generator=g)[: args.N]]
    cd = CompressionData(train=None, calib=[xb], input_shape=tuple(xb.shape[1:]))
    print(f"seed {seed}: baseline top1 {base:.2f}% ({how})", flush=True)
    t_all = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for frac in EPS_QUICK if args.quick else EPS:
        for scheme, gamma in SCHEMES.items():
            t0 = time.perf_counter()
            res = compactnn.compress(
                model, "net-trim", cd, layers=layers, eps_frac=frac, cascade=gamma,
                max_rows=None, options=ADMMOptions(max_iter=args.max_iter), progress=False,
                measure=False,
            )  # fmt: skip
            h = res.history["layers"]
            stored = sum(ddlr_bench._stored(res.model.get_submodule(n)) for n in layers)
            acc = ddlr_bench._acc(res.model, test)
            row = {
                "eps_frac": frac,
                "scheme": scheme,
                "gamma": gamma,
                "nnz": {n: h[n]["nnz"] for n in layers},
                "eps": {n: h[n]["eps"] for n in layers},
                "status": {n: h[n]["status"] for n in layers},
                "size_ratio": stored / orig,
                "top1": acc,
                "rel_acc": acc / base,
                "seconds": time.perf_counter() - t0,
            }
            rows.append(row)
            print(
                f"seed {seed} eps={frac:<5} {scheme:13s} nnz={row['nnz']} "
                f"size={row['size_ratio']:.3f} top1={acc:.2f} {row['seconds']:.1f}s",
                flush=True,
            )
    return {
        "seed": seed,
        "command": command,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared), 1 torch thread",
        "load_at_end": os.getloadavg(),
        "torch": torch.__version__,
        "reference": how,
        "model": exp["model"],
        "dataset": exp["dataset"],
        "train_samples": len(train_ds),
        "N": args.N,
        "max_iter": args.max_iter,
        "layers": list(layers),
        "baseline_top1": base,
        "original_weights": orig,
        "seconds": time.perf_counter() - t_all,
        "rows": rows,
    }


def main() -> None:
    args = _parser().parse_args()
    stem = args.out + ("_quick" if args.quick and not args.out.endswith("_quick") else "")
    if args.merge:
        ddlr_bench.merge_command(args.merge, stem, merge, _write, markdown)
        return
    if args.markdown_only:
        saved = json.loads((RESULTS / f"{stem}.json").read_text())
        doc = {**pool(_runs_of(saved)), **{k: saved[k] for k in ("command", "machine", "date")}}
        (RESULTS / f"{stem}.md").write_text(markdown(doc))
        return
    torch.set_num_threads(1)
    command = " ".join([".venv/bin/python", "benchmarks/bench_net_trim_cascade.py", *sys.argv[1:]])
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(args, seed, command))
        _write(_document(runs, command), stem)  # after every seed: a partial report
    print(f"wrote {RESULTS / stem}.json/.md")


if __name__ == "__main__":
    main()
