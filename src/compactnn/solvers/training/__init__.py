"""Training-based structured sparsity: the ADMM / AULM engine and its helpers.

References:
    Kiaee et al. (2016) sec. 3, Algorithm 1; Lin et al. (2019) sec. III-D, Algorithm 1.
"""

from __future__ import annotations

from compactnn.solvers.training.admm import (
    PENALTIES,
    STRUCTURES,
    ADMMConfig,
    ADMMEngine,
    ADMMState,
)
from compactnn.solvers.training.masks import MaskedFinetune, apply_masks, attach_masks
from compactnn.solvers.training.run import ADMMResult, resolve_params, run_admm
from compactnn.solvers.training.schedule import SSR_LAMBDAS, kiaee_epochs, log_schedule
from compactnn.solvers.training.wstep import sgd_w_step

__all__ = [
    "PENALTIES",
    "STRUCTURES",
    "SSR_LAMBDAS",
    "ADMMConfig",
    "ADMMEngine",
    "ADMMResult",
    "ADMMState",
    "MaskedFinetune",
    "apply_masks",
    "attach_masks",
    "kiaee_epochs",
    "log_schedule",
    "resolve_params",
    "run_admm",
    "sgd_w_step",
]
