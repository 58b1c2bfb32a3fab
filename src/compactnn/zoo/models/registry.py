"""Reference architectures of the papers compactnn implements.

One factory, :func:`create`, builds every model by registry name; :func:`list_models` lists the
names, :func:`model_spec` gives the defaults and provenance of a model and
:func:`default_input_shape` the per-sample input shape it expects.

Every model is built from standard ``torch.nn`` layers only (``Conv2d``, ``Linear``,
``BatchNorm2d``, ``ReLU``, ``MaxPool2d``, ``AvgPool2d``, ``AdaptiveAvgPool2d``, ``Dropout``,
``Flatten``, ``LocalResponseNorm``) with stable, meaningful attribute names (``conv1``,
``relu1``, ``fc1``, ...). Activations are ``nn.ReLU`` modules placed right after the layer they
follow, and flattening is an ``nn.Flatten`` module, so ``torch.fx.symbolic_trace`` and
torch-pruning see the whole graph. All models except the ResNets are :class:`ReferenceNet`
(an ``nn.Sequential``), so ``named_children()`` is the forward order.

Every model checks its input in eager mode and raises :class:`~compactnn.errors.InputShapeError`
naming the model, the first layer and the expected shape (the check is skipped while
``torch.fx`` traces, so traced graphs contain only the layers). Models whose classifier follows
an ``nn.Flatten`` accept exactly the spatial size they were created for (``input_size``); models
that end in global average pooling (``nin``, ``resnet20``, ``resnet56``) accept any size large
enough.

Architecture choices that the papers leave open are documented on each builder below.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch import nn

from compactnn._validation import check_int, raise_unknown
from compactnn.errors import ConfigError, InputShapeError

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


@dataclass(frozen=True)
class ModelSpec:
    """Defaults and provenance of a reference model.

    Attributes:
        name: registry name, e.g. ``"lenet-caffe"``.
        in_channels: default number of input channels (input features for an MLP).
        num_classes: default number of outputs.
        input_size: default square spatial size ``H = W``; ``None`` for an MLP (flat input).
        paper: where the architecture comes from (paper file and table/section).
        description: one line describing the layers.
    """

    name: str
    in_channels: int
    num_classes: int
    input_size: int | None
    paper: str
    description: str


def _check_input(
    name: str, first_layer: str, expected: tuple[int, ...], fixed_spatial: bool, x: object
) -> None:
    """Raise :class:`InputShapeError` if ``x`` cannot be fed to the model (eager mode only)."""
    if isinstance(x, torch.fx.Proxy):  # symbolic tracing: shapes are unknown, keep the graph pure
        return
    if not isinstance(x, torch.Tensor):
        raise InputShapeError(
            f"Model {name!r} expects a torch.Tensor of shape (N, {', '.join(map(str, expected))}); "
            f"got {type(x).__name__}. Convert the input with torch.as_tensor."
        )
    want = "(N, " + ", ".join(map(str, expected)) + ")"
    got = tuple(x.shape)
    if x.dim() != len(expected) + 1:
        raise InputShapeError(
            f"Model {name!r} expects a batched input of shape {want}; got shape {got}. "
            "Add the batch dimension (x.unsqueeze(0)) or reshape the input."
        )
    if got[1] != expected[0]:
        what = "input features" if len(expected) == 1 else "input channels"
        raise InputShapeError(
            f"Model {name!r}: its first layer {first_layer!r} takes {expected[0]} {what} but the "
            f"input has {got[1]} (input shape {got}, expected {want}). Create the model with "
            f"create({name!r}, in_channels={got[1]}) or convert the data."
        )
    if fixed_spatial and len(expected) == 3 and got[2:] != expected[1:]:
        raise InputShapeError(
            f"Model {name!r} was built for {expected[1]}x{expected[2]} inputs (its flattened "
            f"feature size depends on it) but got {got[2]}x{got[3]} (input shape {got}, expected "
            f"{want}). Resize the input or create the model with "
            f"create({name!r}, input_size={got[2]}) for square {got[2]}x{got[2]} inputs."
        )


class ReferenceNet(nn.Sequential):
    """A sequential reference model that validates its input before running its layers.

    Attributes:
        model_name: registry name the model was created from.
        input_shape: per-sample input shape it expects, ``(C, H, W)`` or ``(D,)``.
        fixed_spatial: whether ``H, W`` must equal ``input_shape[1:]`` exactly (models whose
            classifier follows a flatten); ``False`` for global-average-pooling models.
    """

    def __init__(
        self,
        layers: OrderedDict[str, nn.Module],
        *,
        model_name: str,
        input_shape: tuple[int, ...],
        fixed_spatial: bool,
    ) -> None:
        super().__init__(layers)
        self.model_name = model_name
        self.input_shape = tuple(input_shape)
        self.fixed_spatial = fixed_spatial
        self._first_layer = next(iter(layers))

    def __getitem__(self, idx: slice | int) -> nn.Module:
        """A layer by position, or a slice of layers as a plain ``nn.Sequential`` (no input check)."""
        if isinstance(idx, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Check ``x`` has shape ``(N, *input_shape)`` then run the layers in order."""
        _check_input(self.model_name, self._first_layer, self.input_shape, self.fixed_spatial, x)
        return super().forward(x)


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


