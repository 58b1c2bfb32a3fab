"""Per-layer parallel execution (Algorithm 1 solves each layer independently, sec. 3.2).

Backends: ``"serial"``, ``"joblib"`` (loky worker processes) and ``"dask"`` (a
``distributed.Client``). Each worker runs with one torch thread; only the layer's own tensors are
sent to it (the solver must be picklable: a registry name, a
:class:`~compactnn.solvers.layerwise.base.LayerSolver` or a callable such as
``functools.partial(solve_ddlr, eps_frac=0.1)``), and the ADMM warm-start state is not sent back
unless asked for.

References:
    Papadimitriou & Jain (2021), Algorithm 1 and sec. 3.2 ("allows for parallel implementation").
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from compactnn._validation import check_bool, check_choice, check_int
from compactnn.errors import CompactnnError, ConfigError, SolverError, UnknownNameError
from compactnn.solvers.layerwise.base import LayerSolver
from compactnn.solvers.layerwise.problem import LayerProblem, LayerSolveResult

__all__ = ["solve_layers", "PARALLEL_BACKENDS"]

PARALLEL_BACKENDS: tuple[str, ...] = ("serial", "joblib", "dask")

Solver = Callable[..., LayerSolveResult]


def _with_defaults(
    solver: LayerSolver,
    X: Any,
    Y: Any,
    bias: Any,
    *,
    linear: bool,
    layer: str | None = None,
    ceiling: Any = None,
) -> LayerSolveResult:
    """A :class:`LayerSolver` on its default backend and options (picklable via partial)."""
    return solver.solve(LayerProblem(X, Y, bias, linear, ceiling), layer=layer)


def _resolve(solver: Solver | LayerSolver | str) -> Solver:
    if isinstance(solver, str):
        from compactnn.solvers.layerwise.registry import LAYER_SOLVERS, get_layer_solver

        try:
            solver = get_layer_solver(solver)
        except UnknownNameError:
            raise ConfigError(
                f"The 'solver' parameter of solve_layers must be a registered layer solver "
                f"({', '.join(repr(n) for n in LAYER_SOLVERS)}), a LayerSolver or a callable. "
                f"Got {solver!r} instead."
            ) from None
    if isinstance(solver, LayerSolver):
        return functools.partial(_with_defaults, solver)
    if not callable(solver):
        raise ConfigError(
            "The 'solver' parameter of solve_layers must be a callable, a LayerSolver or a name."
        )
    return solver


def _run_one(solver: Solver, name: str, problem: LayerProblem) -> LayerSolveResult:
    """Worker entry point: one thread, solve, raise errors that name the layer."""
    import torch

    old = torch.get_num_threads()  # restored: the serial backend runs in the caller's process
    torch.set_num_threads(1)
    try:
        # ``ceiling`` only when set: plain ``solver(X, Y, bias, *, linear, layer)`` callables work
        kw = {} if problem.ceiling is None else {"ceiling": problem.ceiling}
        return solver(problem.X, problem.Y, problem.bias, linear=problem.linear, layer=name, **kw)
    except CompactnnError:
        raise
    except Exception as exc:  # a bug or an OOM in a worker: say which layer
        raise SolverError(f"Solving layer '{name}' failed: {type(exc).__name__}: {exc}") from exc
    finally:
        torch.set_num_threads(old)


def solve_layers(
    problems: Mapping[str, LayerProblem],
    solver: Solver | LayerSolver | str,
    *,
    n_jobs: int = 1,
    backend: str = "joblib",
    dask_client: Any = None,
    progress: bool = True,
) -> dict[str, LayerSolveResult]:
    """Solve independent layer problems, possibly in parallel.

    Args:
        problems: ``{dotted layer name: LayerProblem}``.
        solver: A registered layer-solver name (``"ddlr"``, ``"net-trim"``, ...) or a
            :class:`~compactnn.solvers.layerwise.base.LayerSolver` (both run on their default
            backend and options), or a picklable callable
            ``solver(X, Y, bias, *, linear, layer) -> LayerSolveResult``.
        n_jobs: Worker processes for joblib (``1`` runs serially in-process).
        backend: ``"serial"``, ``"joblib"`` or ``"dask"``.
        dask_client: A ``distributed.Client`` (required for ``backend="dask"``).
        progress: Show a tqdm bar (one tick per finished layer).

    Returns:
        ``{name: LayerSolveResult}`` in the order of ``problems``.

    Raises:
        ConfigError: Bad options, or a value in ``problems`` that is not a LayerProblem.
        CompactnnError: The first layer that failed (its message names the layer).
    """
    check_choice(backend, "backend", "solve_layers", PARALLEL_BACKENDS)
    n_jobs = check_int(n_jobs, "n_jobs", "solve_layers", min_value=1)
    check_bool(progress, "progress", "solve_layers")
    fn = _resolve(solver)
    items = list(problems.items())
    for name, p in items:
        if not isinstance(p, LayerProblem):
            raise ConfigError(
                f"solve_layers: problems['{name}'] must be a LayerProblem, got {type(p).__name__}."
            )
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), desc="layer solves", disable=not progress)
    out: dict[str, LayerSolveResult] = {}
    try:
        if backend == "serial" or (backend == "joblib" and n_jobs == 1):
            for name, p in items:
                out[name] = _run_one(fn, name, p)
                bar.update(1)
        elif backend == "joblib":
            from joblib import Parallel, delayed

            par = Parallel(n_jobs=n_jobs, backend="loky", return_as="generator")
            gen = par(delayed(_run_one)(fn, name, p) for name, p in items)
            for (name, _), res in zip(items, gen):
                out[name] = res
                bar.update(1)
        else:
            if dask_client is None:
                raise ConfigError(
                    "solve_layers: backend='dask' needs a distributed.Client in 'dask_client' "
                    "(e.g. Client(LocalCluster(n_workers=2, threads_per_worker=1)))."
                )
            from distributed import as_completed

            futures = {
                dask_client.submit(
                    _run_one, fn, name, p, key=f"compactnn-layer-{i}-{name}", pure=False
                ): name
                for i, (name, p) in enumerate(items)
            }
            done: dict[str, LayerSolveResult] = {}
            for fut in as_completed(list(futures)):
                done[futures[fut]] = fut.result()
                bar.update(1)
            out = {name: done[name] for name, _ in items}
    finally:
        bar.close()
    return out
