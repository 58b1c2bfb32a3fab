"""The small reference models: Caffe LeNet, LeNet-5 and the DDLR spiral MLP.

Each builder takes ``(name, in_channels, num_classes, input_size)`` and returns a
:class:`~compactnn.zoo.models.base.ReferenceNet`; its docstring says which paper the layers come
from and which choices the paper leaves open.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from compactnn.zoo.models.base import _feature_size, _need_size, _net


def _lenet_features(c: int, c1: int, c2: int) -> OrderedDict[str, nn.Module]:
    """The LeNets' feature part: ``conv1`` c1@5x5 - ``relu1`` - ``pool1`` max 2x2 - ``conv2``
    c2@5x5 - ``relu2`` - ``pool2`` max 2x2, on ``c`` input channels."""
    return OrderedDict(
        conv1=nn.Conv2d(c, c1, 5),
        relu1=nn.ReLU(),
        pool1=nn.MaxPool2d(2, 2),
        conv2=nn.Conv2d(c1, c2, 5),
        relu2=nn.ReLU(),
        pool2=nn.MaxPool2d(2, 2),
    )


def _lenet_caffe(name: str, c: int, k: int, size: int | None) -> nn.Module:
    """Caffe LeNet 20-50-500-10.

    ``conv1`` 20@5x5 - ``relu1`` - ``pool1`` max 2x2 - ``conv2`` 50@5x5 - ``relu2`` - ``pool2`` -
    ``flatten`` - ``fc1`` 800->500 - ``relu3`` - ``fc2`` 500->10: 431,080 parameters on 1x28x28.
    The ReLUs after the convolutions follow Zhou et al. Table 2 (Caffe's prototxt has none):
    Zhou's neuron removal and the APoZ criterion of the SSR paper assume a ReLU after each
    pruned layer. They add no parameters.
    """
    size = _need_size(name, size)
    feats = _lenet_features(c, 20, 50)
    flat = _feature_size(name, feats, 50, size)
    head = OrderedDict(
        flatten=nn.Flatten(), fc1=nn.Linear(flat, 500), relu3=nn.ReLU(), fc2=nn.Linear(500, k)
    )
    return _net(name, OrderedDict(**feats, **head), (c, size, size))


def _lenet5(name: str, c: int, k: int, size: int | None) -> nn.Module:
    """LeNet-5 as used in the DDLR paper (sec. 4.2/4.3).

    The paper only gives the dense layers: 256->120->84->10 on MNIST and 400->120->84->10 on
    CIFAR-10. The convolution part that yields exactly these sizes is the common "LeNet-5"
    ``conv1`` 6@5x5 (no padding) - ``relu1`` - ``pool1`` max 2x2 - ``conv2`` 16@5x5 - ``relu2``
    - ``pool2`` max 2x2, giving 16x4x4 = 256 features on 28x28 and 16x5x5 = 400 on 32x32. Then
    ``flatten`` - ``fc1`` - ``relu3`` - ``fc2`` - ``relu4`` - ``fc3``. Max pooling and ReLU are
    chosen because DDLR's constraint (4) assumes ReLU layers.
    """
    size = _need_size(name, size)
    feats = _lenet_features(c, 6, 16)
    flat = _feature_size(name, feats, 16, size)
    head = OrderedDict(
        flatten=nn.Flatten(),
        fc1=nn.Linear(flat, 120),
        relu3=nn.ReLU(),
        fc2=nn.Linear(120, 84),
        relu4=nn.ReLU(),
        fc3=nn.Linear(84, k),
    )
    return _net(name, OrderedDict(**feats, **head), (c, size, size))


def _spiral_mlp(name: str, c: int, k: int, size: int | None) -> nn.Module:
    """2-80-80-2 MLP of the DDLR spiral experiment (sec. 4.1): ``fc1`` - ``relu1`` - ``fc2`` -
    ``relu2`` - ``fc3`` (W1 2x80, W2 80x80, W3 80x2)."""
    layers = OrderedDict(
        fc1=nn.Linear(c, 80),
        relu1=nn.ReLU(),
        fc2=nn.Linear(80, 80),
        relu2=nn.ReLU(),
        fc3=nn.Linear(80, k),
    )
    return _net(name, layers, (c,), fixed=False)
