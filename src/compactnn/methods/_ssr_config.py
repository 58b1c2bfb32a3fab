"""The options of SSR (:class:`SSRConfig`, re-exported by :mod:`compactnn.methods.ssr`): the
penalty and its lambdas, the AULM solve, the SGD and fine-tuning settings, the lambda path and
the GAP head, validated on construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

from compactnn._validation import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_names,
    check_per_layer,
    check_text,
    parameter_error,
    rule,
)
from compactnn.methods._engine import ENGINE_RULES, EngineOptions
from compactnn.methods._options import FINETUNE_RULES, LAYERS, POSITIVE, SEED, SGDOptions
from compactnn.methods.base import MethodConfig

__all__ = ["SSRConfig"]


_PENALTIES = {"l21": "l21", "l2,1": "l21", "l20": "l20", "l2,0": "l20", "l1": "l1"}


def _check_lam_path(value: Any, name: str, owner: str) -> tuple[Any, ...]:
    """Algorithm 1's set S: a non-empty list of lambda settings, each checked like ``lam``."""
    if not isinstance(value, (list, tuple)) or len(value) == 0:
        what = "a non-empty list of lambda settings (each a float, a per-layer list or a dict)"
        raise parameter_error(name, owner, what, value)
    return tuple(
        check_per_layer(v, f"{name}[{i}]", owner, min_value=0.0) for i, v in enumerate(value)
    )


@dataclass(frozen=True)
class SSRConfig(MethodConfig, SGDOptions, EngineOptions):
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
    rules = MappingProxyType(
        {
            **ENGINE_RULES,
            **SGDOptions.rules,
            "penalty": rule(check_choice, choices=tuple(_PENALTIES)),
            "lam": rule(check_per_layer, min_value=0.0),
            "rho": rule(check_float, **POSITIVE),
            "overrelax": rule(check_bool),
            "r": rule(check_int, min_value=3),
            "eps": rule(check_float, **POSITIVE),
            "max_outer": rule(check_int, min_value=1),
            "w_steps": rule(check_int, min_value=1),
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
            "gap_flatten": rule(
                check_text, optional=True, expected="a module name (a non-empty string)"
            ),
            "gap_classifier": rule(check_names, optional=True),
            "gap_fit_samples": rule(check_int, min_value=1),
            "seed": SEED,
        }
    )
