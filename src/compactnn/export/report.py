"""``report.md`` of a result directory, the speed-ups it quotes and the run's environment.

:func:`render_report` writes the Markdown report from ``report.json``; :func:`speedups` and
:func:`speedup_protocol` read the speed-up per runtime off the latencies :func:`ship` measured;
:func:`environment` records the versions and the machine.
"""

from __future__ import annotations

import json
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

#: runtime -> (the original's row, the compressed model's row) of a ``deploy`` latency record
SPEEDUP_RUNTIMES = {
    "eager": ("eager_original", "eager"),
    "eager channels_last": ("channels_last_original", "channels_last"),
    "onnxruntime": ("onnxruntime_original", "onnxruntime"),
}


def speedups(deploy: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """``{"batch 100": {"eager": {original_ms, compressed_ms, speedup}, ...}}``: one speed-up
    per runtime and batch size, read off the latencies :func:`ship` measured (the original and
    the compressed model timed in the same runtime, on the same real batch)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for bs, row in (deploy.get("latency") or {}).items():
        per = {}
        for rt, (orig, comp) in SPEEDUP_RUNTIMES.items():
            if orig in row and comp in row:
                o, c = row[orig]["median_ms"], row[comp]["median_ms"]
                per[rt] = {"original_ms": o, "compressed_ms": c, "speedup": o / c if c else 0.0}
        if per:
            out[bs] = per
    return out


def speedup_protocol(deploy: dict[str, Any]) -> str:
    """How :func:`ship` timed, e.g. ``"1 thread(s), real samples, original and compressed timed
    in turns (5 rounds), median of 30 runs (eager), 30 (onnxruntime)"``."""
    runs = []
    for rt, (orig, comp) in SPEEDUP_RUNTIMES.items():
        reps = {
            row[k].get("repeats")
            for row in (deploy.get("latency") or {}).values()
            for k in (orig, comp)
            if k in row
        }
        if len(reps) == 1:
            runs.append(f"{reps.pop()} ({rt})")
    text = f"{deploy.get('latency_threads')} thread(s), {deploy.get('latency_inputs')}"
    rounds = (deploy.get("latency_protocol") or {}).get("rounds")
    if rounds:
        text += f", original and compressed timed in turns ({rounds} rounds)"
    return text + (f", median of {', '.join(runs)} runs" if runs else ", median")


def _fmt_bytes(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 2**20 else f"{n / 2**20:.2f} MiB"


def _before_after(b: dict[str, Any], a: dict[str, Any]) -> list[str]:
    """The before / after table: params, stored values, MACs, memory, test top-1."""
    lines = ["| | before | after |", "|---|---:|---:|"]
    lines.append(f"| params (COO convention) | {b['params']:,} | {a['params']:,} |")
    if a.get("stored_values"):
        lines.append(f"| stored values | {b.get('stored_values', 0):,} | {a['stored_values']:,} |")
    lines.append(f"| MACs / sample | {b['macs']:,} | {a['macs']:,} |")
    if a.get("memory_bytes"):
        lines.append(
            f"| in memory (incl. sparse indices) | {_fmt_bytes(b['memory_bytes'])} | "
            f"{_fmt_bytes(a['memory_bytes'])} |"
        )
    if b.get("accuracy") and a.get("accuracy"):
        lines.append(
            f"| test top-1 | {b['accuracy']['top1']:.2f} % | {a['accuracy']['top1']:.2f} % |"
        )
    lines.append("")
    return lines


def _layers(b: dict[str, Any], a: dict[str, Any]) -> list[str]:
    """The ``## Layers`` section: units and params of every layer before and after."""
    before = {r["name"]: r for r in b.get("layers", [])}
    lines = [
        "## Layers",
        "",
        "| layer | type | units before | units after | params before | params after |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in a["layers"]:
        o = before.get(r["name"], {})
        lines.append(
            f"| {r['name']} | {r['type']} | {o.get('units', '-')} | {r['units']} | "
            f"{o.get('params', '-')} | {r['params']} |"
        )
    lines.append("")
    return lines


def _artifacts_and_latency(dep: dict[str, Any]) -> list[str]:
    """The ``## Artifacts`` table and the latency table of the ``deploy`` record."""
    lines = [
        "## Artifacts",
        "",
        "| file | bytes | max abs diff vs PyTorch |",
        "|---|---:|---:|",
    ]
    for name, art in dep["artifacts"].items():
        diff = art.get("max_abs_diff")
        d = "-" if diff is None else f"{diff:.2e}"
        lines.append(f"| {name} | {art['bytes']:,} | {d} |")
    lines += [
        "",
        f"Sparse layers exported in **{dep['sparse_form']}** form. Latency ("
        f"{speedup_protocol(dep)}), ms:",
        "",
        "| batch | eager original | eager | channels_last original | channels_last | "
        "onnxruntime original | onnxruntime | torch.compile | fastest |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for bs, row in dep["latency"].items():

        def ms(key: str, _row: dict[str, Any] = row) -> str:
            return f"{_row[key]['median_ms']:.3f}" if key in _row else "-"

        lines.append(
            f"| {bs.split()[-1]} | {ms('eager_original')} | {ms('eager')} | "
            f"{ms('channels_last_original')} | {ms('channels_last')} | "
            f"{ms('onnxruntime_original')} | {ms('onnxruntime')} | {ms('torch.compile')} | "
            f"{row.get('fastest', '-')} |"
        )
    lines.append("")
    return lines


def _deploy(dep: dict[str, Any]) -> list[str]:
    """Artifacts, latency, speed-ups per runtime and the notes on slow or densified layers."""
    lines = _artifacts_and_latency(dep)
    ups = speedups(dep)
    if ups:
        lines += [
            "Speed-up per runtime (original -> compressed model, both timed in that "
            f"runtime; {speedup_protocol(dep)}):",
            "",
            "| batch | runtime | original ms | compressed ms | speed-up |",
            "|---|---|---:|---:|---:|",
        ]
        for bs, per in ups.items():
            for rt, v in per.items():
                lines.append(
                    f"| {bs.split()[-1]} | {rt} | {v['original_ms']:.3f} | "
                    f"{v['compressed_ms']:.3f} | {v['speedup']:.2f}x |"
                )
        lines.append("")
    tc = dep.get("torch_compile")
    if tc and not tc.get("ok"):
        lines += [f"torch.compile not timed: {tc.get('error')}.", ""]
    if dep.get("slower_than_dense"):
        lines.append(
            "**Slower than the dense layer they replace** (eager): "
            + ", ".join(dep["slower_than_dense"])
            + ". `--prefer speed` keeps them dense."
        )
        lines.append("")
    if dep.get("densified"):
        lines += [f"Kept dense (--prefer speed): {', '.join(dep['densified'])}.", ""]
    return lines


def _data_fed(fed: dict[str, Any]) -> list[str]:
    """The ``## Data fed`` section: dataset, normalisation, splits, batches, shape and seed."""
    lines = ["## Data fed", ""]
    lines.append(f"- dataset: {fed.get('dataset')} ({fed.get('kind', '?')})")
    norm = fed.get("normalisation")
    if isinstance(norm, dict):
        norm = (
            f"(x - {norm['mean']}) / {norm['std']} ({norm['source']})"
            if norm.get("normalize")
            else "none (raw [0, 1] pixels)"
        )
    lines.append(f"- normalisation: {norm}")
    sizes = ", ".join(
        f"{k} {v.get('samples') if v.get('samples') is not None else '?'}"
        + (f" (batch {v['batch_size']})" if v.get("batch_size") else "")
        for k, v in (fed.get("splits") or {}).items()
    )
    lines.append(f"- splits (samples): {sizes}; val_fraction {fed.get('val_fraction')}")
    if fed.get("input_key"):
        lines.append(f"- dict batches: input {fed['input_key']!r}, label {fed['label_key']!r}")
    if fed.get("options"):
        lines.append(f"- options: {json.dumps(fed['options'])}")
    lines.append(f"- input shape {fed.get('input_shape')}, seed {fed.get('seed')}")
    lines.append("")
    return lines


def render_report(doc: dict[str, Any]) -> str:
    """``report.md`` from the ``report.json`` document of a result directory."""
    lines = [f"# compactnn result: {doc.get('method')} on {doc.get('data')}", ""]
    b, a = doc.get("before") or {}, doc.get("after") or {}
    if b and a:
        lines += _before_after(b, a)
    val = doc.get("validation")
    if val:
        lines += [
            f"Validation top-1 {val['before']:.2f} % -> {val['after']:.2f} % "
            f"({-val['drop']:+.2f} points, {int(val['n'])} samples).",
            "",
        ]
    if a.get("layers"):
        lines += _layers(b, a)
    dep = doc.get("deploy")
    if dep:
        lines += _deploy(dep)
    fed = doc.get("data_fed")
    if fed:
        lines += _data_fed(fed)
    if doc.get("warnings"):
        lines += ["## Warnings", "", *[f"- {w}" for w in doc["warnings"]], ""]
    if doc.get("chosen"):
        lines += ["## Chosen hyper-parameters", "", "```", json.dumps(doc["chosen"]), "```", ""]
    env = doc.get("environment")
    if env:
        lines += [
            "## Run",
            "",
            ", ".join(f"{k} {v}" for k, v in env.items()),
            "",
            ", ".join(f"{k}: {v:.1f} s" for k, v in (doc.get("seconds") or {}).items()),
            "",
        ]
    if doc.get("plots"):
        lines += ["## Plots", "", *[f"![{p}]({p})" for p in doc["plots"]], ""]
    return "\n".join(lines)


def environment(seed: int | None = None) -> dict[str, Any]:
    """Versions (compactnn, torch, onnx, onnxruntime), machine and seed for report.json."""
    try:
        own = version("compactnn")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        own = "unknown"
    env: dict[str, Any] = {
        "compactnn": own,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.system()} ({platform.processor() or '?'})",
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:  # imported only here: ``import compactnn.export`` must not load onnx / onnxruntime
        import onnx
        import onnxruntime

        env["onnx"], env["onnxruntime"] = onnx.__version__, onnxruntime.__version__
    except ImportError:  # pragma: no cover
        pass
    if seed is not None:
        env["seed"] = seed
    return env
