"""Element-wise proximal operators: soft (l1) and hard (l0) thresholding."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from compactnn.prox._common import check_tensor, check_threshold

__all__ = ["soft_threshold", "hard_threshold"]


def soft_threshold(v: Tensor, lam: float | Tensor) -> Tensor:
    r"""Proximal operator of the l1 norm (soft thresholding).

    .. math::
        \operatorname{prox}_{\lambda\|\cdot\|_1}(v)
        = \arg\min_x \lambda\|x\|_1 + \tfrac12\|x - v\|_2^2
        = \operatorname{sign}(v)\,\max(|v| - \lambda, 0).

    Args:
        v: any floating-point tensor.
        lam: threshold λ >= 0 (λ/ρ in an ADMM F-step); a float or a tensor broadcastable
            to ``v`` (one threshold per element).

    Returns:
        A new tensor of ``v``'s shape and dtype.

    Raises:
        ConfigError: ``v`` is not a floating tensor, ``lam`` is negative or not finite.

    References:
        Lin et al. (2019), SSR, eq. (16); Kiaee et al. (2016) sec. 3.2 with single-element blocks.
    """
    check_tensor(v, "v", "soft_threshold")
    lam = check_threshold(lam, "lam", "soft_threshold")
    if isinstance(lam, Tensor):
        lam = lam.to(dtype=v.dtype, device=v.device)
    return torch.sign(v) * torch.clamp(v.abs() - lam, min=0)


def hard_threshold(v: Tensor, lam: float) -> Tensor:
    r"""Proximal operator of the l0 "norm" (hard thresholding).

    .. math::
        \arg\min_x \lambda\|x\|_0 + \tfrac12\|x - v\|_2^2,
        \qquad x_i = v_i \text{ if } |v_i| > \sqrt{2\lambda} \text{ else } 0.

    At the tie ``|v_i| = sqrt(2 λ)`` both values are minimisers; zero is returned (as in
    Lin et al. eq. (15), which zeroes when ``λ >= ρ/2 ‖T‖²``).

    Args:
        v: any floating-point tensor.
        lam: λ >= 0 (μ/ρ in Kiaee's notation, so that the threshold is b = sqrt(2μ/ρ)).

    Returns:
        A new tensor of ``v``'s shape: ``v`` where kept, exact zeros elsewhere.

    Raises:
        ConfigError: ``v`` is not a floating tensor, ``lam`` is negative or not finite.

    References:
        Kiaee et al. (2016) eq. (10) with single-element blocks; Lin et al. (2019) eq. (15).
    """
    check_tensor(v, "v", "hard_threshold")
    lam = check_threshold(lam, "lam", "hard_threshold")
    if isinstance(lam, Tensor):
        thr: float | Tensor = torch.sqrt(2 * lam.to(dtype=v.dtype, device=v.device))
    else:
        thr = math.sqrt(2.0 * lam)
    return torch.where(v.abs() > thr, v, torch.zeros_like(v))
