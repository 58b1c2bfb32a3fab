"""Cost of the surgery self-check (issue 13): share of ``surgery.apply`` time spent checking.

What ``verify=True`` adds to a channel action: the comparison of the cut model's output with the
neutralised reference. The reference is the NaN probe's own output (the probe, which measures
the index mapping, zeroes every consumer's removed input channels, so its pass *is* the model
with the removed channels neutralised) and the cut model's forward replaces the plain forward
``verify=False`` runs anyway. Every run of channel actions is then checked in float64 (issue 34)
on ``check_inputs`` (compress passes the first training inputs) or the example batch: a float64
copy of the model before the run with the removed units zeroed at their source, one of the cut
model, a forward of each.

Two measurements, 1 torch thread, on the same plans:

* **share**: inside ``verify=True`` runs, the time of the self-check's own calls (comparisons,
  a fallback reference forward, the check on the user's batch) over the run's total time
  (measured in the same run, so the machine's load largely cancels);
* **paired**: ``verify=True`` vs ``verify=False`` wall time, interleaved, median over repeats
  (sensitive to the load of this shared machine: reported with its quartiles).

Writes benchmarks/results/surgery_self_check.json and .md.

    python benchmarks/bench_surgery_check.py [--repeats 9] [--user 0 2 8]

``--kiaee [TAG]`` (issue 34; formerly ``benchmarks/bench_surgery_check64.py [TAG] [REPEATS]``)
only prints the time of the self-check on kiaee-cnn, in one process, 1 torch thread: each plan
keeps every other filter of conv1 (1 action) or of conv1..conv4 (4 actions); 2 samples are given
as ``check_inputs`` (what compress passes); the self-check's own calls are timed inside
``verify=True`` runs (the functions ``compactnn.surgery.SELF_CHECK_CALLS`` names). Run it on both
trees to compare (a tree without ``SELF_CHECK_CALLS``, from before issue 37, is timed by its own
copy of this script):

    PYTHONPATH=<old tree>/src python benchmarks/bench_surgery_check.py --kiaee old --repeats 9
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

import _lib
from compactnn import models, surgery
from compactnn.plan import CompressionPlan, KeepOutputs

# the self-check's own calls are timed where they live: this bench measures library internals

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"


def _cases() -> list[tuple[str, torch.nn.Module, list[int], list[KeepOutputs]]]:
    out = []
    for name in ("resnet20", "vgg16-cifar"):
        m = models.create(name).eval()
        shape = list(models.default_input_shape(name))
        convs = [n for n, x in m.named_modules() if isinstance(x, torch.nn.Conv2d)][:6]
        acts, cur = [], m
        for n in convs:  # widths as earlier cuts (residual couplings) left them
            c = cur.get_submodule(n).out_channels
            if c < 2:
                continue
            acts.append(KeepOutputs(n, list(range(0, c, 2))))
            cur = surgery.apply(CompressionPlan(acts[-1:], meta={"input_shape": shape}), cur)
        out.append((name, m, shape, acts))
    return out


class _Timer:
    """Accumulates the time of the self-check's own calls while active."""

    def __init__(self) -> None:
        self.spent = 0.0
        # the self-check's functions as compactnn.surgery names them (reference forward and
        # comparison per action, float64 check of a run and its copy of the model before it)
        self._targets = [(mod, k) for mod, k in surgery.SELF_CHECK_CALLS if hasattr(mod, k)]
        self._orig = [getattr(mod, k) for mod, k in self._targets]

    def __enter__(self) -> _Timer:
        for (mod, k), fn in zip(self._targets, self._orig, strict=True):

            def timed(*a, _fn=fn, **kw):  # noqa: ANN002, ANN003, ANN202
                t0 = time.perf_counter()
                try:
                    return _fn(*a, **kw)
                finally:
                    self.spent += time.perf_counter() - t0

            setattr(mod, k, timed)
        return self

    def __exit__(self, *exc: object) -> None:
        for (mod, k), fn in zip(self._targets, self._orig, strict=True):
            setattr(mod, k, fn)


def _stats(xs: list[float]) -> dict[str, float]:
    q = statistics.quantiles(xs, n=4) if len(xs) >= 4 else [min(xs), statistics.median(xs), max(xs)]
    return {"median": statistics.median(xs), "q1": q[0], "q3": q[2], "min": min(xs), "max": max(xs)}


def _measure(
    plan: CompressionPlan, model: torch.nn.Module, user: torch.Tensor | None, reps: int
) -> dict:
    off, on, share = [], [], []
    surgery.apply(plan, model, check_inputs=user)  # warm-up (lazy imports, allocator)
    for _ in range(reps):
        t0 = time.perf_counter()
        surgery.apply(plan, model, verify=False, check_inputs=user)
        off.append(time.perf_counter() - t0)
        with _Timer() as tm:
            t0 = time.perf_counter()
            surgery.apply(plan, model, verify=True, check_inputs=user)
            total = time.perf_counter() - t0
        on.append(total)
        share.append(tm.spent / total * 100)
    paired = [(b - a) / a * 100 for a, b in zip(off, on, strict=True)]
    return {
        "verify_off_s": _stats(off),
        "verify_on_s": _stats(on),
        "self_check_share_pct": _stats(share),
        "paired_overhead_pct": _stats(paired),
    }


