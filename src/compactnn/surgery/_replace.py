"""Layer replacement actions: low-rank, sparse + low-rank, new weights, GAP head."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from compactnn.errors import ConfigError, PlanError
from compactnn.layers import (
    ColumnSparseConv2d,
    ColumnSparseLinear,
    FusedSparseLowRankConv2d,
    FusedSparseLowRankLinear,
    KernelSparseConv2d,
    LowRankConv2d,
    LowRankLinear,
    SparseConv2d,
    SparseLinear,
    SparsePlusLowRank,
)
from compactnn.plan import GapHead, KernelSparse, LowRank, SetWeights, SparseLowRank
from compactnn.surgery._util import get_module, run_model, set_module

__all__ = [
    "apply_lowrank",
    "apply_sparse_lowrank",
    "sparse_lowrank_layer",
    "apply_set_weights",
    "apply_kernel_sparse",
    "apply_gap_head",
]


def _target(model: nn.Module, layer: str, action: str) -> nn.Module:
    mod = get_module(model, layer, action)
    if not isinstance(mod, (nn.Linear, nn.Conv2d)):
        raise PlanError(
            f"{action}(layer={layer!r}) names a {type(mod).__name__}; it applies to nn.Linear and "
            "nn.Conv2d layers (for factorized layers name their 'first'/'second' child)."
        )
    return mod


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def _check_bias(bias: Tensor | None, n: int, action: str, layer: str) -> None:
    if bias is not None and _shape(bias) != (n,):
        raise PlanError(
            f"{action}(layer={layer!r}): bias has shape {_shape(bias)}; the layer has {n} "
            f"outputs, so pass a ({n},) tensor or None."
        )


def _check_weight(weight: Tensor, w: Tensor, bias: Tensor | None, action: str, layer: str) -> None:
    """A replacement weight of the layer's shape at this point of the plan, and its bias."""
    if _shape(weight) != _shape(w):
        raise PlanError(
            f"{action}(layer={layer!r}): weight has shape {_shape(weight)} but the layer's "
            f"weight is {_shape(w)} at this point of the plan; structural actions must come first."
        )
    _check_bias(bias, w.shape[0], action, layer)


def _lowrank_module(
    mod: nn.Module, first: Tensor, second: Tensor, bias: Tensor | None, action: str, layer: str
) -> nn.Module:
    """Build LowRankLinear / LowRankConv2d replacing ``mod`` after checking every shape."""
    if isinstance(mod, nn.Linear):
        din, dout = mod.in_features, mod.out_features
        if first.dim() != 2 or first.shape[1] != din:
            raise PlanError(
                f"{action}(layer={layer!r}): 'first' must be (r, {din}) for this Linear "
                f"(in_features={din}). Got {_shape(first)}."
            )
        r = first.shape[0]
        if _shape(second) != (dout, r):
            raise PlanError(
                f"{action}(layer={layer!r}): 'second' must be ({dout}, {r}) (out_features x r). "
                f"Got {_shape(second)}."
            )
        _check_bias(bias, dout, action, layer)
        new: nn.Module = LowRankLinear.from_factors(first, second, bias)
    elif isinstance(mod, nn.Conv2d):
        if mod.groups != 1:
            raise PlanError(
                f"{action}(layer={layer!r}): low-rank factorization needs groups=1; this conv has "
                f"groups={mod.groups}. Exclude it or factorize each group separately."
            )
        if mod.padding_mode != "zeros":
            raise PlanError(
                f"{action}(layer={layer!r}): padding_mode={mod.padding_mode!r} is not supported; "
                "use padding_mode='zeros'."
            )
        c, n = mod.in_channels, mod.out_channels
        kh, kw = mod.kernel_size
        if first.dim() == 2 and first.shape[1] == c * kh * kw:
            first = first.reshape(first.shape[0], c, kh, kw)
        if first.dim() != 4 or _shape(first)[1:] != (c, kh, kw):
            raise PlanError(
                f"{action}(layer={layer!r}): 'first' must be (r, {c}, {kh}, {kw}) or lowered "
                f"(r, {c * kh * kw}). Got {_shape(first)}."
            )
        r = first.shape[0]
        if _shape(second) not in ((n, r), (n, r, 1, 1)):
            raise PlanError(
                f"{action}(layer={layer!r}): 'second' must be ({n}, {r}) or ({n}, {r}, 1, 1). "
                f"Got {_shape(second)}."
            )
        _check_bias(bias, n, action, layer)
        new = LowRankConv2d.from_factors(
            first,
            second,
            bias,
            stride=mod.stride,  # type: ignore[arg-type]
            padding=mod.padding,  # type: ignore[arg-type]
            dilation=mod.dilation,  # type: ignore[arg-type]
        )
    else:
        raise PlanError(f"{action}(layer={layer!r}): unsupported layer {type(mod).__name__}.")
    p = mod.weight
    return new.to(device=p.device, dtype=p.dtype)


