"""Element-sparse layers stored in COO format: :class:`SparseLinear`, :class:`SparseConv2d`
(their shared storage :class:`_SparseBase`) and the COO matmul / im2col conv they run on, which
``torch.fx`` keeps as one leaf call (``_coo_mm``)."""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from compactnn._validation import check_int
from compactnn.errors import ConfigError
from compactnn.layers.base import _check_tensor, _ConvGeometry, _out_hw, _pair, _register_bias


def _coo_mm(indices: Tensor, values: Tensor, shape: tuple[int, int], dense: Tensor) -> Tensor:
    """``W @ dense`` with ``W`` the COO matrix (indices, values); a leaf for ``torch.fx``."""
    w = torch.sparse_coo_tensor(indices, values, shape, is_coalesced=True, check_invariants=False)
    return torch.sparse.mm(w, dense)


torch.fx.wrap("_coo_mm")


def _coo_conv(
    conv: _ConvGeometry,
    x: Tensor,
    indices: Tensor,
    values: Tensor,
    shape2d: tuple[int, int],
    bias: Tensor | None,
) -> Tensor:
    """im2col (``F.unfold``) of ``x`` times the COO lowered weight (``shape2d`` = n x c kh kw),
    with the conv geometry of ``conv``."""
    b, n = x.shape[0], shape2d[0]
    ho, wo = _out_hw(conv, x)
    cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # type: ignore[arg-type]
    cols = cols.transpose(0, 1).reshape(cols.shape[1], -1)  # (c kh kw, B L)
    y = _coo_mm(indices, values, shape2d, cols)  # (n, B L)
    y = y.reshape(n, b, -1).transpose(0, 1)
    if bias is not None:
        y = y + bias.reshape(1, -1, 1)
    return y.reshape(b, n, ho, wo)


class _SparseBase(nn.Module):
    """COO storage shared by the sparse layers: ``indices`` buffer (2, nnz), ``values`` param."""

    is_compactnn_layer = True
    indices: Tensor

    def _init_coo(self, dense2d: Tensor, bias: Tensor | None) -> None:
        idx = dense2d.nonzero(as_tuple=False).t().contiguous()
        self.register_buffer("indices", idx.to(torch.long))
        self.values = nn.Parameter(dense2d[idx[0], idx[1]].detach().clone())
        self.shape2d = (int(dense2d.shape[0]), int(dense2d.shape[1]))
        _register_bias(self, bias)

    @property
    def nnz(self) -> int:
        """Number of stored non-zero weights."""
        return int(self.values.numel())

    def coo_param_count(self) -> int:
        """``3 * nnz``: row index, column index and value per non-zero (DDLR, Sec. 4)."""
        return 3 * self.nnz

    def stored_param_count(self) -> int:
        """COO count of the weight plus the dense bias."""
        return self.coo_param_count() + (0 if self.bias is None else int(self.bias.numel()))

    def weight_matrix(self) -> Tensor:
        """The sparse weight as a ``torch.sparse_coo_tensor`` (differentiable in ``values``)."""
        return torch.sparse_coo_tensor(
            self.indices, self.values, self.shape2d, is_coalesced=True, check_invariants=False
        )

    def dense_matrix(self) -> Tensor:
        """The weight as a dense 2-D matrix (rows = outputs)."""
        out = torch.zeros(self.shape2d, dtype=self.values.dtype, device=self.values.device)
        return out.index_put((self.indices[0], self.indices[1]), self.values)


class SparseLinear(_SparseBase):
    r"""Fully connected layer with an l1-sparse weight stored in COO format.

    .. math:: y = W x + b, \quad W \text{ stored as } (\text{row}, \text{col}, \text{value})
              \text{ triplets}

    Runs with ``torch.sparse.mm``; ``stored_param_count() = 3 nnz(W) + d_out``.

    References:
        Papadimitriou & Jain 2021 (DDLR), Sec. 4 (Net-Trim baseline, COO counting).
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        weight = _check_tensor(weight, "weight", "SparseLinear", (2,))
        if bias is not None and tuple(bias.shape) != (weight.shape[0],):
            raise ConfigError(
                f"The 'bias' of SparseLinear must have shape ({weight.shape[0]},). "
                f"Got {tuple(bias.shape)}."
            )
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        self._init_coo(weight.detach(), bias)

    @classmethod
    def from_dense(cls, linear: nn.Linear) -> SparseLinear:
        """Sparse copy of ``linear`` (its zero weights are not stored)."""
        return cls(linear.weight.detach(), None if linear.bias is None else linear.bias.detach())

    def to_dense(self) -> nn.Linear:
        """An equivalent dense :class:`nn.Linear`."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(self.dense_matrix())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features)
        y = _coo_mm(self.indices, self.values, self.shape2d, flat.t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(x.shape[:-1] + (self.out_features,))

    def flops_per_sample(self, x: Tensor) -> int:
        """``2 nnz`` multiply-adds per input vector."""
        return 2 * self.nnz * max(1, x[0].numel() // self.in_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}"


class SparseConv2d(_SparseBase):
    r"""2-D convolution whose lowered weight (n x c k_h k_w) is stored in COO format.

    Grouped convolutions are stored as their block-diagonal lowered weight (only the non-zeros
    are stored, so nothing is lost). Forward: ``unfold`` (im2col), ``torch.sparse.mm``, reshape.
    ``padding_mode`` must be ``"zeros"``.

    References:
        Papadimitriou & Jain 2021 (DDLR), Sec. 3.2 (lowering) and Sec. 4 (COO counting).
    """

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None = None,
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
    ) -> None:
        super().__init__()
        weight = _check_tensor(weight, "weight", "SparseConv2d", (4,))
        groups = check_int(groups, "groups", "SparseConv2d", min_value=1)
        n, cg, kh, kw = (int(s) for s in weight.shape)
        if n % groups:
            raise ConfigError(
                f"SparseConv2d: out channels {n} are not divisible by groups={groups}."
            )
        if bias is not None and tuple(bias.shape) != (n,):
            raise ConfigError(
                f"The 'bias' of SparseConv2d must have shape ({n},). Got {tuple(bias.shape)}."
            )
        self.out_channels, self.in_channels = n, cg * groups
        self.kernel_size = (kh, kw)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        dense = torch.zeros(n, self.in_channels, kh, kw, dtype=weight.dtype, device=weight.device)
        ng = n // groups
        for g in range(groups):
            dense[g * ng : (g + 1) * ng, g * cg : (g + 1) * cg] = weight[g * ng : (g + 1) * ng]
        self._init_coo(dense.reshape(n, -1), bias)

    @classmethod
    def from_dense(cls, conv: nn.Conv2d) -> SparseConv2d:
        """Sparse copy of ``conv`` (zeros and the off-diagonal blocks of groups not stored)."""
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ConfigError(
                "SparseConv2d supports padding_mode='zeros' with numeric padding only. "
                f"Got padding={conv.padding!r}, padding_mode={conv.padding_mode!r}."
            )
        return cls(
            conv.weight.detach(),
            None if conv.bias is None else conv.bias.detach(),
            stride=_pair(conv.stride),
            padding=_pair(conv.padding),
            dilation=_pair(conv.dilation),
            groups=conv.groups,
        )

    def forward(self, x: Tensor) -> Tensor:
        return _coo_conv(self, x, self.indices, self.values, self.shape2d, self.bias)

    def flops_per_sample(self, x: Tensor) -> int:
        """``2 nnz`` multiply-adds per output position."""
        ho, wo = _out_hw(self, x)
        return 2 * self.nnz * ho * wo

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"nnz={self.nnz}"
        )
