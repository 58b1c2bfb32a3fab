r"""Net-Trim (the DDLR paper's baseline): l1-sparse re-fit of one dense layer.

.. math::

    \hat U = \operatorname*{argmin}_{U} \|U\|_1 \quad\text{s.t.}\quad
    \|(XU + \mathbf{1}b^T - Y)\circ M\|_F \le \epsilon,\quad (XU + \mathbf{1}b^T)\circ M' \le 0.

The ADMM backend returns exact zeros (soft thresholding). SCS returns tiny non-zeros instead;
the DDLR paper does not specify a cleanup, so ``zero_tol`` (relative to ``max|U|``) is applied
only when given (default ``1e-6`` for the cvxpy backend, 0 for admm); the objective and the
violation are measured after the cleanup.

References:
    Papadimitriou & Jain (2021), eqs. (3)-(4) and sec. 4 (Net-Trim baseline, COO storage = 3 nnz);
    Aghasi et al. (2017), "Net-Trim: Convex pruning of deep neural networks".
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from compactnn._validation import check_float
from compactnn.solvers.layerwise._admm import ADMMOptions
from compactnn.solvers.layerwise._solve import CvxpyOptions, solve_layer
from compactnn.solvers.layerwise.problem import LayerSolveResult

__all__ = ["solve_net_trim"]


def solve_net_trim(
    X: Tensor,
    Y_pre: Tensor,
    bias: Tensor | None,
    *,
    eps_frac: float = 0.1,
    backend: str = "admm",
    options: ADMMOptions | CvxpyOptions | None = None,
    linear: bool = False,
    warm_start: Any = None,
    layer: str | None = None,
    zero_tol: float | None = None,
) -> LayerSolveResult:
    """Solve the Net-Trim problem for one dense layer (same arguments as :func:`solve_ddlr`).

    Args:
        zero_tol: Entries with ``|U_ij| <= zero_tol * max|U|`` are set to 0 after solving
            (``None``: 1e-6 for cvxpy, 0 for admm).

    Returns:
        :class:`LayerSolveResult` with ``objective = ||U||_1`` and ``extras["nnz"]``.
    """
    if zero_tol is None:
        zero_tol = 1e-6 if backend == "cvxpy" else 0.0
    zero_tol = check_float(zero_tol, "zero_tol", "Net-Trim", min_value=0.0, max_value=1.0)
    return solve_layer(
        X,
        Y_pre,
        bias,
        objective="l1",
        owner="Net-Trim",
        eps_frac=eps_frac,
        backend=backend,
        options=options,
        linear=linear,
        warm_start=warm_start,
        layer=layer,
        zero_tol=zero_tol,
    )
