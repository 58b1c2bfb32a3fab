"""Registry of the layer-wise solvers: ``{name: LayerSolver subclass}``, a plain dict.

Adding a solver = one :class:`~compactnn.solvers.layerwise.base.LayerSolver` subclass and one
entry here (a method then names it in ``solver_name`` and turns its result into a plan action).
:func:`eps_path` solves a registered eps-constrained solver (DDLR, Net-Trim) along increasing
eps fractions; it lives here because it looks the solver up by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from compactnn._validation import raise_unknown
from compactnn.errors import ConfigError
from compactnn.solvers.layerwise._admm import ADMMOptions
from compactnn.solvers.layerwise._solve import CvxpyOptions, EpsConstrainedSolver
from compactnn.solvers.layerwise.base import Capabilities, LayerSolver
from compactnn.solvers.layerwise.ddlr import DDLR_EPS_FRACS, DDLRSolver
from compactnn.solvers.layerwise.net_trim import NetTrimSolver
from compactnn.solvers.layerwise.problem import LayerProblem, LayerSolveResult
from compactnn.solvers.layerwise.slr import SLRSolver

__all__ = ["LAYER_SOLVERS", "eps_path", "get_layer_solver", "list_layer_solvers"]

LAYER_SOLVERS: dict[str, type[LayerSolver]] = {
    DDLRSolver.name: DDLRSolver,
    NetTrimSolver.name: NetTrimSolver,
    SLRSolver.name: SLRSolver,
}


def get_layer_solver(name: str, **params: Any) -> LayerSolver:
    """A layer solver by registry name, with hyper-parameters ``params`` (the rest default).

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists the known ones).
        ConfigError: ``params`` names a parameter the solver does not have.
    """
    cls = LAYER_SOLVERS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise raise_unknown("layer solver", name, LAYER_SOLVERS)
    unknown = sorted(set(params) - set(cls.params()))
    if unknown:
        raise ConfigError(
            f"The '{name}' layer solver has no parameter {unknown[0]!r}. "
            f"Its parameters: {', '.join(cls.params()) or 'none'}."
        )
    return cls(**params)


def list_layer_solvers() -> dict[str, Capabilities]:
    """``{name: capabilities}`` of every registered layer solver, in registration order."""
    return {name: cls.capabilities for name, cls in LAYER_SOLVERS.items()}


def eps_path(
    X: Tensor,
    Y_pre: Tensor,
    bias: Tensor | None,
    eps_fracs: Sequence[float] = DDLR_EPS_FRACS,
    *,
    method: str = "ddlr",
    backend: str = "admm",
    options: ADMMOptions | CvxpyOptions | None = None,
    linear: bool = False,
    layer: str | None = None,
) -> list[LayerSolveResult]:
    """Solve along increasing eps fractions (DDLR, sec. 4), warm-starting each ADMM solve.

    Returns:
        One result per eps fraction, in increasing order of ``eps_frac``.
    """
    cls = LAYER_SOLVERS.get(method) if isinstance(method, str) else None
    if cls is None or not issubclass(cls, EpsConstrainedSolver):
        known = [n for n, c in LAYER_SOLVERS.items() if issubclass(c, EpsConstrainedSolver)]
        raise ConfigError(
            f"eps_path: 'method' must be one of {', '.join(map(repr, known))} (a layer solver "
            f"with an eps_frac). Got {method!r} instead."
        )
    solver = cls()
    row, options = solver.check(backend, options)
    options = row.path_options(options)
    problem = LayerProblem(X, Y_pre, bias, linear)
    results: list[LayerSolveResult] = []
    prev: LayerSolveResult | None = None
    for frac in sorted(eps_fracs):
        res = solver.with_params(eps_frac=frac).solve(
            problem, backend=backend, options=options, warm_start=prev, layer=layer
        )
        results.append(res)
        prev = res
    return results
