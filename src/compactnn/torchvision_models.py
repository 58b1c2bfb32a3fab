"""``compactnn.torchvision_models``: the stable public path of torchvision's ResNet-18 and
MobileNetV2 as ``--factory`` targets (``--factory compactnn.torchvision_models:resnet18``).

The code lives in :mod:`compactnn.zoo.torchvision_models`; this module re-exports its public
names. ``ResNet18``, the class that torchvision's ``ResNet`` becomes once torchvision is loaded,
is resolved on access as in the zoo module, so that models pickled under this path still load.
"""

from __future__ import annotations

from typing import Any

from compactnn.zoo.torchvision_models import _resnet_class, load, mobilenet_v2, resnet18

__all__ = ["resnet18", "mobilenet_v2", "load"]


def __getattr__(name: str) -> Any:  # unpickling a model saved under this path
    if name == "ResNet18":
        return _resnet_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
