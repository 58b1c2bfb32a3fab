r"""DDLR: data-driven low-rank compression of one dense layer (convex, no retraining).

.. math::

    \hat U = \operatorname*{argmin}_{U \in \mathbb{R}^{d\times n}} \|U\|_* \quad\text{s.t.}\quad
    \|(XU + \mathbf{1}b^T - Y)\circ M\|_F \le \epsilon,\quad (XU + \mathbf{1}b^T)\circ M' \le 0,

with :math:`\epsilon = \text{eps\_frac}\cdot\|X\|_F`; then the singular values of
:math:`\hat U` are thresholded (elbow rule by default) and :math:`\hat U \approx` a rank-``r``
product for deployment (``second @ first`` replaces the layer weight ``W`` (n x d)).

References:
    Papadimitriou & Jain (2021), "Data-Driven Low-Rank Neural Network Compression", eqs. (2)-(4),
    Algorithm 1, sec. 3.2 (layers are independent), sec. 4.1 (elbow rule, eps = frac * C).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from compactnn._validation import check_float, check_int
from compactnn.errors import ConfigError, InputShapeError
from compactnn.solvers.layerwise._solve import EpsConstrainedSolver, convex_capabilities
from compactnn.solvers.layerwise.base import Capabilities
from compactnn.solvers.layerwise.problem import LayerSolveResult

__all__ = [
    "DDLRSolver",
    "solve_ddlr",
    "choose_rank",
    "factorize",
    "DDLR_EPS_FRACS",
]

DDLR_EPS_FRACS: tuple[float, ...] = (0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.14, 0.16, 0.2, 0.3)
"""The eps fractions of the paper's MNIST / CIFAR-10 experiments (sec. 4.2-4.3)."""


@dataclass(frozen=True)
class DDLRSolver(EpsConstrainedSolver):
    r"""DDLR as a :class:`~compactnn.solvers.layerwise.base.LayerSolver`: :math:`\min \|U\|_*`
    s.t. eq. (4); deployed as rank-``r`` factors (:func:`choose_rank`, :func:`factorize`).

    Attributes:
        eps_frac: :math:`\epsilon = \text{eps\_frac}\cdot\|X\|_F`.
    """

    name: ClassVar[str] = "ddlr"
    owner: ClassVar[str] = "DDLR"
    capabilities: ClassVar[Capabilities] = convex_capabilities("nuclear", factor_output=True)


def solve_ddlr(
    X: Tensor,
    Y_pre: Tensor,
    bias: Tensor | None,
    *,
    eps_frac: float = 0.1,
    **solve_options: Any,
) -> LayerSolveResult:
    r"""Solve the DDLR problem (eq. 4) for one dense layer.

    Args:
        X: Layer input :math:`Y_{\ell-1}`, ``(N, d)``.
        Y_pre: Original pre-activation :math:`XW_0^T + \mathbf{1}b^T` (or the ReLU output, or any
            target), ``(N, n)``; :math:`M = [Y > 0]`.
        bias: Original bias ``(n,)`` -- kept fixed, as in eq. (4) -- or ``None``.
        eps_frac: :math:`\epsilon = \text{eps\_frac}\cdot\|X\|_F` (paper: ``C = ||Y_{l-1}||_F``).
        **solve_options: the keywords of
            :meth:`~compactnn.solvers.layerwise.LayerSolver.solve_arrays`:

            - ``backend``: ``"admm"`` (own first-order solver, the default) or ``"cvxpy"``
              (CVXPY + SCS, reference).
            - ``options``: :class:`~compactnn.solvers.layerwise.ADMMOptions` or
              :class:`~compactnn.solvers.layerwise.CvxpyOptions` matching ``backend``.
            - ``linear``: Layer not followed by ReLU:
              :math:`\|XU + \mathbf{1}b^T - Y\|_F \le \epsilon` only.
            - ``warm_start``: ``U`` ``(d, n)``, a previous :class:`LayerSolveResult` or
              ``ADMMState`` (admm).
            - ``layer``: Dotted layer name for messages.

    Returns:
        :class:`LayerSolveResult` with ``objective = ||U||_*`` and
        ``extras["singular_values"]``.

    Raises:
        InfeasibleError: ``eps_frac <= 0``, or the constraint set is provably empty.
        SolverError: Empty data or NaN/Inf (message names the tensor).
        InputShapeError: Shape mismatch.
    """
    return DDLRSolver(eps_frac=eps_frac).solve_arrays(X, Y_pre, bias, **solve_options)


