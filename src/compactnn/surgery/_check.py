"""compactnn's own channel index mapping and the self-check of every channel cut.

Torch-Pruning's dependency graph proposes a coupling group; nothing of it is trusted blindly:

* **Probe** (:func:`probe`): one forward pass in which the channels a cut removes from its
  producers are set to NaN. NaN follows the real data flow through every op (chunk, split, cat,
  view, transpose, attention products, norms), so each layer that *consumes* the removed
  channels sees exactly which of its input channels they are -- the index mapping, measured
  rather than inferred. A consumer's NaN is replaced by 0 before it runs (its columns are going
  away), so the NaN does not leak past it. A channel that is NaN only in part (a ``view`` that
  regroups features) or NaN spreading to other channels (GroupNorm over part of a group,
  LocalResponseNorm, a mean over channels) means the cut would change the function of kept
  channels: the cut is refused, naming the construct.
* **Per-action check** (:func:`reference_output` + :func:`compare`): the pruned model must
  equal the model before the cut with every consumer's removed input channels zeroed on the
  example batch, within ``1e-4 (1 + max |y|)``: it catches a wrong index mapping and names the
  construct. It cannot see what else reaches a removed column (zeroing the consumer's column
  hides it), so the authoritative check is :mod:`compactnn.surgery._verify`'s float64 one,
  against the model with the removed units zeroed at their source.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from compactnn.surgery._lrn import HoleLocalResponseNorm

__all__ = [
    "Probe",
    "probe",
    "reference_output",
    "probe_is_reference",
    "compare",
    "constructs",
    "chan_dim",
    "is_consumer",
    "is_lrn",
]


def chan_dim(m: nn.Module) -> int:
    """The channel dimension of ``m``'s input/output (features of a Linear: the last)."""
    return -1 if isinstance(m, nn.Linear) else 1


def _passes_channels(m: nn.Module) -> bool:
    """Depthwise-style conv: input channel ``i`` feeds only its own group's outputs."""
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


def is_consumer(m: nn.Module) -> bool:
    """A layer whose *input columns* are cut when its input channels go (Conv2d/Linear)."""
    return isinstance(m, (nn.Conv2d, nn.Linear)) and not _passes_channels(m)


def is_lrn(m: nn.Module) -> bool:
    """LocalResponseNorm (plain or already cut): cut exactly by keeping zero holes."""
    return isinstance(m, (nn.LocalResponseNorm, HoleLocalResponseNorm))


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]


def _nan_channels(x: Tensor, dim: int) -> tuple[set[int], set[int]]:
    """(channels entirely NaN, channels partly NaN) of ``x`` along ``dim``."""
    if x.dim() < 2 or not x.is_floating_point():
        return set(), set()
    isnan = torch.isnan(x)
    if not bool(isnan.any()):
        return set(), set()
    nan = isnan.movedim(dim, 0).reshape(x.shape[dim], -1)
    full = nan.all(dim=1)
    part = nan.any(dim=1) & ~full
    return (
        {int(i) for i in torch.nonzero(full).flatten()},
        {int(i) for i in torch.nonzero(part).flatten()},
    )


@dataclass
class Probe:
    """What the NaN probe saw.

    Attributes:
        full: per leaf module, input channels that are entirely NaN (the removed channels).
        partial: per leaf module, input channels that are NaN only in part.
        spread: (name, module type, channels NaN in input, channels NaN in output) of leaf
            modules (not Conv/Linear) whose output has more NaN channels than their input.
        sizes: per leaf module, the size of its input's channel dimension.
        nodes: per leaf module, the autograd node of its (first) input, for :func:`constructs`.
        seeds: autograd nodes of the seeded producers' outputs.
        error: the exception of the probe's forward pass, if any.
        output: the model's output in the probe pass (detached). Every consumer's NaN input
            channels are zeroed before it runs, so this *is* the model with the removed channels
            neutralised: the self-check's reference when the neutralisation equals ``full``.
    """

    full: dict[nn.Module, set[int]] = field(default_factory=dict)
    partial: dict[nn.Module, set[int]] = field(default_factory=dict)
    spread: list[tuple[str, str, int, int]] = field(default_factory=list)
    sizes: dict[nn.Module, int] = field(default_factory=dict)
    per_channel: dict[nn.Module, int] = field(default_factory=dict)
    nodes: dict[nn.Module, Any] = field(default_factory=dict)
    seeds: list[Any] = field(default_factory=list)
    error: Exception | None = None
    output: Any = None


