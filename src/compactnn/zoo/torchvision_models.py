"""torchvision's ResNet-18 and MobileNetV2 as ``--factory`` targets, small-image stems included.

``compactnn compress --factory compactnn.torchvision_models:resnet18 --factory-kwargs
num_classes=10,in_channels=1 ...`` builds the real torchvision classes (their own ``forward``,
residual adds, depthwise convs and inverted residuals), so what is compressed is what a user
ships. torchvision is an optional dependency (``make venv`` installs 0.28.0 ``--no-deps``).

Where ``import torchvision`` fails although the package is installed (a CUDA build of torchvision
next to a CPU torch: ``operator torchvision::nms does not exist``), the model files are loaded
without the package ``__init__`` (which registers the detection ops): ``torchvision`` and
``torchvision.models`` are entered in ``sys.modules`` as bare packages on the installed
directory, and only ``torchvision.models.resnet`` / ``mobilenetv2`` and what they import run.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from torch import nn

from compactnn._validation import check_bool, check_float, check_int
from compactnn.errors import ConfigError

__all__ = ["resnet18", "mobilenet_v2", "load"]


def _bare_package(name: str, path: Path) -> None:
    """The package ``name`` at ``path`` in ``sys.modules`` with its spec, ``__init__`` not run."""
    spec = importlib.util.spec_from_file_location(
        name, path / "__init__.py", submodule_search_locations=[str(path)]
    )
    assert spec is not None
    sys.modules[name] = importlib.util.module_from_spec(spec)


def load(module: str) -> Any:
    """``torchvision.models.<module>`` (e.g. ``"resnet"``, ``"mobilenetv2"``).

    Raises:
        ConfigError: torchvision is not installed (the message says how to install it).
    """
    name = f"torchvision.models.{module}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("torchvision") if "torchvision" not in sys.modules else None
    if "torchvision" not in sys.modules and spec is None:
        raise ConfigError(
            "torchvision is not installed: run `make venv` (it installs torchvision==0.28.0 "
            "--no-deps) or `pip install --no-deps torchvision==0.28.0` after torch."
        )
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - its __init__ failed (CUDA build on a CPU torch)
        for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[k]
        assert spec is not None and spec.submodule_search_locations
        root = Path(next(iter(spec.submodule_search_locations)))
        _bare_package("torchvision", root)
        _bare_package("torchvision.models", root / "models")
        return importlib.import_module(name)


def _check(num_classes: Any, in_channels: Any, width: Any, owner: str) -> tuple[int, int, float]:
    k = check_int(num_classes, "num_classes", owner, min_value=1)
    c = check_int(in_channels, "in_channels", owner, min_value=1)
    w = check_float(width, "width", owner, min_value=0.0, min_inclusive=False, max_value=4.0)
    return k, c, w


def _resnet_class() -> type:
    """torchvision's ``ResNet`` with any stage widths and a choice of stem, defined once (a
    module attribute, ``ResNet18``, so that the models pickle: Dask / joblib workers)."""
    cls = globals().get("_ResNet18")
    if cls is not None:
        return cls
    tv = load("resnet")

    class ResNet18(tv.ResNet):  # type: ignore[misc, name-defined]
        def __init__(self, planes: list[int], c: int, k: int, small_input: bool) -> None:
            nn.Module.__init__(self)
            self._norm_layer = nn.BatchNorm2d
            self.inplanes, self.dilation, self.groups, self.base_width = planes[0], 1, 1, 64
            if small_input:
                self.conv1 = nn.Conv2d(c, planes[0], 3, 1, 1, bias=False)
                self.maxpool = nn.Identity()
            else:
                self.conv1 = nn.Conv2d(c, planes[0], 7, 2, 3, bias=False)
                self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.bn1 = nn.BatchNorm2d(planes[0])
            self.relu = nn.ReLU(inplace=True)
            self.layer1 = self._make_layer(tv.BasicBlock, planes[0], 2)
            self.layer2 = self._make_layer(tv.BasicBlock, planes[1], 2, stride=2)
            self.layer3 = self._make_layer(tv.BasicBlock, planes[2], 2, stride=2)
            self.layer4 = self._make_layer(tv.BasicBlock, planes[3], 2, stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(planes[3], k)
            for m in self.modules():  # torchvision's initialisation
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

    ResNet18.__module__ = __name__
    ResNet18.__qualname__ = "ResNet18"
    globals()["_ResNet18"] = ResNet18
    return ResNet18


def __getattr__(name: str) -> Any:  # unpickling a model in a fresh process
    if name == "ResNet18":
        return _resnet_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resnet18(
    num_classes: int = 10, in_channels: int = 3, width: float = 1.0, small_input: bool = True
) -> nn.Module:
    """torchvision's ``ResNet`` with ``BasicBlock`` [2, 2, 2, 2], widths ``64 * width`` ... ``512 *
    width``; ``small_input`` (CIFAR-size images): 3x3 stride-1 first conv and no max-pool
    (the usual CIFAR stem), else torchvision's 7x7 stride-2 conv and max-pool."""
    k, c, w = _check(num_classes, in_channels, width, "torchvision_models.resnet18")
    small = check_bool(small_input, "small_input", "torchvision_models.resnet18")
    planes = [max(1, round(p * w)) for p in (64, 128, 256, 512)]
    return _resnet_class()(planes, c, k, small)


def mobilenet_v2(
    num_classes: int = 10,
    in_channels: int = 3,
    width: float = 1.0,
    small_input: bool = True,
    setting: list[list[int]] | None = None,
) -> nn.Module:
    """torchvision's ``MobileNetV2(num_classes, width_mult=width)``; ``small_input``: the first
    conv takes ``in_channels`` at stride 1 (CIFAR-size images), else stride 2 as torchvision;
    ``setting``: torchvision's ``inverted_residual_setting`` (rows ``[t, c, n, s]``: expansion,
    channels, blocks, stride of the first), e.g. a shallower net for tests."""
    owner = "torchvision_models.mobilenet_v2"
    k, c, w = _check(num_classes, in_channels, width, owner)
    small_input = check_bool(small_input, "small_input", owner)
    if setting is not None and not (
        isinstance(setting, list | tuple) and setting
        and all(isinstance(r, list | tuple) and len(r) == 4
                and all(isinstance(v, int) and v >= 1 for v in r) for r in setting)
    ):  # fmt: skip
        raise ConfigError(
            f"{owner}: setting must be a list of [t, c, n, s] rows of ints >= 1 (torchvision's "
            f"inverted_residual_setting), e.g. [[1,16,1,1],[6,24,2,2]]. Got {setting!r}."
        )
    tv = load("mobilenetv2")
    model = tv.MobileNetV2(num_classes=k, width_mult=w,
                           inverted_residual_setting=None if setting is None
                           else [list(r) for r in setting])  # fmt: skip
    first = model.features[0][0]
    if small_input or c != first.in_channels:
        conv = nn.Conv2d(c, first.out_channels, 3, 1 if small_input else 2, 1, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out")
        model.features[0][0] = conv
    return model