# ---------------------------------------------------------------------------------------------
# Geometry helpers
# ---------------------------------------------------------------------------------------------


def _first(v: Any) -> int:
    return int(v[0]) if isinstance(v, tuple) else int(v)


def _spatial_out(size: int, layers: OrderedDict[str, nn.Module]) -> tuple[int, str | None]:
    """Square spatial size after ``layers`` (PyTorch formulas, ceil_mode included).

    Returns the output size and the name of the first layer whose output would be empty
    (``None`` when every layer has a non-empty output).
    """
    for name, m in layers.items():
        if not isinstance(m, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
            continue
        k, s, p = _first(m.kernel_size), _first(m.stride), _first(m.padding)
        d = _first(getattr(m, "dilation", 1))
        ceil = bool(getattr(m, "ceil_mode", False))
        # torch's pooling_output_shape (Caffe's formula in ceil mode): floor division.
        span = size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil else 0)
        out = span // s + 1
        if ceil and (out - 1) * s >= size + p:  # last window must start inside the input
            out -= 1
        if out < 1:
            return 0, name
        size = out
    return size, None


def _feature_size(
    name: str, layers: OrderedDict[str, nn.Module], channels: int, input_size: int
) -> int:
    """Flattened feature count ``channels * h * w`` after ``layers`` for an ``input_size`` input."""
    out, bad = _spatial_out(input_size, layers)
    if bad is not None:
        smallest = next((s for s in range(1, 4097) if _spatial_out(s, layers)[1] is None), 4097)
        raise ConfigError(
            f"The 'input_size' parameter of model {name!r} is too small: with {input_size}x"
            f"{input_size} inputs layer {bad!r} would have an empty output. Use input_size >= "
            f"{smallest}."
        )
    return channels * out * out


def _need_size(name: str, size: int | None) -> int:
    if size is None:  # only reachable through a registry mistake: CNN specs have a size
        raise ConfigError(f"Model {name!r} needs an 'input_size'; pass input_size=<int>.")
    return size


def _net(
    name: str, layers: OrderedDict[str, nn.Module], shape: tuple[int, ...], fixed: bool = True
) -> ReferenceNet:
    return ReferenceNet(layers, model_name=name, input_shape=shape, fixed_spatial=fixed)


# ---------------------------------------------------------------------------------------------
# Builders: (name, in_channels, num_classes, input_size) -> nn.Module
# ---------------------------------------------------------------------------------------------


