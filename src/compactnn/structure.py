"""Views of a layer's weight: the lowered matrix and its sparsity groups.

Conventions (all functions work on the weight *as stored*, no copy unless stated):

* **Lowered matrix.** A ``Conv2d`` weight ``(n, c/g, kh, kw)`` is viewed as the matrix
  ``W`` of shape ``n x (c/g * kh * kw)`` (one row per filter / output channel, columns ordered
  channel-major, like ``F.unfold``); a ``Linear`` weight ``(out, in)`` is its own matrix.
  With im2col patches ``X`` (see :mod:`compactnn.capture`), the layer computes ``X W^T + b``.
* **Groups** (``GROUP_KINDS``), with the axes that index them (:func:`group_dims`):

  ===============  ==========================  ===========  ======================================
  kind             meaning                     conv axes    linear axes
  ===============  ==========================  ===========  ======================================
  ``"filters"``    rows = output channels      ``(0,)``     ``(0,)`` output neurons
  ``"channels"``   input-channel slots         ``(1,)``     ``(1,)`` input features
  ``"columns"``    columns of the lowered W    ``(1,2,3)``  ``(1,)`` (= input features)
  ``"kernels"``    Kiaee's W_ij (one kh x kw)  ``(0,1)``    ``(0,)`` one block per row (*)
  ``"elements"``   single weights              all axes     all axes
  ===============  ==========================  ===========  ======================================

  A 1-D tensor (a bias) has one group per entry for every kind.

  (*) Kiaee et al. (2016), sec. 2, footnote 1: a fully connected layer is *one* vectorised
  input map (m = 1) convolved by n one-dimensional filters of the input's size, so its blocks
  W_1j are the n rows of the weight (Table 3(c) counts 256 blocks for the 1024 x 256 fc1).

* **Grouped / depthwise conv.** The weight is ``(n, c/g, kh, kw)``: the ``"channels"`` groups
  are the ``c/g`` *input slots per group*, so slot ``s`` gathers absolute input channels
  ``s, s + c/g, ..., s + (g-1) c/g`` (one per conv group). Use :func:`input_channel_norms` for
  one norm per *absolute* input channel (length ``c``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from compactnn._validation import check_int, raise_unknown
from compactnn.errors import InputShapeError, UnknownNameError, UnsupportedLayerError
from compactnn.prox import group_norms

__all__ = [
    "module_device",
    "GROUP_KINDS",
    "LayerView",
    "group_dims",
    "group_mask",
    "group_norms_of",
    "input_channel_norms",
    "layer_views",
    "lowered",
    "n_groups",
    "unlowered",
    "zero_groups",
]

GROUP_KINDS: tuple[str, ...] = ("filters", "channels", "columns", "kernels", "elements")


def _check_weight(weight: object, fn: str, min_dim: int = 1) -> Tensor:
    if not isinstance(weight, Tensor):
        raise InputShapeError(
            f"{fn} expects a weight tensor. Got {type(weight).__name__}; pass module.weight."
        )
    if weight.dim() < min_dim:
        raise InputShapeError(
            f"{fn} expects a weight with at least {min_dim} dims (Linear (out, in) or Conv "
            f"(n, c/g, kh, kw)). Got shape {tuple(weight.shape)}."
        )
    return weight


def lowered(weight: Tensor) -> Tensor:
    """The lowered matrix ``n x (c/g * kh * kw)`` of a conv weight; a 2-D weight unchanged.

    Returns a view when ``weight`` is contiguous (writes go through to the weight).

    Raises:
        InputShapeError: the weight has fewer than 2 dims.
    """
    _check_weight(weight, "lowered", 2)
    if weight.dim() == 2:
        return weight
    return weight.reshape(weight.shape[0], -1)


def unlowered(mat: Tensor, like: Tensor) -> Tensor:
    """Inverse of :func:`lowered`: reshape ``mat`` to the shape of the weight ``like``.

    Raises:
        InputShapeError: ``mat`` is not of shape ``lowered(like).shape``.
    """
    _check_weight(like, "unlowered", 2)
    expected = (like.shape[0], like[0].numel())
    if not isinstance(mat, Tensor) or tuple(mat.shape) != expected:
        got = tuple(mat.shape) if isinstance(mat, Tensor) else type(mat).__name__
        raise InputShapeError(
            f"unlowered expects a matrix of shape {expected} for a weight of shape "
            f"{tuple(like.shape)}. Got {got}."
        )
    return mat.reshape(like.shape)


def group_dims(kind: str, weight: Tensor) -> tuple[int, ...]:
    """The axes of ``weight`` that index the groups of ``kind`` (see the module table).

    Raises:
        UnknownNameError: unknown ``kind``.
        InputShapeError: ``weight`` is 0-d.
    """
    if kind not in GROUP_KINDS:
        raise raise_unknown("group kind", kind, GROUP_KINDS)
    _check_weight(weight, "group_dims", 1)
    nd = weight.dim()
    if nd == 1 or kind == "elements":
        return tuple(range(nd))
    if kind == "filters":
        return (0,)
    if kind == "channels":
        return (1,)
    if kind == "columns":
        return tuple(range(1, nd))
    if nd == 2:  # kernels of a Linear: one block W_1j per row (Kiaee sec. 2, footnote 1)
        return (0,)
    return (0, 1)  # kernels


def group_norms_of(weight: Tensor, kind: str) -> Tensor:
    """Euclidean norm of every group of ``kind``; shape ``[weight.shape[d] for d in dims]``."""
    return group_norms(weight, group_dims(kind, weight))


def n_groups(weight: Tensor, kind: str) -> int:
    """Number of groups of ``kind`` in ``weight``."""
    dims = group_dims(kind, weight)
    out = 1
    for d in dims:
        out *= weight.shape[d]
    return out


def _expand(g: Tensor, weight: Tensor, dims: tuple[int, ...]) -> Tensor:
    shape = [weight.shape[d] if d in dims else 1 for d in range(weight.dim())]
    return g.reshape(shape).expand_as(weight)


def group_mask(weight: Tensor, kind: str, keep: Tensor) -> Tensor:
    """Element mask (bool, ``weight``'s shape) that is True exactly on the kept groups.

    Args:
        weight: the weight.
        kind: one of :data:`GROUP_KINDS`.
        keep: bool tensor over the groups, shape ``group_norms_of(weight, kind).shape``.

    Raises:
        InputShapeError: ``keep`` has the wrong shape.
        UnknownNameError: unknown ``kind``.
    """
    dims = group_dims(kind, weight)
    gshape = tuple(weight.shape[d] for d in dims)
    if not isinstance(keep, Tensor) or tuple(keep.shape) != gshape:
        got = tuple(keep.shape) if isinstance(keep, Tensor) else type(keep).__name__
        raise InputShapeError(
            f"group_mask expects 'keep' of shape {gshape} (one entry per {kind!r} group of a "
            f"weight of shape {tuple(weight.shape)}). Got {got}."
        )
    return _expand(keep.to(dtype=torch.bool, device=weight.device), weight, dims).clone()


def zero_groups(weight: Tensor, kind: str) -> Tensor:
    """Bool tensor over the groups: True where every entry of the group is exactly zero."""
    dims = group_dims(kind, weight)
    other = tuple(d for d in range(weight.dim()) if d not in dims)
    nz = (weight != 0).any(dim=other) if other else weight != 0
    return ~nz


def input_channel_norms(weight: Tensor, groups: int = 1) -> Tensor:
    """Norm of the weights reading each *absolute* input channel of a (grouped) conv.

    For ``groups = g``, output channels ``[j n/g, (j+1) n/g)`` read input channels
    ``[j c/g, (j+1) c/g)`` through slots ``0 .. c/g - 1`` of the weight, so absolute channel
    ``j c/g + s`` is read by ``weight[j n/g:(j+1) n/g, s]``.

    Args:
        weight: ``(n, c/g, ...)`` conv weight (or ``(out, in)`` linear weight with ``groups=1``).
        groups: the conv's ``groups``.

    Returns:
        Tensor of length ``c = g * weight.shape[1]``.

    Raises:
        ConfigError: ``groups`` not an int >= 1.
        InputShapeError: ``weight.shape[0]`` not divisible by ``groups``.
    """
    _check_weight(weight, "input_channel_norms", 2)
    g = check_int(groups, "groups", "input_channel_norms", min_value=1)
    n, cg = weight.shape[0], weight.shape[1]
    if n % g:
        raise InputShapeError(
            f"input_channel_norms: a weight with {n} output channels cannot have groups={g}; "
            "pass the conv's own 'groups'."
        )
    w = weight.reshape(g, n // g, cg, -1)
    return torch.linalg.vector_norm(w, dim=(1, 3)).reshape(g * cg)


@dataclass(frozen=True)
class LayerView:
    """A Conv2d/Linear layer of a model, as seen by the compression code.

    Attributes:
        name: dotted path of the module in the model.
        module: the module itself.
        kind: ``"conv"`` or ``"linear"``.
        in_features: input channels (conv) or features (linear).
        out_features: output channels (conv) or features (linear).
        kernel_size: ``(kh, kw)`` for conv, ``(1, 1)`` for linear.
        groups: conv groups (1 for linear).
        depthwise: conv with ``groups == in_channels > 1``.
    """

    name: str
    module: nn.Module
    kind: str
    in_features: int
    out_features: int
    kernel_size: tuple[int, int]
    groups: int
    depthwise: bool

    @property
    def in_channels(self) -> int:
        """Alias of :attr:`in_features`."""
        return self.in_features

    @property
    def out_channels(self) -> int:
        """Alias of :attr:`out_features`."""
        return self.out_features

    @property
    def weight(self) -> Tensor:
        """The module's weight parameter."""
        return self.module.weight  # type: ignore[return-value]

    @property
    def lowered_shape(self) -> tuple[int, int]:
        """Shape of :func:`lowered` of the weight."""
        kh, kw = self.kernel_size
        return (self.out_features, self.in_features // self.groups * kh * kw)


def _view(name: str, m: nn.Module) -> LayerView:
    if isinstance(m, nn.Conv2d):
        ks = tuple(int(k) for k in m.kernel_size)
        return LayerView(
            name=name,
            module=m,
            kind="conv",
            in_features=m.in_channels,
            out_features=m.out_channels,
            kernel_size=(ks[0], ks[1]),
            groups=m.groups,
            depthwise=m.groups > 1 and m.groups == m.in_channels,
        )
    if not isinstance(m, nn.Linear):
        raise UnsupportedLayerError(
            f"Layer {name!r} is a {type(m).__name__}; only Conv2d and Linear have a weight view."
        )
    return LayerView(name, m, "linear", m.in_features, m.out_features, (1, 1), 1, False)


def layer_views(model: nn.Module, include: Iterable[str] | None = None) -> dict[str, LayerView]:
    """All ``Conv2d``/``Linear`` layers of ``model`` by dotted name (module order).

    Args:
        model: the model.
        include: restrict to these dotted names (the result keeps model order).

    Raises:
        UnknownNameError: a name in ``include`` is not a module of ``model``.
        UnsupportedLayerError: a name in ``include`` is not a Conv2d/Linear.
    """
    mods = dict(model.named_modules())
    supported = [n for n, m in mods.items() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if include is not None:
        wanted = list(include)
        for n in wanted:
            if n not in mods:
                raise UnknownNameError(
                    f"Layer {n!r} is not a module of the model. Conv2d/Linear layers: "
                    f"{', '.join(supported) or '(none)'}."
                )
            if not isinstance(mods[n], (nn.Conv2d, nn.Linear)):
                raise UnsupportedLayerError(
                    f"Layer {n!r} is a {type(mods[n]).__name__}; only Conv2d and Linear layers "
                    f"have a weight view. Choose among: {', '.join(supported) or '(none)'}."
                )
        keep = set(wanted)
        supported = [n for n in supported if n in keep]
    return {n: _view(n, mods[n]) for n in supported}


def module_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); CPU for a module without either.

    Inputs built for a forward pass of ``model`` (probes, calibration batches, latency inputs)
    go there, so a model on a GPU is run on the GPU.
    """
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")
