"""The CIFAR ResNets (He et al. 2016, sec. 4.2): ``resnet20`` and ``resnet56``.

:class:`CifarResNet` of depth ``6n + 2`` is built from :class:`BasicBlock` with option-B
(1x1 conv + BN projection) shortcuts; it ends in global average pooling, so it accepts any
spatial size.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from compactnn.zoo.models.base import _check_input, _need_size


class BasicBlock(nn.Module):
    """ResNet basic block: ``relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))``.

    The shortcut is ``nn.Identity`` when shapes match and otherwise a projection
    ``nn.Sequential(conv=Conv2d(1x1, stride), bn=BatchNorm2d)`` (He et al. 2016, option B).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                    bn=nn.BatchNorm2d(planes),
                )
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth ``6n + 2`` (He et al. 2016, sec. 4.2) with option-B shortcuts.

    Layers: ``conv1`` (3x3, 16) - ``bn1`` - ``relu1`` - ``layer1`` (n blocks, 16) - ``layer2``
    (n blocks, 32, stride 2) - ``layer3`` (n blocks, 64, stride 2) - ``avgpool`` (global) -
    ``flatten`` - ``fc``. Accepts any spatial size; the attributes are those of
    :class:`ReferenceNet`.
    """

    def __init__(
        self, n: int, *, model_name: str, input_shape: tuple[int, int, int], num_classes: int
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.input_shape = tuple(input_shape)
        self.fixed_spatial = False
        self.conv1 = nn.Conv2d(input_shape[0], 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        in_planes = 16
        for i, planes in enumerate((16, 32, 64), start=1):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 1 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self.model_name, "conv1", self.input_shape, False, x)
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


def _resnet(n: int) -> Callable[[str, int, int, int | None], nn.Module]:
    def build(name: str, c: int, k: int, size: int | None) -> nn.Module:
        # Stride-2 3x3 convs with padding 1 map any size >= 1 to a size >= 1.
        size = _need_size(name, size)
        return CifarResNet(n, model_name=name, input_shape=(c, size, size), num_classes=k)

    build.__doc__ = f"CIFAR ResNet-{6 * n + 2} (He et al. 2016), option-B projection shortcuts."
    return build
