"""What every layer family of :mod:`compactnn.layers` shares: the argument checks, the conv
geometry (``_pair``, ``_out_hw``), the bias parameter (``_register_bias``) and
:func:`stored_param_count`, the uniform parameter count the metrics use."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from compactnn.errors import ConfigError


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _ConvGeometry(Protocol):
    """The conv geometry a layer carries (read by :func:`_out_hw` and the im2col forms)."""

    @property
    def kernel_size(self) -> tuple[int, ...]: ...
    @property
    def stride(self) -> tuple[int, ...]: ...
    @property
    def padding(self) -> tuple[int, ...]: ...
    @property
    def dilation(self) -> tuple[int, ...]: ...


def _out_hw(conv: _ConvGeometry, x: Tensor) -> tuple[int, int]:
    """Output height and width of the conv geometry of ``conv`` (kernel_size, stride, padding,
    dilation attributes) on input ``x``."""
    (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
    (ph, pw), (dh, dw) = conv.padding, conv.dilation
    h, w = x.shape[-2], x.shape[-1]  # no int(): torch.fx traces this with proxies
    return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1


def _register_bias(module: nn.Module, bias: Tensor | None) -> None:
    """Register a detached copy of ``bias`` as the parameter ``module.bias`` (``None``: the
    parameter ``bias`` is registered as absent, as in ``nn.Linear(bias=False)``)."""
    if bias is not None:
        module.bias = nn.Parameter(bias.detach().clone())
    else:
        module.register_parameter("bias", None)


def _check_tensor(t: object, name: str, owner: str, ndim: tuple[int, ...]) -> Tensor:
    if not isinstance(t, Tensor):
        raise ConfigError(
            f"The '{name}' parameter of {owner} must be a torch.Tensor. Got {type(t).__name__}."
        )
    if t.dim() not in ndim:
        raise ConfigError(
            f"The '{name}' parameter of {owner} must have {' or '.join(map(str, ndim))} "
            f"dimensions. Got shape {tuple(t.shape)}."
        )
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ConfigError(f"The '{name}' parameter of {owner} contains NaN or Inf values.")
    return t


def stored_param_count(module: nn.Module) -> int:
    """Stored parameter values of ``module`` and its children.

    Modules defining ``stored_param_count()`` (the sparse layers: COO count ``3 nnz`` + bias,
    :class:`SparsePlusLowRank`) are counted by it and their subtree is skipped; every other
    module counts the elements of its own parameters.
    """
    total = 0
    stack: list[nn.Module] = [module]
    while stack:
        m = stack.pop()
        fn = getattr(m, "stored_param_count", None)
        if callable(fn):
            total += int(fn())
            continue
        total += sum(p.numel() for p in m.parameters(recurse=False))
        stack.extend(m.children())
    return total
