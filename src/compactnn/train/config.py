"""Optimisation settings: :class:`TrainConfig`, the per-epoch :class:`TrainHistory`,
:func:`seed_everything`, and the optimizer and learning-rate schedule (warm-up, cosine / step /
constant) they define."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from compactnn._validation import check_choice, check_float, check_int


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU) so that training is reproducible."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds legacy global users (third-party code)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    Attributes:
        epochs: passes over the training loader.
        lr: initial learning rate.
        optimizer: ``"sgd"`` (momentum, Nesterov) or ``"adam"``.
        momentum: SGD momentum.
        weight_decay: L2 weight decay.
        schedule: ``"cosine"`` (per step), ``"step"`` (x0.1 at 50 % and 75 %) or ``"constant"``.
        seed: seeds everything at the start of :func:`train`, including the shuffling of a
            ``DataLoader(..., shuffle=True)`` train loader (rebuilt with a generator seeded by
            ``seed``), so a call's batch order does not depend on earlier uses of the loader.
        max_steps_per_epoch: cap on batches per epoch (None = whole loader); for quick runs.
        grad_clip: max gradient norm (None = off).
        distill_weight: alpha of knowledge distillation when :func:`train` gets a ``teacher``:
            loss = (1 - alpha) * CE + alpha * T^2 * KL(teacher || student) at temperature T
            (Hinton et al. 2015).
        distill_temperature: T of knowledge distillation.
        warmup_steps: linear learning-rate warm-up: step k (from 0) of the first
            ``warmup_steps`` runs at ``(k + 1) / warmup_steps`` times the schedule's rate
            (0 = off). Guards a fine-tuning whose first full-rate steps would blow up.
    """

    epochs: int = 10
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    seed: int = 0
    max_steps_per_epoch: int | None = None
    grad_clip: float | None = None
    distill_weight: float = 0.5
    distill_temperature: float = 4.0
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        check_int(self.epochs, "epochs", "TrainConfig", min_value=0)
        check_float(self.lr, "lr", "TrainConfig", min_value=0.0, min_inclusive=False)
        check_choice(self.optimizer, "optimizer", "TrainConfig", ("sgd", "adam"))
        check_float(self.momentum, "momentum", "TrainConfig", min_value=0.0, max_value=1.0)
        check_float(self.weight_decay, "weight_decay", "TrainConfig", min_value=0.0)
        check_choice(self.schedule, "schedule", "TrainConfig", ("cosine", "step", "constant"))
        check_int(self.seed, "seed", "TrainConfig", min_value=0)
        check_int(self.warmup_steps, "warmup_steps", "TrainConfig", min_value=0)
        if self.max_steps_per_epoch is not None:
            check_int(self.max_steps_per_epoch, "max_steps_per_epoch", "TrainConfig", min_value=1)
        if self.grad_clip is not None:
            check_float(
                self.grad_clip, "grad_clip", "TrainConfig", min_value=0.0, min_inclusive=False
            )
        check_float(
            self.distill_weight, "distill_weight", "TrainConfig", min_value=0.0, max_value=1.0
        )
        check_float(
            self.distill_temperature,
            "distill_temperature",
            "TrainConfig",
            min_value=0.0,
            min_inclusive=False,
        )


@dataclass
class TrainHistory:
    """Per-epoch training loss / accuracy and (optional) validation accuracy."""

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[float]]:
        return asdict(self)


def _make_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.momentum > 0,
    )


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    return warm * _schedule_lr(cfg, step, total)


def _schedule_lr(cfg: TrainConfig, step: int, total: int) -> float:
    if cfg.schedule == "constant" or total <= 0:
        return cfg.lr
    frac = step / total
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * frac))
    return cfg.lr * (0.1 ** (int(frac >= 0.5) + int(frac >= 0.75)))
