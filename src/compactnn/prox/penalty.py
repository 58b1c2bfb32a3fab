"""Penalty values and the uniform prox table used by the training engines."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
from torch import Tensor

from compactnn._validation import raise_unknown
from compactnn.errors import ConfigError
from compactnn.prox._common import check_tensor, check_threshold, norm_group_dims, per_group
from compactnn.prox.elementwise import hard_threshold, soft_threshold
from compactnn.prox.group import group_hard_threshold, group_soft_threshold

__all__ = ["PENALTY_NAMES", "PROX", "penalty"]

PENALTY_NAMES: tuple[str, ...] = ("l1", "l0", "l21", "l20", "nuclear")
"""Names understood by :func:`penalty`."""


def penalty(
    name: str, x: Tensor, lam: float | Tensor = 1.0, group_dims: tuple[int, ...] | None = None
) -> Tensor:
    r"""Value of a penalty ``λ g(x)`` (the function whose prox the operators compute).

    * ``"l1"``: :math:`\sum_i \lambda_i |x_i|`  (``lam`` float or broadcastable to ``x``)
    * ``"l0"``: :math:`\sum_i \lambda_i [x_i \ne 0]`
    * ``"l21"``: :math:`\sum_g \lambda_g \|x_g\|_2`  (needs ``group_dims``)
    * ``"l20"``: :math:`\sum_g \lambda_g [x_g \ne 0]`  (needs ``group_dims``)
    * ``"nuclear"``: :math:`\lambda \|x\|_*` for a matrix; summed over the batch for
      ``(..., m, n)`` (``lam`` must be a float)

    Args:
        name: one of :data:`PENALTY_NAMES`.
        x: the tensor.
        lam: λ >= 0 (float; a per-element tensor for l1/l0, per-group tensor for l21/l20).
        group_dims: group axes for ``"l21"``/``"l20"`` (ignored by the others).

    Returns:
        A 0-d tensor of ``x``'s dtype.

    Raises:
        UnknownNameError: unknown ``name``.
        ConfigError: negative ``lam``, missing or bad ``group_dims``, nuclear on a 1-D tensor.

    References:
        Kiaee et al. (2016) eq. (5); Lin et al. (2019) eq. (13); Ma et al. (2019) eq. (3).
    """
    if name not in PENALTY_NAMES:
        raise raise_unknown("penalty", name, PENALTY_NAMES)
    owner = f"penalty({name!r})"
    check_tensor(x, "x", owner)
    lam = check_threshold(lam, "lam", owner, allow_tensor=name != "nuclear")
    if isinstance(lam, Tensor):
        lam = lam.to(dtype=x.dtype, device=x.device)
    if name == "l1":
        return (lam * x.abs()).sum()
    if name == "l0":
        return (lam * (x != 0).to(x.dtype)).sum()
    if name == "nuclear":
        check_tensor(x, "x", owner, min_dim=2)
        return lam * torch.linalg.matrix_norm(x, ord="nuc").sum()
    if group_dims is None:
        raise ConfigError(
            f"The 'group_dims' parameter of {owner} is required for group penalties: pass the "
            "axes that index the groups (see compactnn.structure.group_dims)."
        )
    dims = norm_group_dims(x, group_dims, owner)
    other = tuple(d for d in range(x.dim()) if d not in dims)
    lam_b = per_group(lam, x, dims, owner)
    if name == "l21":
        norms = torch.linalg.vector_norm(x, dim=other, keepdim=True) if other else x.abs()
        return (lam_b * norms).sum()
    nz = (x != 0).any(dim=other, keepdim=True) if other else x != 0
    return (lam_b * nz.to(x.dtype)).sum()


def _prox_l1(v: Tensor, lam: float | Tensor, group_dims: tuple[int, ...] | None = None) -> Tensor:
    """``soft_threshold(v, lam)``; ``group_dims`` is ignored (groups = elements)."""
    return soft_threshold(v, lam)


def _prox_l0(v: Tensor, lam: float | Tensor, group_dims: tuple[int, ...] | None = None) -> Tensor:
    """``hard_threshold(v, lam)``; ``group_dims`` is ignored (groups = elements)."""
    return hard_threshold(v, lam)  # type: ignore[arg-type]


PROX: Mapping[str, Callable[..., Tensor]] = MappingProxyType(
    {
        "l1": _prox_l1,
        "l0": _prox_l0,
        "l21": group_soft_threshold,
        "l20": group_hard_threshold,
    }
)
"""Read-only table ``name -> prox(v, lam, group_dims)`` of the separable penalties.

Each entry returns :math:`\\arg\\min_x \\lambda g(x) + \\tfrac12\\|x - v\\|^2` with ``g`` as in
:func:`penalty`. A prox of a *sum* of penalties is not the chain of these proxes: give each
parameter group its own penalty instead.
"""
