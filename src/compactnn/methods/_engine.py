r"""The budgeted optimization engine: one joint run of a training-based method to an exact budget.

``ssr``, ``admm-sparse`` and ``pgt`` given a target (``params`` / ``macs`` / ``latency``) run
here instead of a strength search that reruns the method. All prunable layers are optimised at
once; the unit of selection is a coupling group's output channel (a filter / neuron, with the
channels of every layer cut together with it, :func:`compactnn.surgery.coupling`).

The structure (which units are kept) is projected, every ``project_every`` optimizer steps, onto
the budget set

.. math::

    \mathcal{C}_t = \{\text{kept units } S : \operatorname{cost}_k(S) \le b_{t,k}\ \forall k\},

by a greedy knapsack over all layers at once (:func:`knapsack`): the kept unit of least *value
per unit cost* is dropped until the cost fits, costs re-evaluated after each drop (a unit's cost
depends on how many units its neighbours keep). The value is the unit's share of its layer's
penalty (``score="penalty"``, default: the l2 norm of its row over the layer's, so the greedy
maximises the sum over layers of the log of the penalty kept and no layer is emptied for cheap
units elsewhere) or a first-order Taylor estimate of the loss it protects, accumulated from the
run's own gradients (``score="taylor"``). The cost is the exact multilinear model of the target's
keys in the kept counts, fitted on models cut by surgery and measured like the final report
(:class:`CostModel`). The budget :math:`b_t` anneals from the full model to the target over
``anneal_steps`` (cubic, Zhu & Gupta 2017, after a tenth of the steps without drops).

The method's own penalty shrinks the dropped units: after every SGD step (the forward step) their
rows take its proximal step (the backward step; group soft threshold for l2,1, hard for l2,0),
with a strength :math:`s_t` (in units of the layer's median row norm) that follows the
constraint by dual ascent: it grows while the units the prox leaves non-zero cost more than
:math:`b_t`, and shrinks otherwise. Never a rerun of the method. This is forward-backward
splitting restricted to the complement of :math:`S` for every method (PGT's own solver; for SSR
and Kiaee a different solver than the papers' AULM / ADMM, which stay in their fixed-strength
protocol).

**Cut while training:** every ``cut_every`` steps the dropped units whose structure row is
exactly zero are removed physically (surgery), so later steps run on the smaller network. At
the end of the annealing the final projection is made exact on models measured physically
(drop while over the target, add back while a unit still fits) and everything outside it is cut.
A settling phase then trains the fixed structure with a decaying learning rate until validation
top-1 stops improving (``patience`` evaluations) or ``steps`` is reached; the best validation
state is returned. Every schedule is in optimizer steps, never epochs.

References:
    Lin et al. 2019 (SSR, eqs. (14)-(15): the group proxes); Kiaee et al. 2016 (eqs. (9)-(10));
    Zhou et al. 2016 (PGT, forward-backward splitting); ADMM-NN / StructADMM (projection onto
    the constraint set); Zhu & Gupta 2017 (cubic schedule); Molchanov et al. 2019 (Taylor
    importance); HALP / MorphNet (cost-weighted selection).

Modules: :mod:`compactnn.methods._engine_cost` (coupling groups, the cost model),
:mod:`compactnn.methods._engine_alloc` (knapsack, uniform allocation, the final selection),
:mod:`compactnn.methods._engine_run` (:func:`run_engine` and :class:`EngineSettings`); this
module holds what the engine methods (``ssr``, ``pgt``, ``admm-sparse``) call and re-exports
the engine's names.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from torch import nn

from compactnn._validation import check_choice, check_float, check_int, rule
from compactnn.budget import Target
from compactnn.errors import ConfigError
from compactnn.methods._common import prunable_layers, prune_filters
from compactnn.methods._engine_alloc import ALLOCATIONS, Allocation, knapsack
from compactnn.methods._engine_alloc import uniform_allocation as uniform_allocation
from compactnn.methods._engine_cost import CostModel
from compactnn.methods._engine_cost import _groups as _groups
from compactnn.methods._engine_run import EngineRun, EngineSettings, run_engine
from compactnn.methods.base import C, CompressionData, CompressionResult, Method
from compactnn.metrics import accuracy
from compactnn.plan import CompressionPlan

# uniform_allocation and _groups (aliased above) are re-exported too: tests and _calibrate
# import the engine's names from here
__all__ = [
    "Allocation",
    "EngineMethod",
    "EngineSettings",
    "CostModel",
    "EngineRun",
    "run_engine",
    "knapsack",
]


# ---------------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class EngineOptions:
    """The budgeted engine's options, shared by the configs of ``ssr``, ``pgt`` and
    ``admm-sparse`` (validated by their ``rules``, :data:`ENGINE_RULES`).

    Attributes:
        budget: a target (``{"macs": 0.1}``: fractions kept of params / macs / latency) met
            by the budgeted engine (:mod:`compactnn.methods._engine`) in one joint run of all
            layers; set by ``compress(target=...)``. ``None``: the paper's fixed-λ protocol.
        engine_steps: at most this many optimizer steps of the engine (annealing, then
            settling until validation top-1 stops improving).
        anneal_steps: engine steps over which the budget goes from the full model to the
            target.
        engine_lr: SGD learning rate of the engine (momentum and weight decay as the method's
            own; not a paper value: the engine trains the whole network while it shrinks, and
            settles with a cosine decay from it).
        engine_allocation: how many units each coupling group keeps at each budget:
            ``"uniform"`` (the default: one kept fraction for every group, grown into the
            budget it leaves) or ``"knapsack"`` (greedy value per unit cost over all units);
            the method's penalty picks the units inside each group either way. Uniform is the
            default since it measured at least level with the knapsack for ssr, pgt and
            admm-sparse at equal compute, higher on validation (benchmarks/results/
            engine_alloc_E4, engine_peers_*).
        round_to: every coupling group keeps a multiple of this many units (or fewer than it,
            or all of them): widths runtimes compute in whole blocks (8 on AVX2 CPUs, 16 with
            AVX-512; :func:`compactnn.budget.aligned_down`). 1: any count.
    """

    budget: Any = None
    engine_steps: int = 1500
    anneal_steps: int = 800
    engine_lr: float = 0.01
    engine_allocation: str = "uniform"
    round_to: int = 1


def check_budget(value: Any, name: str, owner: str) -> dict[str, float]:
    """A method's ``budget`` option: a target as :meth:`Target.parse` reads it, as a dict."""
    try:
        t = Target.parse(value)
    except ConfigError as exc:
        raise ConfigError(f"The '{name}' parameter of {owner}: {exc}") from None
    return {**t.as_dict(), "tolerance": t.tolerance}


