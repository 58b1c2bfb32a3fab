"""Regularisation and epoch schedules of the training-based sparsity papers.

Kiaee et al. run Algorithm 1 over a set S of "small logarithmically spaced points in increasing
order" for μ, with 1 W-step epoch for the first μ, δ more for each next μ up to the ν-th, then
δν (δ = 1, ν = 15). Lin et al. vary λ in {0.1, 0.2, ..., 0.8}.

References:
    Kiaee et al. (2016) Algorithm 1 line 4 and sec. 4; Lin et al. (2019) sec. IV (Implementations).
"""

from __future__ import annotations

import math

from compactnn._validation import check_float, check_int

__all__ = ["log_schedule", "kiaee_epochs", "SSR_LAMBDAS"]

SSR_LAMBDAS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
"""λ values swept by Lin et al. (2019), sec. IV."""


def log_schedule(start: float, stop: float, num: int) -> tuple[float, ...]:
    """``num`` logarithmically spaced values from ``start`` to ``stop`` (increasing, inclusive).

    Raises:
        ConfigError: non-positive bounds, ``stop < start`` or ``num < 1``.
    """
    a = check_float(start, "start", "log_schedule", min_value=0.0, min_inclusive=False)
    b = check_float(stop, "stop", "log_schedule", min_value=a)
    n = check_int(num, "num", "log_schedule", min_value=1)
    if n == 1:
        return (a,)
    la, lb = math.log(a), math.log(b)
    return tuple(math.exp(la + (lb - la) * i / (n - 1)) for i in range(n))


def kiaee_epochs(index: int, *, delta: int = 1, nu: int = 15) -> int:
    """W-step epochs for the ``index``-th μ (0-based): ``min(1 + delta * index, delta * nu)``.

    Raises:
        ConfigError: ``index < 0``, ``delta < 1`` or ``nu < 1``.
    """
    i = check_int(index, "index", "kiaee_epochs", min_value=0)
    d = check_int(delta, "delta", "kiaee_epochs", min_value=1)
    v = check_int(nu, "nu", "kiaee_epochs", min_value=1)
    return min(1 + d * i, d * v)
