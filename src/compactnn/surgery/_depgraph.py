"""The coupling group of a cut, from Torch-Pruning's dependency graph.

:func:`_resolve` finds the Conv2d / Linear a channel action names (through compactnn's wrappers),
:func:`_group` the dependency graph's pruning group of removing some of its channels, and
:func:`_collect` turns the group into a cut (:data:`~compactnn.surgery._cut._Cuts`), refusing
modules surgery cannot resize. Used by :mod:`compactnn.surgery._channels` and
:mod:`compactnn.surgery._coupling`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from compactnn.errors import PlanError
from compactnn.layers import (
    FusedSparseLowRankConv2d,
    FusedSparseLowRankLinear,
    LowRankConv2d,
    LowRankLinear,
    SelectInputs,
    SparsePlusLowRank,
    _SparseBase,
)
from compactnn.surgery._cut import _BN, _Cuts, _is_depthwise, _passes_channels
from compactnn.surgery._util import get_module, run_model

_MIXING_NORMS = (nn.LayerNorm, nn.CrossMapLRN2d)
#: the sparse layers channel surgery refuses to resize (their structure indexes the channels)
_SPARSE = (_SparseBase, SparsePlusLowRank, FusedSparseLowRankConv2d, FusedSparseLowRankLinear)
_EXCLUDE = "exclude this layer from pruning (or cut a layer before/after the construct)"


def _resolve(model: nn.Module, name: str, action: str, side: str) -> tuple[str, nn.Module]:
    """The Conv2d/Linear that ``name`` denotes (unwrapping compactnn containers)."""
    mod = get_module(model, name, action)
    path = name
    while True:
        if isinstance(mod, SelectInputs):
            path, mod = f"{path}.layer", mod.layer
        elif isinstance(mod, (LowRankLinear, LowRankConv2d)):
            child = "second" if side == "out" else "first"
            path, mod = f"{path}.{child}", getattr(mod, child)
        else:
            break
    if isinstance(mod, _SPARSE):
        raise PlanError(
            f"{action}(layer={name!r}): channel surgery on sparse layers is not supported. Put "
            "channel actions before SetWeights(sparse=True)/SparseLowRank in the plan."
        )
    if not isinstance(mod, (nn.Conv2d, nn.Linear)):
        raise PlanError(
            f"{action}(layer={name!r}) names a {type(mod).__name__}; channel actions apply to "
            "Conv2d and Linear layers (their BN/activations follow automatically)."
        )
    if side == "out" and _passes_channels(mod) and not _is_depthwise(mod):
        raise PlanError(
            f"{action}(layer={name!r}): a depthwise conv with depth multiplier "
            f"{mod.out_channels // mod.groups} produces its outputs in groups of "
            f"{mod.out_channels // mod.groups} per input channel, so its outputs cannot be cut "
            "one by one; cut the layer that produces its input instead (whole groups go)."
        )
    if isinstance(mod, nn.Conv2d) and _is_depthwise(mod) and mod.in_channels != mod.out_channels:
        raise PlanError(
            f"{action}(layer={name!r}): conv with groups == out_channels ({mod.groups}) but "
            f"in_channels={mod.in_channels} is not supported; cut its producer instead."
        )
    return path, mod


def _build_graph(model: nn.Module, inputs: tuple[Tensor, ...], action: str, layer: str):  # noqa: ANN202
    import torch_pruning as tp

    for n, m in model.named_modules():
        if isinstance(m, _SPARSE):
            raise PlanError(
                f"{action}(layer={layer!r}): the model contains sparse layer {n!r}; channel "
                "surgery must come before SetWeights(sparse=True)/SparseLowRank actions in the plan."
            )
    modes = [(m, m.training) for m in model.modules()]
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=inputs if len(inputs) > 1 else inputs[0], verbose=False
            )
    except PlanError:
        raise
    except Exception as exc:  # noqa: BLE001 - any tracing failure is reported the same way
        try:
            run_model(model, inputs)
        except Exception:  # noqa: BLE001 - the model itself does not run on these inputs
            raise PlanError(
                f"{action}(layer={layer!r}): cannot build the dependency graph of "
                f"{type(model).__name__} on the example input ({exc}). Check "
                "plan.meta['input_shape'] or pass example_inputs."
            ) from exc
        raise PlanError(
            f"{action}(layer={layer!r}): the model runs, but the dependency analysis cannot "
            f"follow its graph ({type(exc).__name__}: {exc}), so the layers coupled to this cut "
            f"are unknown; {_EXCLUDE}."
        ) from exc
    finally:
        for m, t in modes:
            m.train(t)


def _collect(group, names: dict[nn.Module, str], action: str, layer: str) -> _Cuts:  # noqa: ANN001
    cuts: _Cuts = {}
    for item in group:
        dep, idxs = item.dep, item.idxs
        tgt = dep.target.module
        if isinstance(tgt, nn.Parameter):
            raise PlanError(
                f"{action}(layer={layer!r}): the cut reaches a bare nn.Parameter used in forward; "
                "wrap it in a module or exclude this layer."
            )
        side = "out" if dep.handler.__name__ == "prune_out_channels" else "in"
        if isinstance(tgt, nn.Conv2d):
            key = "chan" if _is_depthwise(tgt) else side
        elif isinstance(tgt, nn.Linear):
            key = side
        elif isinstance(tgt, (_BN, nn.GroupNorm)):
            key = "chan"
        elif isinstance(tgt, _MIXING_NORMS):
            raise PlanError(
                f"{action}(layer={layer!r}): the cut reaches {type(tgt).__name__} "
                f"{names.get(tgt, '?')!r}, which normalises across channels, so removing a "
                "channel would change the kept ones; exclude this layer from pruning."
            )
        elif any(True for _ in tgt.parameters(recurse=False)) or any(
            True for _ in tgt.buffers(recurse=False)
        ):
            raise PlanError(
                f"{action}(layer={layer!r}): the cut reaches {type(tgt).__name__} "
                f"{names.get(tgt, '?')!r}, which surgery cannot resize; exclude this layer."
            )
        else:
            continue  # parameter-free op (add, cat, flatten, pooling, activation)
        cuts.setdefault(tgt, {"out": set(), "in": set(), "chan": set()})[key].update(
            int(i) for i in idxs
        )
    return cuts


def _group(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    mod: nn.Module,
    side: str,
    removed: list[int],
    action: str,
    layer: str,
):  # noqa: ANN202
    import torch_pruning as tp

    dg = _build_graph(model, inputs, action, layer)
    if mod not in dg.module2node:
        raise PlanError(
            f"{action}(layer={layer!r}): the layer is not used in the model's forward pass on the "
            "example input; nothing to cut."
        )
    if isinstance(mod, nn.Conv2d):
        fn = tp.prune_conv_out_channels if side == "out" else tp.prune_conv_in_channels
        if _is_depthwise(mod):
            fn = tp.prune_depthwise_conv_out_channels
    else:
        fn = tp.prune_linear_out_channels if side == "out" else tp.prune_linear_in_channels
    return dg.get_pruning_group(mod, fn, removed)
