"""The coupling group of a layer's output channels, with the channel correspondence measured.

Removing output channel ``j`` of a layer also removes channels of every layer tied to it: the
other producers of a residual ``add``, an SE gate (``x * sigmoid(fc2(...))``), a depthwise conv
that follows. Criterion methods score such a *group* as one unit (Torch-Pruning's DepGraph
idea): one score per channel, aggregated over the members, one keep-set for all.

Membership comes from the same dependency group the cut uses
(:func:`~compactnn.surgery._channels.keep_channels` of a ``KeepOutputs``: the producers whose
outputs the cut removes). The correspondence ``root channel j -> member channel
k`` is **measured**, not read from Torch-Pruning: the NaN probe of :mod:`._check` is run with a
binary code of the channels (probe ``b`` seeds the channels whose index has bit ``b`` set), once
from the root and once from each member. Where root and member reach the same input channel of
a consumer (the add's or the gate's consumer), the two codes give ``j`` and ``k``. A member is
kept only when this yields a complete one-to-one map; otherwise it is left out of the group (the
cut itself is still checked by surgery).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from compactnn.errors import PlanError
from compactnn.surgery._check import probe
from compactnn.surgery._cut import _seeds, _size
from compactnn.surgery._depgraph import _collect, _group, _resolve
from compactnn.surgery._util import example_inputs_for

__all__ = ["coupling"]


def _codes(
    model: nn.Module, inputs: tuple[Tensor, ...], mod: nn.Module, n: int
) -> dict[tuple[nn.Module, int], int] | None:
    """``(consumer, input channel) -> producer channel`` reached from ``mod``'s outputs, decoded
    from ``ceil(log2 n)`` binary-coded probes plus one probe of all channels (``None``: the
    probe failed)."""
    every = probe(model, inputs, {mod: set(range(n))})
    if every.error is not None:
        return None
    code = {(m, t): 0 for m, full in every.full.items() for t in full}
    for b in range(max(1, math.ceil(math.log2(n))) if n > 1 else 0):
        seeds = {j for j in range(n) if (j >> b) & 1}
        if not seeds:
            continue
        res = probe(model, inputs, {mod: seeds})
        if res.error is not None:
            return None
        for m, full in res.full.items():
            for t in full:
                if (m, t) in code:
                    code[(m, t)] |= 1 << b
    return code


def coupling(
    model: nn.Module,
    layer: str,
    example_inputs: Tensor | Sequence[Tensor] | None = None,
    *,
    meta: dict[str, Any] | None = None,
) -> dict[str, tuple[int, ...]]:
    """The layers whose output channels go with ``layer``'s, and the measured correspondence.

    Args:
        model: the model (not modified).
        layer: dotted name of a Conv2d/Linear whose output channels would be cut.
        example_inputs: a batch the model accepts (default: a seeded random batch of
            ``meta["input_shape"]``).
        meta: plan-style metadata with ``input_shape``.

    Returns:
        ``{member: phi}`` with ``phi[j]`` = the member's output channel removed together with
        ``layer``'s channel ``j``; ``layer`` itself maps to ``0..n-1`` and comes first. Members
        whose correspondence cannot be measured as a one-to-one map are left out.

    Raises:
        PlanError: the layer does not exist / is not a Conv2d or Linear, or no input is known.
    """
    inputs = example_inputs_for(model, example_inputs, meta or {})
    if inputs is None:
        raise PlanError(
            f"coupling(layer={layer!r}) needs example inputs: pass example_inputs=... or "
            "meta={'input_shape': [...]}."
        )
    _, mod = _resolve(model, layer, "KeepOutputs", "out")  # refused as the cut itself would be
    n = _size(mod, "out")
    own = {layer: tuple(range(n))}
    names = {m: k for k, m in model.named_modules()}
    try:
        group = _group(model, inputs, mod, "out", list(range(n)), "coupling", layer)
        members = [m for m in _seeds(_collect(group, names, "coupling", layer)) if m is not mod]
    except PlanError:
        return own  # the cut itself will be refused (or not) by surgery, naming the cause
    members = [m for m in members if m in names and _size_out(m) == n]
    if not members:
        return own
    root = _codes(model, inputs, mod, n)
    if root is None:
        return own
    out = dict(own)
    for m in members:
        theirs = _codes(model, inputs, m, n)
        if theirs is None:
            continue
        phi: dict[int, int] = {}
        ok = True
        for key, j in root.items():
            if key not in theirs:
                continue
            k = theirs[key]
            if phi.setdefault(j, k) != k:
                ok = False
                break
        if ok and sorted(phi) == list(range(n)) and sorted(phi.values()) == list(range(n)):
            out[names[m]] = tuple(phi[j] for j in range(n))
    return out


def _size_out(m: nn.Module) -> int:
    if isinstance(m, nn.Conv2d):
        return m.out_channels
    if isinstance(m, nn.Linear):
        return m.out_features
    return -1
