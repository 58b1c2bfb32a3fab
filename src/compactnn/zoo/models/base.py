"""What every reference model is made of: its spec, its input check and its geometry.

:class:`ModelSpec` holds a model's defaults and provenance; :class:`ReferenceNet` is the
``nn.Sequential`` of every model but the ResNets and checks its input in eager mode, raising
:class:`~compactnn.errors.InputShapeError` naming the model, the first layer and the expected
shape (skipped while ``torch.fx`` traces). The geometry helpers compute a layer stack's spatial
output size with PyTorch's formulas (ceil mode included), so that each builder sizes its first
linear layer for its ``input_size`` and rejects sizes too small for its pooling.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch import nn

from compactnn.errors import ConfigError, InputShapeError


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
