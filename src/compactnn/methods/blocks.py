"""The building blocks research scripts use, public.

The benchmarks under ``benchmarks/`` (and any script that studies a method rather than calls
``compress``) reuse pieces of the methods: fine-tuning a pruned model, cutting filters, one ADMM
W-step, swapping the classifier for a global-average-pooling head, the per-layer strength
normalisers, and the number of real samples compress keeps for the surgery self-check. They live
in private modules of the library; this module is their one public name, so scripts need not
import ``compactnn.methods._common`` or the like.
"""

from __future__ import annotations

from compactnn._preflight import CHECK_SAMPLES
from compactnn.methods._calibrate import layer_scales
from compactnn.methods._common import add_gap_head, admm_w_step, finetune_model, prune_filters

__all__ = [
    "CHECK_SAMPLES",
    "add_gap_head",
    "admm_w_step",
    "finetune_model",
    "layer_scales",
    "prune_filters",
]
