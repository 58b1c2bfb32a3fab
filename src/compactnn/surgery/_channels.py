"""Exact physical channel removal with couplings (Torch-Pruning dependency graph).

Torch-Pruning's :class:`DependencyGraph` finds the coupling *group* of a cut (BN, consumers'
inputs, residual partners, concat offsets, flatten -> linear spatial blocks, depthwise convs).
The group is then checked as a whole and executed by the exact functions of this module rather
than by Torch-Pruning's handlers, because its grouped-conv input handler is not exact (it keeps
``keep[:len(keep) // groups]``, e.g. a 15-channel input for a ``groups=2`` conv). Every cut that
reaches a grouped conv must remove the same number of channels from each of its groups;
otherwise the plan is refused with a :class:`~compactnn.errors.PlanError` before anything is
modified.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from compactnn.errors import PlanError
from compactnn.layers import (
    LowRankConv2d,
    LowRankLinear,
    SelectInputs,
    SparsePlusLowRank,
    _SparseBase,
)
from compactnn.surgery._util import get_module, set_module

__all__ = ["keep_outputs", "keep_inputs", "SelectInputs"]

_BN = nn.modules.batchnorm._BatchNorm


def _sel(t: Tensor, dim: int, keep: Sequence[int]) -> nn.Parameter:
    idx = torch.as_tensor(list(keep), dtype=torch.long, device=t.device)
    return nn.Parameter(torch.index_select(t.detach(), dim, idx).clone(), t.requires_grad)


def _is_depthwise(m: nn.Conv2d) -> bool:
    return m.groups > 1 and m.groups == m.out_channels


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
    if isinstance(mod, (_SparseBase, SparsePlusLowRank)):
        raise PlanError(
            f"{action}(layer={name!r}): channel surgery on sparse layers is not supported. Put "
            "channel actions before SetWeights(sparse=True)/SparseLowRank in the plan."
        )
    if not isinstance(mod, (nn.Conv2d, nn.Linear)):
        raise PlanError(
            f"{action}(layer={name!r}) names a {type(mod).__name__}; channel actions apply to "
            "Conv2d and Linear layers (their BN/activations follow automatically)."
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
        if isinstance(m, (_SparseBase, SparsePlusLowRank)):
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
        raise PlanError(
            f"{action}(layer={layer!r}): cannot build the dependency graph of "
            f"{type(model).__name__} on the example input ({exc}). Check plan.meta['input_shape'] "
            "or pass example_inputs."
        ) from exc
    finally:
        for m, t in modes:
            m.train(t)


# per-module cut: {"out": set, "in": set, "chan": set}
_Cuts = dict[nn.Module, dict[str, set[int]]]


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
        elif isinstance(tgt, _BN):
            key = "chan"
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


def _check_cuts(cuts: _Cuts, names: dict[nn.Module, str], action: str, layer: str) -> None:
    head = f"{action}(layer={layer!r})"
    for m, c in cuts.items():
        name = names.get(m, "?")
        if isinstance(m, nn.Conv2d):
            sizes = {"out": m.out_channels, "in": m.in_channels, "chan": m.out_channels}
        elif isinstance(m, nn.Linear):
            sizes = {"out": m.out_features, "in": m.in_features, "chan": m.out_features}
        else:
            sizes = {"out": m.num_features, "in": m.num_features, "chan": m.num_features}
        for key, idx in c.items():
            if not idx:
                continue
            n = sizes[key]
            bad = sorted(i for i in idx if not 0 <= i < n)
            if bad:
                raise PlanError(f"{head}: indices {bad} out of range for {name!r} (size {n}).")
            if len(idx) >= n:
                raise PlanError(
                    f"{head} would remove all {n} channels of coupled layer {name!r}; keep at "
                    "least one."
                )
            if isinstance(m, nn.Conv2d) and m.groups > 1 and key != "chan":
                per = n // m.groups
                counts = [
                    sum(1 for i in idx if g * per <= i < (g + 1) * per) for g in range(m.groups)
                ]
                if len(set(counts)) != 1 or counts[0] >= per:
                    what = "input" if key == "in" else "output"
                    raise PlanError(
                        f"{head} is group-inconsistent at grouped conv {name!r} (groups="
                        f"{m.groups}): it would remove {counts} {what} channels from its "
                        f"{m.groups} groups of {per}, leaving {n - len(idx)} {what} channels. A "
                        "grouped conv needs the same number removed from every group (and at "
                        "least one kept); choose indices that cut every group equally or leave "
                        "this layer's channels alone."
                    )


def _keep(n: int, removed: set[int]) -> list[int]:
    return [i for i in range(n) if i not in removed]


def _cut_module(m: nn.Module, c: dict[str, set[int]]) -> None:
    if isinstance(m, nn.Conv2d):
        if c["chan"]:  # depthwise: channel i is group i
            keep = _keep(m.out_channels, c["chan"])
            m.weight = _sel(m.weight, 0, keep)
            if m.bias is not None:
                m.bias = _sel(m.bias, 0, keep)
            m.out_channels = m.in_channels = m.groups = len(keep)
            return
        g = m.groups
        if c["out"]:
            keep = _keep(m.out_channels, c["out"])
            m.weight = _sel(m.weight, 0, keep)
            if m.bias is not None:
                m.bias = _sel(m.bias, 0, keep)
            m.out_channels = len(keep)
        if c["in"]:
            cin, per_in = m.in_channels, m.in_channels // g
            keep_in = _keep(cin, c["in"])
            new_per = len(keep_in) // g
            per_out = m.out_channels // g
            w = m.weight.detach()
            blocks = []
            for gi in range(g):
                local = [i - gi * per_in for i in keep_in if gi * per_in <= i < (gi + 1) * per_in]
                idx = torch.as_tensor(local, dtype=torch.long, device=w.device)
                blocks.append(torch.index_select(w[gi * per_out : (gi + 1) * per_out], 1, idx))
            new_w = torch.cat(blocks, 0).clone()
            if new_w.shape[1] != new_per:  # unreachable after _check_cuts; never build a bad conv
                raise PlanError(f"internal: group-inconsistent input cut of {m!r}")
            m.weight = nn.Parameter(new_w, m.weight.requires_grad)
            m.in_channels = len(keep_in)
    elif isinstance(m, nn.Linear):
        if c["out"]:
            keep = _keep(m.out_features, c["out"])
            m.weight = _sel(m.weight, 0, keep)
            if m.bias is not None:
                m.bias = _sel(m.bias, 0, keep)
            m.out_features = len(keep)
        if c["in"]:
            keep = _keep(m.in_features, c["in"])
            m.weight = _sel(m.weight, 1, keep)
            m.in_features = len(keep)
    elif isinstance(m, _BN):
        removed = c["chan"] | c["out"] | c["in"]
        keep = _keep(m.num_features, removed)
        idx = torch.as_tensor(keep, dtype=torch.long)
        if m.affine:
            m.weight = _sel(m.weight, 0, keep)
            m.bias = _sel(m.bias, 0, keep)
        if m.running_mean is not None:
            m.running_mean = m.running_mean[idx.to(m.running_mean.device)].clone()
            m.running_var = m.running_var[idx.to(m.running_var.device)].clone()
        m.num_features = len(keep)


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


def _size(mod: nn.Module, side: str) -> int:
    if isinstance(mod, nn.Conv2d):
        return mod.out_channels if side == "out" else mod.in_channels
    return mod.out_features if side == "out" else mod.in_features  # type: ignore[return-value]


def _check_indices(keep: Sequence[int], n: int, action: str, layer: str, what: str) -> list[int]:
    bad = sorted(i for i in keep if i >= n)
    if bad:
        raise PlanError(
            f"{action}(layer={layer!r}): indices {bad} are out of range; the layer has {n} "
            f"{what} (valid 0..{n - 1})."
        )
    return [i for i in range(n) if i not in set(keep)]


def keep_outputs(
    model: nn.Module, layer: str, keep: Sequence[int], inputs: tuple[Tensor, ...]
) -> None:
    """Keep output channels ``keep`` of ``layer`` in place; all coupled layers follow."""
    action = "KeepOutputs"
    _, mod = _resolve(model, layer, action, "out")
    removed = _check_indices(keep, _size(mod, "out"), action, layer, "outputs")
    if not removed:
        return
    names = {m: n for n, m in model.named_modules()}
    group = _group(model, inputs, mod, "out", removed, action, layer)
    cuts = _collect(group, names, action, layer)
    _check_cuts(cuts, names, action, layer)
    for m, c in cuts.items():
        _cut_module(m, c)


def keep_inputs(
    model: nn.Module, layer: str, keep: Sequence[int], inputs: tuple[Tensor, ...]
) -> None:
    """Keep input channels/features ``keep`` of ``layer`` in place.

    If the removed inputs are produced by layers that feed only ``layer`` (the coupling group
    touches no other consumer and removes exactly these inputs), the producers' outputs (and
    their BN) are removed too. Otherwise the layer is wrapped in :class:`SelectInputs`.
    """
    action = "KeepInputs"
    path, mod = _resolve(model, layer, action, "in")
    removed = _check_indices(keep, _size(mod, "in"), action, layer, "inputs")
    if not removed:
        return
    names = {m: n for n, m in model.named_modules()}
    if isinstance(mod, nn.Conv2d) and _is_depthwise(mod):
        group = _group(model, inputs, mod, "out", removed, action, layer)
        cuts = _collect(group, names, action, layer)
        _check_cuts(cuts, names, action, layer)
        for m, c in cuts.items():
            _cut_module(m, c)
        return
    group = _group(model, inputs, mod, "in", removed, action, layer)
    cuts = _collect(group, names, action, layer)
    others_in = any(
        c["in"] or (c["chan"] and isinstance(m, nn.Conv2d)) for m, c in cuts.items() if m is not mod
    )
    produced = sum(len(c["out"]) for m, c in cuts.items() if isinstance(m, (nn.Conv2d, nn.Linear)))
    root = cuts.get(mod, {"in": set(), "out": set(), "chan": set()})
    private = (
        not others_in
        and not root["out"]
        and root["in"] == set(removed)
        and produced == len(removed)
    )
    if private:
        _check_cuts(cuts, names, action, layer)
        for m, c in cuts.items():
            _cut_module(m, c)
        return
    own = {mod: {"out": set(), "in": set(removed), "chan": set()}}
    _check_cuts(own, {mod: path}, action, layer)
    _cut_module(mod, own[mod])
    set_module(model, path, SelectInputs(sorted(keep), mod))
