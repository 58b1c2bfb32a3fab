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

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from compactnn._validation import check_float
from compactnn.solvers.layerwise._admm import ADMMOptions
from compactnn.solvers.layerwise._solve import CONVEX_BACKENDS, CvxpyOptions, EpsConstrainedSolver
from compactnn.solvers.layerwise.base import Backend, Capabilities
from compactnn.solvers.layerwise.problem import LayerProblem, LayerSolveResult

__all__ = ["NetTrimSolver", "solve_net_trim"]

#: default clean-up threshold for backends that do not return exact zeros (SCS)
DEFAULT_ZERO_TOL = 1e-6


@dataclass(frozen=True)
class NetTrimSolver(EpsConstrainedSolver):
    r"""Net-Trim as a :class:`~compactnn.solvers.layerwise.base.LayerSolver`:
    :math:`\min \|U\|_1` s.t. eq. (4); deployed as a sparse weight.

    Attributes:
        eps_frac: :math:`\epsilon = \text{eps\_frac}\cdot\|X\|_F`.
        zero_tol: Entries with ``|U_ij| <= zero_tol * max|U|`` are set to 0 after solving
            (``None``: 0 for a backend with exact zeros (admm), 1e-6 otherwise (cvxpy)).
    """

    zero_tol: float | None = None

    name: ClassVar[str] = "net-trim"
    owner: ClassVar[str] = "Net-Trim"
    capabilities: ClassVar[Capabilities] = Capabilities(
        objective="l1",
        constraints=("fit_ball", "relu_inactive"),
        backends=tuple(CONVEX_BACKENDS),
        warm_start=True,
        factor_output=False,
    )

    def _zero_tol(self, backend: Backend) -> float:
        tol = self.zero_tol
        if tol is None:
            tol = 0.0 if backend.exact_zeros else DEFAULT_ZERO_TOL
        return check_float(tol, "zero_tol", self.owner, min_value=0.0, max_value=1.0)


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
            (``None``: 1e-6 for cvxpy, 0 for admm, whose soft thresholding gives exact zeros).

    Returns:
        :class:`LayerSolveResult` with ``objective = ||U||_1`` and ``extras["nnz"]``.
    """
    return NetTrimSolver(eps_frac=eps_frac, zero_tol=zero_tol).solve(
        LayerProblem(X, Y_pre, bias, linear),
        backend=backend,
        options=options,
        warm_start=warm_start,
        layer=layer,
    )
