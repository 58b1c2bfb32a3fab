"""What the benchmark scripts share: result files, seed pooling, table cells and timing.

Every script of ``benchmarks/`` imports this module (``import _lib``: a script run as
``python benchmarks/x.py`` has its own directory on ``sys.path``; the tests load scripts through
``tests/_bench.py``, which puts it there).

* **Result I/O**: :func:`write_result` writes a result JSON and its markdown report;
  :func:`state_sha` and :func:`baseline_record` identify the baseline a run compressed.
* **Seed pooling** (issue 15: rows as mean ± sd): a run's JSON records its seed, its settings and
  the fingerprint of the baseline it compressed (``baseline.state_sha``). Runs made as separate
  processes, one seed each, are pooled only when every one has a fingerprint, the fingerprints
  are equal, the settings that define the experiment are equal (the bench says which:
  ``recipe``) and no seed appears twice. A pooled JSON keeps every run under ``runs`` so that it
  can be pooled again with further seeds (:func:`load_poolable`, :func:`add_seed_args`,
  :func:`stem_of`, :func:`render_or_merge`).
* **Tables**: :func:`mean_sd` and the ``mean ± sd`` cells :func:`pm`, :func:`pm_values` and
  :func:`filters_pm`.
* **Timing**: :func:`cpu_ms` (median latency of a model, one thread) and :class:`Stopwatch`
  (wall and CPU seconds of a block).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

HERE = Path(__file__).resolve().parent

# -- result I/O ---------------------------------------------------------------------------------


def write_result(
    out_dir: Path,
    stem: str,
    doc: Any,
    markdown: str | Callable[[Any], str],
    *,
    indent: int = 1,
    default: Callable[[Any], Any] | None = None,
    newline: bool = False,
    echo: bool = False,
) -> None:
    """``out_dir/<stem>.json`` (``json.dumps(doc, indent=indent, default=default)``, a final
    newline when ``newline``) and its report ``out_dir/<stem>.md``: ``markdown`` itself, or
    ``markdown(doc)`` called after the JSON is written; the report is printed when ``echo``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=indent, default=default)
    (out_dir / f"{stem}.json").write_text(text + ("\n" if newline else ""))
    (out_dir / f"{stem}.md").write_text(markdown if isinstance(markdown, str) else markdown(doc))
    if echo:
        print((out_dir / f"{stem}.md").read_text())


def state_sha(model: nn.Module) -> str:
    """Fingerprint of a model's weights (sha256 of its state_dict, names and bytes; 16 hex)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def baseline_record(model: Any, ckpt: Any, **facts: Any) -> dict[str, Any]:
    """The baseline's identity: checkpoint file name, weight fingerprint and measured facts."""
    return {"checkpoint": Path(str(ckpt)).name, "state_sha": state_sha(model), **facts}


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


# -- seed pooling -------------------------------------------------------------------------------


def runs_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-seed runs in a result JSON: a pooled one lists them, a single run is one."""
    return list(doc["runs"]) if "runs" in doc else [doc]


def run_seed(run: dict[str, Any]) -> Any:
    """A run's seed (older runs keep it in their settings)."""
    return run.get("seed", (run.get("settings") or {}).get("seed"))


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


def render_or_merge(
    args: argparse.Namespace,
    argv: list[str] | None,
    markdown: Callable[[dict[str, Any]], str],
    merge: Callable[[list[str], Path, list[str]], dict[str, Any]],
    stem: Callable[[dict[str, Any]], str],
) -> bool:
    """Run --render or --merge of :func:`add_seed_args` when given (then True: nothing else is
    to run). --render re-writes the ``.md`` of a results JSON; --merge writes
    ``merge(stems, out_dir, argv)`` to --out-stem, else ``stem(pooled)`` (``_quick`` appended
    for quick runs), as :func:`write_result` (printed)."""
    if args.render is not None:
        args.render.with_suffix(".md").write_text(markdown(json.loads(args.render.read_text())))
        return True
    if not args.merge:
        return False
    out = merge(args.merge, args.out, sys.argv[1:] if argv is None else argv)
    name = args.out_stem or stem(out)
    if out["quick"] and not name.endswith("_quick"):
        name += "_quick"
    write_result(args.out, name, out, markdown, newline=True, echo=True)
    return True


# -- tables -------------------------------------------------------------------------------------


def mean_sd(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample sd (0 for one value) and count of ``values``."""
    v = [float(x) for x in values]
    return {
        "mean": statistics.fmean(v),
        "sd": statistics.stdev(v) if len(v) > 1 else 0.0,
        "n": len(v),
    }


def pm(
    d: dict[str, float], fmt: str = ".2f", *, n: bool = False, unit: str = "", sd: bool = False
) -> str:
    """``mean ± sd<unit>`` of a :func:`mean_sd` (the sd only for n > 1 unless ``sd``),
    ``(n=...)`` appended when asked."""
    s = f"{d['mean']:{fmt}}"
    if sd or d["n"] > 1:
        s += f" ± {d['sd']:{fmt.lstrip('+')}}"
    return s + unit + (f" (n={d['n']})" if n else "")


def pm_values(values: Sequence[float], fmt: str = ".2f", *, empty: str = "–") -> str:
    """``mean ± sd`` of ``values`` (``statistics.mean``), the value alone for one, ``empty`` for
    none."""
    if not values:
        return empty
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):{fmt.lstrip('+')}}"


def filters_pm(values: Sequence[str]) -> str:
    """Kept filters per layer ("4-12"): the common value when every seed agrees, else per layer
    mean ± sd."""
    if len(set(values)) == 1:
        return values[0]
    layers = list(zip(*(tuple(int(x) for x in v.split("-")) for v in values), strict=True))
    return " - ".join(pm(mean_sd(c), ".1f") for c in layers)


# -- timing -------------------------------------------------------------------------------------


def cpu_ms(model: nn.Module, shape: tuple[int, ...], *, repeats: int) -> float:
    """Median ms of ``model`` on a batch of 100 of ``shape``, one thread
    (:func:`compactnn.metrics.measure_latency`)."""
    from compactnn import metrics

    return metrics.measure_latency(
        model, shape, batch_size=100, threads=1, repeats=repeats
    ).median_ms


class Stopwatch:
    """Wall and CPU seconds (``wall``, ``cpu``) of the ``with`` block it times."""

    def __enter__(self) -> Stopwatch:
        self.wall = self.cpu = 0.0
        self._t, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self._t, time.process_time() - self._c
