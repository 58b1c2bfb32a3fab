"""Outer loop of the ADMM / AULM engine: :func:`run_admm` and parameter selection.

References:
    Kiaee et al. (2016) Algorithm 1 lines 6-10; Lin et al. (2019) Algorithm 1 lines 4-9.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from compactnn.errors import ConfigError, UnknownNameError
from compactnn.solvers.training.admm import ADMMConfig, ADMMEngine

__all__ = ["ADMMResult", "resolve_params", "run_admm"]


@dataclass(frozen=True)
class ADMMResult:
    """Outcome of :func:`run_admm`.

    Attributes:
        masks: boolean element masks of the non-zero groups of F (True = kept).
        history: one dict per outer iteration (see :meth:`ADMMEngine.dual_step`).
        converged: whether the stopping rule was met before ``max_outer``.
        n_iter: outer iterations run.
        engine: the engine (its state holds F, Y).
    """

    masks: dict[str, Tensor]
    history: tuple[dict[str, Any], ...]
    converged: bool
    n_iter: int
    engine: ADMMEngine


def resolve_params(
    model: nn.Module, params: Mapping[str, Tensor] | Sequence[str] | None
) -> dict[str, Tensor]:
    """The regularised parameters by dotted name.

    Args:
        model: the network.
        params: a mapping (used as is), a sequence of parameter names of ``model``, or ``None``
            for the weights of every ``nn.Conv*d`` and ``nn.Linear`` module.

    Raises:
        UnknownNameError: a name that is not a parameter of ``model``.
        ConfigError: no parameter to regularise.
    """
    if isinstance(params, Mapping):
        return dict(params)
    named = dict(model.named_parameters())
    if params is None:
        out = {
            f"{mname}.weight" if mname else "weight": m.weight
            for mname, m in model.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
        }
        if not out:
            raise ConfigError(
                f"{type(model).__name__} has no Conv/Linear weight to regularise; pass 'params' "
                "explicitly as {name: parameter}."
            )
        return out
    if isinstance(params, str):
        params = [params]
    unknown = [p for p in params if p not in named]
    if unknown:
        raise UnknownNameError(
            f"Unknown parameter(s) {', '.join(repr(u) for u in unknown)} of "
            f"{type(model).__name__}; use names from model.named_parameters(), e.g. "
            f"{', '.join(repr(n) for n in list(named)[:4])}."
        )
    return {p: named[p] for p in params}


def run_admm(
    model: nn.Module,
    params: Mapping[str, Tensor] | Sequence[str] | None,
    config: ADMMConfig,
    w_step_fn: Callable[[ADMMEngine], None],
    *,
    progress: bool = True,
    engine: ADMMEngine | None = None,
) -> ADMMResult:
    """Run outer ADMM / AULM iterations until the stopping rule or ``config.max_outer``.

    The parameters are left as the last W-step made them; to prune, apply the returned masks
    (:func:`compactnn.solvers.training.apply_masks`) and fine-tune with the masks attached
    (Kiaee Alg. 1 line 11, Lin Alg. 1 lines 10-12).

    Args:
        model: the network (put in train mode before each W-step).
        params: regularised parameters (see :func:`resolve_params`).
        config: the hyper-parameters.
        w_step_fn: ``w_step_fn(engine)`` minimises task loss + ``engine.penalty_loss()``.
        progress: show a tqdm bar.
        engine: continue from an existing engine (e.g. warm start for the next λ of a
            schedule, Kiaee Alg. 1 line 5); its parameters and config are used as they are.

    Returns:
        An :class:`ADMMResult`.

    References:
        Kiaee et al. (2016) Algorithm 1 lines 6-10; Lin et al. (2019) Algorithm 1 lines 4-9.
    """
    from tqdm.auto import tqdm

    eng = engine if engine is not None else ADMMEngine(resolve_params(model, params), config)
    n_max = eng.config.max_outer
    start = eng.state.k
    done = False
    with tqdm(total=n_max, desc="ADMM", disable=not progress, leave=False) as bar:
        for _ in range(n_max):
            model.train()
            stats = eng.step_outer(lambda: w_step_fn(eng))
            bar.update(1)
            bar.set_postfix(
                primal=f"{stats['primal_residual']:.3g}",
                dF=f"{stats['f_change']:.3g}",
                nnz=f"{stats['nnz_groups']}/{stats['total_groups']}",
            )
            if eng.converged():
                done = True
                break
    return ADMMResult(
        masks=eng.masks(),
        history=tuple(eng.state.history),
        converged=done,
        n_iter=eng.state.k - start,
        engine=eng,
    )
