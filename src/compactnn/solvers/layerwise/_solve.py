"""Shared front end of the eps-constrained layer solvers (DDLR, Net-Trim): validation, epsilon,
infeasibility pre-check, the backend table (:data:`CONVEX_BACKENDS`) and the result (measured on
the returned ``U``).

References:
    Papadimitriou & Jain (2021), eq. (4), sec. 4 (epsilon = frac * ||Y_{l-1}||_F).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import Tensor

from compactnn._validation import check_bool, check_float, check_int
from compactnn.errors import ConfigError, InfeasibleError
from compactnn.solvers.layerwise._admm import ADMMOptions, ADMMState, ScaledProblem, run_admm
from compactnn.solvers.layerwise._cvxpy import solve_cvxpy
from compactnn.solvers.layerwise.base import Backend, Capabilities, LayerSolver, SolveCall
from compactnn.solvers.layerwise.problem import (
    ConvexProblem,
    LayerProblem,
    LayerSolveResult,
    check_ceiling,
    check_problem,
    constraint_violation,
    epsilon_from_frac,
    masked_ls_residual,
)

__all__ = [
    "BACKENDS",
    "CONVEX_BACKENDS",
    "CvxpyOptions",
    "EpsConstrainedSolver",
    "convex_capabilities",
    "solve_layer",
]


@dataclass(frozen=True)
class CvxpyOptions:
    """Options of the CVXPY/SCS backend.

    Attributes:
        eps: SCS ``eps_abs`` = ``eps_rel``.
        max_iters: SCS iteration cap.
        time_limit: SCS time cap in seconds (``None``: none).
        feas_tol: Relative violation allowed for status ``"optimal"`` (checked on ``U``).
        raise_on_infeasible: Raise :class:`~compactnn.errors.InfeasibleError` when SCS
            certifies infeasibility.
        verbose: SCS log.
    """

    eps: float = 1e-6
    max_iters: int = 100_000
    time_limit: float | None = None
    feas_tol: float = 1e-3
    raise_on_infeasible: bool = True
    verbose: bool = False

    def __post_init__(self) -> None:
        o = "CvxpyOptions"
        check_float(self.eps, "eps", o, min_value=0.0, min_inclusive=False)
        check_int(self.max_iters, "max_iters", o, min_value=1)
        if self.time_limit is not None:
            check_float(self.time_limit, "time_limit", o, min_value=0.0, min_inclusive=False)
        check_float(self.feas_tol, "feas_tol", o, min_value=0.0, min_inclusive=False)
        check_bool(self.raise_on_infeasible, "raise_on_infeasible", o)
        check_bool(self.verbose, "verbose", o)


def _spectral(X: Tensor) -> tuple[Tensor, Tensor, float]:
    """Orthonormal basis ``Q`` (d x k) of the row space of X, its singular values ``s`` and a scale."""
    N, d = X.shape
    if N >= d:
        lam, Q = torch.linalg.eigh(X.T @ X)
        s = lam.clamp_min(0).sqrt()
    else:
        lam, P = torch.linalg.eigh(X @ X.T)
        s = lam.clamp_min(0).sqrt()
        Q = None
    s_top = float(s.max())
    keep = s > 1e-7 * s_top
    s = s[keep]
    # Scale by the RMS singular value (not the largest): ReLU inputs have a dominant mean
    # direction, and balancing the bulk of the spectrum against U = Z converges much faster.
    s_max = float(s.square().mean().sqrt())
    if Q is None:
        Q = (X.T @ P[:, keep]) / s
    else:
        Q = Q[:, keep]
    return Q, s, s_max


def _build_admm(p: ConvexProblem, dtype: torch.dtype) -> tuple[ScaledProblem, Tensor | None, float]:
    X, Y, b, ceiling, linear = p.X, p.Y, p.b, p.ceiling, p.linear
    Q, s, s_max = _spectral(X)
    sc = (s / s_max).to(dtype)
    active = torch.ones_like(Y, dtype=torch.bool) if linear else (Y > 0)
    cnt = int(active.sum())
    t = float(torch.linalg.vector_norm(Y[active])) / cnt**0.5 if cnt else 0.0
    t = t if t > 0 else 1.0
    y_abs = float(Y[active].abs().max()) if cnt else 0.0
    T = ((Y - b) / t).to(dtype)
    c = ((-b if ceiling is None else ceiling - b) / t).to(dtype)  # (n,) or (N, n)
    mask = None if linear else (Y > 0)
    Qd = Q.to(dtype)
    # both forms share the scaled targets and ceiling, the active mask and the tolerances
    scaled = partial(ScaledProblem, T=T, c=c, mask=mask, eps=p.eps / t, Yabs=y_abs / t)
    if p.objective == "nuclear":
        # Reduced coordinates U = Q Ut (exact for the nuclear norm: projecting U onto the row
        # space of X keeps XU and never increases ||U||_*), so A^T A = diag(s^2) is diagonal.
        A = ((X @ Q) / s_max).to(dtype)
        inv = 1.0 / (1.0 + sc**2)
        prob = scaled(
            fwd=lambda U: A @ U,
            adj=lambda V: A.T @ V,
            solve=lambda R: R * inv[:, None],
            m=int(Q.shape[1]),
        )
        return prob, Qd, t / s_max
    Xs = (X / s_max).to(dtype)
    w = (sc**2 / (1.0 + sc**2))[:, None]
    prob = scaled(
        fwd=lambda U: Xs @ U,
        adj=lambda V: Xs.T @ V,
        solve=lambda R: R - Qd @ (w * (Qd.T @ R)),
        m=int(X.shape[1]),
    )
    return prob, None, t / s_max


def _warm(
    warm_start: Any,
    basis: Tensor | None,
    scale: float,
    prob: ScaledProblem,
    dtype: torch.dtype,
    d: int,
) -> ADMMState | Tensor | None:
    n = prob.T.shape[1]
    if warm_start is None:
        return None
    if isinstance(warm_start, LayerSolveResult):
        st = warm_start.extras.get("admm_state")
        warm_start = st if st is not None else warm_start.U
    if isinstance(warm_start, ADMMState):
        ok = warm_start.Z.shape == (prob.m, n) and warm_start.V.shape == prob.T.shape
        if ok and abs(warm_start.scale - scale) <= 1e-9 * scale:
            return ADMMState(
                *(
                    t.to(dtype)
                    for t in (
                        warm_start.U,
                        warm_start.Z,
                        warm_start.V,
                        warm_start.L1,
                        warm_start.L2,
                    )
                ),
                rho=warm_start.rho,
                scale=scale,
            )
        warm_start = None if not ok else warm_start.Z * (warm_start.scale / scale)
        return None if warm_start is None else warm_start.to(dtype)
    if not isinstance(warm_start, Tensor) or tuple(warm_start.shape) != (d, n):
        raise ConfigError(
            f"The 'warm_start' parameter must be a ({d}, {n}) tensor U, a LayerSolveResult or an "
            f"ADMMState of the same layer. Got {getattr(warm_start, 'shape', type(warm_start))}."
        )
    U0 = warm_start.detach().to("cpu", torch.float64)
    Z0 = (basis.to(torch.float64).T @ U0 if basis is not None else U0) / scale
    return Z0.to(dtype)


@dataclass(frozen=True)
class _Raw:
    """What a backend hands back: ``U`` (float64, original units) and how the run ended.

    ``outcome``: ``"solved"``, ``"inaccurate"`` (solved to a loose accuracy), ``"stalled"`` (no
    progress: infeasible if the returned ``U`` is), ``"infeasible"`` (certified) or
    ``"max_iter"``.
    """

    U: Tensor
    iterations: int
    native: str
    outcome: str
    sv: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def _run_admm(p: ConvexProblem, options: ADMMOptions, warm_start: Any) -> _Raw:
    dtype = torch.float64 if options.dtype == "float64" else torch.float32
    prob, basis, scale = _build_admm(p, dtype)
    init = _warm(warm_start, basis, scale, prob, dtype, p.X.shape[1])
    out = run_admm(prob, p.objective, options, init, scale)
    Z = out["Z"].to(torch.float64)
    U = scale * (basis.to(torch.float64) @ Z if basis is not None else Z)
    sv = out["sv"].to(torch.float64) * scale if p.objective == "nuclear" else None
    extras = {key: out[key] for key in ("r_prim", "r_dual", "rho")}
    if out["state"] is not None:
        extras["admm_state"] = out["state"]
    native = "converged" if out["converged"] else ("stalled" if out["stalled"] else "max_iter")
    outcome = "solved" if native == "converged" else native
    return _Raw(U, int(out["iterations"]), native, outcome, sv, extras)


def _run_cvxpy(p: ConvexProblem, options: CvxpyOptions, warm_start: Any) -> _Raw:
    out = solve_cvxpy(
        p,
        scs_eps=options.eps,
        max_iters=options.max_iters,
        time_limit=options.time_limit,
        verbose=options.verbose,
    )
    native = out["status"]
    d, n = p.X.shape[1], p.Y.shape[1]
    if out["U"] is None:
        U = torch.zeros(d, n, dtype=torch.float64)
        outcome = "infeasible" if native.startswith("infeasible") else "max_iter"
    else:
        U = torch.from_numpy(out["U"])
        outcome = {"optimal": "solved", "optimal_inaccurate": "inaccurate"}.get(native)
        if outcome is None:
            outcome = "infeasible" if native.startswith("infeasible") else "max_iter"
    extras = {"scs_solve_time": out["solve_time"]}
    return _Raw(U, out["iterations"], native, outcome, None, extras)


def _keep_state(options: ADMMOptions) -> ADMMOptions:
    return replace(options, keep_state=True)


CONVEX_BACKENDS: Mapping[str, Backend] = MappingProxyType(
    {
        "admm": Backend(
            "admm",
            ADMMOptions,
            _run_admm,
            warm_start=True,
            exact_zeros=True,
            keep_state=_keep_state,
        ),
        "cvxpy": Backend("cvxpy", CvxpyOptions, _run_cvxpy),
    }
)
"""The backend table of the eps-constrained problem (DDLR, Net-Trim): the one place where a
backend name becomes code."""

BACKENDS: tuple[str, ...] = tuple(CONVEX_BACKENDS)


def convex_capabilities(objective: str, *, factor_output: bool) -> Capabilities:
    """What every solver of the eps-constrained problem declares: ``objective`` under the fit
    ball and the inactive bound of eq. (4), the backends of :data:`CONVEX_BACKENDS`, warm
    starts."""
    return Capabilities(
        objective=objective,
        constraints=("fit_ball", "relu_inactive"),
        backends=BACKENDS,
        warm_start=True,
        factor_output=factor_output,
    )


#: status of the result from (backend outcome, returned ``U`` feasible within ``feas_tol``)
_STATUS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "solved": ("optimal", "optimal_inaccurate"),
        "inaccurate": ("optimal_inaccurate", "optimal_inaccurate"),
        "stalled": ("max_iter", "infeasible"),
        "infeasible": ("infeasible", "infeasible"),
        "max_iter": ("max_iter", "max_iter"),
    }
)


def solve_layer(
    problem: LayerProblem,
    call: SolveCall,
    *,
    objective: str,
    owner: str,
    eps_frac: float,
    zero_tol: float = 0.0,
) -> LayerSolveResult:
    """Solve one eps-constrained layer problem (see :mod:`compactnn.solvers.layerwise.problem`)
    with a backend row of :data:`CONVEX_BACKENDS` and its (checked) options (``call``)."""
    t0 = time.perf_counter()
    linear, layer, backend, options = problem.linear, call.layer, call.backend, call.options
    check_bool(linear, "linear", owner)
    X, Y, b = check_problem(problem.X, problem.Y, problem.bias, owner, layer)
    ceiling = check_ceiling(problem.ceiling, Y, owner, layer)
    eps = epsilon_from_frac(X, eps_frac, owner)
    where = owner + (f" (layer '{layer}')" if layer else "")
    lb = masked_ls_residual(X, Y, b, linear)
    extras: dict[str, Any] = {"eps": eps, "eps_frac": float(eps_frac), "linear": linear}
    extras["masked_ls_residual"] = lb
    if lb is not None and lb > eps * (1.0 + options.feas_tol):
        raise InfeasibleError(
            f"{where}: infeasible: even the best least-squares fit leaves a masked residual "
            f"{lb:.4g} > epsilon {eps:.4g} (eps_frac={eps_frac}). Increase eps_frac to at least "
            f"{lb / float(torch.linalg.vector_norm(X)):.4g}, or check that Y belongs to X."
        )
    d, n = X.shape[1], Y.shape[1]
    p = ConvexProblem(X, Y, b, eps, objective, linear, ceiling)
    raw: _Raw = backend.run(p, options, call.warm_start if backend.warm_start else None)
    U, sv, native = raw.U, raw.sv, raw.native
    extras.update(raw.extras)
    extras["native_status"] = native
    if objective == "l1" and zero_tol > 0:
        U = torch.where(
            U.abs() <= zero_tol * float(U.abs().max()), torch.zeros((), dtype=U.dtype), U
        )
    viol, eq, ineq = constraint_violation(X @ U, Y, b, eps, linear, ceiling)
    extras["eq_violation"], extras["ineq_violation"] = eq, ineq
    if objective == "nuclear":
        if sv is None or min(d, n) <= 1024:
            sv = torch.linalg.svdvals(U)
        objective_value = float(sv.sum())
        extras["singular_values"] = sv
    else:
        objective_value = float(U.abs().sum())
        extras["nnz"] = int((U != 0).sum())
    feasible = viol <= options.feas_tol
    status = _STATUS[raw.outcome][0 if feasible else 1]
    if status == "infeasible" and options.raise_on_infeasible:
        raise InfeasibleError(
            f"{where}: the constraint set of eq. (4) looks empty (backend '{backend.name}': "
            f"{native}; relative violation {viol:.3g} at the last iterate, epsilon {eps:.4g}). "
            "Increase eps_frac or check the inputs (a sample with Y <= 0 that the bias alone "
            "forces positive cannot be matched)."
        )
    return LayerSolveResult(
        U=U,
        status=status,
        objective=objective_value,
        constraint_violation=viol,
        iterations=raw.iterations,
        seconds=time.perf_counter() - t0,
        backend=backend.name,
        extras=extras,
    )


@dataclass(frozen=True)
class EpsConstrainedSolver(LayerSolver):
    r"""Base of the solvers of :math:`\min f(U)` s.t. eq. (4) (DDLR, Net-Trim).

    Attributes:
        eps_frac: :math:`\epsilon = \text{eps\_frac}\cdot\|X\|_F` (checked when solving).
    """

    eps_frac: float = 0.1

    backend_table: ClassVar[Mapping[str, Backend]] = CONVEX_BACKENDS

    def _zero_tol(self, backend: Backend) -> float:
        """Clean-up threshold of the l1 solution (0: none)."""
        return 0.0

    def _solve(self, problem: LayerProblem, call: SolveCall) -> LayerSolveResult:
        return self._solve_at(problem, call, self.eps_frac)

    def _solve_at(
        self, problem: LayerProblem, call: SolveCall, eps_frac: float
    ) -> LayerSolveResult:
        """:func:`solve_layer` with this solver's objective, name and clean-up, at
        ``eps_frac``."""
        return solve_layer(
            problem,
            call,
            objective=self.capabilities.objective,
            owner=self.owner,
            eps_frac=eps_frac,
            zero_tol=self._zero_tol(call.backend),
        )
