"""Convex layer-wise solvers: DDLR (nuclear norm) and Net-Trim (l1), backends "admm" and "cvxpy".

References:
    Papadimitriou & Jain (2021), "Data-Driven Low-Rank Neural Network Compression", eqs. (2)-(4),
    Algorithm 1, sec. 3.2, sec. 4.
"""

from __future__ import annotations

from compactnn.solvers.layerwise._admm import ADMMOptions, ADMMState, soft_threshold, svt
from compactnn.solvers.layerwise._solve import BACKENDS, CvxpyOptions
from compactnn.solvers.layerwise.ddlr import (
    DDLR_EPS_FRACS,
    choose_rank,
    eps_path,
    factorize,
    solve_ddlr,
)
from compactnn.solvers.layerwise.net_trim import solve_net_trim
from compactnn.solvers.layerwise.parallel import solve_layers
from compactnn.solvers.layerwise.problem import (
    STATUSES,
    LayerProblem,
    LayerSolveResult,
    constraint_violation,
)

__all__ = [
    "BACKENDS",
    "DDLR_EPS_FRACS",
    "STATUSES",
    "ADMMOptions",
    "ADMMState",
    "CvxpyOptions",
    "LayerProblem",
    "LayerSolveResult",
    "choose_rank",
    "constraint_violation",
    "eps_path",
    "factorize",
    "soft_threshold",
    "solve_ddlr",
    "solve_layers",
    "solve_net_trim",
    "svt",
]
