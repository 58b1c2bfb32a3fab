"""The model as it is deployed, and the dense layers its compressed layers replace.

- :func:`export_form` -- compactnn's sparse layers (which run on ``torch.sparse``, unsupported
  by ONNX and TorchScript) become plain ops, either ``"dense"`` (an ``nn.Linear`` /
  ``nn.Conv2d`` holding the zeros) or ``"gather"`` (only the non-zeros: :class:`GatherLinear`,
  :class:`GatherConv2d`). Low-rank layers, channel selections and everything else are plain
  modules already.
- :func:`dense_equivalent`, :func:`densify` -- the dense ``nn.Linear`` / ``nn.Conv2d`` a
  compressed layer replaces.
- :func:`compiled_form` -- ``torch.compile`` (inductor) of the export form, checked against
  the PyTorch model.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compactnn.errors import ConfigError
from compactnn.export._common import PARITY_TOL, _as_batch, _reference
from compactnn.layers import (
    ColumnSparseConv2d,
    ColumnSparseLinear,
    FusedSparseLowRankConv2d,
    FusedSparseLowRankLinear,
    LowRankConv2d,
    LowRankLinear,
    SparseConv2d,
    SparseLinear,
    SparsePlusLowRank,
)

#: the compactnn layers :func:`dense_equivalent` turns into a dense ``nn.Linear`` / ``nn.Conv2d``
DENSIFIABLE = (
    SparseLinear, SparseConv2d, LowRankLinear, LowRankConv2d, SparsePlusLowRank,
    ColumnSparseConv2d, ColumnSparseLinear, FusedSparseLowRankConv2d, FusedSparseLowRankLinear,
)  # fmt: skip

SPARSE_FORMS = ("dense", "gather")


class GatherLinear(nn.Module):
    r"""``y = W x + b`` with only the non-zeros of ``W`` stored: ``(rows, cols, values)``.

    .. math:: y_{b, r_k} \mathrel{+}= v_k \, x_{b, c_k}, \quad k = 1 \dots nnz

    Runs as ``index_select`` (ONNX ``Gather``), ``mul`` and ``scatter_add`` (ONNX
    ``ScatterElements`` with ``reduction="add"``, opset >= 16), so ONNX and TorchScript run it.
    """

    rows: Tensor
    cols: Tensor

    def __init__(
        self,
        rows: Tensor,
        cols: Tensor,
        values: Tensor,
        out_features: int,
        in_features: int,
        bias: Tensor | None,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = int(out_features), int(in_features)
        self.register_buffer("rows", rows.detach().to(torch.long).clone())
        self.register_buffer("cols", cols.detach().to(torch.long).clone())
        self.values = nn.Parameter(values.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @classmethod
    def from_sparse(cls, layer: SparseLinear | SparseConv2d) -> GatherLinear:
        """The non-zeros of a sparse layer's (lowered) weight."""
        out_f, in_f = layer.shape2d
        return cls(layer.indices[0], layer.indices[1], layer.values, out_f, in_f, layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features)
        prod = flat.index_select(1, self.cols) * self.values
        index = self.rows.unsqueeze(0).expand(flat.shape[0], -1)
        y = flat.new_zeros(flat.shape[0], self.out_features).scatter_add(1, index, prod)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(x.shape[:-1] + (self.out_features,))


class GatherConv2d(nn.Module):
    """A sparse convolution as im2col (``F.unfold``) followed by :class:`GatherLinear`."""

    def __init__(self, layer: SparseConv2d) -> None:
        super().__init__()
        self.kernel_size, self.stride = layer.kernel_size, layer.stride
        self.padding, self.dilation = layer.padding, layer.dilation
        self.out_channels = layer.out_channels
        self.linear = GatherLinear.from_sparse(layer)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w = x.shape[0], x.shape[2], x.shape[3]
        kh, kw = self.kernel_size
        ho = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        y = self.linear(cols.transpose(1, 2))  # (B, L, n)
        return y.transpose(1, 2).reshape(b, self.out_channels, ho, wo)


# Their public home, the package compactnn.export: TorchScript names the traced code of a
# "gather" export form by the class's module (``__torch__.compactnn.export.GatherLinear``), so
# model.pt stays as it was before export/ became a package; pickles name the same path.
GatherLinear.__module__ = GatherConv2d.__module__ = __name__.rpartition(".")[0]


def _dense_conv(
    layer: SparseConv2d | ColumnSparseConv2d | FusedSparseLowRankConv2d, weight: Tensor
) -> nn.Conv2d:
    """An ``nn.Conv2d`` of ``layer``'s geometry holding ``weight`` (any shape of its numel)
    and ``layer``'s bias."""
    conv = nn.Conv2d(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        bias=layer.bias is not None,
    )
    return _load_dense(conv, weight.reshape(conv.weight.shape), layer.bias)


