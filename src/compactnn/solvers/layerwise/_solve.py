"""Shared front end of :func:`solve_ddlr` and :func:`solve_net_trim`: validation, epsilon,
infeasibility pre-check, backend dispatch and the result (measured on the returned ``U``).

References:
    Papadimitriou & Jain (2021), eq. (4), sec. 4 (epsilon = frac * ||Y_{l-1}||_F).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

from compactnn._validation import check_bool, check_choice, check_float, check_int
from compactnn.errors import ConfigError, InfeasibleError
from compactnn.solvers.layerwise._admm import ADMMOptions, ADMMState, ScaledProblem, run_admm
from compactnn.solvers.layerwise.problem import (
    LayerSolveResult,
    check_problem,
    constraint_violation,
    epsilon_from_frac,
    masked_ls_residual,
)

__all__ = ["CvxpyOptions", "solve_layer", "BACKENDS"]

BACKENDS: tuple[str, ...] = ("admm", "cvxpy")


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


def _build_admm(
    X: Tensor, Y: Tensor, b: Tensor, eps: float, objective: str, linear: bool, dtype: torch.dtype
) -> tuple[ScaledProblem, Tensor | None, float]:
    N, n = Y.shape
    Q, s, s_max = _spectral(X)
    sc = (s / s_max).to(dtype)
    active = torch.ones_like(Y, dtype=torch.bool) if linear else (Y > 0)
    cnt = int(active.sum())
    t = float(torch.linalg.vector_norm(Y[active])) / cnt**0.5 if cnt else 0.0
    t = t if t > 0 else 1.0
    y_abs = float(Y[active].abs().max()) if cnt else 0.0
    T = ((Y - b) / t).to(dtype)
    c = (-b / t).to(dtype)
    mask = None if linear else (Y > 0)
    Qd = Q.to(dtype)
    if objective == "nuclear":
        # Reduced coordinates U = Q Ut (exact for the nuclear norm: projecting U onto the row
        # space of X keeps XU and never increases ||U||_*), so A^T A = diag(s^2) is diagonal.
        A = ((X @ Q) / s_max).to(dtype)
        inv = 1.0 / (1.0 + sc**2)
        prob = ScaledProblem(
            fwd=lambda U: A @ U,
            adj=lambda V: A.T @ V,
            solve=lambda R: R * inv[:, None],
            m=int(Q.shape[1]),
            T=T,
            c=c,
            mask=mask,
            eps=eps / t,
            Yabs=y_abs / t,
        )
        return prob, Qd, t / s_max
    Xs = (X / s_max).to(dtype)
    w = (sc**2 / (1.0 + sc**2))[:, None]
    prob = ScaledProblem(
        fwd=lambda U: Xs @ U,
        adj=lambda V: Xs.T @ V,
        solve=lambda R: R - Qd @ (w * (Qd.T @ R)),
        m=int(X.shape[1]),
        T=T,
        c=c,
        mask=mask,
        eps=eps / t,
        Yabs=y_abs / t,
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


def solve_layer(
    X: Tensor,
    Y: Tensor,
    bias: Tensor | None,
    *,
    objective: str,
    owner: str,
    eps_frac: float,
    backend: str,
    options: ADMMOptions | CvxpyOptions | None,
    linear: bool,
    warm_start: Any,
    layer: str | None,
    zero_tol: float = 0.0,
) -> LayerSolveResult:
    """Solve one layer problem (see :mod:`compactnn.solvers.layerwise.problem`)."""
    t0 = time.perf_counter()
    check_choice(backend, "backend", owner, BACKENDS)
    check_bool(linear, "linear", owner)
    if options is None:
        options = ADMMOptions() if backend == "admm" else CvxpyOptions()
    want = ADMMOptions if backend == "admm" else CvxpyOptions
    if not isinstance(options, want):
        raise ConfigError(
            f"The 'options' parameter of {owner} must be a {want.__name__} for backend="
            f"'{backend}'. Got {type(options).__name__} instead."
        )
    X, Y, b = check_problem(X, Y, bias, owner, layer)
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
    sv = None
    if backend == "admm":
        options = cast(ADMMOptions, options)
        dtype = torch.float64 if options.dtype == "float64" else torch.float32
        prob, basis, scale = _build_admm(X, Y, b, eps, objective, linear, dtype)
        init = _warm(warm_start, basis, scale, prob, dtype, d)
        out = run_admm(prob, objective, options, init, scale)
        Z = out["Z"].to(torch.float64)
        U = scale * (basis.to(torch.float64) @ Z if basis is not None else Z)
        if objective == "nuclear":
            sv = out["sv"].to(torch.float64) * scale
        iterations = int(out["iterations"])
        for key in ("r_prim", "r_dual", "rho"):
            extras[key] = out[key]
        if out["state"] is not None:
            extras["admm_state"] = out["state"]
        native = "converged" if out["converged"] else ("stalled" if out["stalled"] else "max_iter")
    else:
        from compactnn.solvers.layerwise._cvxpy import solve_cvxpy

        options = cast(CvxpyOptions, options)
        out = solve_cvxpy(
            X,
            Y,
            b,
            eps,
            objective=objective,
            linear=linear,
            scs_eps=options.eps,
            max_iters=options.max_iters,
            time_limit=options.time_limit,
            verbose=options.verbose,
        )
        native = out["status"]
        iterations = out["iterations"]
        U = (
            torch.zeros(d, n, dtype=torch.float64)
            if out["U"] is None
            else torch.from_numpy(out["U"])
        )
        extras["scs_solve_time"] = out["solve_time"]
    extras["native_status"] = native
    if objective == "l1" and zero_tol > 0:
        U = torch.where(
            U.abs() <= zero_tol * float(U.abs().max()), torch.zeros((), dtype=U.dtype), U
        )
    viol, eq, ineq = constraint_violation(X @ U, Y, b, eps, linear)
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
    if backend == "admm":
        if native == "converged":
            status = "optimal" if feasible else "optimal_inaccurate"
        else:
            status = "infeasible" if (native == "stalled" and not feasible) else "max_iter"
    else:
        if native == "optimal" and out["U"] is not None:
            status = "optimal" if feasible else "optimal_inaccurate"
        elif native == "optimal_inaccurate" and out["U"] is not None:
            status = "optimal_inaccurate"
        elif native.startswith("infeasible"):
            status = "infeasible"
        else:
            status = "max_iter"
    if status == "infeasible" and options.raise_on_infeasible:
        raise InfeasibleError(
            f"{where}: the constraint set of eq. (4) looks empty (backend '{backend}': "
            f"{native}; relative violation {viol:.3g} at the last iterate, epsilon {eps:.4g}). "
            "Increase eps_frac or check the inputs (a sample with Y <= 0 that the bias alone "
            "forces positive cannot be matched)."
        )
    return LayerSolveResult(
        U=U,
        status=status,
        objective=objective_value,
        constraint_violation=viol,
        iterations=iterations,
        seconds=time.perf_counter() - t0,
        backend=backend,
        extras=extras,
    )
