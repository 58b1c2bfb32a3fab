"""SSR-L2,1 to a MACs budget on LeNet-Caffe / MNIST: the paper-protocol row and the extension row
of issue 15, each over several seeds (mean ± sd), from the same trained baseline.

Each (row, seed) is one ``compactnn compress`` call of the CLI, exactly as a user would run it:

    compactnn compress ~/.cache/compactnn/checkpoints/lenet-caffe-mnist-seed0.safetensors \\
        --data mnist --recipe RECIPE --seed S --on-drop warn --out DIR [--data-opt batch_size=256]

* paper protocol: ``benchmarks/recipes/ssr_lenet_budget_paper.yaml`` (K-step on K^l only, lr 1e-3,
  batch 256, 30 fine-tuning epochs from lr 1e-4 x0.1 every 10, no distillation);
* extension: ``benchmarks/recipes/ssr_lenet_budget.yaml`` (K-step on all parameters at lr 0.01,
  batch 100, 30 fine-tuning epochs lr 0.01 cosine, distillation 0.5).

Both to ``target={"macs": 0.04}``, lambda chosen by the budget search on training data; the seed
sets the validation split, the loaders' shuffling and the method's own seed (one seed, as
``compress`` defines it). The test set is read once per run by the CLI's report, never for a
choice. The baseline is the one of ``make demo`` (trained on all 60,000 training images, cached),
and its weight fingerprint is stored with every run: runs of another baseline are never pooled.

    .venv/bin/python benchmarks/bench_ssr_budget.py                 # both rows, 3 seeds (~70 min)
    .venv/bin/python benchmarks/bench_ssr_budget.py --rows paper    # one row
    .venv/bin/python benchmarks/bench_ssr_budget.py --report-only   # rebuild from finished runs

Each run's CLI output directory is kept under ``~/.cache/compactnn/bench/ssr_budget/`` and reused
when its report exists and names the same baseline fingerprint, recipe and seed. Writes
``benchmarks/results/ssr_budget_seeds.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
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
RECIPES = HERE / "recipes"
TARGET = "macs=0.04"

ROWS: dict[str, dict[str, Any]] = {
    "paper": {
        "label": "paper protocol",
        "recipe": "ssr_lenet_budget_paper.yaml",
        "data_opts": ["batch_size=256"],
        "differs": "K-step = 100 SGD steps per AULM iteration (paper: epochs), at most 10 AULM "
        "iterations per layer; lambda from the budget search on training data (paper: a hand "
        "sweep over {0.1, ..., 0.8}); baseline trained 8 epochs on all 60,000 training images",
    },
    "extension": {
        "label": "extension",
        "recipe": "ssr_lenet_budget.yaml",
        "data_opts": [],
        "differs": "as the paper-protocol row, and: K-step trains all parameters (paper: K^l "
        "only, eq. 11) at lr 0.01 (paper 1e-3), batch 100 (paper 256); fine-tuning lr 0.01 cosine "
        "(paper 1e-4 x0.1 every 10 epochs) with distillation 0.5 from the unpruned LeNet (paper: "
        "none)",
    },
}

# Lin et al. 2019, Table I (LeNet / MNIST), SSR-L2,1 row, for orientation.
PAPER = {"filters": "2-8-77", "params": "11K", "speedup": "5.5x (CPU)", "err_increase": 0.18}


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _baseline() -> tuple[Path, str]:
    """The demo's cached baseline (trained once when missing): its path and weight fingerprint
    (each run's CLI report measures its accuracy and latency again)."""
    from compactnn.demo import demo_baseline

    model, _, ckpt = demo_baseline(seed=0, progress=False)
    return Path(ckpt), _lib.state_sha(model)


def _run_dir(key: str, seed: int) -> Path:
    from compactnn.demo import cache_dir

    return cache_dir() / "bench" / "ssr_budget" / f"{key}-seed{seed}"


def _meta(key: str, seed: int, sha: str) -> dict[str, Any]:
    r = ROWS[key]
    return {
        "row": key,
        "seed": seed,
        "base_sha": sha,
        "recipe": r["recipe"],
        "recipe_sha": _file_sha(RECIPES / r["recipe"]),
        "data_opts": r["data_opts"],
    }


def _cmd(key: str, seed: int, ckpt: Path, out: Path, threads: int) -> list[str]:
    r = ROWS[key]
    cmd = [
        str(Path(sys.executable).with_name("compactnn")),
        "compress",
        str(ckpt),
        "--data",
        "mnist",
        "--recipe",
        str(RECIPES / r["recipe"]),
        "--seed",
        str(seed),
        "--on-drop",
        "warn",
        "--threads",
        str(threads),
        "--quiet",
        "--out",
        str(out),
    ]
    for opt in r["data_opts"]:
        cmd += ["--data-opt", opt]
    return cmd


DEFAULT_SEEDS = (0, 1, 2)


def _finished(key: str, seed: int, sha: str) -> bool:
    """Whether this machine holds a finished run of ``key`` / ``seed`` on this baseline and the
    current recipe (one :func:`_run` reuses without running)."""
    out = _run_dir(key, seed)
    meta_f, report_f = out / "bench_meta.json", out / "report.json"
    return (meta_f.is_file() and report_f.is_file()
            and json.loads(meta_f.read_text()) == _meta(key, seed, sha))  # fmt: skip


def _run(key: str, seed: int, ckpt: Path, sha: str, threads: int) -> dict[str, Any]:
    """One CLI run (or its finished report when the same baseline, recipe and seed ran)."""
    out = _run_dir(key, seed)
    ident = _meta(key, seed, sha)  # what a reusable run must match
    meta_f, report_f = out / "bench_meta.json", out / "report.json"
    if _finished(key, seed, sha):
        print(f"{key} seed {seed}: reusing {out}", flush=True)
    else:
        out.mkdir(parents=True, exist_ok=True)
        cmd = _cmd(key, seed, ckpt, out, threads)
        print(f"{key} seed {seed}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        load0 = os.getloadavg()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        (out / "cli.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise SystemExit(f"{key} seed {seed} failed (rc {proc.returncode}): see {out}/cli.log")
        timing = {
            **ident,
            "wall_seconds": time.perf_counter() - t0,
            "load_start": load0,
            "load_end": os.getloadavg(),
            "date": dt.date.today().isoformat(),
        }
        meta_f.write_text(json.dumps(ident))
        (out / "bench_timing.json").write_text(json.dumps(timing))
    timing_f = out / "bench_timing.json"
    timing = json.loads(timing_f.read_text()) if timing_f.is_file() else {}
    r = _summarise(json.loads(report_f.read_text()), key, seed, timing)
    r["recipe_sha"] = ident["recipe_sha"]
    return r


def _previous(path: Path, sha: str) -> dict[tuple[str, int], dict[str, Any]]:
    """Finished runs of an earlier results JSON that may be pooled with this invocation's: the
    same baseline weights (``base_sha``) and, per run, the same recipe file (``recipe_sha``). A
    fresh machine has none of the earlier CLI output directories, so without this the report
    would only hold the seeds run again here."""
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    if old.get("base_sha") != sha:
        print(f"--keep: {path.name} is of another baseline ({old.get('base_sha')}); not pooled")
        return {}
    keep = {}
    for key, row in old.get("rows", {}).items():
        if key not in ROWS:
            continue
        cur = _file_sha(RECIPES / ROWS[key]["recipe"])
        for r in row.get("runs", []):
            if r.get("recipe_sha") == cur:
                keep[(key, int(r["seed"]))] = r
            else:
                print(f"--keep: {key} seed {r['seed']} ran another recipe; not pooled")
    return keep


def _summarise(rep: dict[str, Any], key: str, seed: int, timing: dict[str, Any]) -> dict[str, Any]:
    before, after = rep["before"], rep["after"]
    lat = rep["deploy"]["latency"]["batch 100"]
    convs = [ly for ly in after["layers"] if ly["type"] in ("Conv2d", "Linear")]
    return {
        "row": key,
        "seed": seed,
        "structure": "-".join(str(ly["units"]) for ly in convs[:-1]),
        "params": after["params"],
        "macs": after["macs"],
        "macs_kept": after["macs"] / before["macs"],
        "target_met": rep["target"]["met"],
        "lam": rep["chosen"]["lam"],
        "test_top1": after["accuracy"]["top1"],
        "base_test_top1": before["accuracy"]["top1"],
        "err_increase": before["accuracy"]["top1"] - after["accuracy"]["top1"],
        "val_drop": rep["validation"]["drop"],
        "eager_ms": lat["eager"]["median_ms"],
        "eager_ms_baseline": lat["eager_original"]["median_ms"],
        "speedup": lat["eager_original"]["median_ms"] / lat["eager"]["median_ms"],
        "ort_ms": lat.get("onnxruntime", {}).get("median_ms"),
        "compress_seconds": rep["seconds"]["compress"],
        "search_seconds": rep["target"].get("seconds"),
        "warnings": rep.get("warnings", []),
        "wall_seconds": timing.get("wall_seconds"),
        "load": [timing.get("load_start"), timing.get("load_end")],
        "date": timing.get("date"),
    }


def _ms(v: list[float], fmt: str) -> str:
    """This bench's cell: mean ± sd over the seeds, ``-`` for none."""
    return _lib.pm(_lib.mean_sd(v), fmt) if v else "-"


def _markdown(out: dict[str, Any]) -> str:
    lines = [
        "# SSR-L2,1 to a MACs budget, paper protocol vs extension, over seeds (issue 15): "
        "LeNet-Caffe / MNIST",
        "",
        f"Command: `{out['command']}`  ",
        f"Date(s): {', '.join(out['dates'])}  ",
        f"Machine: {out['machine']}  ",
        f"Baseline: `{out['baseline']}` (weights sha {out['base_sha']}), test top-1 "
        f"{out['base_test_top1']:.2f} %; every run below starts from it.",
        "",
        "Each run is one `compactnn compress ... --recipe RECIPE --seed S --on-drop warn` (see the "
        "module docstring); the seed sets the validation split, the shuffling and the method's "
        f"seed. Target `{TARGET}`, lambda chosen by the budget search on training data; params, "
        "MACs and latency (eager PyTorch, batch 100 real test images, 1 thread, median; "
        "speed-up over the dense model timed in the same run) are measured on the returned model; "
        "test top-1 is read once per run, for this report only.",
        "",
        f"Seeds asked: {out.get('seeds_asked')}; finished per row: "
        + ", ".join(f"{r['label']} {len(r['runs'])}" for r in out["rows"].values())
        + " (a run not finished is not in the tables).",
        "",
        "## Summary (mean ± sd over seeds)",
        "",
        "| row | what differs from the paper | seeds | structures | params | MACs kept | "
        "speed-up (eager) | test top-1 % | test err. increase (points) | val drop | wall min |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in out["rows"].values():
        runs = row["runs"]
        if not runs:
            continue
        lines.append(
            f"| {row['label']} (`{row['recipe']}`) | {row['differs']} | {len(runs)} | "
            f"{', '.join(r['structure'] for r in runs)} | "
            f"{_ms([r['params'] for r in runs], ',.0f')} | "
            f"{_ms([100 * r['macs_kept'] for r in runs], '.2f')} % | "
            f"{_ms([r['speedup'] for r in runs], '.2f')}x | "
            f"{_ms([r['test_top1'] for r in runs], '.2f')} | "
            f"**{_ms([r['err_increase'] for r in runs], '+.2f')}** | "
            f"{_ms([r['val_drop'] for r in runs], '.2f')} | "
            f"{_ms([(r['wall_seconds'] or r['compress_seconds']) / 60 for r in runs], '.1f')} |"
        )
    lines += [
        "",
        f"Paper (Lin et al. 2019, Table I, SSR-L2,1): {PAPER['filters']}, {PAPER['params']} "
        f"params, {PAPER['speedup']}, +{PAPER['err_increase']:.2f} % error.",
        "",
        "## Runs",
        "",
        "| row | seed | structure | params | MACs kept | target met | lambda (per layer) | "
        "eager ms (dense ms) | speed-up | ORT ms | test top-1 % | err. increase | val drop | "
        "compress s | date | load (start / end) | warnings |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in out["rows"].values():
        for r in row["runs"]:
            lam = ", ".join(f"{k} {v:.3g}" for k, v in (r["lam"] or {}).items())
            load = r["load"]
            ld = (
                f"{load[0][0]:.1f} / {load[1][0]:.1f}"
                if load and load[0] is not None and load[1] is not None
                else "-"
            )
            ort = f"{r['ort_ms']:.2f}" if r["ort_ms"] is not None else "-"
            lines.append(
                f"| {row['label']} | {r['seed']} | {r['structure']} | {r['params']:,} | "
                f"{100 * r['macs_kept']:.2f} % | {'yes' if r['target_met'] else 'no'} | {lam} | "
                f"{r['eager_ms']:.2f} ({r['eager_ms_baseline']:.2f}) | {r['speedup']:.2f}x | "
                f"{ort} | {r['test_top1']:.2f} | {r['err_increase']:+.2f} | {r['val_drop']:.2f} | "
                f"{r['compress_seconds']:.0f} | {r['date'] or '-'} | {ld} | "
                f"{len(r['warnings'])}: {'; '.join(w[:90] for w in r['warnings'])} |"
            )
    lines += ["", "## Verdict", "", out["verdict"], ""]
    return "\n".join(lines)


def _verdict(out: dict[str, Any]) -> str:
    rows = {k: r["runs"] for k, r in out["rows"].items() if r["runs"]}
    parts = []
    for key, runs in rows.items():
        e = [r["err_increase"] for r in runs]
        parts.append(
            f"{ROWS[key]['label']}: {_ms(e, '+.2f')} points of test error over {len(runs)} "
            f"seed(s), {_ms([r['speedup'] for r in runs], '.2f')}x eager"
        )
    if "paper" in rows and "extension" in rows:
        gap = statistics.fmean(r["err_increase"] for r in rows["paper"]) - statistics.fmean(
            r["err_increase"] for r in rows["extension"]
        )
        parts.append(
            f"the paper protocol loses {gap:.2f} points more than the extension at the same "
            "budget (mean over seeds)"
        )
    return "; ".join(parts) + "." if parts else "no runs yet."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--seeds", type=int, nargs="*", default=list(DEFAULT_SEEDS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each CLI run")
    ap.add_argument("--report-only", action="store_true", help="only finished runs, no new run")
    ap.add_argument(
        "--keep",
        action="store_true",
        help="pool the runs of the existing ssr_budget_seeds.json (same baseline weights and "
        "recipe) for the (row, seed) pairs that have no run directory here",
    )
    args = ap.parse_args()
    ckpt, sha = _baseline()
    kept = _previous(RESULTS / "ssr_budget_seeds.json", sha) if args.keep else {}
    out: dict[str, Any] = {
        "benchmark": "SSR-L2,1 to macs=0.04, paper protocol vs extension, over seeds",
        "command": " ".join(["python benchmarks/bench_ssr_budget.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, no GPU; {args.threads} "
        "torch thread(s) per run",
        "baseline": str(ckpt).replace(str(Path.home()), "~"),
        "base_sha": sha,
        "target": TARGET,
        "seeds_asked": args.seeds,
        "rows": {},
    }
    # --keep: the earlier JSON's runs stay in the report even for rows / seeds not asked here
    # ... and so do the runs finished on this machine (of the default seeds) that were not asked
    local = {(k, s) for k in ROWS for s in {*DEFAULT_SEEDS, *args.seeds} if _finished(k, s, sha)}
    rows = [k for k in ROWS if k in args.rows or k in {kk for kk, _ in (*kept, *local)}]
    seeds = sorted(set(args.seeds) | {s for _, s in (*kept, *local)})
    for key in rows:
        row = {k: ROWS[key][k] for k in ("label", "recipe", "differs")}
        row["runs"] = []
        out["rows"][key] = row
    for seed in seeds:  # seeds outermost: a cut-short run leaves both rows with n seeds
        for key in rows:
            asked = key in args.rows and seed in args.seeds
            done = _finished(key, seed, sha)  # a finished run here is reported, asked or not
            if (key, seed) in kept and not done:
                r = kept[(key, seed)]
                print(f"{key} seed {seed}: kept from the earlier results JSON ({r['date']})")
            elif done or (asked and not args.report_only):
                r = _run(key, seed, ckpt, sha, args.threads)
            else:
                continue
            out["rows"][key]["runs"].append(r)
            runs = [x for row in out["rows"].values() for x in row["runs"]]
            out["base_test_top1"] = runs[0]["base_test_top1"]
            out["dates"] = sorted({x["date"] for x in runs if x["date"]}) or ["-"]
            out["verdict"] = _verdict(out)
            _lib.write_result(RESULTS, "ssr_budget_seeds", out, _markdown)
            print(json.dumps({k: r[k] for k in ("row", "seed", "structure", "test_top1",
                                                "err_increase", "speedup")}), flush=True)  # fmt: skip
    print(out.get("verdict", "no runs"))


if __name__ == "__main__":
    main()
