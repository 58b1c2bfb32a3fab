r"""Proximal operators: pure functions ``Tensor -> Tensor`` (no modules, no state).

Every operator returns :math:`\operatorname{prox}_{f}(v) = \arg\min_x f(x) + \tfrac12\|x - v\|^2`
(or a Euclidean projection, for the constraint sets) in closed form:

==========================  =====================================  ==========================
function                    f                                      reference
==========================  =====================================  ==========================
:func:`soft_threshold`      λ‖x‖₁                                  Lin eq. (16)
:func:`hard_threshold`      λ‖x‖₀                                  Kiaee eq. (10)
:func:`group_soft_threshold` λ Σ_g ‖x_g‖₂                          Kiaee (9), Lin (14), Ma (10)
:func:`group_hard_threshold` λ #{g : x_g ≠ 0}                      Lin eq. (15)
:func:`topk_groups`         indicator of ≤ k non-zero groups      Zhou suppl. sec. 4
:func:`svt`                 τ‖X‖_*                                 Ma eq. (12)
:func:`svt_values`          τ‖X‖_* (+ kept spectrum, SVD choices)  Ma eq. (12), DDLR eq. (4)
:func:`project_rank`        indicator of rank ≤ r                 Eckart-Young
:func:`lrtc_step`           tensor low rank (LRTC averaging)      Zhou suppl. Algorithm 1
==========================  =====================================  ==========================
"""

from compactnn.prox.elementwise import hard_threshold, soft_threshold
from compactnn.prox.group import (
    group_hard_threshold,
    group_norms,
    group_soft_threshold,
    topk_groups,
)
from compactnn.prox.lowrank import (
    SVT_METHODS,
    fold,
    lrtc_step,
    project_rank,
    svt,
    svt_values,
    unfold,
)
from compactnn.prox.penalty import PENALTY_NAMES, PROX, penalty

__all__ = [
    "PENALTY_NAMES",
    "PROX",
    "SVT_METHODS",
    "fold",
    "group_hard_threshold",
    "group_norms",
    "group_soft_threshold",
    "hard_threshold",
    "lrtc_step",
    "penalty",
    "project_rank",
    "soft_threshold",
    "svt",
    "svt_values",
    "topk_groups",
    "unfold",
]
