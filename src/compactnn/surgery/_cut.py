"""The exact cut of one module and the checks of a whole cut, before anything is modified.

A cut is ``{module: {"out": set, "in": set, "chan": set}}`` (:data:`_Cuts`): output channels,
input channels, and channels of per-channel modules (norms, depthwise convs). :func:`_check_cuts`
refuses a cut that is out of range, empties a layer, splits a GroupNorm group or is
group-inconsistent at a grouped conv; :func:`_cut_module` executes one module's part in place.
Used by :mod:`compactnn.surgery._channels`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from compactnn.errors import PlanError
from compactnn.surgery._check import is_lrn

_BN = nn.modules.batchnorm._NormBase  # BatchNorm and InstanceNorm: per channel

# per-module cut: {"out": set, "in": set, "chan": set}
_Cuts = dict[nn.Module, dict[str, set[int]]]


def _sel(t: Tensor, dim: int, keep: Sequence[int]) -> nn.Parameter:
    idx = torch.as_tensor(list(keep), dtype=torch.long, device=t.device)
    return nn.Parameter(torch.index_select(t.detach(), dim, idx).clone(), t.requires_grad)


def _keep_rows(m: nn.Module, keep: Sequence[int]) -> None:
    """Keep the output rows ``keep`` of ``m``'s weight and, if it has one, of its bias."""
    m.weight = _sel(m.weight, 0, keep)
    if m.bias is not None:
        m.bias = _sel(m.bias, 0, keep)


def _is_depthwise(m: nn.Conv2d) -> bool:
    return m.groups > 1 and m.groups == m.out_channels


def _passes_channels(m: nn.Module) -> bool:
    """Depthwise conv, with or without a depth multiplier (``groups == in_channels``)."""
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


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
            _keep_rows(m, keep)
            m.in_channels = m.groups = len(groups)
            m.out_channels = len(keep)
            return
        g = m.groups
        if c["out"]:
            keep = _keep(m.out_channels, c["out"])
            _keep_rows(m, keep)
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
            _keep_rows(m, keep)
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
