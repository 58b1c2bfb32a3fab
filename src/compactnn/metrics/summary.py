"""Whole-model summaries: :func:`accuracy` (top-k over ``(x, y)`` batches), :func:`report` (a
:class:`Report` of everything measured on one model) and :func:`format_comparison` (before /
after)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from compactnn.errors import ConfigError
from compactnn.metrics._run import _eval_no_grad, _run_checked
from compactnn.metrics.flops import LayerRow, _flop_counts, layer_table
from compactnn.metrics.latency import LatencyResult, measure_latency, real_batch
from compactnn.metrics.size import count_params, memory_bytes, memory_mb, stored_values


def accuracy(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    topk: Sequence[int] = (1, 5),
    max_batches: int | None = None,
) -> dict[str, float]:
    """Top-k accuracy (in %) of ``model`` over ``(x, y)`` batches, in eval mode.

    Returns a dict ``{"top1": ..., "top5": ..., "n": samples}``; a k larger than the number of
    classes is clipped to it.
    """
    correct = dict.fromkeys(topk, 0)
    n = 0
    with _eval_no_grad(model):
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        for i, (x, y) in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                raise ConfigError(
                    f"accuracy(): batch {i} of the evaluation data holds NaN or Inf inputs; "
                    "clean or impute the data (an accuracy measured on them is meaningless)."
                )
            x, y = x.to(device), y.to(device)
            out = _run_checked(model, x)
            for k in topk:
                kk = min(k, out.shape[1])
                pred = out.topk(kk, dim=1).indices
                correct[k] += int((pred == y[:, None]).any(dim=1).sum())
            n += int(y.numel())
    if n == 0:
        raise ConfigError(
            "accuracy() got no samples: the data loader is empty; pass one with at least one batch."
        )
    res: dict[str, float] = {f"top{k}": 100.0 * c / n for k, c in correct.items()}
    res["n"] = float(n)
    return res


@dataclass
class Report:
    """Everything measured on one model (see module docstring for conventions)."""

    params: int
    flops: int
    memory_mb: float
    input_shape: tuple[int, ...]
    layers: list[LayerRow] = field(default_factory=list)
    latency: LatencyResult | None = None
    accuracy: dict[str, float] | None = None
    memory_bytes: int = 0
    stored_values: int = 0
    latency_inputs: str = "random"

    @property
    def macs(self) -> int:
        return self.flops // 2

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["macs"] = self.macs
        return d

    def format(self, title: str = "model") -> str:
        """Human-readable per-layer table plus totals."""
        lines = [f"== {title} =="]
        hdr = f"{'layer':<28}{'type':<20}{'units':>8}{'params':>12}{'MACs':>14}  shape"
        lines += [hdr, "-" * len(hdr)]
        for r in self.layers:
            lines.append(
                f"{r.name:<28}{r.type:<20}{r.units:>8}{r.params:>12,}{r.macs:>14,}  {r.shape}"
            )
        lines.append("-" * len(hdr))
        lines.append(
            f"total params {self.params:,}  |  {self.memory_mb:.3f} MB (fp32)  |  "
            f"MACs {self.macs:,} (FLOPs {self.flops:,}) per sample"
        )
        if self.memory_bytes:
            lines.append(
                f"in memory {self.memory_bytes / 1024:.1f} KiB (parameters + buffers, sparse "
                f"indices included)  |  {self.stored_values:,} stored values"
            )
        if self.latency is not None:
            lat = self.latency
            lines.append(
                f"latency {lat.median_ms:.3f} ms median (p10 {lat.p10_ms:.3f}, p90 {lat.p90_ms:.3f}) "
                f"at batch {lat.batch_size}, {lat.threads} thread(s), {lat.repeats} repeats, "
                f"{self.latency_inputs} inputs"
            )
        if self.accuracy is not None:
            acc = ", ".join(f"{k} {v:.2f} %" for k, v in self.accuracy.items() if k != "n")
            lines.append(f"accuracy {acc} on {int(self.accuracy.get('n', 0))} samples")
        return "\n".join(lines)


def report(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    data: Iterable[Any] | None = None,
    latency: bool = True,
    batch_size: int = 1,
    threads: int = 1,
    repeats: int = 50,
    warmup: int = 10,
    topk: Sequence[int] = (1, 5),
) -> Report:
    """Measure params, FLOPs, memory, per-layer table, latency and (with ``data``) accuracy."""
    shape = tuple(int(s) for s in input_shape)
    total, _ = _flop_counts(model, shape)
    rep = Report(
        params=count_params(model),
        flops=total,
        memory_mb=memory_mb(model),
        input_shape=shape,
        layers=layer_table(model, shape),
        memory_bytes=memory_bytes(model),
        stored_values=stored_values(model),
    )
    if latency:
        real = real_batch(data, batch_size) if data is not None else None
        rep.latency = measure_latency(
            model,
            shape,
            batch_size=batch_size,
            threads=threads,
            repeats=repeats,
            warmup=warmup,
            inputs=real,
        )
        rep.latency_inputs = "random" if real is None else "real"
    if data is not None:
        rep.accuracy = accuracy(model, data, topk=topk)
    return rep


def format_comparison(before: Report, after: Report) -> str:
    """Before/after summary: per-layer units and params, totals, speed-up and accuracy change."""
    lines = []
    hdr = f"{'layer':<28}{'units before':>14}{'units after':>13}{'params before':>15}{'params after':>14}"
    lines += [hdr, "-" * len(hdr)]
    after_rows = {r.name: r for r in after.layers}
    for r in before.layers:
        a = after_rows.get(r.name)
        ua = str(a.units) if a else "-"
        pa = f"{a.params:,}" if a else "-"
        lines.append(f"{r.name:<28}{r.units:>14}{ua:>13}{r.params:>15,}{pa:>14}")
    for name, a in after_rows.items():
        if all(r.name != name for r in before.layers):
            lines.append(f"{name:<28}{'-':>14}{a.units:>13}{'-':>15}{a.params:>14,}")
    lines.append("-" * len(hdr))

    def ratio(x: float, y: float) -> str:
        return f"{x / y:.2f}x" if y else "n/a"

    lines.append(
        f"params   {before.params:>14,} -> {after.params:>12,}   ({ratio(before.params, after.params)} smaller, "
        f"{100.0 * after.params / max(before.params, 1):.2f} % kept)"
    )
    lines.append(
        f"MACs     {before.macs:>14,} -> {after.macs:>12,}   ({ratio(before.macs, after.macs)} fewer)"
    )
    lines.append(f"memory   {before.memory_mb:>12.3f}MB -> {after.memory_mb:>10.3f}MB")
    if before.memory_bytes and after.memory_bytes:
        lines.append(
            f"in RAM   {before.memory_bytes / 1024:>11.1f}KiB -> {after.memory_bytes / 1024:>9.1f}KiB"
            "   (parameters + buffers, sparse indices included)"
        )
    if before.latency and after.latency:
        lines.append(
            f"latency  {before.latency.median_ms:>12.3f}ms -> {after.latency.median_ms:>10.3f}ms   "
            f"({ratio(before.latency.median_ms, after.latency.median_ms)} measured speed-up, batch "
            f"{after.latency.batch_size}, {after.latency.threads} thread(s), "
            f"{after.latency_inputs} inputs)"
        )
    if before.accuracy and after.accuracy:
        b1, a1 = before.accuracy["top1"], after.accuracy["top1"]
        lines.append(
            f"top-1    {b1:>13.2f}% -> {a1:>10.2f}%   (error {100 - b1:.2f}% -> {100 - a1:.2f}%, "
            f"{(100 - a1) - (100 - b1):+.2f} points)"
        )
    return "\n".join(lines)