def _rules() -> Mapping[str, Any]:
    return MappingProxyType(
        {
            "budget": rule(check_budget, optional=True),
            "engine_steps": rule(check_int, min_value=1),
            "anneal_steps": rule(check_int, min_value=1),
            "engine_lr": rule(check_float, min_value=0.0, min_inclusive=False),
            "engine_allocation": rule(check_choice, choices=ALLOCATIONS),
            "round_to": rule(check_int, min_value=1),
        }
    )


#: the validation rules of :class:`EngineOptions` (merged into each engine method's ``rules``)
ENGINE_RULES = _rules()


def engine_settings_of(cfg: Any, penalty: str, **more: Any) -> EngineSettings:
    """The :class:`EngineSettings` of an engine method's config ``cfg``: its engine options
    (:class:`EngineOptions`), its SGD (``momentum``, ``weight_decay``) and ``seed``, with the
    method's ``penalty`` and its ``more`` settings."""
    return EngineSettings(
        penalty=penalty, steps=cfg.engine_steps, anneal_steps=cfg.anneal_steps, lr=cfg.engine_lr,
        momentum=cfg.momentum, allocation=cfg.engine_allocation, round_to=cfg.round_to,
        weight_decay=cfg.weight_decay, seed=cfg.seed, **more,
    )  # fmt: skip


def engine_calibrate(
    method: Any, model: nn.Module, data: Any, target: Target
) -> tuple[Any, dict[str, Any]]:
    """``Method.calibrate`` of an engine method: no search, the target becomes the method's
    ``budget`` option (checked up front: the method's settings must be engine-able)."""
    method.engine_settings()  # raises ConfigError for a penalty / structure it cannot budget
    data.require_input_shape(method.name)
    data.require_train(method.name)
    chosen = method.with_options(budget={**target.as_dict(), "tolerance": target.tolerance})
    rec = {
        "target": target.as_dict(),
        "tolerance": target.tolerance,
        "kept": {},
        "met": False,
        "option": "budgeted engine (joint, one run)",
        "strength": None,
        "trace": [],
        "seconds": 0.0,
    }
    return chosen, rec


