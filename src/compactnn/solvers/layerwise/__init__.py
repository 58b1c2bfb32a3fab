"""Layer-wise solvers behind one interface (:class:`LayerSolver`, declared :class:`Capabilities`,
registry :func:`get_layer_solver` / :func:`list_layer_solvers`): DDLR (nuclear norm) and
Net-Trim (l1), backends "admm" and "cvxpy".

References:
    Papadimitriou & Jain (2021), "Data-Driven Low-Rank Neural Network Compression", eqs. (2)-(4),
    Algorithm 1, sec. 3.2, sec. 4.
"""

from __future__ import annotations

from compactnn.solvers.layerwise._admm import ADMMOptions, ADMMState, soft_threshold, svt
from compactnn.solvers.layerwise._solve import (
    BACKENDS,
    CONVEX_BACKENDS,
    CvxpyOptions,
    EpsConstrainedSolver,
)
from compactnn.solvers.layerwise.base import (
    CONSTRAINTS,
    Backend,
    Capabilities,
    LayerSolver,
    SolveCall,
)
from compactnn.solvers.layerwise.ddlr import (
    DDLR_EPS_FRACS,
    DDLRSolver,
    choose_rank,
    factorize,
    solve_ddlr,
)
from compactnn.solvers.layerwise.net_trim import NetTrimSolver, solve_net_trim
from compactnn.solvers.layerwise.parallel import dask_client, local_cluster, solve_layers
from compactnn.solvers.layerwise.problem import (
    STATUSES,
    LayerProblem,
    LayerSolveResult,
    constraint_violation,
)
from compactnn.solvers.layerwise.registry import (
    LAYER_SOLVERS,
    eps_path,
    get_layer_solver,
    list_layer_solvers,
)
from compactnn.solvers.layerwise.slr import SLRAdmmOptions, SLRCvxpyOptions, SLRSolver

__all__ = [
    "BACKENDS",
    "CONSTRAINTS",
    "CONVEX_BACKENDS",
    "DDLR_EPS_FRACS",
    "LAYER_SOLVERS",
    "STATUSES",
    "ADMMOptions",
    "ADMMState",
    "Backend",
    "Capabilities",
    "CvxpyOptions",
    "DDLRSolver",
    "EpsConstrainedSolver",
    "LayerProblem",
    "LayerSolveResult",
    "LayerSolver",
    "NetTrimSolver",
    "SLRAdmmOptions",
    "SLRCvxpyOptions",
    "SLRSolver",
    "SolveCall",
    "choose_rank",
    "constraint_violation",
    "dask_client",
    "eps_path",
    "factorize",
    "get_layer_solver",
    "list_layer_solvers",
    "local_cluster",
    "soft_threshold",
    "solve_ddlr",
    "solve_layers",
    "solve_net_trim",
    "svt",
]
