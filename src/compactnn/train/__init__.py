"""Train, evaluate and fine-tune (with a fixed zero structure), deterministically.

Checkpoints are written with safetensors (``.safetensors``, with a JSON sidecar of metadata) or
``torch.save`` (``.pt``) and always read back with ``weights_only=True`` semantics: nothing but
tensors and plain metadata is ever unpickled.

The package's modules: :mod:`~compactnn.train.config` (settings, history, learning-rate
schedule), :mod:`~compactnn.train.loop` (:func:`train`, :func:`finetune`, :func:`evaluate`, the
masks), :mod:`~compactnn.train.loaders` (reseeding, sharding, teacher logits) and
:mod:`~compactnn.train.checkpoints`; every name is importable from :mod:`compactnn.train`.
"""

from __future__ import annotations

from compactnn.train.checkpoints import load_checkpoint, save_checkpoint
from compactnn.train.checkpoints import read_checkpoint as read_checkpoint
from compactnn.train.config import TrainConfig, TrainHistory, seed_everything

# the schedule and the loader helpers that methods, the preflight checks and tests use
from compactnn.train.config import _lr_at as _lr_at
from compactnn.train.loaders import _seeded as _seeded
from compactnn.train.loaders import _TeacherPerBatch as _TeacherPerBatch
from compactnn.train.loaders import _with_teacher_logits as _with_teacher_logits
from compactnn.train.loop import apply_masks, evaluate, finetune, train, zero_masks

__all__ = [
    "TrainConfig",
    "TrainHistory",
    "evaluate",
    "finetune",
    "load_checkpoint",
    "save_checkpoint",
    "seed_everything",
    "train",
    "zero_masks",
    "apply_masks",
]
