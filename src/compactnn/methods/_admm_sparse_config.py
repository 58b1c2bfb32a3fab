"""The options of ADMM-sparse (:class:`ADMMSparseConfig`, re-exported by
:mod:`compactnn.methods.admm_sparse`): the penalty and block structure, the mu path, the ADMM
and SGD settings, the paper's epoch schedule and the deployment, validated on construction.
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
    check_per_layer,
    parameter_error,
    rule,
)
from compactnn.errors import ConfigError
from compactnn.methods._engine import ENGINE_RULES, EngineOptions
from compactnn.methods._options import LAYERS, POSITIVE, SEED, SGDOptions
from compactnn.methods.base import MethodConfig
from compactnn.solvers.training.schedule import log_schedule

__all__ = ["ADMMSparseConfig"]

_GROUP_PENALTY = {"l1": "l21", "l0": "l20"}  # l1 / l0 of the block norms = group penalties


def _check_mus(value: Any, name: str, owner: str) -> tuple[float, ...]:
    """The μ path S: a non-empty increasing sequence of floats >= 0."""
    what = "a non-empty increasing sequence of floats >= 0"
    if not isinstance(value, (list, tuple)) or len(value) == 0:
        raise parameter_error(name, owner, what, value)
    mus = tuple(check_float(m, f"{name}[{i}]", owner, min_value=0.0) for i, m in enumerate(value))
    if any(b < a for a, b in zip(mus, mus[1:])):
        raise parameter_error(name, owner, what, list(mus))
    return mus


@dataclass(frozen=True)
class ADMMSparseConfig(MethodConfig, SGDOptions, EngineOptions):
    """Hyper-parameters of ADMM-sparse, validated on construction (``rules``).

    Attributes:
        penalty: the sparsity function f: ``"l0"`` (hard threshold b = sqrt(2μ/ρ), eq. 10) or
            ``"l1"`` (soft threshold a = μ/ρ, eq. 9).
        structure: sparsity block: ``"kernels"`` (W_ij, the paper's choice), ``"filters"``
            or ``"elements"``; ``None`` (default) = ``"kernels"``, or ``"filters"`` when a
            budget target is given (only removed filters shrink the stored model).
        mus: the μ path S of Algorithm 1 (μ of eq. 1, increasing floats >= 0). Default:
            ``n_mu`` log-spaced values in ``[mu_min, mu_max]``.
        mu_min, mu_max, n_mu: the default log-spaced path (0 < mu_min <= mu_max, n_mu >= 1).
        rho: ρ > 0 of the augmented Lagrangian, eq. (3).
        eps: ε > 0, the stopping threshold on ||W - F||_F and ||F_k - F_{k-1}||_F (Algorithm 1
            line 10).
        xi: ξ, at most this many ADMM iterations per μ (paper: 10).
        delta, nu: δ and ν of the epoch schedule: epochs per W-step = min(1 + δ i, δ ν) for
            the i-th μ (sec. 4; paper: 1, 15).
        steps_per_epoch: cap on SGD steps per "epoch" (CPU-scale runs; None = whole loader).
        lr, momentum, weight_decay: SGD of the W-step (eq. 7) and of the fine-tuning (paper lr
            1e-3).
        finetune_epochs: masked fine-tuning epochs after each μ (Algorithm 1 line 11); ``None``
            (default, the paper's) = the W-step schedule ``min(1 + δ i, δ ν)`` (sec. 4).
        overprune_guard: apply the 50 % guard of sec. 4.1.
        layers: regularised layers (default: the paper's, i.e. every prunable Conv2d with a
            spatial kernel larger than 1x1 and every hidden Linear; see
            :func:`kiaee_layers`).
        eval_batches: validation batches used for the accuracy of each μ (None = all).
        seed: seeds SGD (int >= 0).
        mu_scale: per-layer multipliers of μ (dict layer -> float > 0; None = 1 everywhere).
            A budget search sets them from each layer's median block norm so that one global
            μ acts alike on every layer.
        deploy_kernels: deploy the zero kernels W_ij left after filter and input-channel
            removal: each kernel-sparse conv becomes a
            :class:`~compactnn.layers.KernelSparseConv2d` (zero kernels not stored) in the
            form measured fastest on its real input (:func:`choose_kernel_forms`); False keeps
            them as zeros inside dense convs.
        measure_speed: time every path point's model (batch 100 and 1, one thread, real
            validation samples) and record its speed-up over the dense start (mu = 0).
    """

    weight_decay: float = 0.0  # SGDOptions' field, the W-step's default: no weight decay
    penalty: str = "l0"
    structure: str | None = None
    mus: tuple[float, ...] | None = None
    mu_min: float = 1e-3
    mu_max: float = 1e-1
    n_mu: int = 5
    rho: float = 1.0
    eps: float = 1e-3
    xi: int = 10
    delta: int = 1
    nu: int = 15
    steps_per_epoch: int | None = None
    finetune_epochs: int | None = None
    overprune_guard: bool = True
    layers: tuple[str, ...] | None = None
    eval_batches: int | None = None
    seed: int = 0
    mu_scale: Any = None
    deploy_kernels: bool = True
    measure_speed: bool = True

    owner: ClassVar[str] = "ADMM-sparse"
    rules = MappingProxyType(
        {
            **ENGINE_RULES,
            **SGDOptions.rules,
            "penalty": rule(check_choice, choices=tuple(_GROUP_PENALTY)),
            "structure": rule(
                check_choice, optional=True, choices=("kernels", "filters", "elements")
            ),
            "mus": rule(_check_mus, optional=True),
            "mu_min": rule(check_float, **POSITIVE),
            "mu_max": rule(check_float, **POSITIVE),
            "n_mu": rule(check_int, min_value=1),
            "rho": rule(check_float, **POSITIVE),
            "eps": rule(check_float, **POSITIVE),
            "xi": rule(check_int, min_value=1),
            "delta": rule(check_int, min_value=1),
            "nu": rule(check_int, min_value=1),
            "steps_per_epoch": rule(check_int, optional=True, min_value=1),
            "finetune_epochs": rule(check_int, optional=True, min_value=0),
            "overprune_guard": rule(check_bool),
            "layers": LAYERS,
            "eval_batches": rule(check_int, optional=True, min_value=1),
            "seed": SEED,
            "mu_scale": rule(check_per_layer, optional=True, forms=("dict",), **POSITIVE),
            "deploy_kernels": rule(check_bool),
            "measure_speed": rule(check_bool),
        }
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mu_max < self.mu_min:
            raise ConfigError(
                f"The 'mu_max' parameter of ADMM-sparse must be a finite float >= mu_min "
                f"({self.mu_min}). Got {self.mu_max!r} instead."
            )

    def mu_path(self) -> tuple[float, ...]:
        return (
            self.mus if self.mus is not None else log_schedule(self.mu_min, self.mu_max, self.n_mu)
        )
