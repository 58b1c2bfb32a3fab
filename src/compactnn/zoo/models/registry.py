"""The model registry and its public API: :func:`create`, :func:`list_models`,
:func:`model_spec`, :func:`default_input_shape`.

``_TABLE`` lists every reference model with its defaults, its paper and its builder (from
:mod:`~compactnn.zoo.models.small`, :mod:`~compactnn.zoo.models.convnets` and
:mod:`~compactnn.zoo.models.resnet`); :func:`create` builds one with He-initialised weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from compactnn._validation import check_int, raise_unknown
from compactnn.errors import ConfigError
from compactnn.zoo.models.base import ModelSpec
from compactnn.zoo.models.convnets import (
    _alexnet_caffe,
    _cifar_quick,
    _kiaee_cnn,
    _nin,
    _vgg16_cifar,
)
from compactnn.zoo.models.resnet import _resnet
from compactnn.zoo.models.small import _lenet5, _lenet_caffe, _spiral_mlp

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