def apply_lowrank(model: nn.Module, a: LowRank) -> None:
    """Replace ``a.layer`` by :class:`LowRankLinear` / :class:`LowRankConv2d`."""
    mod = _target(model, a.layer, "LowRank")
    set_module(model, a.layer, _lowrank_module(mod, a.first, a.second, a.bias, "LowRank", a.layer))


def _sparse_module(mod: nn.Module, weight: Tensor, bias: Tensor | None) -> nn.Module:
    if isinstance(mod, nn.Linear):
        return SparseLinear(weight, bias)
    conv = mod if isinstance(mod, nn.Conv2d) else None
    if conv is None:
        raise PlanError(f"sparse storage: unsupported layer {type(mod).__name__}.")
    return SparseConv2d(
        weight,
        bias,
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        groups=conv.groups,
    )


def _check_sparse_conv(mod: nn.Module, action: str, layer: str) -> None:
    if isinstance(mod, nn.Conv2d) and (mod.padding_mode != "zeros" or isinstance(mod.padding, str)):
        raise PlanError(
            f"{action}(layer={layer!r}): sparse conv storage needs numeric padding with "
            f"padding_mode='zeros'; got padding={mod.padding!r}, mode={mod.padding_mode!r}."
        )


def apply_sparse_lowrank(model: nn.Module, a: SparseLowRank) -> None:
    """Replace ``a.layer`` by the sparse + low-rank layer of ``a`` (:func:`sparse_lowrank_layer`)."""
    mod = _target(model, a.layer, "SparseLowRank")
    set_module(model, a.layer, sparse_lowrank_layer(mod, a))


def sparse_lowrank_layer(mod: nn.Module, a: SparseLowRank) -> nn.Module:
    """The module that replaces ``mod`` (the layer ``a.layer``) under ``a``.

    :class:`SparsePlusLowRank` (COO or column-sparse branch + low-rank branch), the sparse branch
    alone (rank 0), or, for ``a.form`` ``"fused"`` / ``"fused-channels"``, one
    :class:`FusedSparseLowRankConv2d` / ``FusedSparseLowRankLinear`` of the same branches.
    """
    action = "SparseLowRank"
    _check_sparse_conv(mod, action, a.layer)
    w = mod.weight
    sparse = a.sparse
    if isinstance(mod, nn.Conv2d) and sparse.dim() == 2 and sparse.numel() == w.numel():
        sparse = sparse.reshape(w.shape)
    if _shape(sparse) != _shape(w):
        raise PlanError(
            f"{action}(layer={a.layer!r}): 'sparse' must have the layer's weight shape "
            f"{_shape(w)} (or its lowered 2-D form). Got {_shape(a.sparse)}."
        )
    alone = a.first is None or a.second is None  # rank 0: the sparse branch carries the bias
    bias = a.bias.to(dtype=w.dtype) if alone and a.bias is not None else None
    sparse = sparse.to(dtype=w.dtype)
    fused = a.form.startswith("fused")
    # a Linear's columns are its inputs: its "channels" form is "gather"
    form = "gather" if fused or (a.form == "channels" and isinstance(mod, nn.Linear)) else a.form
    try:
        if a.form == "coo":
            branch = _sparse_module(mod, sparse, bias)
        elif isinstance(mod, nn.Linear):
            branch = ColumnSparseLinear.from_dense(sparse, bias, form=form)
        else:
            branch = ColumnSparseConv2d.from_dense(mod, sparse, bias, form=form)  # type: ignore[arg-type]
        branch = branch.to(device=w.device)
        lowrank = None
        if not alone:
            lowrank = _lowrank_module(mod, a.first, a.second, a.bias, action, a.layer)  # type: ignore[arg-type]
        if not fused:
            return branch if lowrank is None else SparsePlusLowRank(branch, lowrank)
        if isinstance(mod, nn.Linear):
            return FusedSparseLowRankLinear(branch, lowrank)  # type: ignore[arg-type]
        kind = "channels" if a.form == "fused-channels" else "gather"
        return FusedSparseLowRankConv2d(branch, lowrank, form=kind)  # type: ignore[arg-type]
    except ConfigError as exc:
        raise PlanError(f"{action}(layer={a.layer!r}): {exc}") from exc


def apply_set_weights(model: nn.Module, a: SetWeights) -> None:
    """Overwrite weight/bias of ``a.layer`` (values copied into the existing parameters)."""
    action = "SetWeights"
    mod = _target(model, a.layer, action)
    w = mod.weight
    _check_weight(a.weight, w, a.bias, action, a.layer)
    if a.sparse:
        _check_sparse_conv(mod, action, a.layer)
        bias = None if a.bias is None else a.bias.to(dtype=w.dtype)
        new = _sparse_module(mod, a.weight.to(dtype=w.dtype), bias).to(device=w.device)
        set_module(model, a.layer, new)
        return
    with torch.no_grad():
        w.copy_(a.weight)
        if a.bias is None:
            mod.register_parameter("bias", None)
        elif mod.bias is None:
            mod.bias = nn.Parameter(a.bias.to(device=w.device, dtype=w.dtype).clone())
        else:
            mod.bias.copy_(a.bias)


