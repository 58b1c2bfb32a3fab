"""The deployment of ADMM-sparse's kernel-sparse convs: every conv with zero kernels W_ij is
timed on its real input in each :class:`~compactnn.layers.KernelSparseConv2d` form (dense,
grouped, sparse) and deployed in the fastest (:func:`choose_kernel_forms`); the samples those
timings run on and the latency of the deployed model against the dense one (see
:mod:`compactnn.methods.admm_sparse`).
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
from torch import nn

from compactnn import metrics  # module attribute: looked up at call time (tests patch it)
from compactnn.layers import KernelSparseConv2d
from compactnn.methods.base import CompressionData
from compactnn.metrics import _run_hooked, real_batch
from compactnn.plan import KernelSparse

__all__ = ["KERNEL_CANDIDATES", "choose_kernel_forms"]


def _samples(data: CompressionData, shape: Any, n: int = 100) -> torch.Tensor:
    """``n`` real samples (validation, else training data) for the timings; N(0, 1) when the
    loaders yield no tensors. Never the test split."""

    for loader in (data.val, data.train):
        if loader is not None:
            x = real_batch(loader, n)
            if x is not None and tuple(x.shape[1:]) == tuple(shape):
                return x
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(0), device="cpu")


def _timed(
    model: nn.Module, samples: torch.Tensor, reference: nn.Module | None = None, rounds: int = 2
) -> dict[str, float]:
    """Eager latency of ``model`` at batch ``len(samples)`` and 1, one thread (median ms), and
    with ``reference`` (the dense start) timed alternately with it in the same window, the
    speed-up over it (``speedup``, ``speedup_b1``): a shared machine's load then cancels."""

    shape = tuple(samples.shape[1:])
    pair = {"m": model} if reference is None else {"m": model, "r": reference}
    times: dict[str, list[float]] = {f"{k}{b}": [] for k in pair for b in ("", "1")}
    for _ in range(rounds):
        for k, m in pair.items():
            big = metrics.measure_latency(
                m, shape, batch_size=len(samples), threads=1, warmup=1, repeats=3, inputs=samples
            )
            one = metrics.measure_latency(
                m, shape, batch_size=1, threads=1, warmup=2, repeats=8, inputs=samples
            )
            times[k].append(big.median_ms)
            times[f"{k}1"].append(one.median_ms)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"latency_ms": med["m"], "latency_ms_b1": med["m1"]}
    if reference is not None:
        out.update(speedup=med["r"] / med["m"], speedup_b1=med["r1"] / med["m1"])
    return out


#: the candidates of :func:`choose_kernel_forms`: (form, max_groups of the grouped form)
KERNEL_CANDIDATES: tuple[tuple[str, int | None], ...] = (
    ("dense", None),
    ("grouped", 2),
    ("grouped", 4),
    ("grouped", 8),
    ("sparse", None),
)


#: a candidate is timed only when its multiply-adds are at most this fraction of the dense
#: conv's: the grouped convs cost what they compute; the COO GEMM (with its im2col) was slower
#: than the dense conv even at 80 % zero kernels on this project's CPU (MKL-DNN dense conv)
_MAX_MACS_FRACTION = {"dense": 1.0, "grouped": 0.9, "sparse": 0.5}


def _macs_fraction(layer: Any, support: torch.Tensor) -> float:
    """Multiply-adds of a :class:`~compactnn.layers.KernelSparseConv2d` form / the dense
    conv's: grouped ``sum_g |F_g| |U_g|``, sparse the non-zero kernels, dense 1."""
    n, c = support.shape
    if layer.form == "dense":
        return 1.0
    if layer.form == "sparse":
        return float(support.sum()) / (n * c)
    used = sum(len(g) * int(support[list(g)].any(0).sum()) for g in layer.filter_groups)
    return used / (n * c)


def _kernel_sparse_convs(model: nn.Module, layers: list[str]) -> list[str]:
    """The convs among ``layers`` (groups = 1, numeric zero padding) with a zero kernel W_ij."""
    mods = dict(model.named_modules())
    out = []
    for n in layers:
        m = mods.get(n)
        if not isinstance(m, nn.Conv2d) or m.groups != 1 or m.padding_mode != "zeros":
            continue
        if isinstance(m.padding, str):
            continue
        w = m.weight.detach()
        if bool(w.reshape(w.shape[0], w.shape[1], -1).ne(0).any(dim=2).all()):
            continue
        out.append(n)
    return out


