"""Shared argument checks of the proximal operators (private)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from compactnn.errors import ConfigError

__all__ = [
    "check_tensor",
    "check_threshold",
    "norm_group_dims",
    "expand_groups",
    "group_shape",
    "per_group",
]


def check_tensor(v: Any, name: str, owner: str, *, min_dim: int = 0) -> Tensor:
    """Check that ``v`` is a floating-point tensor with at least ``min_dim`` dimensions."""
    if not isinstance(v, Tensor) or not v.is_floating_point():
        what = f"a tensor of dtype {v.dtype}" if isinstance(v, Tensor) else type(v).__name__
        raise ConfigError(
            f"The '{name}' argument of {owner} must be a floating-point torch.Tensor. "
            f"Got {what} instead. Convert it with torch.as_tensor(..., dtype=torch.float32)."
        )
    if v.dim() < min_dim:
        raise ConfigError(
            f"The '{name}' argument of {owner} must have at least {min_dim} dimensions. "
            f"Got shape {tuple(v.shape)} instead."
        )
    return v


def check_threshold(
    lam: Any, name: str, owner: str, *, allow_tensor: bool = True
) -> float | Tensor:
    """Check a threshold: a finite float >= 0 or (if allowed) a tensor of such values."""
    if isinstance(lam, Tensor):
        if not allow_tensor and lam.numel() != 1:
            raise ConfigError(
                f"The '{name}' parameter of {owner} must be a finite float >= 0. "
                f"Got a tensor of shape {tuple(lam.shape)} instead."
            )
        if (
            lam.dtype == torch.bool
            or lam.is_complex()
            or not torch.isfinite(lam).all()
            or (lam < 0).any()
        ):
            raise ConfigError(
                f"The '{name}' parameter of {owner} must contain finite values >= 0. "
                f"Got a tensor with min {lam.min().item() if lam.numel() else 'n/a'} instead."
            )
        return lam
    if isinstance(lam, bool) or not isinstance(lam, (int, float)):
        raise ConfigError(
            f"The '{name}' parameter of {owner} must be a finite float >= 0"
            f"{' or a tensor of such values' if allow_tensor else ''}. Got {lam!r} instead."
        )
    value = float(lam)
    if not math.isfinite(value) or value < 0:
        raise ConfigError(
            f"The '{name}' parameter of {owner} must be a finite float >= 0. Got {lam!r} instead."
        )
    return value


def norm_group_dims(v: Tensor, group_dims: Any, owner: str) -> tuple[int, ...]:
    """Validate ``group_dims`` for ``v``: distinct ints in ``[-v.dim(), v.dim())``; negatives wrap."""
    if isinstance(group_dims, int) and not isinstance(group_dims, bool):
        group_dims = (group_dims,)
    if not isinstance(group_dims, (tuple, list)) or any(
        isinstance(d, bool) or not isinstance(d, int) for d in group_dims
    ):
        raise ConfigError(
            f"The 'group_dims' parameter of {owner} must be a tuple of ints (the axes that index "
            f"the groups). Got {group_dims!r} instead."
        )
    nd = v.dim()
    out: list[int] = []
    for d in group_dims:
        if not -nd <= d < nd:
            raise ConfigError(
                f"The 'group_dims' parameter of {owner} must contain axes in [{-nd}, {nd - 1}] "
                f"for a tensor of shape {tuple(v.shape)}. Got {tuple(group_dims)!r} instead."
            )
        out.append(d % nd)
    if len(set(out)) != len(out):
        raise ConfigError(
            f"The 'group_dims' parameter of {owner} must not repeat an axis. "
            f"Got {tuple(group_dims)!r} instead."
        )
    return tuple(out)


def group_shape(v: Tensor, dims: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the per-group tensor: ``[v.shape[d] for d in dims]``."""
    return tuple(v.shape[d] for d in dims)


def expand_groups(g: Tensor, v: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Broadcast a per-group tensor (shape ``group_shape(v, dims)``) back against ``v``.

    Returns a tensor of ``v.dim()`` dimensions with size 1 on the non-group axes.
    """
    order = sorted(range(len(dims)), key=lambda i: dims[i])
    g = g.permute(*order) if len(dims) > 1 else g
    shape = [v.shape[d] if d in dims else 1 for d in range(v.dim())]
    return g.reshape(shape)


def per_group(lam: float | Tensor, v: Tensor, dims: tuple[int, ...], owner: str) -> float | Tensor:
    """Turn a per-group threshold tensor into one broadcastable against ``v``."""
    if not isinstance(lam, Tensor):
        return lam
    gshape = group_shape(v, dims)
    try:
        full = torch.broadcast_to(lam.to(dtype=v.dtype, device=v.device), gshape)
    except RuntimeError as exc:
        raise ConfigError(
            f"The 'lam' tensor of {owner} (shape {tuple(lam.shape)}) must broadcast to the "
            f"group shape {gshape} (one value per group along group_dims={dims})."
        ) from exc
    return expand_groups(full, v, dims)
