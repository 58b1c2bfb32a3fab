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
from typing import Any

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
from compactnn.surgery._check import (
    Probe,
    compare,
    constructs,
    is_consumer,
    is_lrn,
    probe,
    probe_is_reference,
    reference_output,
)
from compactnn.surgery._lrn import cut_lrn
from compactnn.surgery._util import get_module, run_model, set_module
from compactnn.surgery._verify import Source, failing_module

__all__ = ["keep_outputs", "keep_inputs", "SelectInputs", "TOLERANCE", "sources_of"]

#: relative tolerance of the per-action check (in the model's dtype; the float64 check of
#: ._verify has its own): max |y_pruned - y_ref| <= TOLERANCE * (1 + max |y_ref|)
TOLERANCE = 1e-4

_BN = nn.modules.batchnorm._NormBase  # BatchNorm and InstanceNorm: per channel
_MIXING_NORMS = (nn.LayerNorm, nn.CrossMapLRN2d)


def _sel(t: Tensor, dim: int, keep: Sequence[int]) -> nn.Parameter:
    idx = torch.as_tensor(list(keep), dtype=torch.long, device=t.device)
    return nn.Parameter(torch.index_select(t.detach(), dim, idx).clone(), t.requires_grad)


def _is_depthwise(m: nn.Conv2d) -> bool:
    return m.groups > 1 and m.groups == m.out_channels


def _passes_channels(m: nn.Module) -> bool:
    """Depthwise conv, with or without a depth multiplier (``groups == in_channels``)."""
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


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


