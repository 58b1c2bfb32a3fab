"""The plain convolutional reference models: cifar-quick, kiaee-cnn, NIN, VGG-16, AlexNet.

Each builder takes ``(name, in_channels, num_classes, input_size)`` and returns a
:class:`~compactnn.zoo.models.base.ReferenceNet`; its docstring says which paper the layers come
from and which choices the paper leaves open.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from compactnn.zoo.models.base import _feature_size, _need_size, _net


def _cifar_quick(name: str, c: int, k: int, size: int | None) -> nn.Module:
    """Caffe ``cifar10_quick`` (Zhou et al. supplement Table 3).

    ``conv1`` 32@5x5 pad 2 - ``pool1`` max 3/2 - ``relu1`` - ``conv2`` 32@5x5 pad 2 - ``relu2``
    - ``pool2`` avg 3/2 - ``conv3`` 64@5x5 pad 2 - ``relu3`` - ``pool3`` avg 3/2 - ``flatten`` -
    ``fc1`` 1024->64 - ``relu4`` - ``fc2`` 64->10: 145,578 parameters. Pooling uses Caffe's
    ceil mode (32 -> 16 -> 8 -> 4, hence Zhou's "64 filters 4x4" for fc4) and Caffe's pooling
    types (MAX, AVE, AVE; Zhou's table says "MaxPooling" for all three). The ReLU after ``fc1``
    is Zhou's (Caffe's quick net has none); Zhou prunes fc1's neurons and assumes a ReLU.
    """
    size = _need_size(name, size)
    feats = OrderedDict(
        conv1=nn.Conv2d(c, 32, 5, padding=2),
        pool1=nn.MaxPool2d(3, 2, ceil_mode=True),
        relu1=nn.ReLU(),
        conv2=nn.Conv2d(32, 32, 5, padding=2),
        relu2=nn.ReLU(),
        pool2=nn.AvgPool2d(3, 2, ceil_mode=True),
        conv3=nn.Conv2d(32, 64, 5, padding=2),
        relu3=nn.ReLU(),
        pool3=nn.AvgPool2d(3, 2, ceil_mode=True),
    )
    flat = _feature_size(name, feats, 64, size)
    head = OrderedDict(
        flatten=nn.Flatten(), fc1=nn.Linear(flat, 64), relu4=nn.ReLU(), fc2=nn.Linear(64, k)
    )
    return _net(name, OrderedDict(**feats, **head), (c, size, size))


def _kiaee_cnn(name: str, c: int, k: int, size: int | None) -> nn.Module:
    """The custom "CNN" of Kiaee et al. Table 1.

    ``conv1`` 96@3x3 - ``conv2`` 128@3x3 - ``conv3`` 256@3x3 - ``conv4`` 64@3x3 (all padding 1,
    each followed by ``reluN``) - ``flatten`` - ``fc1`` 1024->256 - ``relu5`` - ``fc2`` 256->10:
    821,066 parameters. Table 1 gives no pooling; fc1's 1024 = 64x4x4 inputs on 32x32 need
    three 2x2 poolings, placed after conv1, conv2 and conv3 (``pool1..pool3``, max), the
    cheapest placement. The kernel counts m*n per conv layer (3x96=288, 96x128=12288,
    128x256=32768, 256x64=16384) match the totals of the paper's Table 3(c).
    """
    size = _need_size(name, size)
    feats = OrderedDict(
        conv1=nn.Conv2d(c, 96, 3, padding=1),
        relu1=nn.ReLU(),
        pool1=nn.MaxPool2d(2, 2),
        conv2=nn.Conv2d(96, 128, 3, padding=1),
        relu2=nn.ReLU(),
        pool2=nn.MaxPool2d(2, 2),
        conv3=nn.Conv2d(128, 256, 3, padding=1),
        relu3=nn.ReLU(),
        pool3=nn.MaxPool2d(2, 2),
        conv4=nn.Conv2d(256, 64, 3, padding=1),
        relu4=nn.ReLU(),
    )
    flat = _feature_size(name, feats, 64, size)
    head = OrderedDict(
        flatten=nn.Flatten(), fc1=nn.Linear(flat, 256), relu5=nn.ReLU(), fc2=nn.Linear(256, k)
    )
    return _net(name, OrderedDict(**feats, **head), (c, size, size))


def _nin(name: str, c: int, k: int, size: int | None) -> nn.Module:
    """Network in Network as modified in Kiaee et al. Table 1 (and sec. 4.1).

    ``conv1`` 192@3x3 - ``conv2`` 160@1x1 - ``conv3`` 96@1x1 - ``pool1`` max 3/2 - ``drop1`` -
    ``conv4`` 192@3x3 - ``conv5`` 192@3x3 - ``conv6`` 192@1x1 - ``conv7`` 192@1x1 - ``pool2``
    avg 3/2 - ``drop2`` - ``conv8`` 192@3x3 - ``conv9`` 192@1x1 - ``conv10`` 10@1x1 - ``pool3``
    global average - ``flatten``. 3x3 convs use padding 1; conv1..conv9 are followed by
    ``relu1..relu9``. Pooling and dropout (0.5) follow the original NIN (Lin et al. 2013, ceil
    mode). The original's ReLU after the last 1x1 conv is omitted so that the outputs are
    unconstrained logits. The kernel counts 3x192=576, 96x192=18432, 192x192=36864 (conv4,
    conv5, conv8) match the totals of the paper's Table 3(a).
    """
    size = _need_size(name, size)
    spec = [
        ("conv1", c, 192, 3),
        ("conv2", 192, 160, 1),
        ("conv3", 160, 96, 1),
        ("pool1", 0, 0, 0),
        ("conv4", 96, 192, 3),
        ("conv5", 192, 192, 3),
        ("conv6", 192, 192, 1),
        ("conv7", 192, 192, 1),
        ("pool2", 0, 0, 0),
        ("conv8", 192, 192, 3),
        ("conv9", 192, 192, 1),
        ("conv10", 192, k, 1),
    ]
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for lname, cin, cout, ks in spec:
        if lname == "pool1":
            layers["pool1"] = nn.MaxPool2d(3, 2, ceil_mode=True)
            layers["drop1"] = nn.Dropout(0.5)
        elif lname == "pool2":
            layers["pool2"] = nn.AvgPool2d(3, 2, ceil_mode=True)
            layers["drop2"] = nn.Dropout(0.5)
        else:
            layers[lname] = nn.Conv2d(cin, cout, ks, padding=ks // 2)
            if lname != "conv10":
                layers["relu" + lname[4:]] = nn.ReLU()
    _feature_size(name, layers, k, size)  # validates that input_size is large enough
    layers["pool3"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    return _net(name, layers, (c, size, size), fixed=False)


_VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _vgg16_cifar(name: str, c: int, k: int, size: int | None) -> nn.Module:
    """VGG-16 for CIFAR-10 as in Ma et al. Table I: 13 conv + 3 fc layers.

    Stage s (1..5) has convs ``conv{s}_{i}`` (3x3, padding 1) each followed by ``bn{s}_{i}`` and
    ``relu{s}_{i}``, then ``pool{s}`` (max 2x2); widths 64-64, 128-128, 256x3, 512x3, 512x3.
    Head: ``flatten`` - ``drop1`` - ``fc1`` 512->512 - ``relu_fc1`` - ``drop2`` - ``fc2``
    512->512 - ``relu_fc2`` - ``fc3`` 512->10 (the usual CIFAR VGG-16; Ma's Table I names the
    fc layers fc1..fc3 but not their widths). 15,253,578 parameters for 10 classes.
    """
    size = _need_size(name, size)
    feats: OrderedDict[str, nn.Module] = OrderedDict()
    cin = c
    for s, widths in enumerate(_VGG16_STAGES, start=1):
        for i, w in enumerate(widths, start=1):
            feats[f"conv{s}_{i}"] = nn.Conv2d(cin, w, 3, padding=1)
            feats[f"bn{s}_{i}"] = nn.BatchNorm2d(w)
            feats[f"relu{s}_{i}"] = nn.ReLU()
            cin = w
        feats[f"pool{s}"] = nn.MaxPool2d(2, 2)
    flat = _feature_size(name, feats, 512, size)
    head = OrderedDict(
        flatten=nn.Flatten(),
        drop1=nn.Dropout(0.5),
        fc1=nn.Linear(flat, 512),
        relu_fc1=nn.ReLU(),
        drop2=nn.Dropout(0.5),
        fc2=nn.Linear(512, 512),
        relu_fc2=nn.ReLU(),
        fc3=nn.Linear(512, k),
    )
    return _net(name, OrderedDict(**feats, **head), (c, size, size))


def _alexnet_caffe(name: str, c: int, k: int, size: int | None) -> nn.Module:
    """BVLC (Caffe) AlexNet, Zhou et al. supplement Table 1: 60,965,224 parameters.

    ``conv1`` 96@11x11/4 - ``relu1`` - ``norm1`` - ``pool1`` - ``conv2`` 256@5x5 pad 2 groups 2 -
    ``relu2`` - ``norm2`` - ``pool2`` - ``conv3`` 384@3x3 - ``relu3`` - ``conv4`` 384@3x3
    groups 2 - ``relu4`` - ``conv5`` 256@3x3 groups 2 - ``relu5`` - ``pool5`` - ``flatten`` -
    ``fc6`` 9216->4096 - ``relu6`` - ``drop6`` - ``fc7`` 4096->4096 - ``relu7`` - ``drop7`` -
    ``fc8`` 4096->1000. LRN: size 5, alpha 1e-4, beta 0.75, k 1 (Caffe's alpha/n convention is
    also PyTorch's). Pools: max 3/2, ceil mode as in Caffe (so 224 and 227 both give 6x6).
    """
    size = _need_size(name, size)
    feats = OrderedDict(
        conv1=nn.Conv2d(c, 96, 11, stride=4),
        relu1=nn.ReLU(),
        norm1=nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0),
        pool1=nn.MaxPool2d(3, 2, ceil_mode=True),
        conv2=nn.Conv2d(96, 256, 5, padding=2, groups=2),
        relu2=nn.ReLU(),
        norm2=nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0),
        pool2=nn.MaxPool2d(3, 2, ceil_mode=True),
        conv3=nn.Conv2d(256, 384, 3, padding=1),
        relu3=nn.ReLU(),
        conv4=nn.Conv2d(384, 384, 3, padding=1, groups=2),
        relu4=nn.ReLU(),
        conv5=nn.Conv2d(384, 256, 3, padding=1, groups=2),
        relu5=nn.ReLU(),
        pool5=nn.MaxPool2d(3, 2, ceil_mode=True),
    )
    flat = _feature_size(name, feats, 256, size)
    head = OrderedDict(
        flatten=nn.Flatten(),
        fc6=nn.Linear(flat, 4096),
        relu6=nn.ReLU(),
        drop6=nn.Dropout(0.5),
        fc7=nn.Linear(4096, 4096),
        relu7=nn.ReLU(),
        drop7=nn.Dropout(0.5),
        fc8=nn.Linear(4096, k),
    )
    return _net(name, OrderedDict(**feats, **head), (c, size, size))
