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
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from compactnn._validation import check_choice, check_float, check_int
from compactnn.errors import ConfigError
from compactnn.methods._common import per_layer_values, prunable_layers, prune_filters, replay_plan
from compactnn.methods.base import CompressionData, CompressionResult, Method, MethodConfig
from compactnn.train import TrainConfig, apply_masks, train, zero_masks

__all__ = ["SSR", "SSRConfig"]

_PENALTIES = {"l21": "l21", "l2,1": "l21", "l20": "l20", "l2,0": "l20", "l1": "l1"}


@dataclass(frozen=True)
class SSRConfig(MethodConfig):
    """Hyper-parameters of SSR (paper defaults).

    Attributes:
        penalty: ``"l21"`` (eq. 14), ``"l20"`` (eq. 15) or ``"l1"`` (eq. 16, unstructured).
        lam: lambda, the structured-sparsity weight: one float, one per pruned layer, or a dict.
        rho: rho, the augmented-Lagrangian penalty (paper: 1).
        overrelax: AULM's Nesterov over-relaxation (False = plain ADMM).
        r: over-relaxation constant in gamma_k = k / (k + r) (paper: 3).
        eps: epsilon of the stopping rules ||K - F||_F <= eps or ||F_k - F_{k-1}||_F <= eps.
        max_outer: xi, at most this many AULM iterations per layer.
        w_steps: SGD steps per K-step (eq. 11).
        lr, momentum, weight_decay: SGD of the K-step (paper: 1e-3, 0.9, 5e-4).
        layers: layers to prune (default: every Conv2d/Linear but the classifier and layers
            feeding a residual add).
        train_all: the K-step updates every parameter (default False: only layer l's weight
            and bias, as eq. (11) minimises over K^l alone).
        min_keep: never keep fewer filters than this in a layer.
        finetune_epochs, finetune_lr: global fine-tuning after pruning.
        finetune_steps_per_epoch: cap on batches per fine-tuning epoch (None = all).
        finetune_distill: weight alpha of knowledge distillation from the uncompressed model
            during the final fine-tuning (0 = plain cross-entropy; see ``TrainConfig``).
        lam_path: Algorithm 1's set S: a sequence of lambda settings (each like ``lam``: a
            float, a per-layer list or a dict) run in order; after each setting the layers are
            pruned and the network is fine-tuned (``path_finetune_epochs``), the last setting
            is followed by the global fine-tuning. ``lam`` is ignored when this is given.
        path_finetune_epochs: fine-tuning epochs between two lambda settings of ``lam_path``.
        seed: seeds the SGD steps.
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
    lam_path: tuple[Any, ...] | None = None
    path_finetune_epochs: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.penalty not in _PENALTIES:
            check_choice(self.penalty, "penalty", "SSR", tuple(_PENALTIES))
        check_float(self.rho, "rho", "SSR", min_value=0.0, min_inclusive=False)
        check_int(self.r, "r", "SSR", min_value=3)
        check_float(self.eps, "eps", "SSR", min_value=0.0)
        check_int(self.max_outer, "max_outer", "SSR", min_value=1)
        check_int(self.w_steps, "w_steps", "SSR", min_value=1)
        check_float(self.lr, "lr", "SSR", min_value=0.0, min_inclusive=False)
        check_int(self.min_keep, "min_keep", "SSR", min_value=1)
        check_int(self.finetune_epochs, "finetune_epochs", "SSR", min_value=0)
        check_int(self.path_finetune_epochs, "path_finetune_epochs", "SSR", min_value=0)
        check_float(self.finetune_distill, "finetune_distill", "SSR", min_value=0.0, max_value=1.0)
        if self.lam_path is not None and (
            isinstance(self.lam_path, (str, bytes, dict))
            or not hasattr(self.lam_path, "__len__")
            or len(self.lam_path) == 0
        ):
            raise ConfigError(
                "The 'lam_path' parameter of SSR must be a non-empty list of lambda settings "
                f"(each a float, a per-layer list or a dict). Got {self.lam_path!r}."
            )
        if isinstance(self.lam, (int, float)) and not isinstance(self.lam, bool):
            check_float(self.lam, "lam", "SSR", min_value=0.0)


class SSR(Method):
    """Filter pruning by structured sparsity regularisation, solved layer by layer with AULM."""

    name = "ssr"
    Config = SSRConfig
    description = "SSR (Lin et al. 2019): l2,1 / l2,0 / l1 on filters via AULM, filters removed"

    @staticmethod
    def _lam_stages(cfg: SSRConfig, layers: list[str]) -> list[dict[str, float]]:
        """The lambda settings to run: ``lam_path`` (Algorithm 1's S) or the single ``lam``."""
        raw = list(cfg.lam_path) if cfg.lam_path is not None else [cfg.lam]
        stages = []
        for i, value in enumerate(raw):
            name = "lam" if cfg.lam_path is None else f"lam_path[{i}]"
            lam = per_layer_values(value, layers, name, "SSR")
            for k, v in lam.items():
                check_float(v, f"{name}['{k}']", "SSR", min_value=0.0)
            stages.append(lam)
        return stages

    def _stage(
        self,
        current: nn.Module,
        layers: list[str],
        lam: dict[str, float],
        cfg: SSRConfig,
        loader: Any,
        data: CompressionData,
        si: int,
        keep_all: dict[str, tuple[int, ...]],
        record: dict[str, Any],
        progress: bool,
    ) -> nn.Module:
        """One lambda setting: AULM on every layer in turn, pruning after each (lines 3-11)."""
        from compactnn.solvers.training import ADMMConfig, ADMMEngine

        penalty = _PENALTIES[cfg.penalty]
        structured = penalty != "l1"
        desc = "SSR layers" if si == 0 else f"SSR layers (lambda stage {si + 1})"
        for li, layer in enumerate(tqdm(layers, desc=desc, disable=not progress)):
            mod = dict(current.named_modules())[layer]
            pname = f"{layer}.weight"
            engine = ADMMEngine(
                {pname: mod.weight},
                ADMMConfig(
                    rho=cfg.rho,
                    penalty=penalty,
                    lam=lam[layer],
                    structure="filters" if structured else "elements",
                    overrelax=cfg.overrelax,
                    r=cfg.r,
                    eps=cfg.eps,
                    stop_rule="either",
                    max_outer=cfg.max_outer,
                ),
            )
            stats: list[dict[str, Any]] = []
            for k in range(cfg.max_outer):
                train(
                    current,
                    loader,
                    config=TrainConfig(
                        epochs=1,
                        lr=cfg.lr,
                        momentum=cfg.momentum,
                        weight_decay=cfg.weight_decay,
                        schedule="constant",
                        seed=cfg.seed + 100_000 * si + 1000 * li + k,
                        max_steps_per_epoch=cfg.w_steps,
                    ),
                    extra_loss=engine.penalty_loss,
                    params=None if cfg.train_all else list(mod.parameters()),
                    masks=zero_masks(current) if not structured and si > 0 else None,
                    progress=False,
                )
                engine.f_step()
                engine.dual_step()
                stats.append(engine.state.history[-1] if engine.state.history else {})
                if engine.converged():
                    break
            F = engine.state.F[pname].detach()
            if structured:
                norms = F.reshape(F.shape[0], -1).norm(dim=1)
                keep = [i for i in range(F.shape[0]) if norms[i] > 0]
                if len(keep) < cfg.min_keep:
                    keep = sorted(norms.argsort(descending=True)[: cfg.min_keep].tolist())
                record[layer] = {
                    "outer_iterations": len(stats),
                    "filters_before": int(F.shape[0]),
                    "filters_after": len(keep),
                    "trace": stats,
                }
                if len(keep) < F.shape[0]:
                    current, _ = prune_filters(current, {layer: keep}, data.input_shape)
                # indices into the original model's filters (stages compose)
                prev = keep_all.get(layer)
                keep_all[layer] = tuple(keep) if prev is None else tuple(prev[i] for i in keep)
            else:  # l1: unstructured zeros, held fixed during fine-tuning
                with torch.no_grad():
                    mod.weight.copy_(F)
                record[layer] = {
                    "outer_iterations": len(stats),
                    "nonzero_after": int((F != 0).sum()),
                    "weights": int(F.numel()),
                    "trace": stats,
                }
        return current

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
        """Global fine-tuning of the pruned network (cosine lr from ``finetune_lr``)."""
        cfg: SSRConfig = self.config  # type: ignore[assignment]
        train(
            model,
            loader,
            config=TrainConfig(
                epochs=epochs,
                lr=cfg.finetune_lr,
                momentum=cfg.momentum,
                weight_decay=cfg.weight_decay,
                schedule="cosine",
                seed=seed,
                max_steps_per_epoch=cfg.finetune_steps_per_epoch,
                distill_weight=cfg.finetune_distill,
            ),
            masks=masks,
            progress=progress,
            desc=desc,
            teacher=teacher,
        )

    def run(
        self, model: nn.Module, data: CompressionData, *, progress: bool = True
    ) -> CompressionResult:
        cfg: SSRConfig = self.config  # type: ignore[assignment]
        loader = data.require_train(self.name)
        shape = data.require_input_shape(self.name)
        layers = list(cfg.layers) if cfg.layers is not None else prunable_layers(model, shape)
        self._check_layers(model, layers)
        stages = self._lam_stages(cfg, layers)
        penalty = _PENALTIES[cfg.penalty]
        structured = penalty != "l1"
        history: dict[str, Any] = {
            "layers": {},
            "lam": stages[-1],
            "penalty": penalty,
            "stages": [],
        }
        keep_all: dict[str, tuple[int, ...]] = {}
        current = model
        plan = None
        # the uncompressed network, frozen before any training, is the distillation teacher
        teacher = copy.deepcopy(model).eval() if cfg.finetune_distill > 0 else None
        for si, lam in enumerate(stages):
            stage_layers: dict[str, Any] = {}
            current = self._stage(
                current, layers, lam, cfg, loader, data, si, keep_all, stage_layers, progress
            )
            history["layers"] = stage_layers
            stage_rec: dict[str, Any] = {"lam": lam, "layers": stage_layers}
            if si < len(stages) - 1 and cfg.path_finetune_epochs > 0:
                # Algorithm 1, line 12: fine-tune the pruned network before the next lambda
                self._finetune(
                    current,
                    loader,
                    epochs=cfg.path_finetune_epochs,
                    seed=cfg.seed + 7 + 31 * (si + 1),
                    masks=zero_masks(current) if not structured else None,
                    desc=f"SSR fine-tune (lambda stage {si + 1}/{len(stages)})",
                    progress=progress,
                )
            if data.test is not None and len(stages) > 1:
                from compactnn.metrics import accuracy

                stage_rec["top1"] = accuracy(current, data.test, topk=(1,))["top1"]
            if structured:
                stage_rec["filters"] = {k: len(v) for k, v in keep_all.items()}
            history["stages"].append(stage_rec)
        if structured:
            from compactnn.plan import CompressionPlan, KeepOutputs

            plan = CompressionPlan(
                actions=[KeepOutputs(layer=k, keep=v) for k, v in keep_all.items()],
                meta={"input_shape": list(data.input_shape)},
            )
        masks = zero_masks(current) if not structured else None
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
            history["nonzero_params"] = int(
                sum(int((p != 0).sum()) for n, p in current.named_parameters())
            )
        return CompressionResult(
            model=current,
            plan=replay_plan(plan, current, data.input_shape),
            method=self.name,
            config=cfg,
            history=history,
        )
