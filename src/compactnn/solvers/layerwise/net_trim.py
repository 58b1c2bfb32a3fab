r"""Net-Trim (the DDLR paper's baseline): l1-sparse re-fit of one dense layer.

.. math::

    \hat U = \operatorname*{argmin}_{U} \|U\|_1 \quad\text{s.t.}\quad
    \|(XU + \mathbf{1}b^T - Y)\circ M\|_F \le \epsilon,\quad (XU + \mathbf{1}b^T)\circ M' \le 0.

**Deployed support.** SCS returns tiny non-zeros, the ADMM backend exact zeros (soft
thresholding) but a few entries near the threshold that SCS puts on the other side: the two
agree on U only to the solvers' accuracy (~1e-4 relative). So that the deployed size does not
depend on the backend, every backend uses the same clean-up: ``|U_ij| <= zero_tol * max|U|``
is set to 0 with ``zero_tol = 3e-4``. Measured (tests/solvers/test_layerwise_bank_paper.py,
N > d, N < d, digits activations): identical non-zero counts for cvxpy and admm solved to
rel_tol 1e-6; at admm's default rel_tol 1e-4 within 0.5 % (477 vs 479); the former cvxpy-only
1e-6 clean-up gave SCS 2-10 % more non-zeros. The objective and the violation are measured
after the clean-up.

**Bias re-fit** (``refit_bias=True``; Aghasi et al. sec. 2): the bias is a variable too, through
an augmented input ``[X, 1]``: :math:`\min \|[U; b^T]\|_1` s.t. eq. (4) with :math:`XU +
\mathbf{1}b^T`; epsilon stays ``eps_frac * ||X||_F``. The new bias is ``extras["bias"]``. A
layer without a bias (``bias=None``) keeps none.

References:
    Papadimitriou & Jain (2021), eqs. (3)-(4) and sec. 4 (Net-Trim baseline, COO storage = 3 nnz);
    Aghasi et al. (2017), "Net-Trim: Convex pruning of deep neural networks".
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from compactnn._validation import check_bool, check_float
from compactnn.solvers.layerwise._solve import EpsConstrainedSolver, convex_capabilities
from compactnn.solvers.layerwise.base import Backend, Capabilities, SolveCall
from compactnn.solvers.layerwise.problem import LayerProblem, LayerSolveResult

__all__ = ["NetTrimSolver", "solve_net_trim"]

#: clean-up threshold (relative to max|U|) of every backend: the deployed support is the same
DEFAULT_ZERO_TOL = 3e-4


@dataclass(frozen=True)
class NetTrimSolver(EpsConstrainedSolver):
    r"""Net-Trim as a :class:`~compactnn.solvers.layerwise.base.LayerSolver`:
    :math:`\min \|U\|_1` s.t. eq. (4); deployed as a sparse weight.

    Attributes:
        eps_frac: :math:`\epsilon = \text{eps\_frac}\cdot\|X\|_F`.
        zero_tol: Entries with ``|U_ij| <= zero_tol * max|U|`` are set to 0 after solving
            (``None``: :data:`DEFAULT_ZERO_TOL` = 3e-4 for every backend).
        refit_bias: Re-fit the bias with the weights (augmented ones column, Aghasi et al.);
            the result's ``extras["bias"]`` is the new bias. Ignored for a problem without bias.
    """

    zero_tol: float | None = None
    refit_bias: bool = False

    name: ClassVar[str] = "net-trim"
    owner: ClassVar[str] = "Net-Trim"
    capabilities: ClassVar[Capabilities] = convex_capabilities("l1", factor_output=False)

    def _zero_tol(self, backend: Backend) -> float:
        tol = DEFAULT_ZERO_TOL if self.zero_tol is None else self.zero_tol
        return check_float(tol, "zero_tol", self.owner, min_value=0.0, max_value=1.0)

    def _solve(self, problem: LayerProblem, call: SolveCall) -> LayerSolveResult:
        check_bool(self.refit_bias, "refit_bias", self.owner)
        if not self.refit_bias or problem.bias is None:
            return super()._solve(problem, call)
        X = torch.as_tensor(problem.X).to("cpu", torch.float64)
        Xa = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype)], dim=1)
        frac = float(self.eps_frac) * float(torch.linalg.vector_norm(X))
        frac /= float(torch.linalg.vector_norm(Xa))  # epsilon = eps_frac * ||X||_F unchanged
        res = self._solve_at(
            LayerProblem(Xa, problem.Y, None, problem.linear, problem.ceiling),
            replace(call, warm_start=None),
            frac,
        )
        extras = dict(res.extras, bias=res.U[-1].clone(), eps_frac=float(self.eps_frac))
        extras["refit_bias"] = True
        return replace(res, U=res.U[:-1].contiguous(), extras=extras)


def solve_net_trim(
    X: Tensor,
    Y_pre: Tensor,
    bias: Tensor | None,
    *,
    eps_frac: float = 0.1,
    zero_tol: float | None = None,
    refit_bias: bool = False,
    **solve_options: Any,
) -> LayerSolveResult:
    """Solve the Net-Trim problem for one dense layer (same arguments as :func:`solve_ddlr`).

    Args:
        zero_tol: Entries with ``|U_ij| <= zero_tol * max|U|`` are set to 0 after solving
            (``None``: 3e-4 for every backend, so the support does not depend on it).
        refit_bias: Re-fit the bias too (augmented ones column); see :class:`NetTrimSolver`.
        **solve_options: ``backend``, ``options``, ``linear``, ``warm_start``, ``layer`` of
            :meth:`~compactnn.solvers.layerwise.LayerSolver.solve_arrays`, as for
            :func:`solve_ddlr`.

    Returns:
        :class:`LayerSolveResult` with ``objective = ||U||_1`` and ``extras["nnz"]``.
    """
    solver = NetTrimSolver(eps_frac=eps_frac, zero_tol=zero_tol, refit_bias=refit_bias)
    return solver.solve_arrays(X, Y_pre, bias, **solve_options)