class EngineMethod(Method[C]):
    """A method whose targets the budgeted engine meets in one joint run (``ssr``, ``pgt``,
    ``admm-sparse``): its config has :class:`EngineOptions` and ``layers``; it gives
    :meth:`engine_settings` and, where they are not every prunable layer, its
    :meth:`default_layers`."""

    def engine_settings(self) -> EngineSettings:
        """The engine's settings from this method's options (``ConfigError`` for a penalty or
        structure the engine cannot budget)."""
        raise NotImplementedError

    def calibrate(
        self, model: nn.Module, data: CompressionData, target: Any, *, progress: bool = False
    ) -> tuple[Method, dict[str, Any]]:
        """No search: the target becomes the budget of one engine run (:meth:`run`)."""
        return engine_calibrate(self, model, data, target)

    def default_layers(self, model: nn.Module, shape: Any, *, coupled: bool) -> list[str]:
        """The layers regularised without a ``layers`` option: every prunable Conv2d / Linear
        but the classifier, whole coupling groups when ``coupled`` (the engine regularises and
        cuts whole groups; the fixed-strength runs one layer each)."""
        return prunable_layers(model, shape, coupled=coupled)

    def run(
        self, model: nn.Module, data: CompressionData, *, progress: bool = True
    ) -> CompressionResult:
        """With ``budget``: one run of the budgeted engine (:func:`budgeted_run`), its cut model
        fine-tuned as the method does (:meth:`engine_finetune`); without: the method's own
        paper protocol (:meth:`run_paper`)."""
        data.require_train(self.name)
        layers = self._layers(model, data.require_input_shape(self.name))
        cfg: Any = self.config  # an engine method's config: EngineOptions and layers
        if cfg.budget is None:
            return self.run_paper(model, data, layers, progress=progress)
        finetune = self.engine_finetune(model, data, layers, progress=progress)
        return budgeted_run(self, model, data, layers, finetune=finetune, progress=progress)

    def engine_finetune(
        self, model: nn.Module, data: CompressionData, layers: list[str], *, progress: bool
    ) -> Callable[[nn.Module], None] | None:
        """The fine-tuning the engine's cut model gets (``model``: the original, e.g. the
        distillation teacher); ``None``: none."""
        return None

    def run_paper(
        self, model: nn.Module, data: CompressionData, layers: list[str], *, progress: bool
    ) -> CompressionResult:
        """The run without a budget, on the regularised ``layers``."""
        raise NotImplementedError

    def _layers(self, model: nn.Module, shape: Any) -> list[str]:
        """The regularised layers: ``layers`` or :meth:`default_layers` (coupled under a
        budget), checked to exist."""
        cfg: Any = self.config  # an engine method's config: EngineOptions and layers
        if cfg.layers is not None:
            layers = list(cfg.layers)
        else:
            layers = self.default_layers(model, shape, coupled=cfg.budget is not None)
        self._check_layers(model, layers)
        return layers


def budgeted_run(
    method: Any,
    model: nn.Module,
    data: Any,
    layers: Sequence[str],
    *,
    finetune: Callable[[nn.Module], None] | None,
    progress: bool,
) -> Any:
    """A method's ``run`` with ``budget`` set: the engine on a copy of ``model``, the
    structure plan on ``model`` (original indices), the method's own fine-tuning, one result."""
    cfg = method.config
    shape = data.require_input_shape(method.name)
    target = Target.parse(cfg.budget)
    settings = method.engine_settings()
    if data.val is None:
        raise ConfigError(
            f"{method.name}: the budgeted engine stops and keeps its best state on a validation "
            "split: pass data=(train, val, test) or let compress carve one (val_fraction > 0)."
        )
    run = run_engine(
        copy.deepcopy(model), layers, data.require_train(method.name), data.val, target,
        shape, settings, check_batch=data.check_batch, progress=progress, label=method.name,
    )  # fmt: skip
    keep = {r: k for r, k in run.keep.items() if len(k) < model.get_submodule(r).weight.shape[0]}
    if keep:
        _, plan = prune_filters(model, keep, shape, check=data.check_batch)
    else:
        plan = CompressionPlan(meta={"input_shape": list(shape)})
    final = run.model
    before_ft = accuracy(final, data.val, topk=(1,), max_batches=settings.val_batches)["top1"]
    if finetune is not None:
        finetune(final)
    final.eval()
    widths = {n: int(final.get_submodule(n).weight.shape[0]) for n in layers}
    info = {**run.info, "val_top1_engine": before_ft}
    history = {"engine": run.history, "engine_info": info, "keep": widths}
    return method.result(final, plan, shape, history)
