"""PNG plots of a result (``compactnn report DIR``) and of the benchmarks: one plotting code.

Everything a plot needs is in ``report.json``, so ``compactnn report DIR`` redraws every PNG
from it alone (no model, no data):

- :func:`plot_layers` -- stored params per layer before / after (log scale);
- :func:`plot_path` -- accuracy vs size along a path (admm-sparse's mu path: validation top-1 vs
  sparsity) and the kept fraction vs strength of a budget search (``target.trace``);
- :func:`plot_spectra` -- singular values of the original weight of each low-rank layer, the
  chosen rank marked;
- :func:`plot_sparsity` -- non-zero density maps of sparse layers (lowered weight, pooled to
  at most 64 x 64 cells);
- :func:`curves` -- the line plot the benchmarks use (several series, one figure).

:func:`layer_figures` extracts the spectra and sparsity maps from the models at ship time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compactnn.layers import LowRankConv2d, LowRankLinear

__all__ = [
    "curves",
    "layer_figures",
    "plot_all",
    "plot_layers",
    "plot_path",
    "plot_spectra",
    "plot_sparsity",
]

#: the largest number of singular values kept per layer in report.json
MAX_SINGULAR_VALUES = 256
#: sparsity maps are pooled to at most this many cells per side
MAX_MAP = 64


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: str | Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(Path(out) / name, dpi=100)
    _pyplot().close(fig)
    return name


def _grid(n: int, height: float) -> tuple[Any, list[Any]]:
    """A figure of ``n`` panels, at most 3 a row; the unused panels switched off."""
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = _pyplot().subplots(rows, cols, figsize=(4.2 * cols, height * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


# ---------------------------------------------------------------------------- data
def _weight2d(m: nn.Module) -> torch.Tensor | None:
    w = getattr(m, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() < 2:
        return None
    return w.detach().float().reshape(w.shape[0], -1)


def _pool(mask: torch.Tensor) -> list[list[float]]:
    """Density of non-zeros of a 2-D mask pooled to at most MAX_MAP x MAX_MAP cells."""
    rows, cols = mask.shape
    ph, pw = math.ceil(rows / MAX_MAP), math.ceil(cols / MAX_MAP)
    x = mask.float()[None, None]
    pooled = nn.functional.avg_pool2d(x, (ph, pw), ceil_mode=True)[0, 0]
    return [[round(float(v), 3) for v in row] for row in pooled]


def layer_figures(model: nn.Module, original: nn.Module | None = None) -> dict[str, Any]:
    """Spectra of low-rank layers and sparsity maps of sparse layers, for report.json.

    Low-rank layers (``LowRankLinear`` / ``LowRankConv2d``, also inside ``SparsePlusLowRank``):
    the singular values of the original layer's weight (lowered to ``(out, in * k * k)``) and
    the rank chosen. Sparse layers (any compactnn layer with ``dense_matrix()``): the pooled
    density of non-zeros of the lowered weight, and the overall density.
    """

    orig = dict(original.named_modules()) if original is not None else {}
    spectra, maps = [], []
    for name, m in model.named_modules():
        if isinstance(m, (LowRankLinear, LowRankConv2d)):
            owner = name
            if owner not in orig and "." in owner:  # the low-rank branch of a sum
                owner = owner.rsplit(".", 1)[0]
            w = _weight2d(orig[owner]) if owner in orig else None
            if w is None:
                w = m.dense_weight().detach().float().reshape(m.dense_weight().shape[0], -1)
                of = "deployed weight (no original layer of that name)"
            else:
                of = "original weight"
            sv = torch.linalg.svdvals(w)[:MAX_SINGULAR_VALUES]
            spectra.append(
                {
                    "layer": name,
                    "rank": int(m.rank),
                    "full_rank": int(min(w.shape)),
                    "of": of,
                    "singular_values": [float(v) for v in sv],
                }
            )
        elif getattr(m, "is_compactnn_layer", False) and hasattr(m, "dense_matrix"):
            mat = m.dense_matrix().detach()
            mask = mat.reshape(mat.shape[0], -1) != 0
            maps.append(
                {
                    "layer": name,
                    "type": type(m).__name__,
                    "shape": [int(s) for s in mask.shape],
                    "density": float(mask.float().mean()),
                    "map": _pool(mask),
                }
            )
    return {"spectra": spectra, "sparsity": maps}


# ---------------------------------------------------------------------------- plots
def curves(
    path: str | Path,
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    logx: bool = False,
    marks: Sequence[tuple[float, str]] = (),
) -> Path:
    """One line plot: ``series`` of ``(label, xs, ys)``; ``marks`` are vertical lines
    ``(x, label)``. Used by ``compactnn report`` and the benchmarks."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    styles = ("o-", "s--", "^-.", "d:", "v-")
    for i, (label, xs, ys) in enumerate(series):
        ax.plot(list(xs), list(ys), styles[i % len(styles)], label=label, markersize=4)
    for x, label in marks:
        ax.axvline(x, color="red", linestyle=":", linewidth=1.2)
        ax.annotate(label, (x, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", color="red", fontsize=8)  # fmt: skip
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    if len(series) > 1 or any(s[0] for s in series):
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    path = Path(path)
    _save(fig, path.parent, path.name)
    return path


def plot_layers(doc: dict[str, Any], out: str | Path) -> list[str]:
    """PNG: per-layer stored params before / after (log scale)."""
    b, a = doc.get("before") or {}, doc.get("after") or {}
    if not (b.get("layers") and a.get("layers")):
        return []
    plt = _pyplot()
    after = {r["name"]: r["params"] for r in a["layers"]}
    names = [r["name"] for r in b["layers"]]
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(names) + 2), 3.2))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [r["params"] for r in b["layers"]], 0.4, label="before")
    ax.bar([x + 0.2 for x in xs], [max(after.get(n, 0), 0) for n in names], 0.4, label="after")
    ax.set_xticks(list(xs), names, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("stored params")
    ax.set_title(f"{doc.get('method')}: params per layer", fontsize=10)
    ax.legend()
    return [_save(fig, out, "layers_params.png")]


def plot_path(doc: dict[str, Any], out: str | Path) -> list[str]:
    """PNGs: accuracy vs size along the method's path; kept fraction vs strength of a budget
    search. Nothing when the result has neither."""
    written = []
    path = (doc.get("history") or {}).get("path") or []
    pts = [p for p in path if "val_top1" in p and "sparsity_percent" in p]
    if pts:
        curves(
            Path(out) / "path_accuracy.png",
            [
                (
                    "validation top-1",
                    [100 - p["sparsity_percent"] for p in pts],
                    [p["val_top1"] for p in pts],
                )
            ],  # fmt: skip
            xlabel="non-zero weights kept (%)",
            ylabel="validation top-1 (%)",
            title=f"{doc.get('method')}: accuracy vs size along the path",
        )
        written.append("path_accuracy.png")
    trace = (doc.get("target") or {}).get("trace") or []
    trace = [t for t in trace if isinstance(t.get("kept"), dict) and t.get("strength") is not None]
    if trace:
        keys = sorted({k for t in trace for k in t["kept"]})
        trace = sorted(trace, key=lambda t: t["strength"])
        target = (doc.get("target") or {}).get("target") or {}
        series = [
            (f"{k} kept", [t["strength"] for t in trace], [t["kept"].get(k) for t in trace])
            for k in keys
        ]
        chosen = (doc.get("target") or {}).get("strength")
        marks = [(float(chosen), "chosen")] if isinstance(chosen, (int, float)) else []
        name = (doc.get("target") or {}).get("option") or "strength"
        curves(
            Path(out) / "budget_search.png",
            series,
            xlabel=str(name),
            ylabel="fraction of the original kept",
            title="budget search: " + ", ".join(f"{k} <= {v}" for k, v in target.items()),
            marks=marks,
        )
        written.append("budget_search.png")
    return written


def plot_engine(doc: dict[str, Any], out: str | Path) -> list[str]:
    """PNG: the budgeted engine's trajectory (``history["engine"]``): the annealed budget and
    the fraction kept per target key, and validation top-1, against optimizer steps; the end
    of the annealing marked. Nothing without an engine run."""
    hist = (doc.get("history") or {}).get("engine") or []
    hist = [h for h in hist if isinstance(h.get("kept"), dict)]
    if not hist:
        return []
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.5, 3.4))
    steps = [h["step"] for h in hist]
    for k in sorted(hist[0]["kept"]):
        ax1.plot(steps, [100 * h["budget"][k] for h in hist], "--", label=f"{k} budget")
        ax1.plot(steps, [100 * h["kept"][k] for h in hist], "o-", markersize=3, label=f"{k} kept")
    ax2.plot(steps, [h["val_top1"] for h in hist], "o-", markersize=3, color="C2")
    settle = [h["step"] for h in hist if h.get("phase") == "settle"]
    for ax in (ax1, ax2):
        if settle:
            ax.axvline(settle[0], color="red", linestyle=":", linewidth=1.2)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    ax1.set_ylabel("% of the original")
    ax1.legend(fontsize=7)
    ax2.set_ylabel("validation top-1 (%)")
    ax1.set_title(f"{doc.get('method')}: budget annealed, units cut", fontsize=10)
    ax2.set_title("validation top-1 (red: annealing ends)", fontsize=10)
    return [_save(fig, out, "engine.png")]