def _check_cuts(cuts: _Cuts, names: dict[nn.Module, str], action: str, layer: str) -> None:
    head = f"{action}(layer={layer!r})"
    for m, c in cuts.items():
        name = names.get(m, "?")
        if is_lrn(m):
            continue
        if isinstance(m, nn.Conv2d):
            sizes = {"out": m.out_channels, "in": m.in_channels, "chan": m.groups}
        elif isinstance(m, nn.Linear):
            sizes = {"out": m.out_features, "in": m.in_features, "chan": m.out_features}
        elif isinstance(m, nn.GroupNorm):
            sizes = {"out": m.num_channels, "in": m.num_channels, "chan": m.num_channels}
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
            if isinstance(m, nn.GroupNorm):
                per = n // m.num_groups
                touched = sorted({i // per for i in idx})
                partial = [g for g in touched if sum(1 for i in idx if i // per == g) != per]
                if partial:
                    raise PlanError(
                        f"{head} removes channels {sorted(idx)} from GroupNorm {name!r} "
                        f"({m.num_groups} groups of {per} channels), which splits group(s) "
                        f"{partial}: GroupNorm normalises each group over all its channels, so "
                        "only whole groups can be removed exactly. Remove whole groups (channels "
                        f"g*{per}..g*{per}+{per - 1}) or exclude this layer from pruning."
                    )
            if isinstance(m, nn.Conv2d) and m.groups > 1 and key != "chan":
                per = n // m.groups
                counts = [
                    sum(1 for i in idx if g * per <= i < (g + 1) * per) for g in range(m.groups)
                ]
                if len(set(counts)) != 1 or counts[0] >= per:
                    what = "input" if key == "in" else "output"
                    err = PlanError(
                        f"{head} is group-inconsistent at grouped conv {name!r} (groups="
                        f"{m.groups}): it would remove {counts} {what} channels from its "
                        f"{m.groups} groups of {per}, leaving {n - len(idx)} {what} channels. A "
                        "grouped conv needs the same number removed from every group (and at "
                        "least one kept); choose indices that cut every group equally or leave "
                        "this layer's channels alone."
                    )
                    err.groups = m.groups  # type: ignore[attr-defined] # for group-aware selection
                    raise err


def _keep(n: int, removed: set[int]) -> list[int]:
    return [i for i in range(n) if i not in removed]


def _cut_module(m: nn.Module, c: dict[str, set[int]]) -> None:
    if isinstance(m, nn.Conv2d):
        if c["chan"]:  # depthwise (multiplier k): input channel g is group g, outputs g*k..g*k+k-1
            k = m.out_channels // m.groups
            groups = _keep(m.groups, c["chan"])
            keep = [g * k + j for g in groups for j in range(k)]
            m.weight = _sel(m.weight, 0, keep)
            if m.bias is not None:
                m.bias = _sel(m.bias, 0, keep)
            m.in_channels = m.groups = len(groups)
            m.out_channels = len(keep)
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
    elif isinstance(m, nn.GroupNorm):
        removed = c["chan"] | c["out"] | c["in"]
        keep = _keep(m.num_channels, removed)
        per = m.num_channels // m.num_groups
        if m.affine:
            m.weight = _sel(m.weight, 0, keep)
            m.bias = _sel(m.bias, 0, keep)
        m.num_groups = len(keep) // per
        m.num_channels = len(keep)
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


def _per_channel(m: nn.Module) -> bool:
    """Modules cut channel by channel ("chan"): norms and depthwise convs."""
    return isinstance(m, (_BN, nn.GroupNorm)) or _passes_channels(m)


def _seeds(cuts: _Cuts) -> dict[nn.Module, set[int]]:
    """Producers whose output channels the cut removes (where the probe injects NaN)."""
    out: dict[nn.Module, set[int]] = {}
    for m, c in cuts.items():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and c["out"]:
            out[m] = set(c["out"])
        elif _passes_channels(m) and c["chan"]:
            k = m.out_channels // m.groups  # depth multiplier: group c -> outputs c*k..c*k+k-1
            out[m] = {g * k + j for g in c["chan"] for j in range(k)}
    return out


def _describe(res: Probe | None, consumers: list[nn.Module]) -> str:
    """' through chunk/split, view/reshape' -- the ops between the cut and ``consumers`` (all
    the modules the probe reached when empty)."""
    if res is None:
        return ""
    try:
        found = constructs(res, consumers or list(res.nodes))
    except Exception:  # noqa: BLE001 - only used to word a message
        found = []
    return f" through {', '.join(found)}" if found else ""


_EXCLUDE = "exclude this layer from pruning (or cut a layer before/after the construct)"
_CHUNK = (
    "torch.chunk/torch.split cut the channels at fixed positions, so a cut that removes a "
    "different number of channels from each part moves a boundary (channels would change part); "
    "remove the same number of channels from every chunk (every split part keeping its size "
    "rule), or "
)


def _todo(via: str) -> str:
    """What the user can do, for a refusal whose removed channels pass ``via``."""
    return (_CHUNK + _EXCLUDE) if "chunk" in via or "split" in via else _EXCLUDE


def _map_checked(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    cuts: _Cuts,
    names: dict[nn.Module, str],
    head: str,
) -> tuple[_Cuts, dict[nn.Module, set[int]], Probe]:
    """Replace the dependency graph's index mapping downstream of the cut by the measured one.

    Returns the corrected cuts and the consumers' removed input channels (the neutralisation of
    the self-check). Refuses cuts whose removed channels reach part of a channel (reshape) or
    spread to other channels (channel-mixing ops), naming the construct.
    """
    seeds = _seeds(cuts)
    for m in list(seeds):  # a proposal out of range is the dependency graph's mapping error
        n = _size(m, "out")
        seeds[m] = {i for i in seeds[m] if 0 <= i < n}
        if not seeds[m]:
            del seeds[m]
    res = probe(model, inputs, seeds, track_graph=True)
    if res.error is not None:
        raise PlanError(f"{head}: the model does not run on the example input ({res.error}).")
    if res.spread:
        name, kind, a, b = res.spread[0]
        hint = _EXCLUDE
        mod = dict(model.named_modules()).get(name)
        if isinstance(mod, nn.GroupNorm):
            per = mod.num_channels // mod.num_groups
            hint = f"remove whole groups of {per} channels, or {_EXCLUDE}"
        via = _describe(res, [])
        kind += f" {name!r}" if name != "?" else f" (a functional op{via})"
        raise PlanError(
            f"{head}: the removed channels pass through {kind}, which mixes channels "
            f"({a} removed channel(s) in, {b} affected channel(s) out); removing them would change "
            f"the kept channels. To prune here, {hint}."
        )
    for m, part in res.partial.items():
        if part and m not in seeds:
            n = names.get(m, "?")
            via = _describe(res, [m])
            per = res.per_channel.get(m, 0)
            size = f" ({per} values each)" if per > 1 else ""
            raise PlanError(
                f"{head}: the removed channels reach only part of input channel(s) "
                f"{sorted(part)[:8]} of {type(m).__name__} {n!r}{via}; an exact cut here removes "
                f"whole channels of {n!r}{size}, more than asked, so it is refused. Remove whole "
                f"channels of {n!r} at once, or {_EXCLUDE}."
            )
    for m, full in res.full.items():
        if full and is_consumer(m) and m not in seeds and len(full) >= res.sizes.get(m, 0):
            n = names.get(m, "?")
            raise PlanError(
                f"{head}: the removed channels reach every input channel of {type(m).__name__} "
                f"{n!r}{_describe(res, [m])}: an op before it mixes all channels (e.g. an "
                f"attention gate that averages over channels), so removing any would change "
                f"its input; {_EXCLUDE}."
            )
    fixed: _Cuts = {}
    for m, c in cuts.items():
        new = {"out": set(c["out"]), "in": set(), "chan": set()}
        if _per_channel(m):
            if _passes_channels(m):  # its outputs follow its groups; never cut them separately
                new["out"] = set()
            new["chan"] = set(res.full.get(m, set()))
            if isinstance(m, nn.Conv2d) and _is_depthwise(m) and m in seeds:
                new["chan"] |= seeds[m]
            if not new["chan"]:
                new["chan"] = set(c["chan"]) if m not in res.sizes else set()
        elif is_consumer(m):
            new["in"] = set(res.full.get(m, set())) if m in res.sizes else set(c["in"])
        if new["out"] or new["in"] or new["chan"]:
            fixed[m] = new
    for m, full in res.full.items():
        if not full or m in fixed or m in seeds:
            continue
        if is_consumer(m):
            fixed[m] = {"out": set(), "in": set(full), "chan": set()}
        elif _per_channel(m):
            fixed[m] = {"out": set(), "in": set(), "chan": set(full)}
        elif is_lrn(m):
            continue
        elif any(True for _ in m.parameters(recurse=False)) or any(
            True for _ in m.buffers(recurse=False)
        ):
            raise PlanError(
                f"{head}: the removed channels reach {type(m).__name__} {names.get(m, '?')!r}, "
                f"which surgery cannot resize; {_EXCLUDE}."
            )
    zero_in = {m: set(c["in"]) for m, c in fixed.items() if is_consumer(m) and c["in"]}
    for m, full in res.full.items():
        if is_lrn(m) and full:  # removed channels become zero holes of the LRN
            fixed[m] = {"out": set(), "in": set(), "chan": set(full)}
            zero_in[m] = set(full)
            res.sizes.setdefault(m, 0)
    return fixed, zero_in, res


def sources_of(cuts: _Cuts, names: dict[nn.Module, str]) -> list[Source]:
    """The removed units of ``cuts`` (before they are cut), for the float64 self-check: output
    channels of producers, norms and depthwise convs ("out": zeroed at their source in the
    reference) and consumers' input columns ("in": renumbering only, never zeroed)."""
    out: list[Source] = []
    for m, c in cuts.items():
        name = names.get(m, "")
        if is_lrn(m):  # zero holes: its inputs are zero wherever its removed channels come from
            continue
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if c["chan"]:  # depthwise: input channel g is group g, outputs g*k..g*k+k-1
                k = m.out_channels // m.groups
                gone = {g * k + j for g in c["chan"] for j in range(k)}
                out.append((m, name, "out", _size(m, "out"), gone))
                out.append((m, name, "in", _size(m, "in"), set(c["chan"])))
            if c["out"]:
                out.append((m, name, "out", _size(m, "out"), set(c["out"])))
            if c["in"]:
                out.append((m, name, "in", _size(m, "in"), set(c["in"])))
        elif isinstance(m, (_BN, nn.GroupNorm)):
            n = m.num_channels if isinstance(m, nn.GroupNorm) else m.num_features
            removed = c["chan"] | c["out"] | c["in"]
            if removed:
                out.append((m, name, "out", n, set(removed)))
    return out


def _execute(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    cuts: _Cuts,
    zero_in: dict[nn.Module, set[int]],
    res: Probe | None,
    names: dict[nn.Module, str],
    action: str,
    layer: str,
    verify: bool,
    record: list[Source] | None = None,
) -> Any:
    """Cut ``cuts`` in place; with ``verify`` check the result against the model before the
    cut with the consumers' removed input channels zeroed (``zero_in``) and return the cut
    model's output on ``inputs`` (``None`` without ``verify``). ``record`` receives the
    neutralisation of the cut (for the plan-level check on the user's data)."""
    head = f"{action}(layer={layer!r})"
    seeds = _seeds(cuts)
    try:
        _check_cuts(cuts, names, action, layer)
    except PlanError as exc:
        via = _describe(res, [m for m in cuts if m not in seeds])
        if via and "out of range" in str(exc):  # lead with the construct, not the symptom
            raise PlanError(
                f"{head}: the removed channels pass{via}, which regroups them: the layers coupled "
                f"after it cannot be given matching channels ({exc}). This cut is refused; "
                f"{_todo(via)}."
            ) from None
        if via:
            raise PlanError(f"{exc} (The cut reaches it{via}.)") from None
        raise
    ref = None
    if verify:  # the probe pass already ran the neutralised model: reuse its output
        same = res is not None and probe_is_reference(res, zero_in)
        ref = res.output if same else reference_output(model, inputs, zero_in)  # type: ignore[union-attr]
    if record is not None:
        record += sources_of(cuts, names)
    for m, c in cuts.items():
        if is_lrn(m):
            set_module(model, names[m], cut_lrn(m, c["chan"], res.sizes[m] if res else 0))
        else:
            _cut_module(m, c)
    if not verify:
        return None
    try:
        out = run_model(model, inputs)
    except Exception as exc:  # noqa: BLE001 - any failure means the cut broke the graph
        via = _describe(res, [])
        what = f"the removed channels pass{via}, and" if via else "the"
        where = failing_module(model, inputs)
        at = f" in {where}" if where else ""
        raise PlanError(
            f"{head}: after the cut the model no longer runs ({type(exc).__name__}{at}: {exc}); "
            f"{what} forward pass hard-codes a channel count or layout (split sizes, chunk "
            "boundaries, a view/reshape, a channel shuffle, a per-channel buffer) or calls a cut "
            "layer on a tensor the cut does not reach (weight sharing with another input, a "
            f"functional op with the layer's weight) that the cut changes; {_todo(via)}."
        ) from exc
    worst = compare(ref, out)
    if worst is not None and worst > TOLERANCE:
        where = sorted(names.get(m, "?") for m in cuts)
        via = _describe(res, []) or " through an op surgery cannot map"
        raise PlanError(
            f"{head}: surgery self-check failed: the pruned model differs from the model with the "
            f"removed channels neutralised by {worst:.3g} (relative; tolerance {TOLERANCE:g}). "
            f"The cut touches {where} and the removed channels pass{via}, which surgery cannot "
            f"cut exactly here; {_todo(via)}."
        )
    return out


def keep_outputs(
    model: nn.Module,
    layer: str,
    keep: Sequence[int],
    inputs: tuple[Tensor, ...],
    *,
    verify: bool = True,
    trace: tuple[Tensor, ...] | None = None,
    record: list[Source] | None = None,
) -> Any:
    """Keep output channels ``keep`` of ``layer`` in place; all coupled layers follow.

    With ``verify`` the cut is checked against the model with the removed channels neutralised
    (see :mod:`compactnn.surgery._check`); a mismatch is a :class:`PlanError`. ``trace``: the
    batch the dependency graph is built on (default ``inputs``; the probe and the self-check
    always run on ``inputs``).

    Returns:
        The cut model's output on ``inputs`` when ``verify`` (else ``None``).
    """
    action = "KeepOutputs"
    _, mod = _resolve(model, layer, action, "out")
    removed = _check_indices(keep, _size(mod, "out"), action, layer, "outputs")
    if not removed:
        return None
    names = {m: n for n, m in model.named_modules()}
    group = _group(model, trace or inputs, mod, "out", removed, action, layer)
    cuts = _collect(group, names, action, layer)
    key = "chan" if isinstance(mod, nn.Conv2d) and _is_depthwise(mod) else "out"
    # the dependency graph may tie the root to other channels through a reshape; the root
    # removes exactly what was asked, the probe and the self-check judge the rest
    cuts.setdefault(mod, {"out": set(), "in": set(), "chan": set()})[key] = set(removed)
    cuts, zero_in, res = _map_checked(model, inputs, cuts, names, f"KeepOutputs(layer={layer!r})")
    return _execute(model, inputs, cuts, zero_in, res, names, action, layer, verify, record)


def keep_inputs(
    model: nn.Module,
    layer: str,
    keep: Sequence[int],
    inputs: tuple[Tensor, ...],
    *,
    verify: bool = True,
    trace: tuple[Tensor, ...] | None = None,
    record: list[Source] | None = None,
) -> Any:
    """Keep input channels/features ``keep`` of ``layer`` in place.

    If the removed inputs are produced by layers that feed only ``layer`` (measured: the probe
    finds no other consumer of the producers' removed channels, and ``layer`` sees exactly these
    inputs), the producers' outputs (and their BN) are removed too. Otherwise the layer is
    wrapped in :class:`SelectInputs`.
    """
    action = "KeepInputs"
    path, mod = _resolve(model, layer, action, "in")
    removed = _check_indices(keep, _size(mod, "in"), action, layer, "inputs")
    if not removed:
        return None
    names = {m: n for n, m in model.named_modules()}
    head = f"{action}(layer={layer!r})"
    if isinstance(mod, nn.Conv2d) and _is_depthwise(mod):
        group = _group(model, trace or inputs, mod, "out", removed, action, layer)
        cuts = _collect(group, names, action, layer)
        cuts, zero_in, res = _map_checked(model, inputs, cuts, names, head)
        return _execute(model, inputs, cuts, zero_in, res, names, action, layer, verify, record)
    group = _group(model, trace or inputs, mod, "in", removed, action, layer)
    cuts = _collect(group, names, action, layer)
    root = cuts.get(mod, {"in": set(), "out": set(), "chan": set()})
    private = False
    if not root["out"] and root["in"] == set(removed) and _seeds(cuts):
        try:
            fixed, zero_in, res = _map_checked(model, inputs, cuts, names, head)
        except PlanError:
            fixed, zero_in, res = {}, {}, None
        produced = sum(len(c["out"]) for m, c in fixed.items() if isinstance(m, nn.Linear))
        produced += sum(len(c["out"]) for m, c in fixed.items() if isinstance(m, nn.Conv2d))
        private = zero_in == {mod: set(removed)} and produced == len(removed)
        if private:
            return _execute(
                model, inputs, fixed, zero_in, res, names, action, layer, verify, record
            )
    own = {mod: {"out": set(), "in": set(removed), "chan": set()}}
    _check_cuts(own, {mod: path}, action, layer)
    ref = reference_output(model, inputs, {mod: set(removed)}) if verify else None
    if record is not None:
        record.append((mod, path, "mask_in", _size(mod, "in"), set(removed)))
    _cut_module(mod, own[mod])
    set_module(model, path, SelectInputs(sorted(keep), mod))
    if not verify:
        return None
    out = run_model(model, inputs)
    worst = compare(ref, out)
    if worst is not None and worst > TOLERANCE:
        raise PlanError(
            f"{head}: surgery self-check failed: selecting the kept inputs differs from the "
            f"model with the removed inputs zeroed by {worst:.3g} (tolerance {TOLERANCE:g})."
        )
    return out