def _layer_inputs(
    model: nn.Module, layers: list[str], samples: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The input of each of ``layers`` in one eval-mode forward pass of ``samples`` (copies)."""

    mods = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        mods[n].register_forward_pre_hook(
            lambda _m, inp, _n=n: seen.__setitem__(_n, inp[0].detach().clone())
        )
        for n in layers
    ]
    _run_hooked(model, hooks, samples)
    return seen


def choose_kernel_forms(
    model: nn.Module,
    layers: list[str],
    samples: torch.Tensor,
    *,
    threads: int = 1,
    repeats: int = 3,
    warmup: int = 1,
    candidates: tuple[tuple[str, int | None], ...] = KERNEL_CANDIDATES,
) -> tuple[list[Any], dict[str, dict[str, Any]]]:
    """The fastest deployment of every kernel-sparse conv of ``layers`` in ``model``.

    Each conv with zero kernels W_ij is timed (median of ``repeats`` eager forward passes after
    ``warmup``, ``threads`` torch threads) on its real input, captured in one forward pass of
    ``samples`` (the batch-100 timing; batch 1 is the first sample), as the original dense
    ``nn.Conv2d`` (reference) and as every :data:`KERNEL_CANDIDATES` form of
    :class:`~compactnn.layers.KernelSparseConv2d`: ``dense`` (dense conv of the rebuilt
    weight), ``grouped`` (filters grouped by shared input support into at most 2 / 4 / 8
    smaller convs, concat and a permutation back to the original output order) and ``sparse``
    (im2col + COO GEMM of the non-zero kernels' entries). The fastest at the batch of
    ``samples`` is chosen; a candidate whose first timed call is over 3x the best so far is not
    timed further (``stopped``), one whose multiply-adds exceed :data:`_MAX_MACS_FRACTION` of
    the dense conv's is not timed (``skipped``, with its ``macs_fraction``).

    Returns:
        The :class:`~compactnn.plan.KernelSparse` actions (one per conv) and per conv the
        record: zero / total kernels, the candidates' times at both batch sizes, the choice.
    """

    targets = _kernel_sparse_convs(model, layers)
    mods = dict(model.named_modules())
    seen = _layer_inputs(model, targets, samples)

    def ms(layer: nn.Module, x: torch.Tensor, reps: int, warm: int) -> float:
        kw = dict(batch_size=int(x.shape[0]), threads=threads, warmup=warm, repeats=reps)
        return metrics.measure_latency(layer, tuple(x.shape[1:]), inputs=x, **kw).median_ms

    actions, records = [], {}
    for n in targets:
        conv, x = mods[n], seen[n]
        w = conv.weight.detach()
        support = w.reshape(w.shape[0], w.shape[1], -1).ne(0).any(dim=2)
        rec: dict[str, Any] = {
            "kernels": int(support.numel()),
            "zero_kernels": int((~support).sum()),
            "batch": int(x.shape[0]),
            "conv_ms": ms(conv, x, repeats, warmup),
            "conv_ms_b1": ms(conv, x[:1], repeats, warmup),
            "candidates": [],
        }
        best: tuple[float, Any] | None = None
        seen_groups: set[Any] = set()
        for form, g in candidates:
            layer = KernelSparseConv2d.from_conv(conv, form=form, max_groups=g or 4).eval()
            if form == "grouped":
                if len(layer.filter_groups) <= 1 or layer.filter_groups in seen_groups:
                    continue  # one group = the dense form; the same partition: timed already
                seen_groups.add(layer.filter_groups)
            cand: dict[str, Any] = {"form": form}
            if form == "grouped":
                cand["groups"] = len(layer.filter_groups)
            cand["macs_fraction"] = _macs_fraction(layer, support)
            if cand["macs_fraction"] > _MAX_MACS_FRACTION[form]:
                cand["skipped"] = True  # cannot beat the dense conv: not timed
                rec["candidates"].append(cand)
                continue
            first = ms(layer, x, 1, warmup)
            if best is not None and first > 3 * best[0]:
                cand.update(ms=first, stopped=True)
            else:
                cand.update(ms=ms(layer, x, repeats, 0), ms_b1=ms(layer, x[:1], repeats, warmup))
                if best is None or cand["ms"] < best[0]:
                    best = (cand["ms"], (layer, cand))
            rec["candidates"].append(cand)
        assert best is not None
        layer, cand = best[1]
        rec["chosen"] = {k: v for k, v in cand.items() if k not in ("stopped", "skipped")}
        rec["stored_values"] = layer.stored_param_count()
        rec["coo_count"] = layer.coo_param_count()
        groups = layer.filter_groups if layer.form == "grouped" else ()
        bias = None if conv.bias is None else conv.bias.detach()
        actions.append(
            KernelSparse(layer=n, weight=w, bias=bias, form=layer.form, filter_groups=groups)
        )
        records[n] = rec
    return actions, records