@contextlib.contextmanager
def _eval_restored(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with full_precision():
            yield
    finally:
        for m, t in modes:
            m.train(t)


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """TF32 off for cuDNN convolutions and cuBLAS matmuls while the block runs (restored after).

    On a GPU, PyTorch runs float32 convolutions in TF32 by default (10-bit mantissa): the
    pruned and the reference model then differ by ~1e-4..1e-3 relative for reasons that have
    nothing to do with the cut (measured on an H200: 2.5e-4 on a 96-channel conv1), and the
    self-check's ``TOLERANCE`` would refuse exact cuts. Its passes run in full float32. No
    effect on a CPU."""
    mm, cd = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = mm
        torch.backends.cudnn.allow_tf32 = cd


def _first_tensor(args: tuple[Any, ...]) -> Tensor | None:
    return args[0] if args and isinstance(args[0], Tensor) else None


def probe(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    seeds: dict[nn.Module, set[int]],
    *,
    track_graph: bool = False,
) -> Probe:
    """Run ``model`` with the ``seeds`` output channels of each seeded layer set to NaN.

    Args:
        model: the model (not modified; hooks are always removed, train flags restored).
        inputs: the example batch.
        seeds: layer -> output channels (dim 1; features for a Linear) removed by the cut.
        track_graph: record autograd nodes (for :func:`constructs`; costs a graph).
    """
    res = Probe()
    names = {m: n for n, m in model.named_modules()}
    handles = []

    def pre(m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = _first_tensor(args)
        if x is None or not x.is_floating_point() or x.dim() < 2:
            return None
        d = chan_dim(m)
        full, part = _nan_channels(x, d)
        res.sizes.setdefault(m, int(x.shape[d]))
        res.per_channel.setdefault(m, x[0].numel() // max(1, int(x.shape[d])))
        if full or part:
            res.full.setdefault(m, set()).update(full)
            res.partial.setdefault(m, set()).update(part)
            if track_graph and x.grad_fn is not None:
                res.nodes.setdefault(m, x.grad_fn)
            if is_consumer(m) or is_lrn(m):
                return (torch.where(torch.isnan(x), torch.zeros_like(x), x), *args[1:])
        return None

    def post(m: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
        if m in seeds and isinstance(out, Tensor) and out.is_floating_point():
            d = chan_dim(m)
            idx = torch.as_tensor(sorted(seeds[m]), dtype=torch.long, device=out.device)
            out = out.index_fill(d, idx, math.nan)
            if track_graph and out.grad_fn is not None:
                res.seeds.append(out.grad_fn)
            return out
        if is_lrn(m) and res.full.get(m) and isinstance(out, Tensor):
            idx = torch.as_tensor(sorted(res.full[m]), dtype=torch.long, device=out.device)
            return out.index_fill(1, idx, math.nan)  # removed channels stay removed
        x = _first_tensor(args)
        if (
            not is_consumer(m)
            and not is_lrn(m)
            and x is not None
            and isinstance(out, Tensor)
            and out.is_floating_point()
            and x.dim() >= 2
            and out.dim() == x.dim()
            and out.shape[chan_dim(m)] == x.shape[chan_dim(m)]
        ):
            d = chan_dim(m)
            fi, pi = _nan_channels(x, d)
            fo, po = _nan_channels(out, d)
            grow = len(fo) + len(po) > len(fi) + len(pi) or bool(po and not pi)
            if grow and _passes_channels(m) and not pi and not po:
                k = m.out_channels // m.in_channels  # depth multiplier: group c -> k outputs
                grow = fo != {c * k + j for c in fi for j in range(k)}
            if grow:
                res.spread.append((names.get(m, "?"), type(m).__name__, len(fi), len(fo) + len(po)))
        return None

    for _, m in _leaves(model):
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    for m in seeds:
        if any(True for _ in m.children()):  # a container seed (not expected): still seed it
            handles.append(m.register_forward_hook(post))
    try:
        with _eval_restored(model), torch.set_grad_enabled(track_graph):
            xs = inputs
            if track_graph:
                xs = tuple(
                    x.detach().clone().requires_grad_(True) if x.is_floating_point() else x
                    for x in inputs
                )
            res.output = _detached(model(*xs))
    except Exception as exc:  # noqa: BLE001 - reported by the caller
        res.error = exc
    finally:
        for h in handles:
            h.remove()
    return res


def _detached(out: Any) -> Any:
    if isinstance(out, Tensor):
        return out.detach()
    if isinstance(out, dict):
        return {k: _detached(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(_detached(o) for o in out)
    return out


def probe_is_reference(res: Probe, zero_in: dict[nn.Module, set[int]]) -> bool:
    """Whether the probe pass zeroed exactly ``zero_in`` (every consumer / LocalResponseNorm the
    NaN reached, and nothing else): its output is then the neutralised model's output."""
    if res.error is not None or res.output is None:
        return False
    zeroed = {m: full for m, full in res.full.items() if full and (is_consumer(m) or is_lrn(m))}
    want = {m: z for m, z in zero_in.items() if z and m in res.sizes}
    return zeroed == want and all(bool(z) and m in res.sizes for m, z in zero_in.items() if z)


_CONSTRUCTS = {
    "SplitBackward": "chunk/split",
    "SplitWithSizesBackward": "split",
    "UnsafeSplitBackward": "chunk/split",
    "UnsafeSplitWithSizesBackward": "split",
    "UnbindBackward": "unbind",
    "NarrowBackward": "slicing",
    "SliceBackward": "slicing",
    "SelectBackward": "indexing",
    "IndexBackward": "indexing",
    "ViewBackward": "view/reshape",
    "UnsafeViewBackward": "view/reshape",
    "ReshapeAliasBackward": "view/reshape",
    "TransposeBackward": "transpose (channel shuffle)",
    "PermuteBackward": "permute (channel shuffle)",
    "CatBackward": "cat",
    "StackBackward": "stack",
    "MeanBackward": "mean",
    "SumBackward": "sum",
    "AmaxBackward": "max over a dimension",
    "MaxBackward": "max over a dimension",
    "MulBackward": "product (attention gate)",
    "DivBackward": "division",
    "NativeGroupNormBackward": "group_norm",
    "NativeLayerNormBackward": "layer_norm",
    "SoftmaxBackward": "softmax",
    "MmBackward": "matmul",
    "BmmBackward": "matmul",
    "AvgPool3DBackward": "pooling over channels (LocalResponseNorm)",
    "ConstantPadNdBackward": "padding",
}


def constructs(res: Probe, consumers: list[nn.Module]) -> list[str]:
    """Names of the ops (chunk, split, view, transpose, ...) on the paths from the seeded
    producers to ``consumers`` (needs a probe run with ``track_graph=True``)."""

    def word(node: Any) -> str | None:
        return _CONSTRUCTS.get(type(node).__name__.rstrip("0123456789"))

    return ops_on_paths(res, [res.nodes.get(m) for m in consumers], word)


def ops_on_paths(res: Probe, starts: list[Any], name: Any) -> list[str]:
    """``name(node)`` of every autograd node on the paths from the probe's seeds (the removed
    channels) back from the ``starts`` nodes, in the order met, each once (falsy names
    skipped; needs a probe run with ``track_graph=True``)."""
    seeds = set(res.seeds)
    reaches: dict[Any, bool] = {}

    def reach(node: Any, depth: int = 0) -> bool:
        if node is None:
            return False
        if node in reaches:
            return reaches[node]
        reaches[node] = node in seeds
        if depth > 400:
            return reaches[node]
        hit = node in seeds
        for nxt, _ in getattr(node, "next_functions", ()):
            if reach(nxt, depth + 1):
                hit = True
        reaches[node] = hit
        return hit

    found: list[str] = []
    for start in starts:
        if start is None or not reach(start):
            continue
        stack, seen = [start], set()
        while stack:
            node = stack.pop()
            if node in seen or node in seeds or not reaches.get(node, False):
                continue
            seen.add(node)
            word = name(node)
            if word and word not in found:
                found.append(word)
            stack.extend(n for n, _ in node.next_functions if n is not None)
    return found


def reference_output(
    model: nn.Module, inputs: tuple[Tensor, ...], zero_in: dict[nn.Module, set[int]]
) -> Any:
    """The model's output with the input channels ``zero_in[layer]`` of each consumer zeroed
    (the removed structure neutralised); the model is not modified."""

    def pre(m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = _first_tensor(args)
        if x is None:
            return None
        d = 1 if is_lrn(m) else chan_dim(m)
        idx = torch.as_tensor(sorted(zero_in[m]), dtype=torch.long, device=x.device)
        return (x.index_fill(d, idx, 0.0), *args[1:])

    handles = [m.register_forward_pre_hook(pre) for m, s in zero_in.items() if s]
    try:
        with _eval_restored(model), torch.no_grad():
            return model(*inputs)
    finally:
        for h in handles:
            h.remove()


def _tensors(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return []


def compare(ref: Any, new: Any) -> float | None:
    """Largest ``|new - ref| / (1 + max |ref|)`` over the output tensors of equal shape
    (``None`` when no tensor could be compared)."""
    worst: float | None = None
    for a, b in zip(_tensors(ref), _tensors(new), strict=False):
        if a.shape != b.shape or not a.is_floating_point():
            continue
        a64, b64 = a.detach().double(), b.detach().double()
        finite = torch.isfinite(a64)
        if not bool(finite.all()):
            continue
        scale = 1.0 + float(a64.abs().max()) if a64.numel() else 1.0
        d = float((a64 - b64).abs().max()) / scale if a64.numel() else 0.0
        if not math.isfinite(d):
            d = math.inf
        worst = d if worst is None else max(worst, d)
    return worst
