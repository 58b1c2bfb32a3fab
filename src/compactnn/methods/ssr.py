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
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from compactnn import distributed, resume, surgery
from compactnn.errors import ConfigError
from compactnn.methods._common import (
    add_gap_head,
    admm_w_step,
    finetune_model,
    kept_filters,
    per_layer_values,
    prune_filters,
    replay_plan,
)
from compactnn.methods._engine import (
    EngineMethod,
    EngineSettings,
    engine_settings_of,
)
from compactnn.methods._ssr_config import _PENALTIES, SSRConfig
from compactnn.methods.base import CompressionData, CompressionResult, Method
from compactnn.metrics import accuracy
from compactnn.plan import CompressionPlan, GapHead, KeepInputs, KeepOutputs
from compactnn.solvers.training import ADMMConfig, ADMMEngine, run_admm
from compactnn.train import apply_masks, zero_masks

__all__ = ["SSR", "SSRConfig"]


def _cut_records(actions: list[Any]) -> list[dict[str, Any]]:
    """JSON records of SSR's cuts (``KeepOutputs`` / ``KeepInputs``: a layer and kept indices),
    for the resume checkpoint and the cross-rank check."""
    return [{"type": type(a).__name__, "layer": a.layer, "keep": list(a.keep)} for a in actions]


def _cuts_from_records(records: list[dict[str, Any]]) -> list[Any]:
    """The cuts :func:`_cut_records` wrote, as plan actions again."""

    kinds = {"KeepOutputs": KeepOutputs, "KeepInputs": KeepInputs}
    return [kinds[r["type"]](r["layer"], tuple(r["keep"])) for r in records]


def _zero_masks_of(model: nn.Module, layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """:func:`~compactnn.train.zero_masks` restricted to the weights of ``layers``."""
    wanted = {f"{n}.weight" for n in layers}
    return {k: v for k, v in zero_masks(model).items() if k in wanted}


class SSR(EngineMethod[SSRConfig]):
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
        return engine_settings_of(cfg, pen, min_keep=cfg.min_keep)

    def _layers(self, model: nn.Module, shape: Any) -> list[str]:
        """The layers to prune: ``layers`` or the defaults (with ``gap``: the convs only, since
        the FC head is replaced), checked to exist."""
        cfg = self.config
        layers = super()._layers(model, shape)
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
            **cfg.sgd(),
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
                **cfg.sgd(lr=cfg.finetune_lr * 0.1**drops),
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
                stage_rec["val_top1"] = accuracy(current, data.val, topk=(1,))["top1"]
            if penalty != "l1":
                stage_rec["filters"] = {  # the widths the model really has
                    k: int(current.get_submodule(k).weight.shape[0]) for k in layers
                }
            if si < len(stages) - 1:
                # Algorithm 1's S is a trade-off path: every point but the last (the result)
                # is returned as a self-contained plan that rebuilds that point's model

                history.setdefault("stage_plans", []).append(
                    replay_plan(CompressionPlan(actions=list(actions)), current, data.input_shape)
                )
            history["stages"].append(stage_rec)
            saved(current, si + 1, 0, {})
        return current, history, actions

    def engine_finetune(
        self, model: nn.Module, data: CompressionData, layers: list[str], *, progress: bool
    ) -> Callable[[nn.Module], None]:
        cfg = self.config
        loader = data.require_train(self.name)
        teacher = copy.deepcopy(model).eval() if cfg.finetune_distill > 0 else None

        def finetune(m: nn.Module) -> None:
            if cfg.finetune_epochs > 0:
                self._finetune(m, loader, epochs=cfg.finetune_epochs, seed=cfg.seed + 7,
                               masks=None, desc="SSR fine-tune", progress=progress,
                               teacher=teacher)  # fmt: skip

        return finetune

    def run_paper(
        self, model: nn.Module, data: CompressionData, layers: list[str], *, progress: bool
    ) -> CompressionResult:
        """Algorithm 1: AULM layer by layer at the fixed λ (or along ``lam_path``), the
        filters removed after each stage, the GAP head, the fine-tuning."""
        cfg = self.config
        loader = data.require_train(self.name)
        shape = data.require_input_shape(self.name)
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
        return self.result(current, plan, shape, history)