def apply_kernel_sparse(model: nn.Module, a: KernelSparse) -> None:
    """Replace the conv ``a.layer`` by :class:`KernelSparseConv2d` (zero kernels not stored)."""
    action = "KernelSparse"
    mod = _target(model, a.layer, action)
    if not isinstance(mod, nn.Conv2d) or mod.groups != 1:
        raise PlanError(
            f"{action}(layer={a.layer!r}) names a {type(mod).__name__}"
            f"{'' if not isinstance(mod, nn.Conv2d) else f' with groups={mod.groups}'}; it "
            "applies to nn.Conv2d layers with groups=1."
        )
    _check_sparse_conv(mod, action, a.layer)
    w = mod.weight
    _check_weight(a.weight, w, a.bias, action, a.layer)
    try:
        new = KernelSparseConv2d.from_conv(
            mod, a.weight.to(dtype=w.dtype), form=a.form, filter_groups=a.filter_groups or None
        )
    except ConfigError as exc:
        raise PlanError(f"{action}(layer={a.layer!r}): {exc}") from exc
    if a.bias is None:
        new.register_parameter("bias", None)
    else:
        new.bias = nn.Parameter(a.bias.to(dtype=w.dtype).clone())
    set_module(model, a.layer, new.to(device=w.device))


def _last_out(model: nn.Module, names: tuple[str, ...], a: GapHead) -> int:
    for name in reversed(names):
        m = get_module(model, name, "GapHead")
        if isinstance(m, nn.Linear):
            return m.out_features
        n = getattr(m, "out_features", None)
        if isinstance(n, int):
            return n
    raise PlanError(
        f"GapHead(flatten={a.flatten!r}): none of the classifier layers {list(names)} is a "
        "Linear layer; list the FC layers of the head (last one = the classes)."
    )


def _zero_classifier(
    model: nn.Module, flat: nn.Module, classes: int, inputs: tuple[Tensor, ...], a: GapHead
) -> nn.Linear:
    """``Linear(c, classes)`` with zero weight and bias, c = the channels entering ``flat``
    (measured by one forward pass), on the model's device and dtype."""
    seen: list[tuple[int, ...]] = []
    hook = flat.register_forward_hook(lambda _m, args, _o: seen.append(tuple(args[0].shape)))
    try:
        run_model(model, inputs)
    except Exception as exc:  # noqa: BLE001
        raise PlanError(
            f"GapHead(flatten={a.flatten!r}): the model does not run on the example inputs ({exc})."
        ) from exc
    finally:
        hook.remove()
    if not seen or len(seen[0]) != 4:
        raise PlanError(
            f"GapHead(flatten={a.flatten!r}, linear=True): the flatten must receive the last conv "
            f"stage's (N, C, H, W) maps; it received {seen[0] if seen else 'nothing'}."
        )
    ref = next(model.parameters())
    lin = nn.Linear(seen[0][1], classes, device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
    return lin


def apply_gap_head(model: nn.Module, a: GapHead, inputs: tuple[Tensor, ...] | None) -> None:
    """SSR "-GAP": global average pooling replaces the flatten, classifier layers removed."""
    flat = get_module(model, a.flatten, "GapHead")
    if not isinstance(flat, nn.Flatten):
        raise PlanError(
            f"GapHead(flatten={a.flatten!r}) names a {type(flat).__name__}; it must name the "
            "nn.Flatten between the last conv stage and the FC head."
        )
    num_classes = _last_out(model, a.classifier, a)
    if inputs is None:
        raise PlanError(
            f"GapHead(flatten={a.flatten!r}) needs example inputs to check the new head; pass "
            "example_inputs or set plan.meta['input_shape']."
        )
    head: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    if a.linear:
        head.append(_zero_classifier(model, flat, num_classes, inputs, a))
    set_module(model, a.flatten, nn.Sequential(*head))
    for name in a.classifier:
        get_module(model, name, "GapHead")
        set_module(model, name, nn.Identity())
    try:
        out = run_model(model, inputs)
    except Exception as exc:  # noqa: BLE001
        raise PlanError(
            f"GapHead(flatten={a.flatten!r}): the model does not run after removing "
            f"{list(a.classifier)} ({exc}). Remove every layer of the FC head."
        ) from exc
    width = int(out.shape[-1]) if isinstance(out, Tensor) else -1
    if width != num_classes:
        raise PlanError(
            f"GapHead(flatten={a.flatten!r}): the last conv before the flatten has {width} "
            f"channels but the head predicted {num_classes} classes. Cut that conv to "
            f"{num_classes} channels first (KeepOutputs), add a {num_classes}-channel conv, or use "
            "GapHead(..., linear=True) for a linear classifier on the pooled features."
        )