def _lenet_caffe(name: str, c: int, k: int, size: int | None) -> nn.Module:
    """Caffe LeNet 20-50-500-10.

    ``conv1`` 20@5x5 - ``relu1`` - ``pool1`` max 2x2 - ``conv2`` 50@5x5 - ``relu2`` - ``pool2`` -
    ``flatten`` - ``fc1`` 800->500 - ``relu3`` - ``fc2`` 500->10: 431,080 parameters on 1x28x28.
    The ReLUs after the convolutions follow Zhou et al. Table 2 (Caffe's prototxt has none):
    Zhou's neuron removal and the APoZ criterion of the SSR paper assume a ReLU after each
    pruned layer. They add no parameters.
    """
    size = _need_size(name, size)
    feats = OrderedDict(
        conv1=nn.Conv2d(c, 20, 5),
        relu1=nn.ReLU(),
        pool1=nn.MaxPool2d(2, 2),
        conv2=nn.Conv2d(20, 50, 5),
        relu2=nn.ReLU(),
        pool2=nn.MaxPool2d(2, 2),
    )
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
    feats = OrderedDict(
        conv1=nn.Conv2d(c, 6, 5),
        relu1=nn.ReLU(),
        pool1=nn.MaxPool2d(2, 2),
        conv2=nn.Conv2d(6, 16, 5),
        relu2=nn.ReLU(),
        pool2=nn.MaxPool2d(2, 2),
    )
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


def _resnet(n: int) -> Callable[[str, int, int, int | None], nn.Module]:
    def build(name: str, c: int, k: int, size: int | None) -> nn.Module:
        # Stride-2 3x3 convs with padding 1 map any size >= 1 to a size >= 1.
        size = _need_size(name, size)
        return CifarResNet(n, model_name=name, input_shape=(c, size, size), num_classes=k)

    build.__doc__ = f"CIFAR ResNet-{6 * n + 2} (He et al. 2016), option-B projection shortcuts."
    return build


_KIAEE, _SSR, _ZHOU = (
    "kiaee2016_admm_sparse_cnn",
    "lin2019_ssr_aulm_filter_pruning",
    "zhou2016_less_is_more_supplement",
)
_MA, _DDLR = "ma2019_unified_sparse_lowrank_admm", "papadimitriou2021_ddlr_lowrank"
_HE = "He et al. 2016 (CIFAR ResNet, sec. 4.2), pruned in " + _SSR + " sec. III-E"

_Builder = Callable[[str, int, int, int | None], nn.Module]

# fmt: off
_TABLE: tuple[tuple[str, int, int, int | None, str, str, _Builder], ...] = (
    # name, in_channels, num_classes, input_size, paper, description, builder
    ("lenet-caffe", 1, 10, 28, f"{_SSR} Table I, eq. (19); {_ZHOU} Table 2",
     "Caffe LeNet 20-50-500-10: conv5x5(20)-pool-conv5x5(50)-pool-fc500-fc10", _lenet_caffe),
    ("lenet5", 1, 10, 28, f"{_DDLR} sec. 4.2 (MNIST) and 4.3 (CIFAR-10)",
     "LeNet-5: conv5x5(6)-pool-conv5x5(16)-pool-fc120-fc84-fc10 (256 features on 28x28)", _lenet5),
    ("spiral-mlp", 2, 2, None, f"{_DDLR} sec. 4.1", "MLP 2-80-80-2 with ReLU", _spiral_mlp),
    ("cifar-quick", 3, 10, 32, f"{_ZHOU} Table 3 (Caffe cifar10_quick)",
     "conv5x5(32)-maxpool-conv5x5(32)-avgpool-conv5x5(64)-avgpool-fc64-fc10", _cifar_quick),
    ("kiaee-cnn", 3, 10, 32, f"{_KIAEE} Table 1 (CNN)",
     "conv3x3 96-128-256-64 with 3 max pools, fc 1024-256-10", _kiaee_cnn),
    ("nin", 3, 10, 32, f"{_KIAEE} Table 1 (NIN); {_MA} Table II",
     "Network in Network, 10 conv layers (3x3 and 1x1), global average pooling", _nin),
    ("vgg16-cifar", 3, 10, 32, f"{_MA} Table I",
     "VGG-16 with BatchNorm for CIFAR: 13 conv3x3 + fc 512-512-10", _vgg16_cifar),
    ("alexnet-caffe", 3, 1000, 227, f"{_ZHOU} Table 1; {_SSR} Table III; {_MA} Table IV",
     "BVLC AlexNet with grouped conv2/4/5 and LRN, fc 9216-4096-4096-1000", _alexnet_caffe),
    ("resnet20", 3, 10, 32, _HE,
     "ResNet-20 for CIFAR, BasicBlocks 16-32-64, 1x1 conv+BN projection shortcuts", _resnet(3)),
    ("resnet56", 3, 10, 32, _HE,
     "ResNet-56 for CIFAR, BasicBlocks 16-32-64, 1x1 conv+BN projection shortcuts", _resnet(9)),
)
# fmt: on

