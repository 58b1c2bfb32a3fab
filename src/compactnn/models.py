"""``compactnn.models``: the stable public path of the reference architectures of the papers.

The code lives in :mod:`compactnn.zoo.models` (spec and input check, the builders by family, the
registry); this module re-exports its public names, so that ``from compactnn import models``,
``compactnn.models.create`` and the scripts and the README that use them keep working, and
models pickled under this path (``compactnn.models.ReferenceNet`` / ``CifarResNet`` /
``BasicBlock``) still load.
"""

from compactnn.zoo.models import (
    BasicBlock,
    CifarResNet,
    ModelSpec,
    ReferenceNet,
    create,
    default_input_shape,
    list_models,
    model_spec,
)

__all__ = [
    "ModelSpec",
    "ReferenceNet",
    "BasicBlock",
    "CifarResNet",
    "list_models",
    "create",
    "default_input_shape",
    "model_spec",
]
