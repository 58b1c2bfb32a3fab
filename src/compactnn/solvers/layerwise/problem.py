r"""The layer-wise convex problem shared by DDLR and Net-Trim, and its result type.

For one dense layer with input :math:`X \in \mathbb{R}^{N\times d}` (one sample per row),
original pre-activation :math:`Y = XW_0^T + \mathbf{1}b^T \in \mathbb{R}^{N\times n}` and bias
:math:`b` (kept fixed, as in the paper: :math:`b_\ell` appears in the constraint, only
:math:`U` is optimised), the masks are :math:`M = [Y > 0]`, :math:`M' = 1 - M` and

.. math::

    \min_{U \in \mathbb{R}^{d\times n}} f(U) \quad\text{s.t.}\quad
    \|(XU + \mathbf{1}b^T - Y)\circ M\|_F \le \epsilon,\qquad
    (XU + \mathbf{1}b^T)\circ M' \le 0,

with :math:`f = \|\cdot\|_*` (DDLR) or :math:`f = \|\cdot\|_1` (Net-Trim). Because only the
sign pattern and the positive entries of :math:`Y` enter, passing the ReLU output
:math:`\mathrm{ReLU}(Y)` instead of :math:`Y` gives the same problem. The *linear* variant
(layer not followed by a ReLU) uses :math:`M = 1` and drops the inequality.

The tolerance is :math:`\epsilon = \text{eps\_frac}\cdot C` with :math:`C = \|Y_{\ell-1}\|_F`,
the Frobenius norm of the layer **input** (here ``X``), as in the paper's experiments.

References:
    Papadimitriou & Jain (2021), "Data-Driven Low-Rank Neural Network Compression",
    eqs. (1)-(4), sec. 4.1-4.3 (:math:`\epsilon_\ell = [\dots]\cdot C`, :math:`C=\|Y_{\ell-1}\|_F`);
    Aghasi et al. (2017), Net-Trim (the same constraint set with an :math:`\ell_1` objective).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from compactnn.errors import InfeasibleError, InputShapeError, SolverError

__all__ = [
    "STATUSES",
    "ConvexProblem",
    "LayerProblem",
    "LayerSolveResult",
    "check_problem",
    "check_ceiling",
    "epsilon_from_frac",
    "constraint_violation",
    "masked_ls_residual",
]

STATUSES: tuple[str, ...] = ("optimal", "optimal_inaccurate", "infeasible", "max_iter")
"""Possible values of :attr:`LayerSolveResult.status`."""

#: Above this many elements of the (n, N, d) batch, the exact infeasibility pre-check is skipped.
_MASKED_LS_MAX_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class LayerProblem:
    r"""One layer's data for :func:`compactnn.solvers.layerwise.solve_layers`.

    Attributes:
        X: Layer input, ``(N, d)``.
        Y: Original pre-activation output ``X W0^T + b`` (or the target), ``(N, n)``.
        bias: Original bias ``(n,)`` (kept fixed), or ``None`` for a layer without bias.
        linear: ``True`` for a layer not followed by ReLU (equality-type constraint only).
        ceiling: ``(N, n)`` upper bound :math:`V` of the inactive entries,
            :math:`(XU + \mathbf{1}b^T)\circ M' \le V\circ M'` (``None``: 0, eq. (4)). Cascade
            Net-Trim (Aghasi et al., sec. 2.2) sets :math:`V = \hat X W_0^T + \mathbf{1}b^T`
            so that the original weights stay feasible on the compressed network's input.
    """

    X: Tensor
    Y: Tensor
    bias: Tensor | None = None
    linear: bool = False
    ceiling: Tensor | None = None


@dataclass(frozen=True)
class LayerSolveResult:
    """Result of a layer-wise solve (plain data, like a CVXPY problem after ``solve``).

    Attributes:
        U: Solution ``(d, n)`` (the new weight is ``U.T``), float64 on CPU.
        status: One of :data:`STATUSES`. ``"optimal"`` only when the returned ``U`` satisfies the
            constraints within the feasibility tolerance.
        objective: :math:`f(U)` of the returned ``U`` (nuclear or l1 norm).
        constraint_violation: ``max(eq, ineq)`` with ``eq = max(||(XU+1b^T-Y)∘M||_F/eps - 1, 0)``
            and ``ineq = max((XU+1b^T)∘M')_+ / max|Y∘M|``, measured on the returned ``U``.
        iterations: Solver iterations.
        seconds: Wall time of the solve (setup included).
        backend: ``"admm"`` or ``"cvxpy"``.
        extras: Backend details (``eps``, ``eq_violation``, ``ineq_violation``, residuals, ...).
    """

    U: Tensor
    status: str
    objective: float
    constraint_violation: float
    iterations: int
    seconds: float
    backend: str
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """``True`` when the status is ``"optimal"`` or ``"optimal_inaccurate"``."""
        return self.status in ("optimal", "optimal_inaccurate")


@dataclass(frozen=True)
class ConvexProblem:
    r"""The checked eps-constrained problem of one layer, what a backend of DDLR / Net-Trim
    solves: :math:`\min f(U)` s.t. eq. (4) (the module docstring).

    Attributes:
        X: Layer input ``(N, d)``, float64 on CPU (checked by :func:`check_problem`).
        Y: Original pre-activation ``(N, n)``, float64 on CPU.
        b: Bias ``(n,)`` (zeros for a layer without bias), float64 on CPU.
        eps: The tolerance :math:`\epsilon` of the fit (not the fraction).
        objective: ``"nuclear"`` (DDLR) or ``"l1"`` (Net-Trim).
        linear: No ReLU after the layer: :math:`M = 1`, no inequality.
        ceiling: The ``(N, n)`` bound of the inactive entries (:attr:`LayerProblem.ceiling`),
            or ``None`` (0).
    """

    X: Tensor
    Y: Tensor
    b: Tensor
    eps: float
    objective: str
    linear: bool
    ceiling: Tensor | None = None


def _as_2d(t: Any, name: str, owner: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise SolverError(
            f"{owner}: '{name}' must be a torch.Tensor, got {type(t).__name__}. Pass a tensor."
        )
    if t.dim() != 2:
        raise InputShapeError(
            f"{owner}: '{name}' must be a 2-D tensor (one sample per row), got shape "
            f"{tuple(t.shape)}. Flatten or im2col the layer input first."
        )
    return t


def check_problem(
    X: Any, Y: Any, bias: Any, owner: str, layer: str | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Validate and convert ``(X, Y, bias)`` to float64 CPU tensors.

    Args:
        X: Input ``(N, d)``.
        Y: Original pre-activation (or target) ``(N, n)``.
        bias: ``(n,)`` or ``None`` (zeros).
        owner: Name of the calling solver, used in messages.
        layer: Optional dotted layer name, used in messages.

    Returns:
        ``(X, Y, b)`` as contiguous float64 tensors.

    Raises:
        InputShapeError: Wrong dimensions or mismatched shapes.
        SolverError: Empty data or NaN/Inf values (the message names the tensor).
    """
    where = f"{owner}" + (f" (layer '{layer}')" if layer else "")
    X = _as_2d(X, "X", where)
    Y = _as_2d(Y, "Y", where)
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise SolverError(
            f"{where}: 'X' is empty (shape {tuple(X.shape)}). Capture at least one sample of "
            "the layer input."
        )
    if Y.shape[0] != X.shape[0]:
        raise InputShapeError(
            f"{where}: X has {X.shape[0]} rows (samples) but Y has {Y.shape[0]}. Pass the "
            "outputs of the same samples."
        )
    if Y.shape[1] == 0:
        raise SolverError(f"{where}: 'Y' has no output column. Pass the layer outputs.")
    n = Y.shape[1]
    if bias is None:
        b = torch.zeros(n, dtype=torch.float64)
    else:
        if not isinstance(bias, Tensor):
            raise SolverError(f"{where}: 'bias' must be a torch.Tensor or None.")
        b = bias.reshape(-1)
        if b.numel() != n:
            raise InputShapeError(
                f"{where}: bias has {b.numel()} entries but Y has {n} columns. Pass the "
                "original bias of this layer."
            )
    out = []
    for name, t in (("X", X), ("Y", Y), ("bias", b)):
        t = t.detach().to(device="cpu", dtype=torch.float64).contiguous()
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise SolverError(
                f"{where}: '{name}' contains {bad} NaN/Inf value(s). Clean the captured data "
                "(check the upstream layers) before solving."
            )
        out.append(t)
    return out[0], out[1], out[2]


def check_ceiling(ceiling: Any, Y: Tensor, owner: str, layer: str | None = None) -> Tensor | None:
    """Validate :attr:`LayerProblem.ceiling` against ``Y`` (``(N, n)``, finite) and convert it to
    a contiguous float64 CPU tensor (``None`` stays ``None``).

    Raises:
        InputShapeError: not the shape of ``Y``.
        SolverError: not a tensor, or NaN/Inf values.
    """
    if ceiling is None:
        return None
    where = f"{owner}" + (f" (layer '{layer}')" if layer else "")
    if not isinstance(ceiling, Tensor):
        raise SolverError(f"{where}: 'ceiling' must be a torch.Tensor of Y's shape or None.")
    if tuple(ceiling.shape) != tuple(Y.shape):
        raise InputShapeError(
            f"{where}: 'ceiling' has shape {tuple(ceiling.shape)} but Y has {tuple(Y.shape)}. "
            "Pass one bound per entry of Y (the original layer's output on the new input)."
        )
    V = ceiling.detach().to(device="cpu", dtype=torch.float64).contiguous()
    if not bool(torch.isfinite(V).all()):
        raise SolverError(f"{where}: 'ceiling' contains NaN/Inf values.")
    return V


def epsilon_from_frac(X: Tensor, eps_frac: float, owner: str) -> float:
    r"""Return :math:`\epsilon = \text{eps\_frac}\cdot\|X\|_F` (paper sec. 4, :math:`C=\|Y_{\ell-1}\|_F`).

    Raises:
        InfeasibleError: ``eps_frac`` is not a finite number > 0 (the relaxed problem needs a
            positive tolerance; 0 would force an exact fit).
    """
    ok = isinstance(eps_frac, (int, float)) and not isinstance(eps_frac, bool)
    if not ok or not math.isfinite(float(eps_frac)) or float(eps_frac) <= 0.0:
        raise InfeasibleError(
            f"The 'eps_frac' parameter of {owner} must be a finite float > 0 "
            f"(epsilon = eps_frac * ||X||_F). Got {eps_frac!r} instead."
        )
    eps = float(eps_frac) * float(torch.linalg.vector_norm(X))
    if eps <= 0.0:
        raise InfeasibleError(
            f"{owner}: epsilon = eps_frac * ||X||_F is 0 because X is all zeros. "
            "Capture non-zero layer inputs."
        )
    return eps


def constraint_violation(
    XU: Tensor, Y: Tensor, b: Tensor, eps: float, linear: bool, ceiling: Tensor | None = None
) -> tuple[float, float, float]:
    """Relative violation of the constraints of eq. (4) at ``XU`` (the product ``X @ U``).

    Args:
        ceiling: the ``(N, n)`` bound of the inactive entries (``None``: 0; see
            :attr:`LayerProblem.ceiling`).

    Returns:
        ``(total, eq, ineq)`` where ``eq = max(||(XU+1b^T-Y)∘M||_F / eps - 1, 0)``,
        ``ineq = max((XU+1b^T-V)∘M')_+ / max|Y∘M|`` and ``total = max(eq, ineq)``.
    """
    out = XU + b
    if linear:
        mask = torch.ones_like(Y, dtype=torch.bool)
    else:
        mask = Y > 0
    res = torch.linalg.vector_norm(torch.where(mask, out - Y, torch.zeros((), dtype=out.dtype)))
    eq = max(float(res) / eps - 1.0, 0.0)
    ineq = 0.0
    if not linear and not bool(mask.all()):
        above = out if ceiling is None else out - ceiling.to(out.dtype)
        pos = float(torch.where(mask, torch.zeros((), dtype=out.dtype), above).clamp_min(0).max())
        scale = float(Y[mask].abs().max()) if bool(mask.any()) else 0.0
        ineq = pos / (scale if scale > 0 else 1.0)
    return max(eq, ineq), eq, ineq


def masked_ls_residual(X: Tensor, Y: Tensor, b: Tensor, linear: bool) -> float | None:
    r"""Exact lower bound :math:`\min_U \|(XU + 1b^T - Y)\circ M\|_F` (inequality ignored).

    If this exceeds :math:`\epsilon` the problem is certainly infeasible. Each column is an
    independent least-squares problem on its active rows. Returns ``None`` when the batch would be
    too large (the check is then left to the solver).
    """
    N, d = X.shape
    n = Y.shape[1]
    T = Y - b
    if linear:
        sol = torch.linalg.lstsq(X, T, driver="gelsd").solution
        return float(torch.linalg.vector_norm(X @ sol - T))
    if n * N * d > _MASKED_LS_MAX_ELEMENTS:
        return None
    M = (Y > 0).to(X.dtype)  # (N, n)
    A = X.unsqueeze(0) * M.T.unsqueeze(2)  # (n, N, d)
    rhs = (T * M).T.unsqueeze(2)  # (n, N, 1)
    sol = torch.linalg.lstsq(A, rhs, driver="gelsd").solution
    return float(torch.linalg.vector_norm(A @ sol - rhs))
