"""FLOPs and the per-layer table: :func:`count_flops` (``torch.utils.flop_counter`` plus the
FLOPs that sparse layers declare) and :func:`layer_table` (:class:`LayerRow` per compute layer)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from compactnn.metrics._run import _eval_no_grad, _example_input, _run_checked
from compactnn.metrics.size import count_params


def _sparse_flops(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """FLOPs of modules that declare them (sparse layers the flop counter cannot see)."""
    extra: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        fn = getattr(m, "flops_per_sample", None)
        if callable(fn):
            hooks.append(
                m.register_forward_hook(
                    lambda mod, inp, out, _n=name, _f=fn: extra.__setitem__(_n, int(_f(inp[0])))
                )
            )
    try:
        _run_checked(model, x)
    finally:
        for h in hooks:
            h.remove()
    return extra


def _flop_counts(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, dict[str, int]]:
    x = _example_input(model, input_shape, 1)
    with _eval_no_grad(model):
        with FlopCounterMode(display=False) as fc:
            _run_checked(model, x)
        extra = _sparse_flops(model, x)
    root = type(model).__name__
    per: dict[str, int] = {}
    for key, ops in fc.get_flop_counts().items():
        if key == "Global":
            continue
        if key == root:
            continue
        if key.startswith(root + "."):
            per[key[len(root) + 1 :]] = sum(ops.values())
    total = fc.get_total_flops() + sum(extra.values())
    for k, v in extra.items():
        per[k] = per.get(k, 0) + v
    return int(total), per


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass of one sample of shape ``input_shape`` (2 per multiply-add)."""
    return _flop_counts(model, input_shape)[0]


@dataclass(frozen=True)
class LayerRow:
    """One row of the per-layer table (Conv2d / Linear / compactnn factorized layers)."""

    name: str
    type: str
    units: int  # filters (conv out channels) or neurons (linear out features)
    shape: str
    params: int
    flops: int

    @property
    def macs(self) -> int:
        return self.flops // 2


def _is_leaf_layer(m: nn.Module) -> bool:
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        return True
    return callable(getattr(m, "stored_param_count", None)) or getattr(
        m, "is_compactnn_layer", False
    )


def _units(m: nn.Module) -> int:
    for attr in ("out_channels", "out_features"):
        if hasattr(m, attr):
            return int(getattr(m, attr))
    return 0


def _shape_str(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        k = "x".join(str(s) for s in m.kernel_size)
        g = f" g{m.groups}" if m.groups > 1 else ""
        return f"{m.in_channels}->{m.out_channels} {k}{g}"
    if isinstance(m, nn.Linear):
        return f"{m.in_features}->{m.out_features}"
    rank = getattr(m, "rank", None)
    return f"rank {rank}" if rank is not None else ""


def layer_table(model: nn.Module, input_shape: Sequence[int]) -> list[LayerRow]:
    """Per-layer table: filters/neurons, stored params and FLOPs of every compute layer.

    Compute layers are ``Conv2d``, ``Linear`` and compactnn's deployable layers (low-rank,
    sparse, sparse + low-rank); the children of the latter are not listed separately.
    """
    _, per = _flop_counts(model, input_shape)
    rows: list[LayerRow] = []
    skip_prefixes: list[str] = []
    for name, m in model.named_modules():
        if not name or any(name.startswith(p) for p in skip_prefixes):
            continue
        if not _is_leaf_layer(m):
            continue
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            skip_prefixes.append(name + ".")
        rows.append(
            LayerRow(
                name=name,
                type=type(m).__name__,
                units=_units(m),
                shape=_shape_str(m),
                params=count_params(m),
                flops=per.get(name, 0),
            )
        )
    return rows
