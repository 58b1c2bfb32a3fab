"""Fold inference-mode BatchNorm into the preceding Conv2d / Linear."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx, nn

from compactnn.capture import _following_activations
from compactnn.errors import PlanError
from compactnn.surgery._util import set_module

__all__ = ["fold_batchnorm", "apply_fold", "foldable_before_relu"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def _pairs_fx(model: nn.Module) -> list[tuple[str, str]]:
    gm = fx.symbolic_trace(model)
    mods = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods[str(node.target)], _BN):
            continue
        prev = node.args[0] if node.args else None
        if not isinstance(prev, fx.Node) or prev.op != "call_module":
            continue
        layer = mods[str(prev.target)]
        if not isinstance(layer, (nn.Conv2d, nn.Linear)) or len(prev.users) != 1:
            continue
        if calls[str(prev.target)] != 1 or calls[str(node.target)] != 1:
            continue
        pairs.append((str(prev.target), str(node.target)))
    return pairs


def _pairs_sequential(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Sequential):
            continue
        kids = list(m.named_children())
        for (na, a), (nb, b) in zip(kids, kids[1:]):
            if isinstance(a, (nn.Conv2d, nn.Linear)) and isinstance(b, _BN):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + na, prefix + nb))
    return pairs


def _pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(layer, bn)`` pairs: ``torch.fx``, else (untraceable) adjacent modules of a
    ``nn.Sequential``."""
    try:
        return _pairs_fx(model)
    except Exception:  # noqa: BLE001 - untraceable model: fall back to container order
        return _pairs_sequential(model)


def _fold(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> bool:
    if bn.running_mean is None or bn.running_var is None:
        return False
    out = layer.weight.shape[0]
    if bn.num_features != out:
        return False
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.affine:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.affine:
            shift = shift + bn.bias
        w = layer.weight
        w.mul_(scale.reshape(-1, *([1] * (w.dim() - 1))))
        if layer.bias is None:
            layer.bias = nn.Parameter(shift.clone().to(w.dtype))
        else:
            layer.bias.mul_(scale).add_(shift)
    return True


def fold_batchnorm(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    r"""Fold every ``Conv2d/Linear -> BatchNorm`` pair into the layer (deployment).

    With :math:`s = \gamma / \sqrt{\sigma^2 + \epsilon}`: :math:`W' = \mathrm{diag}(s) W`,
    :math:`b' = s (b - \mu) + \beta`; the BN becomes ``nn.Identity``. Exact for the model in
    eval mode (uses running statistics). Pairs are found with ``torch.fx`` (the layer's output
    must feed only the BN); if the model cannot be traced, adjacent pairs inside
    ``nn.Sequential`` containers are folded. BNs without running statistics are left alone.

    Args:
        model: the model (not modified unless ``inplace``).
        inplace: fold into ``model`` itself.

    Returns:
        The model with BNs folded.
    """
    out = model if inplace else copy.deepcopy(model)
    pairs = _pairs(out)
    mods = dict(out.named_modules())
    for lname, bname in pairs:
        if _fold(mods[lname], mods[bname]):  # type: ignore[arg-type]
            set_module(out, bname, nn.Identity())
    return out


def apply_fold(model: nn.Module, a: Any) -> None:
    """:class:`~compactnn.plan.FoldBatchNorm` in place: checks, folds, BN -> ``nn.Identity``."""
    mods = dict(model.named_modules())
    layer, bn = mods.get(a.layer), mods.get(a.bn)
    if not isinstance(layer, (nn.Conv2d, nn.Linear)):
        raise PlanError(
            f"FoldBatchNorm(layer={a.layer!r}): the layer must be a Conv2d or Linear of the model; "
            f"got {type(layer).__name__ if layer is not None else 'no such module'}."
        )
    if not isinstance(bn, _BN):
        raise PlanError(
            f"FoldBatchNorm(bn={a.bn!r}): must name a BatchNorm1d/2d of the model; got "
            f"{type(bn).__name__ if bn is not None else 'no such module'}."
        )
    if not _fold(layer, bn):
        raise PlanError(
            f"FoldBatchNorm({a.layer!r}, {a.bn!r}): the BatchNorm has no running statistics or "
            f"{bn.num_features} features for the layer's {layer.weight.shape[0]} outputs; it "
            "cannot be folded."
        )
    set_module(model, a.bn, nn.Identity())


def foldable_before_relu(model: nn.Module) -> dict[str, str]:
    """``{layer: bn}`` for every ``Conv2d/Linear -> BatchNorm -> ReLU`` chain in which the layer
    feeds only the BN (each called once: :func:`fold_batchnorm`'s pairs), the BN only ReLUs
    (:func:`compactnn.capture.following_activation`'s rule), and the BN has running statistics
    of the layer's width."""
    mods = dict(model.named_modules())
    pairs = _pairs(model)
    if not pairs:
        return {}
    acts = _following_activations(model, [b for _, b in pairs])
    return {
        k: v for k, v in pairs
        if acts[v] == "relu" and mods[v].running_var is not None
        and mods[v].num_features == mods[k].weight.shape[0]
    }  # fmt: skip
