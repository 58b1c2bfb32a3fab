"""Per-layer parallel execution (Algorithm 1 solves each layer independently, sec. 3.2).

Backends: ``"serial"``, ``"joblib"`` (loky worker processes) and ``"dask"`` (a
``distributed.Client``: a :class:`distributed.LocalCluster` or a remote scheduler, see
:func:`dask_client`). Each worker runs with one torch thread; only the layer's own tensors are
sent to it (the solver must be picklable: a registry name, a
:class:`~compactnn.solvers.layerwise.base.LayerSolver` or a callable such as
``functools.partial(solve_ddlr, eps_frac=0.1)``), and the ADMM warm-start state is not sent back
unless asked for.

On Dask the data moves as follows:

* the solver callable (with every layer's hyper-parameters) is scattered **once per worker**
  (``broadcast=True``) and every task reuses that future;
* each layer's :class:`~compactnn.solvers.layerwise.LayerProblem` (its captured ``X``, ``Y`` and
  bias, on CPU) is scattered **once**, straight from the client to one worker (never through the
  scheduler or the task graph), solved there, and released as soon as its result is back;
* at most ``max_in_flight`` layers (default: the cluster's worker threads) are on the cluster at
  a time, the next one scattered when one finishes. So a worker thread holds one layer's
  ``X``, ``Y`` and its solver workspace at a time (a few copies of ``N x (d + n)``), whatever
  the number of layers; the client holds every captured layer (``max_rows`` rows each).

References:
    Papadimitriou & Jain (2021), Algorithm 1 and sec. 3.2 ("allows for parallel implementation").
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from compactnn._validation import check_bool, check_choice, check_float, check_int
from compactnn.errors import CompactnnError, ConfigError, SolverError, UnknownNameError
from compactnn.solvers.layerwise.base import LayerSolver
from compactnn.solvers.layerwise.problem import LayerProblem, LayerSolveResult
from compactnn.solvers.layerwise.registry import LAYER_SOLVERS, get_layer_solver

__all__ = ["solve_layers", "dask_client", "local_cluster", "PARALLEL_BACKENDS"]

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


def _import_distributed(owner: str) -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ConfigError(
            f"{owner}: parallel='dask' needs the optional 'distributed' package "
            "(pip install 'dask[distributed]', pinned in requirements/extras.txt), or use "
            "parallel='joblib' / 'serial'."
        ) from exc
    return distributed


def _check_main_guard(owner: str) -> None:
    """Refuse to start worker processes from a script without an ``if __name__ ==
    "__main__":`` guard: they are spawned, re-import the script and would start clusters of their
    own (Dask then retries for ever instead of failing)."""
    import ast
    import sys

    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not path or not str(path).endswith(".py"):
        return  # python -c, a notebook, an interactive session, a console entry point
    try:
        tree = ast.parse(open(path, encoding="utf-8").read())  # noqa: SIM115
    except (OSError, SyntaxError, ValueError):
        return
    for node in tree.body:
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test):
            return
    raise ConfigError(
        f"{owner}: parallel='dask' without 'scheduler' starts local worker processes, which "
        f"re-import your script {path!r}; put the code that calls compactnn under "
        '`if __name__ == "__main__":` (as for any multiprocessing), or pass scheduler= '
        "the address of a running Dask scheduler."
    )


def local_cluster(n_workers: int, owner: str = "solve_layers") -> Any:
    """A :class:`distributed.LocalCluster` of ``n_workers`` single-threaded worker processes,
    every socket bound to ``127.0.0.1`` (scheduler, workers, nannies and the scheduler's
    health/metrics HTTP server, on a free port), the dashboard off.

    The workers are spawned without ``MALLOC_TRIM_THRESHOLD_`` (Dask's nanny sets it to 65536 by
    default, which fixes glibc's mmap threshold: every large tensor of the solver iterations is
    then mmap-ed and unmapped, and a DDLR solve ran 2x slower than in the caller's process).
    """
    import dask

    distributed = _import_distributed(owner)
    _check_main_guard(owner)
    with dask.config.set({f"{_PRE_SPAWN}.{_TRIM}": None}):
        return distributed.LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
        )


_PRE_SPAWN = "distributed.nanny.pre-spawn-environ"
_TRIM = "MALLOC_TRIM_THRESHOLD_"


def _warn_malloc_trim(client: Any, addr: str) -> None:
    """Warn when the workers run with a fixed malloc trim threshold (see :func:`local_cluster`)."""
    import os
    import warnings

    try:
        envs = client.run(os.environ.get, _TRIM)
    except Exception:  # pragma: no cover - a worker that cannot run it: no warning
        return
    bad = sorted(w for w, v in envs.items() if v is not None)
    if bad:
        warnings.warn(
            f"{len(bad)} Dask worker(s) of '{addr}' run with {_TRIM}={envs[bad[0]]} (the nanny's "
            "default), which fixes glibc's mmap threshold and made the layer solves about 2x "
            f"slower in our measurement. Start the workers with {_PRE_SPAWN}.{_TRIM} set to null "
            "in their Dask config (e.g. ~/.config/dask/distributed.yaml).",
            RuntimeWarning,
            stacklevel=3,
        )


@contextmanager
def dask_client(
    scheduler: str | None = None,
    *,
    n_workers: int = 1,
    timeout: float = 10.0,
    owner: str = "solve_layers",
) -> Iterator[Any]:
    """A ``distributed.Client`` for :func:`solve_layers`, closed on exit.

    Args:
        scheduler: Address of a running Dask scheduler (``"tcp://10.0.0.5:8786"``); the
            client connects to it and leaves the cluster running on exit. ``None`` starts a
            :class:`distributed.LocalCluster` of ``n_workers`` single-threaded worker processes
            bound to ``127.0.0.1`` with the dashboard off, and closes it on exit.
        n_workers: Workers of the local cluster (ignored with ``scheduler``).
        timeout: Seconds to wait for the scheduler to answer.
        owner: Named in error messages (the method).

    Raises:
        ConfigError: ``distributed`` is not installed, or the scheduler did not answer within
            ``timeout`` (the message names the address).
    """
    n_workers = check_int(n_workers, "n_workers", owner, min_value=1)
    timeout = check_float(timeout, "scheduler_timeout", owner, min_value=0.0, min_inclusive=False)
    distributed = _import_distributed(owner)
    if scheduler is None:
        with (
            local_cluster(n_workers, owner) as cluster,
            distributed.Client(cluster, timeout=timeout) as client,
        ):
            yield client
        return
    try:
        client = distributed.Client(scheduler, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ConfigError(
            f"{owner}: could not reach the Dask scheduler at '{scheduler}' within {timeout:g} s "
            f"({type(exc).__name__}: {exc}). Check the 'scheduler' address (start one with "
            "`dask scheduler` and workers with `dask worker ADDRESS --nthreads 1`), raise "
            "scheduler_timeout, or leave scheduler unset for a local cluster."
        ) from None
    with client:
        yield client


def _on_cpu(p: LayerProblem) -> LayerProblem:
    """The problem with CPU tensors (the workers' devices are unknown; the solvers work in
    float64 on CPU anyway). No copy when they already are."""
    b = None if p.bias is None else p.bias.detach().cpu()
    v = None if p.ceiling is None else p.ceiling.detach().cpu()
    return LayerProblem(p.X.detach().cpu(), p.Y.detach().cpu(), b, p.linear, v)


def _address(client: Any) -> str:
    try:
        return str(client.scheduler.address)
    except AttributeError:  # pragma: no cover - a client without a scheduler comm
        return "?"


def _solve_dask(
    items: list[tuple[str, LayerProblem]],
    fn: Solver,
    client: Any,
    max_in_flight: int | None,
    bar: Any,
) -> dict[str, LayerSolveResult]:
    """Scatter-once, bounded-in-flight Dask execution (see the module docstring)."""
    from distributed import as_completed

    addr = _address(client)
    threads = sum(client.nthreads().values())
    if threads == 0:
        raise SolverError(
            f"The Dask cluster at '{addr}' has no workers: start some "
            f"(`dask worker {addr} --nthreads 1`) and run again."
        )
    limit = threads if max_in_flight is None else max_in_flight
    _warn_malloc_trim(client, addr)
    [fn_f] = client.scatter([fn], broadcast=True, hash=False)  # once per worker, reused
    queue = iter(enumerate(items))
    running: dict[Any, tuple[str, Any]] = {}
    ac = as_completed()

    def submit_next() -> None:
        i, (name, p) = next(queue)
        # one layer's tensors, client -> one worker, once (not through the task graph)
        [data] = client.scatter([_on_cpu(p)], hash=False)
        fut = client.submit(
            _run_one, fn_f, name, data, key=f"compactnn-layer-{i}-{name}", pure=False, retries=0
        )
        running[fut] = (name, data)
        ac.add(fut)

    for _ in range(min(limit, len(items))):
        submit_next()
    done: dict[str, LayerSolveResult] = {}
    try:
        for fut in ac:
            name, data = running.pop(fut)
            try:
                done[name] = fut.result()
            except CompactnnError:
                raise
            except Exception as exc:  # a worker died (KilledWorker), lost, or cancelled
                raise SolverError(
                    f"Solving layer '{name}' on the Dask cluster at '{addr}' failed: "
                    f"{type(exc).__name__}: {exc}. A worker running it died or was lost (out of "
                    "memory? check the worker logs); lower max_rows or max_in_flight, or give "
                    "the workers more memory."
                ) from exc
            finally:
                data.release()
                fut.release()
            bar.update(1)
            if len(done) + len(running) < len(items):
                submit_next()
    finally:
        for fut, (_, data) in running.items():
            fut.cancel()
            data.release()
    return {name: done[name] for name, _ in items}


def solve_layers(
    problems: Mapping[str, LayerProblem],
    solver: Solver | LayerSolver | str,
    *,
    n_jobs: int = 1,
    backend: str = "joblib",
    dask_client: Any = None,
    max_in_flight: int | None = None,
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
        dask_client: A ``distributed.Client`` (required for ``backend="dask"``; see
            :func:`dask_client`).
        max_in_flight: Dask only: layers whose data are on the cluster at once (``None``: the
            cluster's worker threads). Bounds the workers' memory (see the module docstring).
        progress: Show a tqdm bar (one tick per finished layer).

    Returns:
        ``{name: LayerSolveResult}`` in the order of ``problems``.

    Raises:
        ConfigError: Bad options, or a value in ``problems`` that is not a LayerProblem.
        CompactnnError: The first layer that failed (its message names the layer; on Dask a
            lost worker is a SolverError naming the layer and the scheduler).
    """
    check_choice(backend, "backend", "solve_layers", PARALLEL_BACKENDS)
    n_jobs = check_int(n_jobs, "n_jobs", "solve_layers", min_value=1)
    check_bool(progress, "progress", "solve_layers")
    if max_in_flight is not None:
        max_in_flight = check_int(max_in_flight, "max_in_flight", "solve_layers", min_value=1)
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
            out = _solve_dask(items, fn, dask_client, max_in_flight, bar)
    finally:
        bar.close()
    return out
