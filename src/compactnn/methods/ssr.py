"""SSR: structured-sparsity-regularised filter pruning solved by AULM (Lin et al. 2019).

For each prunable layer l in turn (Algorithm 1)::

    min_K  L_D(K) + lam_l g(F^l)   s.t.  K^l = F^l ,   g in {l2,1 (eq. 14), l2,0 (eq. 15), l1 (eq. 16)}

solved by AULM: K-step = SGD on ``L_D(K) + rho/2 ||K^l - F^l + Y^l/rho||^2`` (eq. 11), F-step = the
closed-form prox on the filters (rows of the lowered matrix), dual step (eq. 7) and Nesterov
over-relaxation of F and Y with gamma_k = k/(k+r), r = 3 (eqs. 8-9); stop when
``||K - F||_F <= eps`` or ``||F_k - F_{k-1}||_F <= eps`` or after ``max_outer`` (xi) iterations.
The filters whose rows of F are zero are then *physically removed* together with the next
layer's input channels, and the next layer is processed. A global fine-tuning ends the run.

References:
    Lin et al., "Toward Compact ConvNets via Structure-Sparsity Regularized Filter Pruning",
    IEEE TNNLS 2019: eqs. (2)-(16), Algorithm 1, sec. III-E (ResNet rule), sec. IV (defaults:
    rho = 1, r = 3, lr 1e-3, momentum 0.9, weight decay 5e-4, lambda in {0.1, ..., 0.8}).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from compactnn._validation import (
    Rule,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_names,
    check_per_layer,
    rule,
    validate_options,
)
from compactnn.errors import ConfigError
from compactnn.methods._common import (
    add_gap_head,
    admm_w_step,
    finetune_model,
    kept_filters,
    per_layer_values,
    prunable_layers,
    prune_filters,
    replay_plan,
)
from compactnn.methods._engine import (
    ENGINE_RULES,
    EngineOptions,
    EngineSettings,
    budgeted_run,
    engine_calibrate,
)
from compactnn.methods._options import FINETUNE_RULES, LAYERS, POSITIVE, SEED, SGD_RULES
from compactnn.methods.base import CompressionData, CompressionResult, Method, MethodConfig
from compactnn.train import apply_masks, zero_masks

__all__ = ["SSR", "SSRConfig"]

_PENALTIES = {"l21": "l21", "l2,1": "l21", "l20": "l20", "l2,0": "l20", "l1": "l1"}


def _check_lam_path(value: Any, name: str, owner: str) -> tuple[Any, ...]:
    """Algorithm 1's set S: a non-empty list of lambda settings, each checked like ``lam``."""
    if not isinstance(value, (list, tuple)) or len(value) == 0:
        raise ConfigError(
            f"The '{name}' parameter of {owner} must be a non-empty list of lambda settings "
            f"(each a float, a per-layer list or a dict). Got {value!r} instead."
        )
    return tuple(
        check_per_layer(v, f"{name}[{i}]", owner, min_value=0.0) for i, v in enumerate(value)
    )


def _check_name(value: Any, name: str, owner: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f"The '{name}' parameter of {owner} must be a module name (a non-empty string). "
            f"Got {value!r} instead."
        )
    return value


def _cut_records(actions: list[Any]) -> list[dict[str, Any]]:
    """JSON records of SSR's cuts (``KeepOutputs`` / ``KeepInputs``: a layer and kept indices),
    for the resume checkpoint and the cross-rank check."""
    return [{"type": type(a).__name__, "layer": a.layer, "keep": list(a.keep)} for a in actions]


def _cuts_from_records(records: list[dict[str, Any]]) -> list[Any]:
    """The cuts :func:`_cut_records` wrote, as plan actions again."""
    from compactnn.plan import KeepInputs, KeepOutputs

    kinds = {"KeepOutputs": KeepOutputs, "KeepInputs": KeepInputs}
    return [kinds[r["type"]](r["layer"], tuple(r["keep"])) for r in records]


