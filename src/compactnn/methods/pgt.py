r"""PGT: proximal-gradient training that removes whole neurons (Zhou, Alvarez & Porikli 2016).

The network is trained on

.. math::

    \min_W\; \psi(W) + \sum_l \lambda_l\, g(W_l),

:math:`\psi` the training loss and :math:`g` a neuron-level regulariser of layer :math:`l`, by
forward-backward splitting: every SGD step on :math:`\psi` (the forward step, learning rate
:math:`\eta`) is followed by the backward step :math:`W_l \leftarrow
\operatorname{prox}_{\eta\lambda_l g}(W_l)` per constrained layer
(:class:`~compactnn.solvers.training.ProxGradient` as the ``step_hook`` of
:func:`compactnn.train.train`). A *neuron* is the order-3 tensor of one output of a layer with
its bias (supplement sec. 3): ``(c_in, kh, kw)`` for a convolution, and for a fully connected
layer the ``(c, h, w)`` of its flattened input (supplement Table 2: "fc3 500 filters 4x4"),
``(d, 1, 1)`` when the input was never an image. The backward steps (``penalty``):

* ``"group"``: group soft threshold of every neuron (weights and bias together),
  :math:`w_j \leftarrow (1 - \eta\lambda_l/\|w_j\|_2)_+\, w_j`;
* ``"lowrank"``: the tensor low-rank step of supplement Algorithm 1 (LRTC): the average over
  the three mode unfoldings of their singular value thresholding, iterated ``lrtc_iter``
  times (:func:`compactnn.prox.lrtc_step`); a neuron whose unfoldings all fall under the
  threshold becomes zero, its bias with it (the bias is not penalised otherwise);
* ``"topk"``: the l0 baseline of supplement sec. 4: keep the ``t`` neurons of largest norm,
  zero the others (:func:`compactnn.prox.topk_groups`).

A neuron that reaches zero stays zero (``hold_zeros``; zero is a local minimum under ReLU,
supplement sec. 3). After training the zero neurons are removed physically together with the
next layer's inputs (masked = pruned exactly), and the network is optionally fine-tuned.
Training starts from the given (trained) model or, with ``init="scratch"``, from a fresh
initialisation as in the paper.

References:
    Zhou, Alvarez, Porikli, "Less Is More: Towards Compact CNNs", ECCV 2016, sec. 3-4, and its
    supplement: sec. 1 (parameter accounting), sec. 2 (Algorithm 1, LRTC), sec. 3 (zero neurons
    are local minima), sec. 4 (l0 "top t" comparison), Tables 2-3.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from compactnn import train as training
from compactnn._validation import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_per_layer,
    rule,
)
from compactnn.errors import ConfigError
from compactnn.graph import example_input_for
from compactnn.methods._common import (
    finetune_model,
    kept_filters,
    per_layer_values,
    prune_filters,
)
from compactnn.methods._engine import (
    ENGINE_RULES,
    EngineMethod,
    EngineOptions,
    EngineSettings,
    engine_settings_of,
)
from compactnn.methods._options import FINETUNE_RULES, LAYERS, SEED, SGDOptions
from compactnn.methods._pgt_neurons import (
    _NeuronStep,
    neuron_prox,
    neuron_shapes,
    rebalance_neurons,
)
from compactnn.methods.base import CompressionData, CompressionResult, Method, MethodConfig
from compactnn.metrics import accuracy
from compactnn.solvers.training import ProxGradient, ProxGroup
from compactnn.train import TrainConfig, _lr_at

__all__ = ["PGT", "PGTConfig", "neuron_shapes", "neuron_prox", "rebalance_neurons"]

PENALTIES: tuple[str, ...] = ("group", "lowrank", "topk")


@dataclass(frozen=True)
class PGTConfig(MethodConfig, SGDOptions, EngineOptions):
    """Hyper-parameters of PGT, validated on construction (``rules``).

    Attributes:
        penalty: the neuron regulariser g: ``"group"`` (group sparsity, l2,1 over neurons),
            ``"lowrank"`` (tensor low rank, supplement Algorithm 1) or ``"topk"`` (the l0
            "top t" baseline, supplement sec. 4).
        lam: λ_l >= 0 of each constrained layer (``group`` / ``lowrank``): the backward step
            thresholds at η·λ_l (η the step's learning rate). One float, one per layer
            (list) or a dict layer -> float.
        keep: t, neurons kept per layer by ``topk`` (ints >= 1: one for all, a list or a
            dict layer -> count); required with ``penalty="topk"``.
        layers: the constrained layers (default: every Conv2d/Linear but the classifier, see
            :func:`~compactnn.methods._common.prunable_layers`).
        epochs: epochs of proximal-gradient training.
        steps_per_epoch: cap on SGD steps per epoch (None = the whole loader).
        lr, momentum, weight_decay: SGD of the forward step (η = lr under ``schedule``).
        schedule: learning-rate schedule of the training (``"cosine"``, ``"step"``,
            ``"constant"``); the backward step uses each step's η.
        init: ``"trained"`` (start from the given model) or ``"scratch"`` (re-initialise every
            layer first, seeded, as the paper trains).
        lrtc_iter: iterations of Algorithm 1's "while not converged" loop per backward step
            (``lowrank``; 1 = the single averaged SVT step).
        lrtc_tol: stop Algorithm 1's loop earlier when the relative change of every neuron is
            <= this (0 = run ``lrtc_iter``).
        hold_zeros: a neuron that became zero stays zero for the rest of the training
            (supplement sec. 3); False lets the forward step revive it.
        min_keep: never keep fewer neurons than this in a layer (the largest ones).
        finetune_epochs, finetune_lr, finetune_steps_per_epoch: fine-tuning of the pruned
            network (structure fixed; cosine schedule).
        finetune_distill: weight α in [0, 1] of distillation from the model before PGT
            during the fine-tuning (0 = cross-entropy only).
        finetune_rebalance: before the fine-tuning, rescale every kept neuron of a constrained
            layer and the next layer's inputs it feeds so that both have the same norm
            (:func:`rebalance_neurons`; the network computes the same function). The group
            threshold leaves the surviving neurons short and the next layer's weights long,
            which makes the fine-tuning's first steps large on them. Not in the paper (it does
            not fine-tune). Default False.
        finetune_warmup: steps of linear learning-rate warm-up at the start of the
            fine-tuning (0 = off): the first full-rate steps on the few surviving neurons can
            push every ReLU of a layer dead (seen on lenet-caffe's fc1 at lr 0.01). Not in the
            paper.
        seed: seeds initialisation, SGD and fine-tuning (int >= 0).
    """

    lr: float = 0.01  # SGDOptions' field, PGT's default
    penalty: str = "group"
    lam: Any = 0.05
    keep: Any = None
    layers: tuple[str, ...] | None = None
    epochs: int = 2
    steps_per_epoch: int | None = None
    schedule: str = "cosine"
    init: str = "trained"
    lrtc_iter: int = 1
    lrtc_tol: float = 0.0
    hold_zeros: bool = True
    min_keep: int = 1
    finetune_epochs: int = 1
    finetune_lr: float = 0.01
    finetune_steps_per_epoch: int | None = None
    finetune_distill: float = 0.0
    finetune_rebalance: bool = False
    finetune_warmup: int = 0
    seed: int = 0

    owner: ClassVar[str] = "PGT"
    rules = MappingProxyType(
        {
            **ENGINE_RULES,
            **SGDOptions.rules,
            "penalty": rule(check_choice, choices=PENALTIES),
            "lam": rule(check_per_layer, min_value=0.0),
            "keep": rule(check_per_layer, optional=True, check=check_int, min_value=1),
            "layers": LAYERS,
            "epochs": rule(check_int, min_value=1),
            "steps_per_epoch": rule(check_int, optional=True, min_value=1),
            "schedule": rule(check_choice, choices=("cosine", "step", "constant")),
            "init": rule(check_choice, choices=("trained", "scratch")),
            "lrtc_iter": rule(check_int, min_value=1),
            "lrtc_tol": rule(check_float, min_value=0.0),
            "hold_zeros": rule(check_bool),
            "min_keep": rule(check_int, min_value=1),
            **FINETUNE_RULES,
            "finetune_rebalance": rule(check_bool),
            "finetune_warmup": rule(check_int, min_value=0),
            "seed": SEED,
        }
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.penalty == "topk" and self.keep is None:
            raise ConfigError(
                "The 'keep' parameter of PGT must be given with penalty='topk' (t, the neurons "
                "kept per layer: an int, a list or a dict layer -> int). Got None instead."
            )


class PGT(EngineMethod[PGTConfig]):
    """Forward-backward splitting with group-sparse / tensor low-rank / top-t neuron steps."""

    name = "pgt"
    Config = PGTConfig
    description = (
        "PGT (Zhou et al. 2016): proximal-gradient training, group-sparse or tensor low-rank "
        "neurons (or the l0 top-t baseline), zero neurons removed"
    )

    # ------------------------------------------------------------------ budget
    def engine_settings(self) -> EngineSettings:
        """PGT's neuron penalty and forward step for the budgeted engine (a target is met by
        one joint run, :mod:`compactnn.methods._engine`): ``group`` is the group soft threshold
        (l2,1), ``topk`` the l0 top-t (group hard threshold); ``lowrank`` keeps the paper's
        fixed-λ protocol, as does ``init="scratch"``."""
        cfg = self.config
        if cfg.penalty == "lowrank" or cfg.init != "trained":
            raise ConfigError(
                "PGT meets a target with its budgeted engine, which removes whole neurons of a "
                "trained model: penalty='lowrank' and init='scratch' keep the paper's fixed-λ "
                "protocol. Drop the target and set lam, or use penalty='group' / 'topk'."
            )
        return engine_settings_of(
            cfg, "l21" if cfg.penalty == "group" else "l20", min_keep=cfg.min_keep, with_bias=True
        )

    def total_step(self, data: CompressionData) -> float:
        """Σ_k η_k over the training steps of a run (the schedule's learning rates)."""

        cfg = self.config
        steps = len(data.require_train(self.name))
        if cfg.steps_per_epoch is not None:
            steps = min(steps, cfg.steps_per_epoch)
        total = steps * cfg.epochs
        tc = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, schedule=cfg.schedule)
        return float(sum(_lr_at(tc, k, total) for k in range(total)))

    def proxy(self) -> Method:
        """Same training (hence the same neurons), without the fine-tuning."""
        return self.with_options(finetune_epochs=0)

    # ------------------------------------------------------------------ steps
    def _hook(
        self, model: nn.Module, layers: list[str], input_shape: tuple[int, ...]
    ) -> _NeuronStep:
        """The backward step of every constrained layer, as one ``step_hook``."""

        cfg = self.config
        mods = dict(model.named_modules())
        shapes = neuron_shapes(model, layers, input_shape)
        lam = per_layer_values(cfg.lam, layers, "lam", "PGT") if cfg.penalty != "topk" else {}
        keep: dict[str, int] = {}
        if cfg.penalty == "topk":
            keep = {n: int(v) for n, v in per_layer_values(cfg.keep, layers, "keep", "PGT").items()}
        groups = []
        for n in layers:
            m = mods[n]
            params = {f"{n}.weight": m.weight}
            if m.bias is not None:
                params[f"{n}.bias"] = m.bias
            prox = neuron_prox(
                cfg.penalty,
                shapes[n],
                keep=max(keep.get(n, 0), cfg.min_keep),
                lrtc_iter=cfg.lrtc_iter,
                lrtc_tol=cfg.lrtc_tol,
            )
            groups.append(ProxGroup(params, lam=lam.get(n, 0.0), prox=prox, joint=True))
        return _NeuronStep(ProxGradient(groups), {n: mods[n] for n in layers}, cfg.hold_zeros)

    def train_sparse(
        self, model: nn.Module, data: CompressionData, *, progress: bool = False
    ) -> tuple[list[str], dict[str, Any]]:
        """Forward-backward training of ``model`` in place (zero neurons still in place).

        Returns the constrained layers and the training record (neurons left per layer).
        """

        cfg = self.config
        loader = data.require_train(self.name)
        shape = data.require_input_shape(self.name)
        layers = self._layers(model, shape)
        if cfg.init == "scratch":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                for m in model.modules():
                    if hasattr(m, "reset_parameters") and m is not model:
                        m.reset_parameters()
        hook = self._hook(model, layers, shape)
        before = hook.counts()
        training.train(
            model,
            loader,
            config=training.TrainConfig(
                epochs=cfg.epochs,
                **cfg.sgd(),
                schedule=cfg.schedule,
                seed=cfg.seed,
                max_steps_per_epoch=cfg.steps_per_epoch,
            ),
            step_hook=hook,
            progress=progress,
            desc=f"PGT ({cfg.penalty})",
            checkpoint="pgt proximal-gradient training",
        )
        record = {
            "neurons_before": before,
            "neurons_after_training": hook.counts(),
            "steps": hook.prox.steps,
        }
        return layers, record

    def remove(
        self,
        model: nn.Module,
        layers: list[str],
        input_shape: tuple[int, ...],
        check: Any = None,
    ) -> tuple[nn.Module, Any, dict[str, tuple[int, ...]]]:
        """Physically remove the zero neurons of ``layers`` (with the next layer's inputs);
        coupled layers are cut group-consistently (:func:`prune_filters`), ``check`` is a batch
        of the user's inputs for the surgery self-check."""
        cfg = self.config
        mods = dict(model.named_modules())
        keep: dict[str, tuple[int, ...]] = {}
        for n in layers:
            m = mods[n]
            rows = [m.weight.detach().reshape(m.weight.shape[0], -1)]
            if m.bias is not None:
                rows.append(m.bias.detach().reshape(-1, 1))
            idx = kept_filters(torch.cat(rows, dim=1), cfg.min_keep)
            if len(idx) < m.weight.shape[0]:
                keep[n] = tuple(idx)
        if not keep:
            return model, None, keep
        pruned, plan = prune_filters(model, keep, input_shape, check=check)
        return pruned, plan, keep

    def _probe(self, model: nn.Module, data: CompressionData) -> Tensor:
        """The batch the rebalancing is checked on: 8 seeded Gaussian inputs and the user's
        check batch (when it is one tensor)."""

        cfg = self.config
        x = example_input_for(model, data.require_input_shape(self.name))
        gen = torch.Generator().manual_seed(cfg.seed)
        x = torch.randn((8, *x.shape[1:]), generator=gen, device="cpu").to(x)  # seeded on CPU
        if isinstance(data.check_batch, Tensor) and data.check_batch.shape[1:] == x.shape[1:]:
            x = torch.cat([x, data.check_batch.to(x)])
        return x

    def finetune(
        self,
        model: nn.Module,
        data: CompressionData,
        layers: list[str],
        *,
        teacher: nn.Module | None = None,
        progress: bool = False,
    ) -> dict[str, Any]:
        """The fine-tuning of :meth:`run` on the pruned ``model`` (in place): the optional
        rebalancing of ``layers``' neurons (``finetune_rebalance``), then
        ``finetune_epochs`` of SGD (cosine from ``finetune_lr``), distilled from ``teacher``
        (the model before PGT) with weight ``finetune_distill``. Returns the record added to
        the history (the rebalancing factors' range per layer)."""
        cfg = self.config
        record: dict[str, Any] = {}
        if cfg.finetune_epochs == 0:
            return record
        if cfg.finetune_distill > 0 and teacher is None:
            raise ConfigError(
                "PGT.finetune with finetune_distill > 0 needs the teacher (the model before "
                "PGT). Pass teacher= or finetune_distill=0."
            )
        if cfg.finetune_rebalance:
            alphas = rebalance_neurons(model, layers, self._probe(model, data))
            record["rebalance"] = {
                n: {"min": min(a), "max": max(a)} for n, a in alphas.items() if a
            }
        finetune_model(
            model,
            data.require_train(self.name),
            epochs=cfg.finetune_epochs,
            **cfg.sgd(lr=cfg.finetune_lr),
            seed=cfg.seed + 7,
            steps_per_epoch=cfg.finetune_steps_per_epoch,
            distill=cfg.finetune_distill,
            teacher=teacher,
            progress=progress,
            desc="PGT fine-tune",
            warmup_steps=cfg.finetune_warmup,
        )
        return record

    def engine_finetune(
        self, model: nn.Module, data: CompressionData, layers: list[str], *, progress: bool
    ) -> Callable[[nn.Module], None]:
        teacher = copy.deepcopy(model).eval() if self.config.finetune_distill > 0 else None
        return lambda m: self.finetune(m, data, layers, teacher=teacher, progress=progress)

    def run_paper(
        self, model: nn.Module, data: CompressionData, layers: list[str], *, progress: bool
    ) -> CompressionResult:
        """Proximal-gradient training at the fixed λ (or top t), the zero neurons removed, the
        fine-tuning."""
        cfg = self.config
        shape = data.require_input_shape(self.name)
        if cfg.penalty != "topk":
            per_layer_values(cfg.lam, layers, "lam", "PGT")  # lengths checked before training
        else:
            per_layer_values(cfg.keep, layers, "keep", "PGT")
        if cfg.finetune_rebalance and cfg.finetune_epochs > 0:  # its errors before training
            rebalance_neurons(copy.deepcopy(model), layers, self._probe(model, data))
        teacher = copy.deepcopy(model).eval() if cfg.finetune_distill > 0 else None
        layers, history = self.train_sparse(model, data, progress=progress)
        current, plan, keep = self.remove(model, layers, shape, data.check_batch)
        mods = dict(current.named_modules())
        history.update(
            penalty=cfg.penalty,
            neurons={n: int(mods[n].weight.shape[0]) for n in layers},
        )
        if data.val is not None:  # validation only, never test
            history["val_top1_before_finetune"] = accuracy(current, data.val, topk=(1,))["top1"]
        history.update(self.finetune(current, data, layers, teacher=teacher, progress=progress))
        return self.result(current, plan, shape, history)
