"""Criterion baselines: prune filters by a fixed importance score, then fine-tune.

Used to compare SSR / ADMM-sparse *at the same per-layer budget*: pass ``keep`` = the filter
counts another method ended with (``{"conv1": 2, "conv2": 8, "fc1": 77}``), or ``ratio`` =
fraction of filters kept in every pruned layer.

References:
    Lin et al. 2019 (SSR), sec. IV-A: Random, L1-norm (Li et al. 2017), APoZ (Hu et al. 2016);
    Molchanov et al. 2019 (first-order Taylor importance, eq. (8)).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, ClassVar

from torch import nn

from compactnn import surgery
from compactnn._validation import check_float, check_int, check_per_layer, rule
from compactnn.budget import Strength, aligned_down, measure_kept
from compactnn.criteria import group_scores, importance, select_top
from compactnn.errors import ConfigError, PlanError
from compactnn.methods._calibrate import target_record, uniform_counts
from compactnn.methods._common import (
    finetune_model,
    prunable_layers,
)
from compactnn.methods._options import FINETUNE_RULES, LAYERS, POSITIVE, SEED, SGDOptions
from compactnn.methods.base import CompressionData, CompressionResult, Method, MethodConfig
from compactnn.plan import CompressionPlan, KeepOutputs
from compactnn.structure import module_device

__all__ = [
    "CriterionConfig",
    "RandomConfig",
    "L1NormConfig",
    "APoZConfig",
    "MagnitudeConfig",
    "TaylorConfig",
    "RandomPruning",
    "L1NormPruning",
    "APoZPruning",
    "MagnitudePruning",
    "TaylorPruning",
]


@dataclass(frozen=True)
class CriterionConfig(MethodConfig, SGDOptions):
    """Budget and fine-tuning of a criterion baseline, validated on construction (``rules``).

    Attributes:
        keep: filters/neurons to keep per layer (ints >= 1: a dict layer -> count, or a list
            in layer order); overrides ``ratio``.
        ratio: fraction in (0, 1] of filters kept in every pruned layer (ceil, at least 1).
        layers: layers to prune (default: as SSR, see ``prunable_layers``).
        finetune_epochs: epochs of fine-tuning after the cut (SGD with momentum, cosine
            learning-rate schedule, the surviving weights only); 0 returns the cut model as is.
        lr: initial learning rate of the fine-tuning's SGD (SSR paper sec. IV: 1e-3), decayed
            to 0 by the cosine schedule.
        momentum: momentum in [0, 1] of the fine-tuning's SGD (SSR paper: 0.9).
        weight_decay: L2 weight decay >= 0 of the fine-tuning's SGD (SSR paper: 5e-4).
        finetune_steps_per_epoch: cap on the training batches of each fine-tuning epoch
            (None = the whole training loader each epoch).
        finetune_distill: weight alpha in [0, 1] of knowledge distillation from the unpruned
            model (0 = off).
        calib_batches: batches of the training data read by data-driven criteria (APoZ: inputs;
            Taylor: labelled batches for the loss gradient).
        round_to: every layer keeps a multiple of this many filters (or fewer than it, or all
            of them) under ``ratio`` or a target: widths runtimes compute in whole blocks (8
            on AVX2 CPUs, 16 with AVX-512; :func:`compactnn.budget.aligned_down`). 1: any
            count; ``keep`` is never changed.
        seed: seeds the random criterion and fine-tuning (int >= 0).
    """

    keep: Any = None
    ratio: float = 0.5
    layers: tuple[str, ...] | None = None
    finetune_epochs: int = 2
    finetune_steps_per_epoch: int | None = None
    finetune_distill: float = 0.0
    calib_batches: int = 10
    round_to: int = 1
    seed: int = 0

    owner: ClassVar[str] = "criterion pruning"
    rules = MappingProxyType(
        {
            **SGDOptions.rules,
            "keep": rule(
                check_per_layer, optional=True, check=check_int, forms=("list", "dict"), min_value=1
            ),
            "ratio": rule(check_float, max_value=1.0, **POSITIVE),
            "layers": LAYERS,
            "finetune_epochs": FINETUNE_RULES["finetune_epochs"],
            "finetune_steps_per_epoch": FINETUNE_RULES["finetune_steps_per_epoch"],
            "finetune_distill": FINETUNE_RULES["finetune_distill"],
            "calib_batches": rule(check_int, min_value=1),
            "round_to": rule(check_int, min_value=1),
            "seed": SEED,
        }
    )


class _CriterionPruning(Method[CriterionConfig]):
    """Prune by the :class:`~compactnn.criteria.Importance` named ``criterion``, then fine-tune;
    each criterion is a method of its own name (:func:`_criterion_method`)."""

    Config = CriterionConfig
    criterion: ClassVar[str] = ""

    def _layers(self, model: nn.Module, shape: Any) -> list[str]:
        """The layers to prune: ``layers`` or the defaults (as SSR), checked to exist."""
        cfg = self.config
        layers = list(cfg.layers) if cfg.layers is not None else prunable_layers(model, shape)
        self._check_layers(model, layers)
        return layers

    def _refuse_keep_with_target(self) -> None:
        if self.config.keep is not None:
            raise ConfigError(
                f"{self.name}: pass either keep= (a fixed per-layer budget) or target=, not both."
            )

    def _budget(self, model: nn.Module, layers: list[str]) -> dict[str, int]:
        """Filters kept per layer; ``keep`` (validated on construction) is matched with the
        layers here, before any work."""
        cfg = self.config
        mods = dict(model.named_modules())
        units = {n: mods[n].weight.shape[0] for n in layers}
        if cfg.keep is None:
            return {n: max(1, aligned_down(math.ceil(cfg.ratio * u), u, cfg.round_to))
                    for n, u in units.items()}  # fmt: skip
        if isinstance(cfg.keep, dict):
            unknown = [k for k in cfg.keep if k not in units]
            if unknown:
                raise ConfigError(
                    f"The 'keep' parameter of {cfg.owner} names layer(s) {unknown} that are not "
                    f"pruned; pruned layers: {layers}."
                )
            budget = {n: int(cfg.keep.get(n, units[n])) for n in layers}
        else:
            if len(cfg.keep) != len(layers):
                raise ConfigError(
                    f"The 'keep' parameter of {cfg.owner} must have one count per pruned layer "
                    f"({len(layers)}: {layers}). Got {len(cfg.keep)}."
                )
            budget = dict(zip(layers, cfg.keep, strict=True))
        for n, k in budget.items():
            check_int(k, f"keep['{n}']", cfg.owner, min_value=1, max_value=units[n])
        return budget

    def run(
        self, model: nn.Module, data: CompressionData, *, progress: bool = True
    ) -> CompressionResult:
        cfg = self.config
        layers = self._layers(model, data.require_input_shape(self.name))
        budget = self._budget(model, layers)
        teacher = copy.deepcopy(model).eval() if cfg.finetune_distill > 0 else None
        pruned, plan, groups, skipped = self._select_and_cut(model, layers, budget, data)
        if cfg.finetune_epochs > 0:
            finetune_model(
                pruned,
                data.require_train(self.name),
                epochs=cfg.finetune_epochs,
                seed=cfg.seed,
                steps_per_epoch=cfg.finetune_steps_per_epoch,
                distill=cfg.finetune_distill,
                teacher=teacher,
                progress=progress,
                desc=f"{self.name} fine-tune",
                **cfg.sgd(),
            )
        keep = {n: int(pruned.get_submodule(n).weight.shape[0]) for n in layers}
        history = {"keep": keep, "criterion": self.criterion, "groups": groups, "skipped": skipped}
        return self.result(pruned, plan, data.input_shape, history)

    def _select_and_cut(
        self, model: nn.Module, layers: list[str], budget: dict[str, int], data: CompressionData
    ) -> tuple[nn.Module, Any, dict[str, list[str]], dict[str, str]]:
        """Score and cut one coupling group at a time, each on the model as the earlier cuts
        left it.

        The unit of selection is the layer's coupling group (:func:`compactnn.surgery.coupling`:
        residual partners, SE gates, a following depthwise conv, with the channel
        correspondence measured): one score per channel aggregated over the members
        (:func:`compactnn.criteria.group_scores`), one keep-set, one cut that removes the same
        channels from every member. A later layer's keep-set is computed on its *current*
        filters; a layer already at or under its budget (e.g. cut as an earlier layer's
        partner) is skipped, so a group ends with the smallest count asked for any of its
        listed members. When a cut reaches a grouped conv, the same number of filters is kept in
        each of its groups (best scores per group; the count rounded down to a multiple of the
        groups, at least one per group).

        A layer that an earlier cut turned into a depthwise conv with a depth multiplier (one
        input channel per group left) is skipped with a warning: its outputs go only with its
        producer's channels.

        Returns the pruned model, the plan, the groups scored together (layer -> members, only
        groups of more than one layer) and the skipped layers with the reason.
        """

        cfg = self.config
        meta = {"input_shape": list(data.input_shape)}
        current = copy.deepcopy(model)
        actions: list[KeepOutputs] = []
        groups: dict[str, list[str]] = {}
        skipped: dict[str, str] = {}
        check = data.check_batch
        # the same batches for every layer (a cut keeps the model on its device)
        batches = self._criterion_batches(data, current)
        for i, layer in enumerate(layers):
            mod = current.get_submodule(layer)
            width = int(mod.weight.shape[0])
            n_keep = min(budget[layer], width)
            if n_keep >= width:
                continue
            if isinstance(mod, nn.Conv2d) and 1 < mod.groups == mod.in_channels < width:
                # an earlier cut left one input channel per group (a depth multiplier): its
                # outputs follow their input channel, so they went with the producer's cut
                skipped[layer] = (
                    f"after the earlier cuts it is a depthwise conv with depth multiplier "
                    f"{width // mod.groups} (groups={mod.groups}); its outputs can only go with "
                    "the channels of the layer that produces its input"
                )
                continue
            members = surgery.coupling(current, layer, meta=meta)
            if len(members) > 1:
                groups[layer] = list(members)
            scores = group_scores(
                self.criterion, current, members, batches=batches, seed=cfg.seed + i
            )
            keep = select_top(scores, n_keep)
            try:
                trial = surgery.apply(
                    CompressionPlan([KeepOutputs(layer, keep)], meta=meta),
                    current,
                    check_inputs=check,
                )
            except PlanError as exc:
                conv_groups = getattr(exc, "groups", None)
                if not conv_groups or width % conv_groups:
                    raise
                keep = _grouped_top(scores, n_keep, conv_groups)
                if len(keep) >= width:
                    continue
                trial = surgery.apply(
                    CompressionPlan([KeepOutputs(layer, keep)], meta=meta),
                    current,
                    check_inputs=check,
                )
            current = trial
            actions.append(KeepOutputs(layer, keep))
        if skipped:
            import warnings

            warnings.warn(
                f"{self.name}: layer(s) {sorted(skipped)} not pruned: "
                + "; ".join(f"{k}: {v}" for k, v in skipped.items()),
                RuntimeWarning,
                stacklevel=3,
            )
        return current, CompressionPlan(actions, meta=meta), groups, skipped

    def _criterion_batches(self, data: CompressionData, current: nn.Module) -> Any:
        """The data a data-driven criterion reads, on the model's device: APoZ the inputs of
        ``calib_batches`` batches, Taylor as many labelled training batches (the loader
        reseeded with ``seed``); None for the weight-only criteria."""
        cfg = self.config
        device = module_device(current)
        reads = importance(self.criterion).data
        if reads == "inputs":
            return list(data.calib_batches(cfg.calib_batches, device=device))
        if reads == "labelled":
            return list(
                data.train_batches(self.name, cfg.calib_batches, seed=cfg.seed, device=device)
            )
        return None

    # ------------------------------------------------------------------ budget
    def strength(self) -> Strength:
        """The pruned fraction of every layer (uniform allocation): ``ratio = 1 - s``."""
        return Strength("pruned fraction per layer", 0.5, 0.9, log=False, bound_hi=0.999)

    def at_strength(self, s: float, model: nn.Module, data: CompressionData) -> Method:
        self._refuse_keep_with_target()
        return self.with_options(ratio=max(1.0 - float(s), 1e-3))

    def proxy(self) -> Method:
        return self.with_options(finetune_epochs=0)

    def calibrate(
        self, model: nn.Module, data: CompressionData, target: Any, *, progress: bool = False
    ) -> tuple[Method, dict[str, Any]]:
        """Per-layer counts for ``target``: the uniform share, then grown into the budget it
        leaves unused (:func:`~compactnn.methods._calibrate.uniform_counts`, the split SSR
        uses), checked by a proxy run measured physically. A latency target is sized on the
        measured latency model and snapped off latency cliffs; where the proxy's latency, timed
        interleaved with the original, is over the target (or under 0.9 of it), the split is made
        again (at most three times) at a prediction between the splits measured over and under
        (:func:`_next_aim`); the split measured largest under the target is kept, else the one
        closest within its tolerance. Where a run does not meet the target
        exactly (coupled layers cut to another member's count, skipped layers), the generic
        search over one pruned fraction (:meth:`strength`) decides instead."""
        import time

        self._refuse_keep_with_target()
        t0 = time.perf_counter()
        shape = data.require_input_shape(self.name)
        layers = self._layers(model, shape)
        lat = "latency" in target.keys
        goal, trace, info, best, under, points = target, [], {}, None, None, []
        for _ in range(4 if lat else 1):
            try:  # unreachable by one share, or a cut the split cannot make (grouped convs)
                counts, pred = uniform_counts(model, layers, goal, shape, info=info,
                                              progress=self.name if progress else None,
                                              round_to=self.config.round_to)  # fmt: skip
            except (ConfigError, PlanError):
                return super().calibrate(model, data, target, progress=progress)
            chosen, res, kept = self._proxy_kept(model, data, counts, shape, target)
            snaps = dict((info.get("latency_model") or {}).get("snaps") or {})
            trace.append({"keep": dict(counts), "kept": dict(kept), "predicted": dict(pred),
                          "snaps": snaps})  # fmt: skip
            ok = target.slack(kept) <= 1.0 + 1e-12
            if ok and (under is None or target.slack(kept) > target.slack(under[2])):
                under = (chosen, counts, kept, res)  # the largest measured under the target
            elif target.met(kept) and (best is None or target.slack(kept) < target.slack(best[2])):
                best = (chosen, counts, kept, res)  # within the tolerance: kept if none is under
            over = {k for k in target.keys if kept[k] > getattr(target, k) * (1 + 1e-12)}
            if not lat or over - {"latency"} or (ok and kept["latency"] >= 0.9 * target.latency):
                break
            points.append((pred["latency"], kept["latency"]))
            goal = replace(goal, latency=_next_aim(points, target.latency))
        pick = under or (best if lat else None)
        if pick is None:
            return super().calibrate(model, data, target, progress=progress)
        chosen, counts, kept, res = pick
        if "latency_model" in info:  # the snaps of the split kept, not of the last one made
            picked = next(t for t in trace if t["keep"] == dict(counts))
            info["latency_model"] = {**info["latency_model"], "snaps": picked["snaps"]}
        if progress:  # the widths of the model it made (a coupled layer may follow another)
            widths = {n: _width(res.model, n) for n in counts}
            print(
                f"  {self.name}: widths {widths}, kept "
                + ", ".join(f"{k} {100 * v:.2f} %" for k, v in kept.items()),
                flush=True,
            )
        rec = target_record(
            target, kept, option="filters per layer (uniform share, filled)", strength=None,
            trace=trace, seconds=time.perf_counter() - t0, allotted=dict(counts),
            **{k: v for k, v in info.items() if k != "cost_model"},
        )  # fmt: skip
        return chosen, rec

    def _proxy_kept(
        self,
        model: nn.Module,
        data: CompressionData,
        counts: dict[str, int],
        shape: Any,
        target: Any,
    ) -> tuple[Method, CompressionResult, dict[str, float]]:
        """The method at ``counts``, its proxy run (global RNG restored) and the fractions of
        ``model`` the result keeps (latency timed interleaved with ``model``: the larger of the
        ratios of the medians and of the 10th percentiles)."""
        import torch

        chosen = self.with_options(keep=counts)
        with torch.random.fork_rng(devices=[]):
            res = chosen.proxy().run(copy.deepcopy(model), data, progress=False)
        return chosen, res, measure_kept(model, res.model, shape, target.keys, upper=True)


def _next_aim(points: list[tuple[float, float]], t: float) -> float:
    """The predicted latency the next split aims at, from the (predicted, measured) latency of
    the splits made: between the split measured closest over ``t`` and the one closest under,
    on the power law through the two (a secant in log-log); splits on one side only: the last
    prediction scaled by ``t`` over its measurement. Within ``(0, 1]``."""
    hi = [p for p in points if p[1] > t]
    lo = [p for p in points if p[1] <= t]
    aim = points[-1][0] * t / points[-1][1]
    if hi and lo:
        (p1, m1), (p0, m0) = min(hi, key=lambda p: p[1]), max(lo, key=lambda p: p[1])
        aim = math.sqrt(p0 * p1)
        if p1 > p0 > 0 and m1 > m0 > 0 and math.log(m1 / m0) > 0:
            aim = p0 * (t / m0) ** (math.log(p1 / p0) / math.log(m1 / m0))
    return min(1.0, max(aim, 1e-6))


def _width(model: nn.Module, name: str) -> Any:
    """Output units of layer ``name`` of ``model`` (``"?"`` when it has none)."""
    try:
        mod = model.get_submodule(name)
    except AttributeError:
        return "?"
    return getattr(mod, "out_channels", getattr(mod, "out_features", "?"))


def _grouped_top(scores: Any, n_keep: int, groups: int) -> tuple[int, ...]:
    """The best ``n_keep // groups`` (at least 1) scores of each of ``groups`` equal blocks."""
    per = int(scores.numel()) // groups
    k = max(1, n_keep // groups)
    out: list[int] = []
    for g in range(groups):
        out += [g * per + i for i in select_top(scores[g * per : (g + 1) * per], min(k, per))]
    return tuple(sorted(out))


def _criterion_method(criterion: str, cls_name: str, doc: str) -> type[_CriterionPruning]:
    """The pruning method of ``criterion`` (:data:`compactnn.criteria.IMPORTANCES`): the class
    ``cls_name`` with its config ``<cls_name without "Pruning">Config``, a
    :class:`CriterionConfig` whose errors name the method."""
    config_name = cls_name.removesuffix("Pruning") + "Config"
    config = dataclass(frozen=True)(
        type(
            config_name,
            (CriterionConfig,),
            {
                "__doc__": f":class:`CriterionConfig` of ``{criterion}`` (its errors name the "
                "method).",
                "__module__": __name__,
                "__qualname__": config_name,
                "owner": f"criterion pruning ({criterion})",
            },
        )
    )
    attrs = {"__doc__": doc, "__module__": __name__, "__qualname__": cls_name}
    return type(
        cls_name,
        (_CriterionPruning,),
        {**attrs, "name": criterion, "Config": config, "criterion": criterion},
    )


# one line per criterion (and its line in the registry, compactnn.methods._REGISTRY)
RandomPruning = _criterion_method("random", "RandomPruning", "Random filter selection (seeded).")
L1NormPruning = _criterion_method(
    "l1-norm", "L1NormPruning", "Smallest-l1-norm filters removed (Li et al. 2017)."
)
APoZPruning = _criterion_method(
    "apoz",
    "APoZPruning",
    "Filters with the highest Average Percentage of Zeros removed (Hu et al. 2016).",
)
MagnitudePruning = _criterion_method(
    "magnitude",
    "MagnitudePruning",
    "Smallest-l2-norm filters removed, then fine-tuned (plain magnitude baseline).",
)
TaylorPruning = _criterion_method(
    "taylor",
    "TaylorPruning",
    """Filters with the smallest first-order Taylor estimate of the loss change removed
    (Molchanov et al. 2019, eq. (8); the gradient of the cross-entropy on ``calib_batches``
    labelled training batches).""",
)
RandomConfig = RandomPruning.Config
L1NormConfig = L1NormPruning.Config
APoZConfig = APoZPruning.Config
MagnitudeConfig = MagnitudePruning.Config
TaylorConfig = TaylorPruning.Config