def _elbow(s: Tensor) -> int:
    """Elbow of a descending curve: rank = (point farthest below the chord from s_1 to s_m) - 1."""
    m = s.numel()
    if m <= 2:
        return 1
    i = torch.arange(m, dtype=s.dtype)
    chord = s[0] + (s[-1] - s[0]) * i / (m - 1)
    knee = int(torch.argmax(chord - s))  # 0-based index of the first "small" value
    return max(knee, 1)


def choose_rank(U: Tensor, *, rank: int | None = None, energy: float | None = None) -> int:
    r"""Rank kept after solving (sec. 4.1: "we use the elbow rule to threshold the singular values").

    The paper does not define the elbow rule further; we use the usual chord (kneedle) rule on
    :math:`\sigma_1 \ge \dots \ge \sigma_m` (:math:`m = \min(d, n)`): the knee
    :math:`i^\star = \operatorname{argmax}_i (\ell_i - \sigma_i)` with :math:`\ell` the line from
    :math:`(1, \sigma_1)` to :math:`(m, \sigma_m)`, and keep the values before it,
    ``r = max(i* - 1, 1)``. For an exactly rank-``r`` matrix with equal non-zero singular values
    it returns ``r``.

    Measured (issue 15, ``benchmarks/bench_ddlr_repro.py --elbow-ranks``, spiral-mlp W2 80x80, N = 256/512,
    the eps of sec. 4.1): the numerical rank of the convex solution (sigma_i > 1e-4 sigma_1)
    is at most 3 above this elbow (equal for eps >= 0.08), and r - 1, r, r + 1 and the
    numerical rank all give size ratios 0.125-0.6 with relative accuracies within ~0.03 of each
    other at eps <= 0.2. No rank rule reproduces the paper's Fig. 2 range (about 0.4-1.0): the
    difference is in the rank of the solution itself (baseline network / eps), not in the
    rule, so the elbow is kept.

    Args:
        U: Matrix ``(d, n)``.
        rank: Explicit rank (``1 <= rank <= min(d, n)``).
        energy: Smallest ``r`` with :math:`\sum_{i\le r}\sigma_i^2 \ge \text{energy}\sum_i\sigma_i^2`.

    Returns:
        The rank ``r >= 1`` (1 for the zero matrix).
    """
    if not isinstance(U, Tensor) or U.dim() != 2:
        raise InputShapeError("choose_rank: 'U' must be a 2-D tensor (d x n).")
    p = min(U.shape)
    if rank is not None and energy is not None:
        raise ConfigError("choose_rank: pass either 'rank' or 'energy', not both.")
    if rank is not None:
        return check_int(rank, "rank", "DDLR", min_value=1, max_value=p)
    s = torch.linalg.svdvals(U.detach().to("cpu", torch.float64))
    if float(s[0]) == 0.0:
        return 1
    if energy is not None:
        e = check_float(energy, "energy", "DDLR", min_value=0.0, max_value=1.0, min_inclusive=False)
        cum = torch.cumsum(s**2, 0) / float((s**2).sum())
        return min(int((cum < e * (1 - 1e-12)).sum()) + 1, p)
    return _elbow(s)


def factorize(U: Tensor, r: int) -> tuple[Tensor, Tensor]:
    r"""Rank-``r`` truncated SVD of :math:`U` as deployment factors.

    With :math:`U = A\Sigma B^T`, returns ``first = Σ_r^{1/2} A_r^T`` (r x d) and
    ``second = B_r Σ_r^{1/2}`` (n x r), so ``second @ first`` is the best rank-``r``
    approximation of ``U.T`` (the new ``W``) and ``y = second @ (first @ x) + b``.
    """
    if not isinstance(U, Tensor) or U.dim() != 2:
        raise InputShapeError("factorize: 'U' must be a 2-D tensor (d x n).")
    r = check_int(r, "r", "factorize", min_value=1, max_value=min(U.shape))
    A, S, Bh = torch.linalg.svd(U, full_matrices=False)
    root = S[:r].sqrt()
    first = root[:, None] * A[:, :r].T
    second = Bh[:r].T * root[None, :]
    return first.contiguous(), second.contiguous()
