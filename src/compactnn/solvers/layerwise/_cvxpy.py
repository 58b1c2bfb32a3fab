r"""CVXPY + SCS backend (the paper's reference solver) for eq. (4) and its Net-Trim twin.

References:
    Papadimitriou & Jain (2021), eq. (4), sec. 3.1 ("can be solved with ... SCS [17]");
    O'Donoghue et al. (2016), SCS.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compactnn.errors import SolverError
from compactnn.solvers.layerwise.problem import ConvexProblem

__all__ = ["solve_cvxpy"]


def _import_cvxpy() -> Any:
    try:
        import cvxpy as cp
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SolverError(
            "The 'cvxpy' backend needs cvxpy and SCS. Install them with "
            "'pip install compactnn[cvxpy]', or use backend='admm'."
        ) from exc
    return cp


def solve_cvxpy(
    p: ConvexProblem,
    *,
    scs_eps: float = 1e-6,
    max_iters: int = 100_000,
    time_limit: float | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Solve the layer problem ``p`` with CVXPY/SCS.

    ``p.ceiling`` (``(N, n)`` or ``None`` = 0) bounds the inactive entries (cascade Net-Trim).

    Returns:
        Dict with ``U`` (numpy ``(d, n)`` or ``None``), ``status`` (CVXPY status string),
        ``iterations`` and ``solve_time``.
    """
    cp = _import_cvxpy()
    Xn = p.X.numpy()
    Yn = p.Y.numpy()
    bn = p.b.numpy()
    d, n = p.X.shape[1], p.Y.shape[1]
    U = cp.Variable((d, n))
    out = Xn @ U + np.ones((Xn.shape[0], 1)) @ bn.reshape(1, n)
    if p.linear:
        cons = [cp.norm(out - Yn, "fro") <= p.eps]
    else:
        M = (Yn > 0).astype(float)
        cons = [cp.norm(cp.multiply(M, out - Yn), "fro") <= p.eps]
        if (M == 0).any():
            bound = 0.0 if p.ceiling is None else np.multiply(1.0 - M, p.ceiling.numpy())
            cons.append(cp.multiply(1.0 - M, out) <= bound)
    f = cp.normNuc(U) if p.objective == "nuclear" else cp.sum(cp.abs(U))
    prob = cp.Problem(cp.Minimize(f), cons)
    kwargs: dict[str, Any] = {"eps_abs": scs_eps, "eps_rel": scs_eps, "max_iters": max_iters}
    if time_limit is not None:
        kwargs["time_limit_secs"] = float(time_limit)
    try:
        prob.solve(solver=cp.SCS, verbose=verbose, **kwargs)
    except cp.error.SolverError as exc:
        raise SolverError(f"SCS failed on the layer problem: {exc}. Try backend='admm'.") from exc
    stats = prob.solver_stats
    return {
        "U": None if U.value is None else np.asarray(U.value, dtype=np.float64),
        "status": str(prob.status),
        "iterations": int(stats.num_iters or 0) if stats is not None else 0,
        "solve_time": float(stats.solve_time or 0.0) if stats is not None else 0.0,
    }
