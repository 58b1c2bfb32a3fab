r"""First-order ADMM backend for the layer-wise problems (DDLR and Net-Trim).

Splitting (scaled problem, see below): with :math:`V = AU` and :math:`Z = U`,

.. math::

    \min_{U, V, Z}\; f(Z) + \iota_{\mathcal C}(V) \quad\text{s.t.}\quad AU - V = 0,\; U - Z = 0,

where :math:`\mathcal C = \{V : \|(V - T)\circ M\|_F \le \epsilon,\; V\circ M' \le c\}`,
:math:`T = Y - \mathbf{1}b^T`, :math:`c = -\mathbf{1}b^T`. The constraint set is separable per
entry given :math:`V` (Frobenius-ball projection on :math:`M`, clipping on :math:`M'`), so every
step is exact:

* :math:`U`-step: :math:`(A^TA + I)U = A^T(V - \Lambda_1) + Z - \Lambda_2`, solved with one cached
  spectral factorisation of :math:`X` (for DDLR :math:`A^TA` is diagonal, see ``ddlr.py``);
* :math:`V`-step: projection onto :math:`\mathcal C`;
* :math:`Z`-step: :math:`\operatorname{prox}_{f/\rho}` -- singular value thresholding (nuclear
  norm; full SVD, Gram eigendecomposition or randomised ``torch.svd_lowrank`` when the rank is
  small) or soft thresholding (:math:`\ell_1`), both from :mod:`compactnn.prox`;
* scaled duals :math:`\Lambda_{1,2}`, over-relaxation :math:`\alpha`, residual balancing of
  :math:`\rho` (no refactorisation needed: both blocks share :math:`\rho`).

Stopping: primal/dual residuals below ``abs_tol·√dim + rel_tol·scale`` (Boyd et al. 2011,
sec. 3.3) **and** the returned :math:`Z` feasible within ``feas_tol``.

The problem is scaled before solving (:math:`X/\sigma_{\max}(X)`, :math:`Y, b, \epsilon` divided by
the RMS of :math:`Y`); both objectives are positively homogeneous, so the argmin maps back exactly.

References:
    Papadimitriou & Jain (2021), eq. (4) and sec. 5 (ADMM suggested as future work);
    Boyd et al. (2011), "Distributed Optimization and Statistical Learning via ADMM",
    sec. 3.3-3.4 (residuals, stopping, over-relaxation, varying penalty).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from compactnn._validation import check_bool, check_choice, check_float, check_int
from compactnn.prox import SVT_METHODS, soft_threshold, svt_values

__all__ = ["ADMMOptions", "ADMMState", "run_admm", "svt", "soft_threshold"]

#: The Z-step proximal operators are :mod:`compactnn.prox`'s; re-exported under their old names.
svt = svt_values


@dataclass(frozen=True)
class ADMMOptions:
    """Options of the ADMM backend (validated on construction).

    Attributes:
        rho: Initial penalty :math:`\\rho` of the scaled problem (> 0).
        max_iter: Maximum number of iterations.
        rel_tol: Relative tolerance on primal/dual residuals.
        abs_tol: Absolute tolerance (per entry, scaled units).
        feas_tol: Relative constraint violation allowed for status ``"optimal"``.
        alpha: Over-relaxation :math:`\\alpha \\in [1, 2)`.
        adaptive_rho: Residual balancing of :math:`\\rho`.
        check_every: Residuals / feasibility checked every this many iterations.
        dtype: ``"float64"`` (default, accurate) or ``"float32"`` (faster, large layers).
        svd: SVT strategy: ``"auto"``, ``"full"``, ``"gram"`` or ``"lowrank"``.
        time_limit: Wall-clock cap in seconds (``None``: no cap); hitting it gives ``"max_iter"``.
        raise_on_infeasible: Raise :class:`~compactnn.errors.InfeasibleError` instead of
            returning a result with status ``"infeasible"``.
        keep_state: Put the final :class:`ADMMState` in ``extras["admm_state"]`` (warm starts).
    """

    rho: float = 1.0
    max_iter: int = 20000
    rel_tol: float = 1e-4
    abs_tol: float = 1e-7
    feas_tol: float = 1e-3
    alpha: float = 1.6
    adaptive_rho: bool = True
    check_every: int = 10
    dtype: str = "float64"
    svd: str = "auto"
    time_limit: float | None = None
    raise_on_infeasible: bool = True
    keep_state: bool = False

    def __post_init__(self) -> None:
        o = "ADMMOptions"
        check_float(self.rho, "rho", o, min_value=0.0, min_inclusive=False)
        check_int(self.max_iter, "max_iter", o, min_value=1)
        check_float(self.rel_tol, "rel_tol", o, min_value=0.0, min_inclusive=False)
        check_float(self.abs_tol, "abs_tol", o, min_value=0.0)
        check_float(self.feas_tol, "feas_tol", o, min_value=0.0, min_inclusive=False)
        check_float(self.alpha, "alpha", o, min_value=1.0, max_value=2.0, max_inclusive=False)
        check_bool(self.adaptive_rho, "adaptive_rho", o)
        check_int(self.check_every, "check_every", o, min_value=1)
        check_choice(self.dtype, "dtype", o, ("float32", "float64"))
        check_choice(self.svd, "svd", o, SVT_METHODS)
        if self.time_limit is not None:
            check_float(self.time_limit, "time_limit", o, min_value=0.0, min_inclusive=False)
        check_bool(self.raise_on_infeasible, "raise_on_infeasible", o)
        check_bool(self.keep_state, "keep_state", o)


@dataclass(frozen=True)
class ADMMState:
    """Iterates of the scaled problem, for warm starts (same layer data, e.g. an eps path)."""

    U: Tensor
    Z: Tensor
    V: Tensor
    L1: Tensor
    L2: Tensor
    rho: float
    scale: float  # t / sigma_max: U_original = scale * (basis @ Z)


@dataclass
class ScaledProblem:
    """Operators of the scaled problem (built by ddlr.py / net_trim.py)."""

    fwd: Callable[[Tensor], Tensor]  # U -> A U   (N x n)
    adj: Callable[[Tensor], Tensor]  # V -> A^T V (m x n)
    solve: Callable[[Tensor], Tensor]  # R -> (A^T A + I)^{-1} R
    m: int
    T: Tensor  # (Y - b) / t  (N x n)
    c: Tensor  # -b / t       (n,)
    mask: Tensor | None  # bool (N x n), None = linear (all entries in the ball)
    eps: float  # epsilon / t
    Yabs: float  # max|Y| / t


def _project(P: ScaledProblem, W: Tensor) -> Tensor:
    """Euclidean projection onto C (separable given V)."""
    if P.mask is None:
        D = W - P.T
        nrm = float(torch.linalg.vector_norm(D))
        return P.T + D * (P.eps / nrm) if nrm > P.eps else W
    zero = torch.zeros((), dtype=W.dtype)
    D = torch.where(P.mask, W - P.T, zero)
    nrm = float(torch.linalg.vector_norm(D))
    if nrm > P.eps:
        D = D * (P.eps / nrm)
    return torch.where(P.mask, P.T + D, torch.minimum(W, P.c))


def _violation(P: ScaledProblem, AZ: Tensor) -> float:
    zero = torch.zeros((), dtype=AZ.dtype)
    if P.mask is None:
        return max(float(torch.linalg.vector_norm(AZ - P.T)) / P.eps - 1.0, 0.0)
    eq = float(torch.linalg.vector_norm(torch.where(P.mask, AZ - P.T, zero))) / P.eps - 1.0
    pos = float(torch.where(P.mask, zero, AZ - P.c).clamp_min(0).max())
    return max(eq, pos / (P.Yabs if P.Yabs > 0 else 1.0), 0.0)


def _initial(
    P: ScaledProblem, opts: ADMMOptions, init: ADMMState | Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, float]:
    """The iterates ``(U, Z, V, L1, L2, rho)`` to start from: a previous state, the given ``Z``
    (``V`` its projected image), or the projection of the target and its least-squares ``U``."""
    if isinstance(init, ADMMState):
        return init.U, init.Z, init.V, init.L1, init.L2, init.rho
    rho = opts.rho
    if isinstance(init, Tensor):
        Z = init
        U = Z
        V = _project(P, P.fwd(Z))
    else:
        V = _project(P, torch.where(P.mask, P.T, P.c) if P.mask is not None else P.T)
        U = P.solve(P.adj(V))
        Z = U
    L1 = torch.zeros_like(V)
    L2 = torch.zeros_like(Z)
    return U, Z, V, L1, L2, rho


def _residuals(
    P: ScaledProblem,
    AU: Tensor,
    U: Tensor,
    V: Tensor,
    Z: Tensor,
    V_old: Tensor,
    Z_old: Tensor,
    L1: Tensor,
    L2: Tensor,
    rho: float,
) -> tuple[float, float, float, float, float]:
    """``(r_p, r_d, nx, nz, ny)``: the primal and dual residuals and the scales of the
    stopping rule (``||Ax||``, ``||Bz||``, ``||A^T y||``)."""
    r_p = math.sqrt(
        float(torch.linalg.vector_norm(AU - V)) ** 2 + float(torch.linalg.vector_norm(U - Z)) ** 2
    )
    r_d = rho * float(torch.linalg.vector_norm(P.adj(V - V_old) + (Z - Z_old)))
    nx = math.hypot(float(torch.linalg.vector_norm(AU)), float(torch.linalg.vector_norm(U)))
    nz = math.hypot(float(torch.linalg.vector_norm(V)), float(torch.linalg.vector_norm(Z)))
    # dual scale: ||B^T y|| = rho ||(L1, L2)|| (A^T y vanishes by the U-step optimality here)
    ny = rho * math.hypot(float(torch.linalg.vector_norm(L1)), float(torch.linalg.vector_norm(L2)))
    return r_p, r_d, nx, nz, ny


def _stalled(history: list[float], rel_tol: float) -> bool:
    """Whether the relative primal residual has stopped falling (the second half of the checks
    flat within 5 % and above ``10 rel_tol``)."""
    if len(history) < 10:
        return False
    tail = history[len(history) // 2 :]
    return min(tail) > 10 * rel_tol and (max(tail) - min(tail)) <= 0.05 * max(tail)


def run_admm(
    P: ScaledProblem,
    prox: str,
    opts: ADMMOptions,
    init: ADMMState | Tensor | None,
    scale: float,
) -> dict[str, Any]:
    """Run ADMM on a scaled problem.

    Args:
        P: Scaled operators and constraint data.
        prox: ``"nuclear"`` or ``"l1"``.
        opts: Options.
        init: Warm start: a previous :class:`ADMMState` or a scaled ``Z`` (m x n), or ``None``.
        scale: Factor mapping scaled ``Z`` back to the original units (stored in the state).

    Returns:
        Dict with ``Z``, ``sv`` (singular values of Z for nuclear), ``iterations``, ``converged``,
        ``stalled``, ``r_prim``, ``r_dual``, ``rho``, ``state`` (or None).
    """
    t0 = time.perf_counter()
    N, n = P.T.shape
    U, Z, V, L1, L2, rho = _initial(P, opts, init)
    alpha = opts.alpha
    sv = torch.zeros(0, dtype=Z.dtype)
    rank_hint: int | None = None
    converged = False
    history: list[float] = []
    r_p = r_d = float("nan")
    k = 0
    dim_p = math.sqrt(N * n + P.m * n)
    dim_d = math.sqrt(P.m * n)
    for k in range(1, opts.max_iter + 1):
        U = P.solve(P.adj(V - L1) + Z - L2)
        AU = P.fwd(U)
        AUh = alpha * AU + (1.0 - alpha) * V if alpha != 1.0 else AU
        Uh = alpha * U + (1.0 - alpha) * Z if alpha != 1.0 else U
        V_old, Z_old = V, Z
        V = _project(P, AUh + L1)
        if prox == "nuclear":
            Z, sv = svt_values(Uh + L2, 1.0 / rho, opts.svd, rank_hint)
            rank_hint = int(sv.numel())
        else:
            Z = soft_threshold(Uh + L2, 1.0 / rho)
        L1 = L1 + AUh - V
        L2 = L2 + Uh - Z
        if k % opts.check_every and k != opts.max_iter:
            continue
        r_p, r_d, nx, nz, ny = _residuals(P, AU, U, V, Z, V_old, Z_old, L1, L2, rho)
        e_p = opts.abs_tol * dim_p + opts.rel_tol * max(nx, nz)
        e_d = opts.abs_tol * dim_d + opts.rel_tol * ny
        history.append(r_p / max(nx, nz, 1e-300))
        sub_scale = math.sqrt(max(int((Z != 0).sum()) if prox == "l1" else sv.numel(), 1))
        if r_p <= e_p and r_d <= e_d and _violation(P, P.fwd(Z)) <= opts.feas_tol:
            converged = True
            break
        if opts.time_limit is not None and time.perf_counter() - t0 > opts.time_limit:
            break
        if opts.adaptive_rho and r_p > 0 and r_d > 0:
            # OSQP-style balancing of normalised residuals; the dual scale is floored by the size
            # of a subgradient of f (spectral norm <= 1 for ||.||_*, entries <= 1 for ||.||_1).
            ratio = math.sqrt((r_p / max(nx, nz, 1e-300)) / (r_d / max(ny, sub_scale)))
            if ratio > 5.0 or ratio < 0.2:
                ratio = min(max(ratio, 1e-2), 1e2)
                ratio = min(max(rho * ratio, 1e-6 * opts.rho), 1e6 * opts.rho) / rho
                rho *= ratio
                L1 = L1 / ratio
                L2 = L2 / ratio
    stalled = not converged and _stalled(history, opts.rel_tol)
    state = ADMMState(U, Z, V, L1, L2, rho, scale) if opts.keep_state else None
    return {
        "Z": Z,
        "sv": sv,
        "iterations": k,
        "converged": converged,
        "stalled": stalled,
        "r_prim": r_p,
        "r_dual": r_d,
        "rho": rho,
        "state": state,
    }
