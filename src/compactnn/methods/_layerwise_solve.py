"""The per-layer pieces of the layer-wise methods' solve: the picklable solve of one layer
(:func:`_solve_one`, sent to joblib / Dask workers), the constraint check of eq. (4) on the
deployed weights, the per-layer solver record and the message of a layer that did not
converge (see :mod:`compactnn.methods.layerwise`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from compactnn.solvers.layerwise import LayerProblem, constraint_violation


def _unconverged(r: Any) -> str:
    """What a layer that did not converge missed: the relative constraint violation of a
    constrained solve (Net-Trim, DDLR), or the ADMM residuals of a penalised one (SLR: no
    constraint, so a violation of 0 said nothing)."""
    ex = r.extras or {}
    if "primal_residual" in ex and not r.constraint_violation:
        return (
            f"{r.status} after {r.iterations} iterations, residuals primal "
            f"{ex['primal_residual']:.3g} / dual {ex['dual_residual']:.3g}"
        )
    return f"{r.status}, relative constraint violation {r.constraint_violation:.3g}"


def _solve_one(
    X: Tensor,
    Y: Tensor,
    bias: Tensor | None,
    *,
    linear: bool,
    layer: str,
    solver: Any,
    per_layer: Mapping[str, Mapping[str, Any]],
    backend: str,
    options: Any,
    ceiling: Tensor | None = None,
) -> Any:
    """Picklable per-layer solve for :func:`~compactnn.solvers.layerwise.solve_layers`: the
    method's :class:`~compactnn.solvers.layerwise.LayerSolver` with this layer's
    hyper-parameters (``per_layer[layer]``, e.g. its ``eps_frac``)."""

    return solver.with_params(**per_layer.get(layer, {})).solve(
        LayerProblem(X, Y, bias, linear, ceiling), backend=backend, options=options, layer=layer
    )


def _deployed_violation(prob: Any, Ut: Tensor, eps: float, bias: Tensor | None = None) -> float:
    """Relative violation of eq. (4) by the *deployed* weight ``Ut`` (d x n), e.g. after the
    rank truncation (the solver's ``violation`` is measured before it), with the deployed
    ``bias`` (``None``: the problem's)."""

    X = prob.X.detach().to("cpu", torch.float64)
    Y = prob.Y.detach().to("cpu", torch.float64)
    bias = prob.bias if bias is None else bias
    b = (
        torch.zeros(Y.shape[1], dtype=torch.float64)
        if bias is None
        else bias.detach().to("cpu", torch.float64).reshape(-1)
    )
    V = None if prob.ceiling is None else prob.ceiling.detach().to("cpu", torch.float64)
    XU = X @ Ut.to(torch.float64)
    return float(constraint_violation(XU, Y, b, eps, prob.linear, V)[0])


def _stats(res: Any) -> dict[str, Any]:
    return {
        "status": res.status,
        "objective": float(res.objective),
        "violation": float(res.constraint_violation),
        "iterations": int(res.iterations),
        "seconds": float(res.seconds),
        "eps": float(res.extras.get("eps", float("nan"))),
        "backend": res.backend,
    }
