"""``compactnn.models``: the stable public path of the reference architectures of the papers.

The code lives in :mod:`compactnn.zoo.models` (spec and input check, the builders by family, the
registry); this module re-exports its public names, so that ``from compactnn import models``,
``compactnn.models.create`` and the scripts and the README that use them keep working, and
models pickled under this path (``compactnn.models.ReferenceNet`` / ``CifarResNet`` /
``BasicBlock``) still load.
"""

from compactnn.zoo import models as _zoo_models
from compactnn.zoo.models import *  # noqa: F403  (the names of __all__)

__all__ = list(_zoo_models.__all__)
