"""The one ADMM / AULM driver: :func:`run_admm`, shared by every training-based method.

``ssr`` runs it once per layer (Lin et al., Algorithm 1 lines 4-9), ``admm-sparse`` once per μ
of its path, warm-started from the previous μ (Kiaee et al., Algorithm 1 lines 5-10).

Optimizer state across outer iterations (one rule for every W-step of the package): **each
W-step starts from a fresh optimizer**, so SGD momentum buffers are zero at the start of every
outer iteration. The W-subproblem changes after every F- and dual step (its target
F̂ − Ŷ/ρ moves), so a velocity accumulated on the previous subproblem is not carried over.
:func:`compactnn.solvers.training.sgd_w_step` and the methods' W-steps (one
:func:`compactnn.train.train` call per outer iteration) follow it.

References:
    Kiaee et al. (2016) Algorithm 1 lines 5-10; Lin et al. (2019) Algorithm 1 lines 4-9.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from compactnn import distributed
from compactnn.errors import ConfigError
from compactnn.solvers.training.admm import ADMMEngine, ADMMState

__all__ = ["ADMMResult", "run_admm"]


@dataclass(frozen=True)
class ADMMResult:
    """Outcome of :func:`run_admm`.

    Attributes:
        trace: one history entry per outer iteration of this run (see
            :meth:`ADMMEngine.dual_step`), the stopping test made on the last one.
        n_iter: outer iterations run.
        converged: whether the stopping rule was met before ``config.max_outer``.
        engine: the engine (its state holds F, Y).
    """

    trace: tuple[dict[str, Any], ...]
    n_iter: int
    converged: bool
    engine: ADMMEngine

    @property
    def masks(self) -> dict[str, Tensor]:
        """Boolean element masks of the non-zero groups of F (True = kept)."""
        return self.engine.masks()


def run_admm(
    engine: ADMMEngine,
    w_step: Callable[[int], None],
    *,
    warm_start: ADMMEngine | ADMMState | None = None,
    after_f_step: Callable[[ADMMEngine], None] | None = None,
    on_iteration: Callable[[ADMMEngine, dict[str, Any]], None] | None = None,
    progress: bool = False,
    desc: str = "ADMM",
) -> ADMMResult:
    """Run outer ADMM / AULM iterations until the stopping rule or ``config.max_outer``.

    Iteration ``k`` (0-based within this call) is ``w_step(k)``, :meth:`ADMMEngine.f_step`,
    ``after_f_step(engine)``, :meth:`ADMMEngine.dual_step`, ``on_iteration(engine, stats)``,
    then the stopping test :meth:`ADMMEngine.converged`. The parameters are left as the last
    W-step made them; to prune, apply the masks (:func:`compactnn.solvers.training.apply_masks`)
    and fine-tune with them attached (Kiaee Alg. 1 line 11, Lin Alg. 1 lines 10-12).

    Args:
        engine: the engine (parameters + :class:`ADMMConfig`); a used engine continues from
            its state.
        w_step: ``w_step(k)`` approximately minimises the task loss + ``engine.penalty_loss()``
            in the parameters; ``k`` lets it derive per-iteration seeds. Build a fresh
            optimizer in every call (the module's momentum rule).
        warm_start: start from this engine's (or state's) F and Y instead of F = W, Y = 0
            (:meth:`ADMMEngine.warm_start`; Kiaee Alg. 1 line 5).
        after_f_step: F-step variant between the F- and the dual step, acting through
            :meth:`ADMMEngine.prox_input` / :meth:`ADMMEngine.set_f` (Kiaee's over-pruning
            guard, sec. 4.1).
        on_iteration: called with the engine and the iteration's history entry (statistics,
            traces, logging).
        progress: show a tqdm bar.
        desc: label of the bar.

    Returns:
        An :class:`ADMMResult`.

    Under torch.distributed the W-step is data-parallel (DDP, see :func:`compactnn.train.train`)
    and the F- and dual steps run on every rank on the synchronised parameters; with
    ``COMPACTNN_DDP_CHECK=1`` F, Y and W are compared across ranks after every iteration.

    Raises:
        ConfigError: ``engine`` is not an :class:`ADMMEngine` or ``w_step`` is not callable.
        DistributedError: (checks on) F, Y or W differ across ranks.

    References:
        Kiaee et al. (2016) Algorithm 1 lines 5-10; Lin et al. (2019) Algorithm 1 lines 4-9.
    """
    from tqdm.auto import tqdm

    if not isinstance(engine, ADMMEngine):
        raise ConfigError(
            f"run_admm expects an ADMMEngine as 'engine'. Got {type(engine).__name__} instead."
        )
    if not callable(w_step):
        raise ConfigError("The 'w_step' argument of run_admm must be callable as w_step(k).")
    if warm_start is not None:
        engine.warm_start(warm_start)
    trace: list[dict[str, Any]] = []
    done = False
    with tqdm(total=engine.config.max_outer, desc=desc, disable=not progress, leave=False) as bar:
        for k in range(engine.config.max_outer):
            stats = engine.step_outer(lambda k=k: w_step(k), after_f_step=after_f_step)
            trace.append(stats)
            if on_iteration is not None:
                on_iteration(engine, stats)
            _check_ranks(engine, f"{desc} iteration {k + 1}")
            bar.update(1)
            # refresh=False: update() redraws at most every mininterval; off a TTY a forced
            # refresh would write one line per outer iteration
            bar.set_postfix(refresh=False, primal=f"{stats['primal_residual']:.3g}",
                            dF=f"{stats['f_change']:.3g}",
                            nnz=f"{stats['nnz_groups']}/{stats['total_groups']}")  # fmt: skip
            if engine.converged():
                done = True
                break
    return ADMMResult(trace=tuple(trace), n_iter=len(trace), converged=done, engine=engine)


def _check_ranks(engine: ADMMEngine, where: str) -> None:
    """Under torch.distributed with checks on (``COMPACTNN_DDP_CHECK=1``): the F-step and dual
    update (F, Y) and the parameters they act on are the same on every rank."""
    if not distributed.check_enabled():
        return
    st = engine.state
    tensors = {f"W[{n}]": p for n, p in engine.params.items()}
    tensors.update({f"F[{n}]": t for n, t in st.F.items()})
    tensors.update({f"Y[{n}]": t for n, t in st.Y.items()})
    distributed.check_synced(tensors, where)