def plot_spectra(doc: dict[str, Any], out: str | Path) -> list[str]:
    """PNG: singular spectra of the low-rank layers, the chosen rank marked on each."""
    spectra = (doc.get("figures") or {}).get("spectra") or []
    if not spectra:
        return []
    fig, axes = _grid(len(spectra), 3.0)
    for ax, s in zip(axes, spectra, strict=False):
        sv = s["singular_values"]
        ax.semilogy(range(1, len(sv) + 1), [max(v, 1e-12) for v in sv], ".-", markersize=3)
        ax.axvline(s["rank"], color="red", linestyle=":", linewidth=1.2)
        ax.set_title(f"{s['layer']}: rank {s['rank']} of {s['full_rank']}", fontsize=9)
        ax.set_xlabel("index")
        ax.set_ylabel(f"singular value ({s['of'].split()[0]})", fontsize=8)
        ax.grid(alpha=0.3)
    return [_save(fig, out, "spectra.png")]


def plot_sparsity(doc: dict[str, Any], out: str | Path) -> list[str]:
    """PNG: density of non-zeros of each sparse layer's lowered weight (rows = outputs)."""
    maps = (doc.get("figures") or {}).get("sparsity") or []
    if not maps:
        return []
    fig, axes = _grid(len(maps), 3.4)
    for ax, m in zip(axes, maps, strict=False):
        r, c = m["shape"]
        im = ax.imshow(m["map"], aspect="auto", cmap="viridis", vmin=0, vmax=1,
                       extent=(0, c, r, 0), interpolation="nearest")  # fmt: skip
        ax.set_title(f"{m['layer']} ({m['type']}): {100 * m['density']:.3g} % non-zero", fontsize=9)
        ax.set_xlabel("input (lowered)")
        ax.set_ylabel("output")
        fig.colorbar(im, ax=ax, fraction=0.046, label="density")
    return [_save(fig, out, "sparsity.png")]


def plot_all(doc: dict[str, Any], out: str | Path) -> list[str]:
    """Every plot the result supports; returns the PNG file names written into ``out``."""
    return [
        *plot_layers(doc, out),
        *plot_path(doc, out),
        *plot_engine(doc, out),
        *plot_spectra(doc, out),
        *plot_sparsity(doc, out),
    ]
