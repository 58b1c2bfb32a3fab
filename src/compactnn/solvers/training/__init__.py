"""Training-based structured sparsity: the ADMM / AULM engine and driver, the
proximal-gradient driver, and their helpers.

References:
    Kiaee et al. (2016) sec. 3, Algorithm 1; Lin et al. (2019) sec. III-D, Algorithm 1;
    Zhou et al. (2016) sec. 3 (proximal gradient).
"""

from __future__ import annotations

from compactnn.solvers.training.admm import ADMMEngine, ADMMState
from compactnn.solvers.training.config import PENALTIES, STRUCTURES, ADMMConfig
from compactnn.solvers.training.masks import MaskedFinetune, apply_masks, attach_masks
from compactnn.solvers.training.prox_grad import (
    PROX_PENALTIES,
    ProxGradient,
    ProxGroup,
    prox_step_hook,
)
from compactnn.solvers.training.run import ADMMResult, run_admm
from compactnn.solvers.training.schedule import SSR_LAMBDAS, kiaee_epochs, log_schedule
from compactnn.solvers.training.wstep import sgd_w_step

__all__ = [
    "PENALTIES",
    "PROX_PENALTIES",
    "STRUCTURES",
    "SSR_LAMBDAS",
    "ADMMConfig",
    "ADMMEngine",
    "ADMMResult",
    "ADMMState",
    "MaskedFinetune",
    "ProxGradient",
    "ProxGroup",
    "apply_masks",
    "attach_masks",
    "kiaee_epochs",
    "log_schedule",
    "prox_step_hook",
    "run_admm",
    "sgd_w_step",
]