_REGISTRY: dict[str, tuple[ModelSpec, _Builder]] = {
    row[0]: (ModelSpec(*row[:6]), row[6]) for row in _TABLE
}


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def list_models() -> list[str]:
    """Names of all reference models, sorted."""
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    """Defaults and provenance of model ``name``.

    Raises:
        UnknownNameError: ``name`` is not in :func:`list_models`.
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise raise_unknown("model", name, list_models())
    return _REGISTRY[name][0]


def _override(value: int | None, default: int, name: str, owner: str) -> int:
    return default if value is None else check_int(value, name, owner, min_value=1)


def _resolve(
    name: str, in_channels: int | None, input_size: int | None
) -> tuple[ModelSpec, int, int | None]:
    spec = model_spec(name)
    owner = f"model {name!r}"
    c = _override(in_channels, spec.in_channels, "in_channels", owner)
    if spec.input_size is None:
        if input_size is not None:
            raise ConfigError(
                f"The 'input_size' parameter of {owner} must be None: it takes flat inputs of "
                f"{c} features. Got {input_size!r} instead. Set the feature count with "
                "in_channels=."
            )
        return spec, c, None
    size = _override(input_size, spec.input_size, "input_size", owner)
    return spec, c, size


def default_input_shape(
    name: str, *, in_channels: int | None = None, input_size: int | None = None
) -> tuple[int, ...]:
    """Per-sample input shape of model ``name``: ``(C, H, W)`` for CNNs, ``(D,)`` for MLPs.

    Args:
        name: registry name.
        in_channels: overrides the default channel (MLP: feature) count.
        input_size: overrides the default square spatial size (CNNs only).

    Raises:
        UnknownNameError: unknown ``name``.
        ConfigError: invalid override.
    """
    _, c, size = _resolve(name, in_channels, input_size)
    return (c,) if size is None else (c, size, size)


def create(
    name: str,
    *,
    in_channels: int | None = None,
    num_classes: int | None = None,
    input_size: int | None = None,
    seed: int | None = None,
) -> nn.Module:
    """Build reference model ``name`` with freshly initialised weights.

    Weights use He initialisation, :math:`W \\sim \\mathcal{N}(0, 2/\\text{fan\\_in})`, for every
    ``Conv2d`` and ``Linear`` (all layers are followed by ReLU except the last), zero biases and
    BatchNorm ``(gamma, beta) = (1, 0)``. With ``seed`` the weights depend only on ``seed``
    (the global RNG is left untouched); without it they are drawn from the global RNG.
    Building under ``with torch.device("meta"):`` allocates no memory.

    Args:
        name: one of :func:`list_models`.
        in_channels: input channels (input features for ``spiral-mlp``); default from the spec.
        num_classes: number of outputs; default from the spec.
        input_size: square spatial input size (CNNs only). Models with a flatten->linear head
            size their first linear layer for it and then accept exactly that size.
        seed: optional seed for a deterministic initialisation (int >= 0).

    Returns:
        The model, in training mode. It carries ``model_name``, ``input_shape`` and
        ``fixed_spatial`` attributes.

    Raises:
        UnknownNameError: unknown ``name``.
        ConfigError: invalid override (e.g. ``input_size`` too small for the model's pooling).

    References:
        Architectures: see :func:`model_spec` ``(name).paper`` and each builder's docstring.
    """
    spec, c, size = _resolve(name, in_channels, input_size)
    owner = f"model {name!r}"
    k = _override(num_classes, spec.num_classes, "num_classes", owner)
    if seed is not None:
        seed = check_int(seed, "seed", owner, min_value=0)
    builder = _REGISTRY[name][1]
    if seed is None:
        model = builder(name, c, k, size)
        _init_weights(model)
        return model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = builder(name, c, k, size)
        _init_weights(model)
    return model


@torch.no_grad()
def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