def _set(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    if not name:
        return new
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


def _check_form(sparse: str) -> str:
    if sparse not in SPARSE_FORMS:
        raise ConfigError(
            f"The 'sparse' parameter of export must be one of {', '.join(SPARSE_FORMS)}. "
            f"Got {sparse!r} instead."
        )
    return sparse


def export_form(model: nn.Module, *, sparse: str = "dense") -> nn.Module:
    """A copy of ``model`` (eval mode) whose sparse layers run without ``torch.sparse``.

    Args:
        model: a compressed model.
        sparse: ``"dense"`` (sparse layers become ``nn.Linear`` / ``nn.Conv2d``; fastest on CPU
            at moderate sparsity) or ``"gather"`` (only the non-zeros are stored and computed).

    Returns:
        The export form; same outputs as ``model`` (up to float summation order).
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"export expects an nn.Module. Got {type(model).__name__}.")
    _check_form(sparse)
    out = copy.deepcopy(model).eval()
    for name, m in list(out.named_modules()):
        if isinstance(m, SparseLinear):
            new: nn.Module = m.to_dense() if sparse == "dense" else GatherLinear.from_sparse(m)
        elif isinstance(m, SparseConv2d):
            new = _dense_conv(m, m.dense_matrix()) if sparse == "dense" else GatherConv2d(m)
        else:
            continue
        out = _set(out, name, new)
    return out


def _load_dense(dense: nn.Module, weight: Tensor, bias: Tensor | None) -> nn.Module:
    """``dense`` (an ``nn.Linear`` / ``nn.Conv2d``) holding ``weight`` and ``bias``."""
    with torch.no_grad():
        dense.weight.copy_(weight)
        if dense.bias is not None:
            dense.bias.copy_(bias)
    return dense


def dense_equivalent(layer: nn.Module) -> nn.Module | None:
    """The dense ``nn.Linear`` / ``nn.Conv2d`` computing what a compactnn layer computes.

    Returns ``None`` for layers without one (channel selections).
    """
    if isinstance(layer, SparseLinear):
        return layer.to_dense()
    if isinstance(layer, SparseConv2d):
        return _dense_conv(layer, layer.dense_matrix())
    if isinstance(layer, LowRankLinear):
        lin = nn.Linear(layer.in_features, layer.out_features, bias=layer.second.bias is not None)
        return _load_dense(lin, layer.dense_weight(), layer.second.bias)
    if isinstance(layer, LowRankConv2d):
        f = layer.first
        conv = nn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=f.stride,  # type: ignore[arg-type]
            padding=f.padding,  # type: ignore[arg-type]
            dilation=f.dilation,  # type: ignore[arg-type]
            bias=layer.second.bias is not None,
        )
        return _load_dense(conv, layer.dense_weight(), layer.second.bias)
    if isinstance(layer, ColumnSparseLinear):
        lin = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        return _load_dense(lin, layer.dense_matrix(), layer.bias)
    if isinstance(layer, ColumnSparseConv2d):
        return _dense_conv(layer, layer.dense_matrix())
    if isinstance(layer, FusedSparseLowRankLinear):
        lin = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        return _load_dense(lin, layer.dense_weight(), layer.bias)
    if isinstance(layer, FusedSparseLowRankConv2d):
        return _dense_conv(layer, layer.dense_weight())
    if isinstance(layer, SparsePlusLowRank):
        s, lr = dense_equivalent(layer.sparse), dense_equivalent(layer.lowrank)
        if s is None or lr is None or type(s) is not type(lr):
            return None
        with torch.no_grad():
            lr.weight.add_(s.weight)
        return lr
    return None


def densify(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """A copy of ``model`` with the compressed layers ``names`` replaced by dense equivalents."""
    out = copy.deepcopy(model)
    for n in names:
        dense = dense_equivalent(out.get_submodule(n))
        if dense is None:
            raise ConfigError(f"densify: layer {n!r} has no dense equivalent.")
        out = _set(out, n, dense)
    return out


def compiled_form(
    model: nn.Module, samples: Tensor, *, sparse: str = "dense", tol: float = PARITY_TOL
) -> tuple[nn.Module | None, dict[str, Any]]:
    """``torch.compile`` (inductor) of the export form, checked against the PyTorch model.

    torch.compile needs a working C++ compiler for inductor's CPU kernels; where compiling or
    running fails (no compiler, an unsupported op, outputs that differ by more than ``tol``)
    a ``RuntimeWarning`` says why and ``None`` is returned, so the latency table simply has
    no torch.compile column.

    Returns:
        ``(compiled module or None, record)``; the record holds ``ok``, the backend, the
        compile time and ``max_abs_diff`` (or the ``error``).
    """
    rec: dict[str, Any] = {"backend": "inductor", "ok": False}
    samples = _as_batch(samples, "compiled_form: 'samples'")
    form = export_form(model, sparse=sparse).float()
    t0 = time.perf_counter()
    try:
        compiled = torch.compile(form, backend="inductor", dynamic=False)
        with torch.no_grad():
            got = compiled(samples)
        diff = float((got - _reference(model.float(), samples)).abs().max())
    except Exception as exc:  # noqa: BLE001 - any compiler / inductor failure degrades
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        rec["error"] = f"{type(exc).__name__}: {first}"
        warnings.warn(
            f"torch.compile latency skipped: compiling the deployed model failed ({rec['error']}). "
            "Inductor needs a working C++ compiler (g++ or clang on PATH) on CPU; eager and "
            "onnxruntime latency are still measured.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None, rec
    rec["compile_seconds"] = time.perf_counter() - t0
    rec["max_abs_diff"] = diff
    if not diff <= tol:
        rec["error"] = f"outputs differ from PyTorch by max |delta| {diff:.3g} > {tol:g}"
        warnings.warn(
            f"torch.compile latency skipped: the compiled model's {rec['error']}.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None, rec
    rec["ok"] = True
    return compiled, rec
