"""Registry of the layer-wise solvers: ``{name: LayerSolver subclass}``, a plain dict.

Adding a solver = one :class:`~compactnn.solvers.layerwise.base.LayerSolver` subclass and one
entry here (a method then names it in ``solver_name`` and turns its result into a plan action).
"""

from __future__ import annotations

from typing import Any

from compactnn._validation import raise_unknown
from compactnn.errors import ConfigError
from compactnn.solvers.layerwise.base import Capabilities, LayerSolver
from compactnn.solvers.layerwise.ddlr import DDLRSolver
from compactnn.solvers.layerwise.net_trim import NetTrimSolver
from compactnn.solvers.layerwise.slr import SLRSolver

__all__ = ["LAYER_SOLVERS", "get_layer_solver", "list_layer_solvers"]

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