@dataclass(frozen=True)
class SSRConfig(MethodConfig, EngineOptions):
    """Hyper-parameters of SSR, validated on construction (``rules``).

    Paper defaults (Lin et al. sec. IV, "Implementations"): ρ = 1, r = 3, K-step SGD with lr
    1e-3, momentum 0.9, weight decay 5e-4, batch 256 (LeNet/AlexNet; the batch is the user's
    loader), λ in {0.1, ..., 0.8}; fine-tuning 30 epochs from lr 1e-4 scaled by 0.1 every 10
    epochs. The defaults below follow the paper for the AULM part; the fine-tuning defaults are
    a CPU-scale choice and **not** the paper's (2 epochs, lr 1e-3, cosine): pass
    ``finetune_epochs=30, finetune_lr=1e-4, finetune_schedule="paper"`` for the paper's.

    Attributes:
        penalty: the regulariser g: ``"l21"`` (eq. 14), ``"l20"`` (eq. 15) or ``"l1"``
            (eq. 16, unstructured).
        lam: λ of eq. (3), the structured-sparsity weight: one float >= 0, one per pruned
            layer (list) or a dict layer -> float.
        rho: ρ > 0 of the augmented Lagrangian, eq. (4) (paper: 1).
        overrelax: AULM's Nesterov over-relaxation, eqs. (8)-(9) (False = plain ADMM).
        r: the constant r >= 3 of γ_k = k / (k + r) in eqs. (8)-(9) (paper: 3).
        eps: ε > 0 of the stopping rules ||K - F||_F <= ε or ||F_k - F_{k-1}||_F <= ε
            (Algorithm 1 line 9).
        max_outer: ξ, at most this many AULM iterations per layer.
        w_steps: SGD steps per K-step (eq. 11).
        lr, momentum, weight_decay: SGD of the K-step (paper: 1e-3, 0.9, 5e-4).
        layers: layers to prune (default: every Conv2d/Linear but the classifier and layers
            feeding a residual add).
        train_all: the K-step updates every parameter (default False: only layer l's weight
            and bias, as eq. (11) minimises over K^l alone).
        min_keep: never keep fewer filters than this in a layer.
        finetune_epochs, finetune_lr: global fine-tuning after pruning (Algorithm 1 line 12);
            defaults 2 and 1e-3 (CPU scale; the paper: 30 and 1e-4).
        finetune_schedule: learning-rate schedule of the fine-tuning: ``"cosine"`` (default,
            not the paper's), ``"paper"`` (x0.1 every ``finetune_step_epochs`` epochs, Lin
            sec. IV), ``"step"`` (x0.1 at 50 % and 75 %) or ``"constant"``.
        finetune_step_epochs: epochs between two x0.1 drops of ``"paper"`` (paper: 10).
        finetune_steps_per_epoch: cap on batches per fine-tuning epoch (None = all).
        finetune_distill: weight alpha in [0, 1] of knowledge distillation from the
            uncompressed model during the final fine-tuning (0 = plain cross-entropy; see
            ``TrainConfig``).
        lam_path: Algorithm 1's set S: a sequence of λ settings (each like ``lam``: a float, a
            per-layer list or a dict) run in order; after each setting the layers are pruned
            and the network is fine-tuned (``path_finetune_epochs``), the last setting is
            followed by the global fine-tuning. ``lam`` is ignored when this is given. Every
            point is returned: ``history["stages"]`` (λ, filters, validation top-1) and
            ``history["stage_plans"]`` (a self-contained plan per point but the last, which is
            the result), for picking the trade-off on validation.
        path_finetune_epochs: fine-tuning epochs between two λ settings of ``lam_path``.
        gap: the paper's "SSR-...-GAP" models (sec. IV-B/C, Tables III-IV): after the conv
            layers are pruned, the FC head is replaced by global average pooling and one
            ``Linear(c, classes)`` (:class:`~compactnn.plan.GapHead` with ``linear=True``),
            fitted by least squares to the uncompressed model's logits on up to
            ``gap_fit_samples`` training samples, then fine-tuned with the rest of the
            network. Only conv layers are pruned (default: the prunable convs).
        gap_flatten: the ``nn.Flatten`` between the last conv stage and the FC head (default:
            the model's only ``nn.Flatten``).
        gap_classifier: the modules of the FC head to remove (default: every leaf module
            registered after ``gap_flatten``).
        gap_fit_samples: training samples for the least-squares fit of the new classifier.
        seed: seeds the SGD steps (int >= 0).
    """

    penalty: str = "l21"
    lam: Any = 0.5
    rho: float = 1.0
    overrelax: bool = True
    r: int = 3
    eps: float = 1e-3
    max_outer: int = 10
    w_steps: int = 100
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    layers: tuple[str, ...] | None = None
    train_all: bool = False
    min_keep: int = 1
    finetune_epochs: int = 2
    finetune_lr: float = 1e-3
    finetune_steps_per_epoch: int | None = None
    finetune_distill: float = 0.0
    finetune_schedule: str = "cosine"
    finetune_step_epochs: int = 10
    lam_path: tuple[Any, ...] | None = None
    path_finetune_epochs: int = 1
    gap: bool = False
    gap_flatten: str | None = None
    gap_classifier: tuple[str, ...] | None = None
    gap_fit_samples: int = 2048
    seed: int = 0

    owner: ClassVar[str] = "SSR"
    rules: ClassVar[Mapping[str, Rule]] = MappingProxyType(
        {
            "penalty": rule(check_choice, choices=tuple(_PENALTIES)),
            "lam": rule(check_per_layer, min_value=0.0),
            "rho": rule(check_float, **POSITIVE),
            "overrelax": rule(check_bool),
            "r": rule(check_int, min_value=3),
            "eps": rule(check_float, **POSITIVE),
            "max_outer": rule(check_int, min_value=1),
            "w_steps": rule(check_int, min_value=1),
            **SGD_RULES,
            "layers": LAYERS,
            "train_all": rule(check_bool),
            "min_keep": rule(check_int, min_value=1),
            **FINETUNE_RULES,
            "finetune_schedule": rule(
                check_choice, choices=("cosine", "paper", "step", "constant")
            ),
            "finetune_step_epochs": rule(check_int, min_value=1),
            "lam_path": rule(_check_lam_path, optional=True),
            "path_finetune_epochs": rule(check_int, min_value=0),
            "gap": rule(check_bool),
            "gap_flatten": rule(_check_name, optional=True),
            "gap_classifier": rule(check_names, optional=True),
            "gap_fit_samples": rule(check_int, min_value=1),
            "seed": SEED,
            **ENGINE_RULES,
        }
    )

    def __post_init__(self) -> None:
        validate_options(self, self.owner, self.rules)


