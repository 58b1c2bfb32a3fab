"""Pooling benchmark runs made as separate processes, one seed each (issue 15: rows as mean ± sd).

A run's JSON records its seed, its settings and the fingerprint of the baseline it compressed
(``baseline.state_sha``, :func:`bench_peers.state_sha` of the loaded weights). Runs are pooled
only when every one has a fingerprint, the fingerprints are equal, the settings that define the
experiment are equal (the bench says which: ``recipe``) and no seed appears twice. A pooled JSON
keeps every run under ``runs`` so that it can be pooled again with further seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def baseline_record(model: Any, ckpt: Any, **facts: Any) -> dict[str, Any]:
    """The baseline's identity: checkpoint file name, weight fingerprint and measured facts."""
    sys.path.insert(0, str(HERE))
    from bench_peers import state_sha

    return {"checkpoint": Path(str(ckpt)).name, "state_sha": state_sha(model), **facts}


def mean_sd(values: Sequence[float]) -> dict[str, float]:
    v = [float(x) for x in values]
    return {
        "mean": statistics.fmean(v),
        "sd": statistics.stdev(v) if len(v) > 1 else 0.0,
        "n": len(v),
    }


def pm(d: dict[str, float], fmt: str = ".2f", *, n: bool = False) -> str:
    """``mean ± sd`` (the sd only for n > 1), ``(n=...)`` appended when asked."""
    s = f"{d['mean']:{fmt}}"
    if d["n"] > 1:
        s += f" ± {d['sd']:{fmt.lstrip('+')}}"
    return s + (f" (n={d['n']})" if n else "")


def filters_pm(values: Sequence[str]) -> str:
    """Kept filters per layer ("4-12"): the common value when every seed agrees, else per layer
    mean ± sd."""
    if len(set(values)) == 1:
        return values[0]
    layers = list(zip(*(tuple(int(x) for x in v.split("-")) for v in values), strict=True))
    return " - ".join(pm(mean_sd(c), ".1f") for c in layers)


def runs_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-seed runs in a result JSON: a pooled one lists them, a single run is one."""
    return list(doc["runs"]) if "runs" in doc else [doc]


def check_poolable(
    runs: Sequence[dict[str, Any]],
    names: Sequence[str],
    recipe: Callable[[dict[str, Any]], dict[str, Any]],
) -> None:
    """SystemExit unless ``runs`` (from the files ``names``, one per run) may be pooled: each has
    a baseline fingerprint, all fingerprints and recipes are equal, no seed twice."""

    seed = run_seed
    for run, name in zip(runs, names, strict=True):
        if not (run.get("baseline") or {}).get("state_sha"):
            raise SystemExit(
                f"{name} (seed {seed(run)}) records no baseline fingerprint "
                "(baseline.state_sha): it was run before fingerprints were recorded, so its "
                "baseline cannot be checked; rerun that seed"
            )
    ref, ref_name = runs[0], names[0]
    for run, name in zip(runs[1:], names[1:], strict=True):
        a, b = ref["baseline"]["state_sha"], run["baseline"]["state_sha"]
        if a != b:
            raise SystemExit(
                f"baseline fingerprints differ: {ref_name} {a} vs {name} {b}; runs of different "
                "baselines are not pooled"
            )
        ra, rb = recipe(ref), recipe(run)
        if ra != rb:
            keys = sorted(k for k in set(ra) | set(rb) if ra.get(k) != rb.get(k))
            diff = "; ".join(f"{k}: {ra.get(k)!r} vs {rb.get(k)!r}" for k in keys)
            raise SystemExit(f"settings differ between {ref_name} and {name} ({diff})")
    seeds = [seed(r) for r in runs]
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise SystemExit(f"seed(s) {dup} appear more than once among {list(names)}")


def run_seed(run: dict[str, Any]) -> Any:
    """A run's seed (older runs keep it in their settings)."""
    return run.get("seed", (run.get("settings") or {}).get("seed"))


def load_poolable(
    stems: Sequence[str], out_dir: Path, recipe: Callable[[dict[str, Any]], dict[str, Any]]
) -> list[dict[str, Any]]:
    """Every run of the result files ``out_dir/<stem>.json`` (single-seed or already pooled),
    checked by :func:`check_poolable` and sorted by seed."""
    runs, names = [], []
    for stem in stems:
        for run in runs_of(json.loads((out_dir / f"{stem}.json").read_text())):
            runs.append(run)
            names.append(stem)
    check_poolable(runs, names, recipe)
    return sorted(runs, key=run_seed)


def add_seed_args(ap: argparse.ArgumentParser, bench: str, stem_default: str) -> None:
    """The options every single-seed bench shares: --seed, --threads, --quick, --out, --out-stem,
    --merge and --render."""
    ap.add_argument("--seed", type=int, default=0,
                    help="validation split, loader shuffling and the method's seed (never the "
                    "baseline: the demo's seed-0 LeNet for every seed)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="results directory")
    ap.add_argument("--out-stem", help=f"output file stem (default {stem_default})")
    ap.add_argument("--merge", nargs="+", metavar="STEM",
                    help="only pool these finished result stems (of --out) into --out-stem: "
                    "same baseline fingerprint and settings, distinct seeds")  # fmt: skip
    ap.add_argument("--render", type=Path, help=f"re-write the .md of this {bench} results JSON")


def stem_of(args: argparse.Namespace, default: str) -> str:
    """The output stem: --out-stem, else ``default`` + ``_seedN`` for seed N > 0; ``_quick``
    appended to a --quick run's stem (quick results are never committed)."""
    stem = args.out_stem or default + (f"_seed{args.seed}" if args.seed else "")
    return stem if not args.quick or stem.endswith("_quick") else stem + "_quick"


def write(
    out: dict[str, Any], out_dir: Path, stem: str, markdown: Callable[[dict[str, Any]], str]
) -> None:
    """``out_dir/<stem>.json`` and its rendering ``.md`` (printed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(out, indent=1) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown(out))
    print((out_dir / f"{stem}.md").read_text())


def baseline_line(base: dict[str, Any], seed_changes: str) -> str:
    """The report's line on the baseline (the demo's seed-0 LeNet for every seed) and on what a
    seed changes."""
    fp = (
        f", `{base.get('checkpoint')}`, weight fingerprint `{base['state_sha']}`"
        if base.get("state_sha")
        else " (no weight fingerprint recorded by this run)"
    )
    return (
        "Baseline: the demo's LeNet (`demo_baseline(seed=0)`, the same for every seed)"
        f"{fp}. The seed changes {seed_changes}."
    )
