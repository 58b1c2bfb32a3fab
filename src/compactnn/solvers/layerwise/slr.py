r"""SLR: one layer approximated by a column-sparse plus a low-rank matrix (Ma et al. 2019).

For one layer with input :math:`X \in \mathbb{R}^{N\times d}` (im2col rows for a conv: the
columns of the lowered weight are the ``(c, kh, kw)`` positions), bias :math:`b` (fixed) and
target :math:`Y` (``ReLU`` of the original pre-activation for the non-linear response, the
pre-activation itself for the linear one), the solver minimises eq. (3)

.. math::

    \min_{A, B}\; f_1(A + B) + \lambda_1\|A\|_{2,1} + \lambda_2\|B\|_*,\qquad
    f_1(M) = \tfrac1N\,\|Y - r(XM^T + \mathbf 1 b^T)\|_F^2,

with :math:`r = \mathrm{ReLU}` (eq. 3) or the identity (linear response), :math:`\|A\|_{2,1}`
the sum of the column norms and :math:`\|B\|_*` the nuclear norm. ``f_1`` is normalised by the
number of rows ``N`` (the paper sums over samples), so the paper's absolute ``λ`` and ``t`` do
not transfer; with ``scale="data"`` (default) ``λ1, λ2`` are multiples of
:math:`s_0 = \max_i\|[\nabla f_1(0)]_{:,i}\|_2` (the smallest ``λ1`` at which ``A = 0`` solves
the group-lasso part alone) and ``t`` a multiple of the curvature
:math:`L = 2\|X\|_2^2/N` of ``f_1``; ``scale="absolute"`` takes them as given (paper protocol:
``t = 1e-3``, ``λ1 ∈ [0.08, 0.3]``, ``λ2 = 2.5-3 λ1``).

Algorithm 1 (3-block ADMM on the split :math:`A + B = M`, eq. 4), per iteration ``k``:

1. :math:`\hat A = \operatorname{prox}_{\lambda_1/t\,\|\cdot\|_{2,1}}(M_k - B_k - \Lambda_k/t)`
   (column group soft threshold, eqs. 9-10);
2. :math:`\hat B = \mathcal D_{\lambda_2/t}(M_k - \hat A - \Lambda_k/t)` (SVT, eqs. 11-12);
3. :math:`\hat M = \arg\min_M f_1(M) - \langle\Lambda_k, M\rangle + \tfrac t2\|\hat A + \hat B -
   M\|^2` (eq. 8): an exact linear solve for the linear response, momentum gradient steps for
   the ReLU one (paper: SGD, lr 1e-3, momentum 0.9);
4. :math:`\hat\Lambda = \Lambda_k + t(\hat A + \hat B - \hat M)` (Alg. 1 line 6);
5. correction of :math:`(B, M, \Lambda)` by eq. (13) with :math:`\tau = 1/2, \alpha = 3/4`
   (``correction="paper"``); ``"gbs"`` is the Gaussian back substitution of He, Tao & Yuan
   (2012) for this constraint (``B -= α[(B_k - \hat B) + (M_k - \hat M)]``, ``M -= α(M_k - \hat
   M)``, ``Λ -= α(Λ_k - \hat Λ)``), ``"none"`` the direct (uncorrected) extension.

The deployed pair is :math:`(\hat A, \hat B)` of the last iteration (the corrected ``B`` is a
combination of iterates and not low rank). Stopping: relative primal residual
:math:`\|\hat A + \hat B - \hat M\|_F / \max(\|\hat M\|_F, \|\hat A + \hat B\|_F)` and relative
dual residual :math:`t\|\hat M - M_k\|_F / \|\hat\Lambda\|_F` both below ``tol``, or
``max_iter``.

The ``"cvxpy"`` backend solves the linear-response problem (convex) with CVXPY (Clarabel, else
SCS); the ReLU response is not convex in ``M`` (contrary to the paper's claim), so it is
refused there.

The ADMM backend (its options :class:`SLRAdmmOptions`, Algorithm 1, the budget's λ scale
:func:`budget_scale`, warm starts) lives in :mod:`compactnn.solvers.layerwise._slr_admm`; this
module holds the objective and its helpers, :class:`SLRSolver` and the CVXPY backend.

References:
    Ma et al. (2019), "A Unified Approximation Framework for Compressing and Accelerating Deep
    Neural Networks", eqs. (3)-(13), Algorithm 1, sec. V-A (t, λ ranges);
    He & Yuan (2018), Comput. Optim. Appl. (correction step); He, Tao & Yuan (2012), SIAM J.
    Optim. (Gaussian back substitution).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from compactnn._validation import check_bool, check_choice, check_float
from compactnn.errors import ConfigError
from compactnn.solvers.layerwise._cvxpy import _import_cvxpy
from compactnn.solvers.layerwise._slr_admm import (
    CORRECTIONS,
    SLRAdmmOptions,
    _iterate,
    _warm_state,
    budget_scale,
)
from compactnn.solvers.layerwise._slr_admm import _Quadratic as _Quadratic  # re-exported
from compactnn.solvers.layerwise.base import Backend, Capabilities, LayerSolver, SolveCall
from compactnn.solvers.layerwise.problem import LayerProblem, LayerSolveResult, check_problem

__all__ = [
    "CORRECTIONS",
    "SLRAdmmOptions",
    "SLRCvxpyOptions",
    "SLRSolver",
    "budget_scale",
    "column_support",
    "deployed_rank",
    "slr_objective",
]

SCALES: tuple[str, ...] = ("data", "absolute")


@dataclass(frozen=True)
class SLRCvxpyOptions:
    """Options of the CVXPY backend (linear response only).

    Attributes:
        solver: ``"CLARABEL"`` (interior point, accurate) or ``"SCS"``.
        eps: solver tolerance.
        zero_tol: a column of ``A`` with norm and a singular value of ``B`` ``<= zero_tol *
            ||A + B||_2`` are set to zero (interior-point solutions have no exact zeros).
    """

    solver: str = "CLARABEL"
    eps: float = 1e-9
    zero_tol: float = 1e-4

    def __post_init__(self) -> None:
        o = "SLRCvxpyOptions"
        check_choice(self.solver, "solver", o, ("CLARABEL", "SCS"))
        check_float(self.eps, "eps", o, min_value=0.0, min_inclusive=False)
        check_float(self.zero_tol, "zero_tol", o, min_value=0.0, max_value=1.0)


# ---------------------------------------------------------------------- pure helpers
def column_support(A: Tensor) -> Tensor:
    """Indices of the non-zero columns of ``A`` (n x d), ascending."""
    return torch.nonzero(A.abs().amax(dim=0) > 0, as_tuple=False).reshape(-1)


def deployed_rank(B: Tensor, rtol: float = 1e-6) -> int:
    """Number of singular values of ``B`` above ``rtol * σ_max``.

    The default ``1e-6`` sits above float32 round-off: an SVT iterate rebuilt in float32 has
    spurious singular values ~1e-7 σ_max that must not count as rank.
    """
    if not bool((B != 0).any()):
        return 0
    s = torch.linalg.svdvals(B.to(torch.float64))
    return int((s > float(s[0]) * rtol).sum())


def _f1(X: Tensor, Yt: Tensor, b: Tensor, M: Tensor, relu: bool) -> float:
    Z = X @ M.T + b
    if relu:
        Z = Z.clamp_min(0)
    return float((Yt - Z).square().sum()) / X.shape[0]


def slr_objective(
    X: Tensor, Yt: Tensor, b: Tensor, A: Tensor, B: Tensor, lam1: float, lam2: float, relu: bool
) -> dict[str, float]:
    r"""Eq. (3) at ``(A, B)``: ``f1``, ``λ1‖A‖_{2,1}``, ``λ2‖B‖_*`` and their sum.

    ``Yt`` is the target (post-activation for ``relu``), ``f1`` normalised by ``N``.
    """
    f1 = _f1(X, Yt, b, A + B, relu)
    l21 = float(A.norm(dim=0).sum())
    nuc = float(torch.linalg.svdvals(B).sum()) if B.numel() else 0.0
    return {
        "f1": f1,
        "l21": l21,
        "nuclear": nuc,
        "objective": f1 + (lam1 * l21 if l21 else 0.0) + (lam2 * nuc if nuc else 0.0),
    }


def _scales(X: Tensor, Yt: Tensor, b: Tensor, relu: bool, Ypre: Tensor) -> tuple[float, float]:
    """``(s0, L)``: max column norm of ∇f1(0) (linear response on the active set) and the
    curvature ``2‖X‖_2^2 / N``."""
    N = X.shape[0]
    R = Yt - b
    if relu:
        R = R * (Ypre > 0)
    G0 = (2.0 / N) * (R.T @ X)  # n x d
    s0 = float(G0.norm(dim=0).max())
    L = 2.0 * float(torch.linalg.matrix_norm(X, ord=2)) ** 2 / N
    return (s0 if s0 > 0 else 1.0), (L if L > 0 else 1.0)


@dataclass(frozen=True)
class SLRSolver(LayerSolver):
    r"""SLR as a :class:`~compactnn.solvers.layerwise.base.LayerSolver` (module docstring).

    Attributes:
        lam1: λ1 of eq. (3), the column-sparsity (l2,1) weight (>= 0; 0: no sparse penalty).
        lam2: λ2 of eq. (3), the nuclear-norm weight (>= 0). ``float("inf")`` forces ``B = 0``
            (sparse only, the paper's FC layers); ``lam1=inf`` forces ``A = 0``.
        t: ADMM penalty ``t`` of eq. (5) (``None``: 1 in data scale, the paper's 1e-3 in
            absolute scale).
        scale: ``"data"`` (λ in units of ``s0``, ``t`` in units of ``L``) or ``"absolute"``.
        relu: non-linear response ``r = ReLU`` (eq. 3); ``None``: ReLU unless the problem is
            marked linear. ``True`` on a linear problem is refused.
        share: a budget for this layer (admm backend): the deployed pair may store at most
            ``share * n * d`` weights (``n * kept columns + r (n + d)``, eq. 15). ``λ1, λ2``
            then fix the ratio of the two penalties only: at every iteration both are scaled by
            the smallest common factor ``c`` whose thresholds (eq. 10 on the column norms of
            the A-step's argument, eq. 12 on the singular values of the B-step's, the latter
            taken with the previous ``A``) leave at most that many weights, so ``c λ`` acts as
            the multiplier of the budget; the final ``λ`` are reported. ``None``: fixed ``λ``
            (the paper). ``share = 1`` (the dense weight fits): the budget does not bind, the
            finite ``λ`` become 0 and no column is removed.

    With ``λ1 = 0`` (no column penalty) every column is kept by construction, whatever values
    the iterations leave in it (``extras["kept_columns"]`` is then every column).
    """

    lam1: float = 0.1
    lam2: float = 0.3
    t: float | None = None
    scale: str = "data"
    relu: bool | None = None
    share: float | None = None

    name: ClassVar[str] = "slr"
    owner: ClassVar[str] = "SLR"
    capabilities: ClassVar[Capabilities] = Capabilities(
        objective="f1+l21+nuclear",
        constraints=(),
        backends=("admm", "cvxpy"),
        warm_start=True,
        factor_output=True,
    )

    def __post_init__(self) -> None:
        for nm in ("lam1", "lam2"):
            v = getattr(self, nm)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            if not ok or math.isnan(float(v)) or float(v) < 0:
                raise ConfigError(
                    f"The '{nm}' parameter of SLR must be a float >= 0 (inf allowed). "
                    f"Got {v!r} instead."
                )
        if self.t is not None:
            check_float(self.t, "t", self.owner, min_value=0.0, min_inclusive=False)
        check_choice(self.scale, "scale", self.owner, SCALES)
        if self.relu is not None:
            check_bool(self.relu, "relu", self.owner)
        if self.share is not None:
            check_float(self.share, "share", self.owner, min_value=0.0, max_value=1.0,
                        min_inclusive=False)  # fmt: skip
            if math.isinf(self.lam1) and math.isinf(self.lam2):
                raise ConfigError(
                    "SLR: share= scales lam1 and lam2, but both are inf (A = B = 0 whatever the "
                    "budget). Give one of them a finite value."
                )
            if self.lam1 == 0 or self.lam2 == 0:
                raise ConfigError(
                    "SLR: share= scales lam1 and lam2 by a common factor, so both must be > 0 "
                    f"(inf allowed); got lam1={self.lam1}, lam2={self.lam2}. A zero penalty "
                    "keeps its whole component whatever the factor."
                )

    # ------------------------------------------------------------------ shared setup
    def _setup(self, problem: LayerProblem, layer: str | None) -> dict[str, Any]:
        X, Ypre, b = check_problem(problem.X, problem.Y, problem.bias, self.owner, layer)
        relu = (not problem.linear) if self.relu is None else bool(self.relu)
        if relu and problem.linear:
            where = f" (layer '{layer}')" if layer else ""
            raise ConfigError(
                f"SLR{where}: relu=True asks for the non-linear response, but the layer is not "
                "followed by a ReLU (problem.linear). Pass relu=False (linear response) or "
                "remove the layer."
            )
        Yt = Ypre.clamp_min(0) if relu else Ypre
        s0, L = _scales(X, Yt, b, relu, Ypre)
        if self.scale == "data":
            lam1, lam2 = self.lam1 * s0, self.lam2 * s0
            t = (1.0 if self.t is None else self.t) * L
        else:
            lam1, lam2 = float(self.lam1), float(self.lam2)
            t = 1e-3 if self.t is None else float(self.t)
        share = self.share
        if share is not None and share >= 1.0:
            # the whole dense weight fits (the deployment falls back to it): the budget does not
            # bind, its multiplier is 0, so this is the unpenalised problem (nothing removed;
            # an infinite lambda, a component forced to zero, stays)
            lam1 = lam1 if math.isinf(lam1) else 0.0
            lam2 = lam2 if math.isinf(lam2) else 0.0
            share = None
        return dict(X=X, Ypre=Ypre, Yt=Yt, b=b, relu=relu, lam1=lam1, lam2=lam2, t=t, s0=s0, L=L,
                    share=share)  # fmt: skip

    def _result(
        self,
        s: dict[str, Any],
        A: Tensor,
        B: Tensor,
        *,
        status: str,
        iterations: int,
        seconds: float,
        backend: str,
        extras: dict[str, Any],
    ) -> LayerSolveResult:
        A = A.to(torch.float64)
        B = B.to(torch.float64)
        obj = slr_objective(s["X"], s["Yt"], s["b"], A, B, s["lam1"], s["lam2"], s["relu"])
        n, d = A.shape
        # lam1 == 0: no column penalty, so no column is removed -- by construction, not by
        # testing which columns came out exactly zero (a column no calibration row activates
        # comes out of the M-step as exactly 0 or as round-off depending on the LAPACK build:
        # slr kept 191 of 192 columns at zero strength on one machine, 192 on another)
        kept = column_support(A) if s["lam1"] > 0 else torch.arange(d)
        rank = deployed_rank(B)
        ex = {
            "A": A,
            "B": B,
            "kept_columns": kept,
            "rank": rank,
            "lam1": s["lam1"],
            "lam2": s["lam2"],
            "t": s["t"],
            "s0": s["s0"],
            "relu": s["relu"],
            "f1": obj["f1"],
            "f1_original": None,
            **extras,
        }
        return LayerSolveResult(
            U=(A + B).T.contiguous(),
            status=status,
            objective=obj["objective"],
            constraint_violation=0.0,
            iterations=iterations,
            seconds=seconds,
            backend=backend,
            extras=ex,
        )

    def _solve(self, problem: LayerProblem, call: SolveCall) -> LayerSolveResult:
        start = time.perf_counter()
        s = self._setup(problem, call.layer)
        s["warm"] = _warm_state(call.warm_start, s, call.layer) if call.backend.warm_start else None
        return call.backend.run(self, s, call.options, start, call.layer)


# ---------------------------------------------------------------------- ADMM backend
def _run_admm(
    solver: SLRSolver, s: dict[str, Any], o: SLRAdmmOptions, start: float, layer: str | None
) -> LayerSolveResult:
    """SLR's ADMM (:mod:`compactnn.solvers.layerwise._slr_admm`) as the solver's result."""
    s, A, B, status, iterations, extras = _iterate(s, o, layer)
    return solver._result(
        s,
        A,
        B,
        status=status,
        iterations=iterations,
        seconds=time.perf_counter() - start,
        backend="admm",
        extras=extras,
    )


# ---------------------------------------------------------------------- CVXPY backend
def _run_cvxpy(
    solver: SLRSolver, s: dict[str, Any], o: SLRCvxpyOptions, start: float, layer: str | None
) -> LayerSolveResult:
    if s["share"] is not None:
        raise ConfigError(
            f"SLR{f' (layer {layer!r})' if layer else ''}: share= (a per-layer budget) needs "
            "backend='admm' (its lambda controller runs inside the ADMM iterations)."
        )
    if s["relu"]:
        raise ConfigError(
            f"SLR{f' (layer {layer!r})' if layer else ''}: backend='cvxpy' solves the linear "
            "response only (the ReLU response is not convex in M). Pass relu=False, or use "
            "backend='admm'."
        )
    cp = _import_cvxpy()
    X = s["X"].numpy()
    T = (s["Yt"] - s["b"]).numpy()
    N, d = X.shape
    n = T.shape[1]
    A = cp.Variable((n, d))
    B = cp.Variable((n, d))
    terms = [cp.sum_squares(T - X @ (A + B).T) / N]
    cons = []
    if math.isinf(s["lam1"]):
        cons.append(A == 0)
    elif s["lam1"] > 0:
        terms.append(s["lam1"] * cp.sum(cp.norm(A, 2, axis=0)))
    if math.isinf(s["lam2"]):
        cons.append(B == 0)
    elif s["lam2"] > 0:
        terms.append(s["lam2"] * cp.normNuc(B))
    prob = cp.Problem(cp.Minimize(cp.sum(terms)), cons)
    kw: dict[str, Any] = (
        {"tol_gap_abs": o.eps, "tol_gap_rel": o.eps, "tol_feas": o.eps}
        if o.solver == "CLARABEL"
        else {"eps_abs": o.eps, "eps_rel": o.eps, "max_iters": 200_000}
    )
    prob.solve(solver=getattr(cp, o.solver), **kw)
    if A.value is None or B.value is None:
        raise ConfigError(f"SLR cvxpy backend: {o.solver} returned status {prob.status}.")
    At = torch.from_numpy(np.asarray(A.value, dtype=np.float64))
    Bt = torch.from_numpy(np.asarray(B.value, dtype=np.float64))
    # clean-up: no exact zeros from an interior-point / splitting solver
    # relative to the scale of the whole weight ||A + B||_2 (a component that should vanish
    # is all solver noise, so its own scale would not do)
    ref = float(torch.linalg.matrix_norm(At + Bt, ord=2))
    if s["lam1"] > 0:  # lam1 == 0: no column penalty, none removed (by construction)
        At[:, At.norm(dim=0) <= o.zero_tol * ref] = 0
    if s["lam2"] > 0 and bool((Bt != 0).any()):
        U, S, Vh = torch.linalg.svd(Bt, full_matrices=False)
        S = torch.where(S > o.zero_tol * ref, S, torch.zeros_like(S))
        Bt = (U * S) @ Vh
    status = "optimal" if prob.status == "optimal" else "optimal_inaccurate"
    st = prob.solver_stats
    return solver._result(
        s,
        At,
        Bt,
        status=status,
        iterations=int(getattr(st, "num_iters", 0) or 0),
        seconds=time.perf_counter() - start,
        backend="cvxpy",
        extras={"solver_objective": float(prob.value), "solver": o.solver},
    )


SLRSolver.backend_table = {  # type: ignore[misc]
    "admm": Backend("admm", SLRAdmmOptions, _run_admm, warm_start=True, exact_zeros=True),
    "cvxpy": Backend("cvxpy", SLRCvxpyOptions, _run_cvxpy),
}