def _zero_masks_of(model: nn.Module, layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """:func:`~compactnn.train.zero_masks` restricted to the weights of ``layers``."""
    wanted = {f"{n}.weight" for n in layers}
    return {k: v for k, v in zero_masks(model).items() if k in wanted}


class SSR(Method[SSRConfig]):
    """Filter pruning by structured sparsity regularisation, solved layer by layer with AULM."""

    name = "ssr"
    Config = SSRConfig
    description = "SSR (Lin et al. 2019): l2,1 / l2,0 / l1 on filters via AULM, filters removed"

    # ------------------------------------------------------------------ budget
    def engine_settings(self) -> EngineSettings:
        """SSR's penalty and K-step SGD for the budgeted engine (a target is met by one joint
        run, :mod:`compactnn.methods._engine`; l1 and ``lam_path`` / ``gap`` keep the paper's
        fixed-λ protocol)."""
        cfg = self.config
        pen = _PENALTIES[cfg.penalty]
        if pen == "l1" or cfg.lam_path is not None or cfg.gap:
            raise ConfigError(
                "SSR meets a target with its budgeted engine, which removes whole filters: "
                "penalty='l1' (unstructured), lam_path= and gap=True keep the paper's fixed-λ "
                "protocol. Drop the target and set lam, or use penalty='l21' / 'l20'."
            )
        return EngineSettings(
            penalty=pen, steps=cfg.engine_steps, anneal_steps=cfg.anneal_steps, lr=cfg.engine_lr,
            allocation=cfg.engine_allocation,
            momentum=cfg.momentum, weight_decay=cfg.weight_decay, min_keep=cfg.min_keep,
            seed=cfg.seed,
        )  # fmt: skip

    def calibrate(
        self, model: nn.Module, data: CompressionData, target: Any, *, progress: bool = False
    ) -> tuple[Method, dict[str, Any]]:
        """No search: the target becomes the budget of one engine run (:meth:`run`)."""
        return engine_calibrate(self, model, data, target)

    def _layers(self, model: nn.Module, shape: Any) -> list[str]:
        """The layers to prune: ``layers`` or the defaults (with ``gap``: the convs only, since
        the FC head is replaced), checked to exist."""
        cfg = self.config
        layers = (
            list(cfg.layers)
            if cfg.layers is not None
            # the engine regularises and cuts whole coupling groups; the paper's stages one layer
            else prunable_layers(model, shape, coupled=cfg.budget is not None)
        )
        self._check_layers(model, layers)
        if cfg.gap:
            mods = dict(model.named_modules())
            if cfg.layers is None:
                layers = [n for n in layers if isinstance(mods[n], nn.Conv2d)]
            fc = [n for n in layers if not isinstance(mods[n], nn.Conv2d)]
            if fc:
                raise ConfigError(
                    f"SSR gap=True prunes conv layers only (the FC head is replaced by global "
                    f"average pooling), but 'layers' names {fc}; drop them from 'layers'."
                )
        return layers

    def _gap_head(self, model: nn.Module, shape: Any, layers: list[str]) -> Any:
        """The :class:`~compactnn.plan.GapHead` of ``gap=True``, found and tried on a copy of
        the model before any training (a wrong head fails here, not after the AULM stages)."""
        from compactnn import surgery
        from compactnn.plan import CompressionPlan, GapHead

        cfg = self.config
        mods = dict(model.named_modules())
        flatten = cfg.gap_flatten
        if flatten is None:
            flats = [n for n, m in mods.items() if isinstance(m, nn.Flatten)]
            if len(flats) != 1:
                raise ConfigError(
                    f"SSR gap=True: the model has {len(flats)} nn.Flatten modules {flats}; name "
                    "the one between the last conv stage and the FC head with gap_flatten= "
                    "(and the head's modules with gap_classifier=)."
                )
            flatten = flats[0]
        elif not isinstance(mods.get(flatten), nn.Flatten):
            raise ConfigError(
                f"SSR gap_flatten={flatten!r} must name an nn.Flatten of the model; got "
                f"{type(mods[flatten]).__name__ if flatten in mods else 'no such module'}."
            )
        classifier = cfg.gap_classifier
        if classifier is None:
            leaves = [n for n, m in mods.items() if n and not list(m.children())]
            classifier = tuple(leaves[leaves.index(flatten) + 1 :])
        both = sorted(set(classifier) & set(layers))
        if both:
            raise ConfigError(
                f"SSR gap=True: {both} are in the FC head that the GAP replaces and in 'layers'."
            )
        head = GapHead(flatten, tuple(classifier), linear=True)
        surgery.apply(CompressionPlan([head], meta={"input_shape": list(shape)}), model)
        return head

    def proxy(self) -> Method:
        """Same AULM stages (hence the same filters), without the final fine-tuning."""
        return self.with_options(finetune_epochs=0)

    @staticmethod
    def _lam_stages(cfg: SSRConfig, layers: list[str]) -> list[dict[str, float]]:
        """The lambda settings to run: ``lam_path`` (Algorithm 1's S) or the single ``lam``,
        each broadcast to the layers (the values were validated on construction; the number of
        per-layer values is checked here, before any training)."""
        if cfg.lam_path is None:
            return [per_layer_values(cfg.lam, layers, "lam", "SSR")]
        return [
            per_layer_values(v, layers, f"lam_path[{i}]", "SSR") for i, v in enumerate(cfg.lam_path)
        ]

    def _aulm_layer(
        self,
        current: nn.Module,
        layer: str,
        lam: float,
        loader: Any,
        seed: int,
        masks: Any,
    ) -> Any:
        """AULM on layer ``layer`` alone (Algorithm 1 lines 4-9): K-step eq. (11), F-step
        eqs. (14)-(16), dual and over-relaxation eqs. (7)-(9), until the stopping rule."""
        from compactnn.solvers.training import ADMMConfig, ADMMEngine, run_admm

        cfg = self.config
        penalty = _PENALTIES[cfg.penalty]
        mod = dict(current.named_modules())[layer]
        engine = ADMMEngine(
            {f"{layer}.weight": mod.weight},
            ADMMConfig(
                rho=cfg.rho,
                penalty=penalty,
                lam=lam,
                structure="elements" if penalty == "l1" else "filters",
                overrelax=cfg.overrelax,
                r=cfg.r,
                eps=cfg.eps,
                stop_rule="either",
                max_outer=cfg.max_outer,
            ),
        )
        w_step = admm_w_step(
            current,
            loader,
            engine,
            epochs=1,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            seed=lambda k: seed + k,
            steps_per_epoch=cfg.w_steps,
            params=None if cfg.train_all else list(mod.parameters()),
            masks=masks,
        )
        return run_admm(engine, w_step)

    def _prune_layer(
        self,
        current: nn.Module,
        layer: str,
        res: Any,
        input_shape: tuple[int, ...],
        actions: list[Any],
        check: Any = None,
    ) -> tuple[nn.Module, dict[str, Any]]:
        """Remove the filters whose rows of F are zero (l2,1 / l2,0), or copy F into the weight
        (l1: unstructured zeros, held fixed later); returns the model and the layer's record.

        The cut's action (indices into the model as the earlier cuts left it; coupled layers
        follow) is appended to ``actions``: the run's plan is this sequence, so a layer already
        cut as another's coupling partner is replayed exactly."""
        cfg = self.config
        F = res.engine.state.F[f"{layer}.weight"].detach()
        record: dict[str, Any] = {"outer_iterations": res.n_iter}
        if _PENALTIES[cfg.penalty] == "l1":
            with torch.no_grad():
                dict(current.named_modules())[layer].weight.copy_(F)
            record.update(nonzero_after=int((F != 0).sum()), weights=int(F.numel()))
        else:
            keep = kept_filters(F, cfg.min_keep)
            record.update(filters_before=int(F.shape[0]), filters_after=len(keep))
            if len(keep) < F.shape[0]:
                current, cut = prune_filters(current, {layer: keep}, input_shape, check=check)
                actions.extend(cut.actions)
        record["trace"] = list(res.trace)
        return current, record

    def _stage(
        self,
        current: nn.Module,
        layers: list[str],
        lam: dict[str, float],
        loader: Any,
        data: CompressionData,
        si: int,
        actions: list[Any],
        progress: bool,
        start: int = 0,
        record: dict[str, Any] | None = None,
        saved: Any = None,
    ) -> tuple[nn.Module, dict[str, Any]]:
        """One lambda setting: AULM on every layer in turn, pruning after each (lines 3-11).

        ``start``, ``record``: resume at layer ``start`` with the records of the layers before;
        ``saved(current, si, next_li, record)`` checkpoints after every layer."""
        from compactnn import distributed

        cfg = self.config
        l1 = _PENALTIES[cfg.penalty] == "l1"
        desc = "SSR layers" if si == 0 else f"SSR layers (lambda stage {si + 1})"
        record = dict(record or {})
        for li, layer in enumerate(tqdm(layers, desc=desc, disable=not progress)):
            if li < start:
                continue
            # l1: the zeros of the layers already processed (all of them after the first stage)
            # stay zero, also when the K-step trains every parameter (train_all)
            done = tuple(layers if si > 0 else layers[:li])
            masks = (lambda m=current, done=done: _zero_masks_of(m, done)) if l1 and done else None
            seed = cfg.seed + 100_000 * si + 1000 * li
            res = self._aulm_layer(current, layer, lam[layer], loader, seed, masks)
            current, record[layer] = self._prune_layer(
                current, layer, res, data.input_shape, actions, data.check_batch
            )
            distributed.check_values(
                _cut_records(actions), f"SSR filters kept after {layer} (stage {si})"
            )
            if saved is not None:
                saved(current, si, li + 1, record)
        return current, record

    def _finetune(
        self,
        model: nn.Module,
        loader: Any,
        *,
        epochs: int,
        seed: int,
        masks: dict[str, torch.Tensor] | None,
        desc: str,
        progress: bool,
        teacher: nn.Module | None = None,
    ) -> None:
        """Global fine-tuning of the pruned network from ``finetune_lr`` with
        ``finetune_schedule`` (``"paper"``: constant-lr chunks of ``finetune_step_epochs``,
        lr x0.1 after each)."""
        cfg = self.config
        if cfg.finetune_schedule == "paper":
            step = cfg.finetune_step_epochs
            chunks = [(min(step, epochs - e), e // step) for e in range(0, epochs, step)]
        else:
            chunks = [(epochs, 0)]
        for j, (n_ep, drops) in enumerate(chunks):
            finetune_model(
                model,
                loader,
                epochs=n_ep,
                lr=cfg.finetune_lr * 0.1**drops,
                momentum=cfg.momentum,
                weight_decay=cfg.weight_decay,
                seed=seed + 7919 * j,
                steps_per_epoch=cfg.finetune_steps_per_epoch,
                schedule="constant" if cfg.finetune_schedule == "paper" else cfg.finetune_schedule,
                distill=cfg.finetune_distill,
                masks=masks,
                teacher=teacher,
                progress=progress,
                desc=desc,
            )

    def _run_stages(
        self,
        model: nn.Module,
        layers: list[str],
        stages: list[dict[str, float]],
        loader: Any,
        data: CompressionData,
        progress: bool,
    ) -> tuple[nn.Module, dict[str, Any], list[Any]]:
        """Every lambda setting of Algorithm 1's S in turn, fine-tuning between two (line 12)."""
        from compactnn import resume

        cfg = self.config
        penalty = _PENALTIES[cfg.penalty]
        history: dict[str, Any] = {"layers": {}, "lam": stages[-1], "penalty": penalty}
        history["stages"] = []
        actions: list[Any] = []
        current = model
        store = resume.current()
        start, partial = (0, 0), None
        if store is not None and (ckpt := store.load("ssr stages")) is not None:
            tensors, meta = ckpt
            actions = _cuts_from_records(meta["cuts"])
            if actions:  # the architecture the cuts made so far give, then the saved weights
                from compactnn import surgery
                from compactnn.plan import CompressionPlan

                shape = list(data.input_shape)
                plan = CompressionPlan(actions=list(actions), meta={"input_shape": shape})
                current = surgery.apply(plan, model)
            resume.load_model_state(current, tensors)
            resume.set_rng_state(tensors, meta["rng"])
            history, start, partial = meta["history"], tuple(meta["next"]), meta["record"]

        def saved(cur: nn.Module, si: int, li: int, record: dict[str, Any]) -> None:
            """Checkpoint: the next stage / layer to run and everything before it."""
            if store is None:
                return
            r_t, r_m = resume.rng_state()
            meta = {"next": [si, li], "cuts": _cut_records(actions), "record": record}
            meta["history"] = history
            store.save("ssr stages", {**resume.model_state(cur), **r_t}, {**meta, "rng": r_m})

        for si, lam in enumerate(stages):
            if si < start[0]:
                continue
            first = si == start[0]
            current, layer_rec = self._stage(
                current, layers, lam, loader, data, si, actions, progress,
                start=start[1] if first else 0, record=partial if first else None, saved=saved,
            )  # fmt: skip
            history["layers"] = layer_rec
            stage_rec: dict[str, Any] = {"lam": lam, "layers": layer_rec}
            if si < len(stages) - 1 and cfg.path_finetune_epochs > 0:
                self._finetune(
                    current,
                    loader,
                    epochs=cfg.path_finetune_epochs,
                    seed=cfg.seed + 7 + 31 * (si + 1),
                    masks=zero_masks(current) if penalty == "l1" else None,
                    desc=f"SSR fine-tune (lambda stage {si + 1}/{len(stages)})",
                    progress=progress,
                )
            if data.val is not None and len(stages) > 1:  # on validation, never test
                from compactnn.metrics import accuracy

                stage_rec["val_top1"] = accuracy(current, data.val, topk=(1,))["top1"]
            if penalty != "l1":
                stage_rec["filters"] = {  # the widths the model really has
                    k: int(current.get_submodule(k).weight.shape[0]) for k in layers
                }
            if si < len(stages) - 1:
                # Algorithm 1's S is a trade-off path: every point but the last (the result)
                # is returned as a self-contained plan that rebuilds that point's model
                from compactnn.plan import CompressionPlan

                history.setdefault("stage_plans", []).append(
                    replay_plan(CompressionPlan(actions=list(actions)), current, data.input_shape)
                )
            history["stages"].append(stage_rec)
            saved(current, si + 1, 0, {})
        return current, history, actions

    def run(
        self, model: nn.Module, data: CompressionData, *, progress: bool = True
    ) -> CompressionResult:
        cfg = self.config
        loader = data.require_train(self.name)
        shape = data.require_input_shape(self.name)
        layers = self._layers(model, shape)
        if cfg.budget is not None:
            teacher = copy.deepcopy(model).eval() if cfg.finetune_distill > 0 else None

            def finetune(m: nn.Module) -> None:
                if cfg.finetune_epochs > 0:
                    self._finetune(m, loader, epochs=cfg.finetune_epochs, seed=cfg.seed + 7,
                                   masks=None, desc="SSR fine-tune", progress=progress,
                                   teacher=teacher)  # fmt: skip

            return budgeted_run(self, model, data, layers, finetune=finetune, progress=progress)
        stages = self._lam_stages(cfg, layers)
        structured = _PENALTIES[cfg.penalty] != "l1"
        head = self._gap_head(model, shape, layers) if cfg.gap else None
        # the uncompressed network, frozen before any training, is the distillation teacher
        # (and the target of the GAP classifier's fit)
        teacher = copy.deepcopy(model).eval() if cfg.finetune_distill > 0 or cfg.gap else None
        current, history, actions = self._run_stages(model, layers, stages, loader, data, progress)
        if head is not None:
            current, history["gap"] = add_gap_head(
                current, teacher, head, loader, shape, max_samples=cfg.gap_fit_samples
            )
            actions.append(head)
            if cfg.finetune_distill == 0:
                teacher = None
        plan = None
        if structured:
            from compactnn.plan import CompressionPlan

            plan = CompressionPlan(actions=actions, meta={"input_shape": list(shape)})
        masks = None if structured else zero_masks(current)
        if cfg.finetune_epochs > 0:
            self._finetune(
                current,
                loader,
                epochs=cfg.finetune_epochs,
                seed=cfg.seed + 7,
                masks=masks,
                desc="SSR fine-tune",
                progress=progress,
                teacher=teacher,
            )
        if masks:
            apply_masks(current, masks)
            history["nonzero_params"] = sum(int((p != 0).sum()) for p in current.parameters())
        return CompressionResult(
            model=current,
            plan=replay_plan(plan, current, shape),
            method=self.name,
            config=cfg,
            history=history,
        )
