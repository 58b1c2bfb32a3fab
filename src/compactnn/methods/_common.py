"""Pieces shared by the filter-pruning methods (SSR, ADMM-sparse, criteria baselines)."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import fx, nn

from compactnn.errors import ConfigError, UnsupportedLayerError

__all__ = [
    "prunable_layers",
    "residual_coupled_layers",
    "per_layer_values",
    "prune_filters",
    "replay_plan",
]

_PASS_THROUGH = (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Identity, nn.Dropout)
_ADD_TARGETS = {operator.add, operator.iadd, torch.add}


def residual_coupled_layers(model: nn.Module) -> set[str]:
    """Conv/Linear layers whose output reaches a residual ``add`` through BN/ReLU/identity only.

    Their output channels are tied to the other branch of the add; SSR's ResNet rule (sec.
    III-E) leaves them alone and prunes only the layers inside each block.
    """
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - report any tracing failure the same way
        raise UnsupportedLayerError(
            f"{type(model).__name__} cannot be traced by torch.fx ({exc}); pass layers= "
            "explicitly to choose which layers to prune."
        ) from exc
    mods = dict(gm.named_modules())
    coupled: set[str] = set()
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods[node.target], (nn.Conv2d, nn.Linear)):
            continue
        frontier = [node]
        while frontier:
            cur = frontier.pop()
            for user in cur.users:
                if user.op == "call_function" and user.target in _ADD_TARGETS:
                    coupled.add(str(node.target))
                elif user.op == "call_method" and user.target in ("add", "add_"):
                    coupled.add(str(node.target))
                elif user.op == "call_module" and isinstance(mods[user.target], _PASS_THROUGH):
                    frontier.append(user)
                elif user.op == "call_function" and user.target in (torch.relu, nn.functional.relu):
                    frontier.append(user)
    return coupled


def prunable_layers(model: nn.Module) -> list[str]:
    """Default layers whose filters/neurons may be removed, in forward order.

    Every Conv2d/Linear except the final classifier (its outputs are the classes) and except
    layers whose outputs feed a residual add (SSR sec. III-E: only the inner convs of a block).
    Depthwise convs (groups == in_channels) are skipped: their channels follow their input.
    """
    coupled = residual_coupled_layers(model)
    layers = [
        n
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
        and not (isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels)
    ]
    if not layers:
        raise UnsupportedLayerError(f"{type(model).__name__} has no Conv2d/Linear layers to prune.")
    last = layers[-1]
    return [n for n in layers if n != last and n not in coupled]


def per_layer_values(value: Any, layers: Sequence[str], name: str, owner: str) -> dict[str, float]:
    """Broadcast a float, a per-layer list (same length as ``layers``) or a dict to a dict."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {layer: float(value) for layer in layers}
    if isinstance(value, dict):
        unknown = [k for k in value if k not in layers]
        if unknown:
            raise ConfigError(
                f"The '{name}' parameter of {owner} names layer(s) {unknown} that are not pruned; "
                f"pruned layers: {list(layers)}."
            )
        missing = [k for k in layers if k not in value]
        if missing:
            raise ConfigError(
                f"The '{name}' parameter of {owner} has no value for layer(s) {missing}."
            )
        return {k: float(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if len(value) != len(layers):
            raise ConfigError(
                f"The '{name}' parameter of {owner} must have one value per pruned layer "
                f"({len(layers)}: {list(layers)}). Got {len(value)} values: {list(value)}."
            )
        return {layer: float(v) for layer, v in zip(layers, value, strict=True)}
    raise ConfigError(
        f"The '{name}' parameter of {owner} must be a float, a list with one value per layer or "
        f"a dict layer -> value. Got {value!r}."
    )


def prune_filters(
    model: nn.Module, keep: dict[str, Sequence[int]], input_shape: Sequence[int]
) -> tuple[nn.Module, Any]:
    """Physically keep only ``keep[layer]`` output filters/neurons (all couplings follow).

    Returns ``(new_model, plan)``; the input model is not modified.
    """
    from compactnn import surgery
    from compactnn.plan import CompressionPlan, KeepOutputs

    plan = CompressionPlan(
        actions=[KeepOutputs(layer=k, keep=tuple(int(i) for i in v)) for k, v in keep.items()],
        meta={"input_shape": list(input_shape)},
    )
    return surgery.apply(plan, model), plan


def replay_plan(
    structure_plan: Any, final: nn.Module, input_shape: Sequence[int] | None = None
) -> Any:
    """A self-contained plan: the structural actions, then the complete state of ``final``.

    Replayed with :func:`compactnn.surgery.apply` on a fresh, untrained instance of the original
    architecture it gives ``final`` exactly (every parameter and buffer, BN statistics
    included; see :class:`~compactnn.plan.SetState`). ``final`` must be the structure plan's
    result, possibly trained since; the tensors of layers replaced by LowRank / SparseLowRank /
    SetWeights actions are taken from those actions, so ``final`` must not have changed them.
    ``input_shape`` (per sample) is stored in ``meta`` (``None``: keep the plan's).
    """
    from compactnn.plan import CompressionPlan

    if structure_plan is None:
        structure_plan = CompressionPlan()
    meta = dict(structure_plan.meta)
    if input_shape is not None:
        meta["input_shape"] = list(input_shape)
    plan = CompressionPlan(actions=list(structure_plan.actions), meta=meta)
    return plan.with_state(final)
