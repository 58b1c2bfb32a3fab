"""Group proximal operators over arbitrary group axes: l2,1, l2,0 and the top-k projection.

A *group* is one index combination of the axes ``group_dims``; its members are all the
entries that share it (the norm runs over every other axis). Examples for a conv weight
``(n, c, kh, kw)``: ``(0,)`` = filters (rows of the lowered matrix), ``(1,)`` = input channels,
``(0, 1)`` = Kiaee's k x k kernels W_ij, ``(1, 2, 3)`` = columns of the lowered matrix,
``(0, 1, 2, 3)`` = single elements. ``()`` makes the whole tensor one group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from compactnn._validation import check_int
from compactnn.prox._common import (
    check_tensor,
    check_threshold,
    expand_groups,
    group_shape,
    norm_group_dims,
    per_group,
)

__all__ = ["group_norms", "group_soft_threshold", "group_hard_threshold", "topk_groups"]


def _other(v: Tensor, dims: Sequence[int]) -> tuple[int, ...]:
    return tuple(d for d in range(v.dim()) if d not in dims)


def _norms_keepdim(v: Tensor, dims: tuple[int, ...]) -> Tensor:
    other = _other(v, dims)
    if not other:
        return v.abs()
    return torch.linalg.vector_norm(v, dim=other, keepdim=True)


def group_norms(v: Tensor, group_dims: tuple[int, ...]) -> Tensor:
    r"""Euclidean norm of every group, :math:`\|v_g\|_2`.

    Args:
        v: floating-point tensor.
        group_dims: the axes that index the groups (negative axes wrap).

    Returns:
        Tensor of shape ``[v.shape[d] for d in group_dims]`` (axes in the given order).

    Raises:
        ConfigError: ``group_dims`` out of range or repeated.
    """
    check_tensor(v, "v", "group_norms")
    dims = norm_group_dims(v, group_dims, "group_norms")
    other = _other(v, dims)
    n = torch.linalg.vector_norm(v, dim=other) if other else v.abs()
    # remaining axes are the group axes in increasing order; put them in the requested order
    order = sorted(dims)
    perm = [order.index(d) for d in dims]
    return n.permute(*perm) if len(perm) > 1 else n


def group_soft_threshold(v: Tensor, lam: float | Tensor, group_dims: tuple[int, ...]) -> Tensor:
    r"""Proximal operator of the group lasso (l2,1) penalty: block soft thresholding.

    .. math::
        \arg\min_x \lambda\sum_g\|x_g\|_2 + \tfrac12\|x - v\|_2^2,
        \qquad x_g = \max\!\Big(1 - \frac{\lambda_g}{\|v_g\|_2}, 0\Big)\, v_g .

    Args:
        v: floating-point tensor.
        lam: λ >= 0, a float or a per-group tensor broadcastable to ``group_norms`` shape.
        group_dims: the axes that index the groups.

    Returns:
        A new tensor of ``v``'s shape; groups with ``‖v_g‖ <= λ_g`` are exactly zero.

    Raises:
        ConfigError: negative/non-finite ``lam``, bad ``group_dims``, non-broadcastable ``lam``.

    References:
        Kiaee et al. (2016) eq. (9) (a = μ/ρ); Lin et al. (2019) eq. (14) (rows, λ/ρ);
        Ma et al. (2019) eq. (10) (columns, λ1/t).
    """
    check_tensor(v, "v", "group_soft_threshold")
    lam = check_threshold(lam, "lam", "group_soft_threshold")
    dims = norm_group_dims(v, group_dims, "group_soft_threshold")
    lam_b = per_group(lam, v, dims, "group_soft_threshold")
    norms = _norms_keepdim(v, dims)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    scale = torch.where(norms > lam_b, 1 - lam_b / safe, torch.zeros_like(norms))
    return v * scale


def group_hard_threshold(v: Tensor, lam: float | Tensor, group_dims: tuple[int, ...]) -> Tensor:
    r"""Proximal operator of the group cardinality (l2,0) penalty: block hard thresholding.

    .. math::
        \arg\min_x \lambda\,\#\{g : x_g \ne 0\} + \tfrac12\|x - v\|_2^2,
        \qquad x_g = v_g \text{ if } \|v_g\|_2 > \sqrt{2\lambda_g} \text{ else } 0 .

    At the tie ``‖v_g‖ = sqrt(2 λ_g)`` zero is returned (Lin et al. eq. (15)).

    Args:
        v: floating-point tensor.
        lam: λ >= 0, a float or a per-group tensor broadcastable to ``group_norms`` shape.
        group_dims: the axes that index the groups.

    Returns:
        A new tensor of ``v``'s shape: kept groups equal ``v_g`` exactly, the others are zero.

    Raises:
        ConfigError: negative/non-finite ``lam``, bad ``group_dims``, non-broadcastable ``lam``.

    References:
        Lin et al. (2019) eq. (15) and Theorem 1; Kiaee et al. (2016) eq. (10) (b = sqrt(2μ/ρ)).
    """
    check_tensor(v, "v", "group_hard_threshold")
    lam = check_threshold(lam, "lam", "group_hard_threshold")
    dims = norm_group_dims(v, group_dims, "group_hard_threshold")
    lam_b = per_group(lam, v, dims, "group_hard_threshold")
    norms = _norms_keepdim(v, dims)
    thr = torch.sqrt(2 * lam_b) if isinstance(lam_b, Tensor) else math.sqrt(2 * lam_b)
    keep = norms > thr
    return torch.where(keep, v, torch.zeros_like(v))


def topk_groups(v: Tensor, k: int, group_dims: tuple[int, ...]) -> Tensor:
    r"""Euclidean projection onto the set of tensors with at most ``k`` non-zero groups.

    .. math::
        \arg\min_{x:\ \#\{g:\,x_g\ne0\}\le k} \|x - v\|_2^2 ,

    i.e. keep the ``k`` groups of largest norm and zero the others. Ties are broken by the
    lowest group index (row-major over ``group_norms(v, group_dims)``), so the result is
    deterministic.

    Args:
        v: floating-point tensor.
        k: number of groups to keep, ``k >= 0``; ``k >=`` number of groups returns a copy of v.
        group_dims: the axes that index the groups.

    Returns:
        A new tensor of ``v``'s shape.

    Raises:
        ConfigError: ``k`` negative or not an int, bad ``group_dims``.

    References:
        Zhou et al. (2016) supplement sec. 4 ("neurons ... among the largest top t will be kept").
    """
    check_tensor(v, "v", "topk_groups")
    k = check_int(k, "k", "topk_groups", min_value=0)
    dims = norm_group_dims(v, group_dims, "topk_groups")
    norms = group_norms(v, dims)
    flat = norms.reshape(-1)
    if k >= flat.numel():
        return v.clone()
    order = torch.sort(flat, descending=True, stable=True).indices
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=v.device)
    keep[order[:k]] = True
    mask = expand_groups(keep.reshape(group_shape(v, dims)), v, dims)
    return torch.where(mask, v, torch.zeros_like(v))