def _uptime() -> str:
    try:
        return subprocess.run(
            ["uptime"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return "unavailable"


def _kiaee(tag: str, reps: int) -> None:
    """Print the median ``apply`` time and self-check time of 1- and 4-action plans on
    kiaee-cnn (``check_inputs`` = 2 samples)."""
    model = models.create("kiaee-cnn", seed=0).eval()
    shape = [3, 32, 32]
    convs = ("conv1", "conv2", "conv3", "conv4")
    acts = [KeepOutputs(n, list(range(0, model.get_submodule(n).out_channels, 2))) for n in convs]
    user = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    for n in (1, 4):
        plan = CompressionPlan(acts[:n], meta={"input_shape": shape})
        surgery.apply(plan, model, check_inputs=user)  # warm-up
        total, check = [], []
        for _ in range(reps):
            with _Timer() as tm:
                t0 = time.perf_counter()
                surgery.apply(plan, model, check_inputs=user)
                total.append(time.perf_counter() - t0)
            check.append(tm.spent)
        share = statistics.median(c / t * 100 for c, t in zip(check, total, strict=True))
        print(
            f"{tag}: kiaee-cnn, {n} action(s), check_inputs=2: apply median "
            f"{statistics.median(total) * 1e3:.0f} ms, self-check median "
            f"{statistics.median(check) * 1e3:.1f} ms ({share:.0f} % of apply)",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--user", type=int, nargs="+", default=[0, 2, 8], help="user batch sizes")
    ap.add_argument("--kiaee", nargs="?", const="this tree", metavar="TAG",
                    help="only print the self-check time on kiaee-cnn, labelled TAG")  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.kiaee is not None:
        _kiaee(args.kiaee, args.repeats)
        return
    load_before = _uptime()
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = []
    for name, model, shape, acts in _cases():
        user = torch.rand(max(args.user), *shape, generator=torch.Generator().manual_seed(0))
        for n_act in (1, len(acts)):
            plan = CompressionPlan(acts[:n_act], meta={"input_shape": shape})
            for k in args.user:
                r = _measure(plan, model, user[:k] if k else None, args.repeats)
                r.update(model=name, actions=n_act, user_batch=k)
                rows.append(r)
                print(
                    f"{name} actions={n_act} user={r['user_batch']}: share "
                    f"{r['self_check_share_pct']['median']:.1f} %, paired "
                    f"{r['paired_overhead_pct']['median']:+.1f} %",
                    flush=True,
                )
    load_after = _uptime()
    meta = {
        "command": (
            f"python benchmarks/bench_surgery_check.py --repeats {args.repeats} "
            f"--user {' '.join(map(str, args.user))}"
        ),
        "date": started,
        "machine": f"{platform.processor() or platform.machine()}, shared 2-core CPU, 1 torch thread",
        "torch": torch.__version__,
        "uptime_before": load_before,
        "uptime_after": load_after,
        "repeats": args.repeats,
    }
    lines = [
        "# Surgery self-check cost (issue 13)",
        "",
        f"`{meta['command']}`, {meta['date']}, {meta['machine']}, torch {meta['torch']}.",
        f"Load: before `{load_before}`; after `{load_after}` (the machine is shared with other jobs).",
        "",
        "Each action keeps every other output channel of one of the first 6 convs (batch of 2 from",
        "`plan.meta['input_shape']`; `user` = that many samples given as `check_inputs`, as",
        "compress does). **share** = time of the self-check's own calls (comparisons; the check on",
        "the user's batch: one forward of the neutralised original + one of the cut model) / total",
        "`apply` time, inside the same `verify=True` run; **paired** = (verify=True - verify=False)",
        "/ verify=False over interleaved runs. Median [q1, q3] over the repeats. The reference of",
        "the per-action check is the NaN probe's own pass (no extra forward).",
        "",
        "| model | actions | user | verify=False (s) | verify=True (s) | share | paired |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, p = r["self_check_share_pct"], r["paired_overhead_pct"]
        lines.append(
            f"| {r['model']} | {r['actions']} | {r['user_batch']} | "
            f"{r['verify_off_s']['median']:.3f} | {r['verify_on_s']['median']:.3f} | "
            f"{s['median']:.1f} % [{s['q1']:.1f}, {s['q3']:.1f}] | "
            f"{p['median']:+.1f} % [{p['q1']:+.1f}, {p['q3']:+.1f}] |"
        )
    lines += [
        "",
        "The share is the number to read: the paired difference of two totals carries the noise",
        "of the shared machine (its quartiles show how much). The NaN probe (the measured index",
        "mapping) and the dependency graph run with and without `verify`; they are not counted.",
        "`verify=False` ignores `check_inputs`, so a `user` row's paired column is the whole cost",
        "of checking on the user's samples.",
        "",
        "## Reading (computed from the rows above)",
        "",
    ]
    from compactnn.methods.blocks import CHECK_SAMPLES

    def worst(user: int, multi: bool) -> float:
        sel = [r for r in rows if r["user_batch"] == user and (r["actions"] > 1) == multi]
        return max(r["self_check_share_pct"]["median"] for r in sel) if sel else float("nan")

    lines += [
        f"- Seeded self-check of every action (on by default): at most {max(worst(0, False), worst(0, True)):.1f} %"
        " of surgery time (median share); the paired totals agree within the machine's noise.",
        f"- Plus compress's {CHECK_SAMPLES} real samples (`CHECK_SAMPLES`), once per plan: at most "
        f"{worst(CHECK_SAMPLES, True):.1f} % for the 6-action plans, {worst(CHECK_SAMPLES, False):.1f} % "
        "for a 1-action plan (two forwards of the samples against a surgery of one dependency graph "
        "and a few forwards): the 10 % aim holds for multi-action plans, not for one action alone.",
    ]
    doc = {"meta": meta, "rows": rows}
    _lib.write_result(OUT, "surgery_self_check", doc, "\n".join(lines) + "\n", indent=2)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
