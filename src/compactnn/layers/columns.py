"""Column-sparse layers: :class:`ColumnSparseLinear` and :class:`ColumnSparseConv2d` store only
the kept (non-zero) input columns and run in one of :data:`COLUMN_FORMS` (gather + smaller GEMM,
channel drop, or dense); SLR's sparse branch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compactnn._validation import check_int
from compactnn.errors import ConfigError
from compactnn.layers.base import _check_tensor, _pair, _register_bias

COLUMN_FORMS: tuple[str, ...] = ("gather", "channels", "dense")
"""Execution forms of the column-sparse layers (same parameters, same function)."""


def _kept_columns(weight2d: Tensor) -> Tensor:
    return torch.nonzero(weight2d.abs().amax(dim=0) > 0, as_tuple=False).reshape(-1)


class ColumnSparseLinear(nn.Module):
    r"""Linear layer whose weight has whole zero columns: only the kept inputs are stored.

    .. math:: y = W_{:,K}\, x_K + b

    ``weight`` is ``(out, |K|)`` (the values of the kept columns ``K``), ``columns`` the kept
    input indices. ``form="gather"`` selects ``x_K`` then runs a smaller GEMM; ``"dense"``
    scatters the weight into the full ``(out, in)`` matrix (zeros elsewhere) and runs
    ``F.linear``. Stored parameters: ``out * |K|`` (+ bias), the count of Ma et al. eq. (15)
    for a column-structured ``A``.

    References:
        Ma et al. 2019, eq. (10) (zero columns of A), sec. V-B (structured A as in Wen et al.).
    """

    is_compactnn_layer = True
    columns: Tensor

    def __init__(
        self, weight: Tensor, columns: Tensor, in_features: int, bias: Tensor | None = None,
        *, form: str = "gather",
    ) -> None:  # fmt: skip
        super().__init__()
        owner = "ColumnSparseLinear"
        weight = _check_tensor(weight, "weight", owner, (2,))
        self.in_features = check_int(in_features, "in_features", owner, min_value=1)
        self.out_features = int(weight.shape[0])
        cols = torch.as_tensor(columns, dtype=torch.long).reshape(-1)
        if cols.numel() != weight.shape[1]:
            raise ConfigError(
                f"{owner}: 'columns' has {cols.numel()} indices but 'weight' has "
                f"{weight.shape[1]} columns."
            )
        if cols.numel() and (int(cols.min()) < 0 or int(cols.max()) >= self.in_features):
            raise ConfigError(f"{owner}: 'columns' must lie in [0, {self.in_features}).")
        if form not in ("gather", "dense"):
            raise ConfigError(
                f"The 'form' parameter of {owner} must be 'gather' or 'dense'. Got {form!r}."
            )
        self.form = form
        self.register_buffer("columns", cols.clone())
        self.weight = nn.Parameter(weight.detach().clone())
        _register_bias(self, bias)

    @classmethod
    def from_dense(
        cls, weight: Tensor, bias: Tensor | None = None, *, form: str = "gather"
    ) -> ColumnSparseLinear:
        """Keep the non-zero columns of ``weight`` (out, in)."""
        cols = _kept_columns(weight)
        return cls(weight[:, cols], cols, int(weight.shape[1]), bias, form=form)

    def dense_matrix(self) -> Tensor:
        """The full ``(out, in)`` weight (zeros in the dropped columns)."""
        full = self.weight.new_zeros(self.out_features, self.in_features)
        return full.index_copy(1, self.columns, self.weight)

    def forward(self, x: Tensor) -> Tensor:
        if self.form == "dense":
            return F.linear(x, self.dense_matrix(), self.bias)
        return F.linear(torch.index_select(x, -1, self.columns), self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"kept={int(self.columns.numel())}, form={self.form!r}"
        )


class ColumnSparseConv2d(nn.Module):
    r"""2-D convolution whose lowered weight (n x c k_h k_w) has whole zero columns.

    The columns are ``(c, kh, kw)`` positions; only the kept ones ``K`` are stored (``weight``
    ``(n, |K|)``, ``columns`` their lowered indices). Forms, one function:

    * ``"channels"`` -- input channels with no kept position are dropped: select the kept
      channels, then a conv over them (zeros at the dropped positions of kept channels);
    * ``"gather"`` -- im2col, gather the kept rows, one ``(n x |K|)`` GEMM;
    * ``"dense"`` -- scatter into the full kernel and run ``F.conv2d``.

    Stored parameters: ``n * |K|`` (+ bias). ``padding_mode`` ``"zeros"``, ``groups = 1``.

    References:
        Ma et al. 2019, Fig. 1(c), eq. (10), Fig. 2 (structured sparse branch); Wen et al. 2016
        (zero columns of the lowered matrix shrink the GEMM).
    """

    is_compactnn_layer = True
    columns: Tensor
    channels: Tensor
    local: Tensor

    def __init__(
        self,
        weight: Tensor,
        columns: Tensor,
        in_channels: int,
        kernel_size: int | tuple[int, int],
        bias: Tensor | None = None,
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        form: str = "gather",
    ) -> None:
        super().__init__()
        owner = "ColumnSparseConv2d"
        weight = _check_tensor(weight, "weight", owner, (2,))
        self.in_channels = check_int(in_channels, "in_channels", owner, min_value=1)
        self.out_channels = int(weight.shape[0])
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        kk = self.kernel_size[0] * self.kernel_size[1]
        cols = torch.as_tensor(columns, dtype=torch.long).reshape(-1)
        if cols.numel() != weight.shape[1]:
            raise ConfigError(
                f"{owner}: 'columns' has {cols.numel()} indices but 'weight' has "
                f"{weight.shape[1]} columns."
            )
        if cols.numel() and (int(cols.min()) < 0 or int(cols.max()) >= self.in_channels * kk):
            raise ConfigError(f"{owner}: 'columns' must lie in [0, {self.in_channels * kk}).")
        if form not in COLUMN_FORMS:
            raise ConfigError(
                f"The 'form' parameter of {owner} must be one of {COLUMN_FORMS}. Got {form!r}."
            )
        self.form = form
        chans = torch.unique(cols // kk) if cols.numel() else cols.new_zeros(0)
        pos = torch.full((self.in_channels,), -1, dtype=torch.long, device=cols.device)
        pos[chans] = torch.arange(chans.numel(), device=cols.device)
        local = pos[cols // kk] * kk + cols % kk if cols.numel() else cols.clone()
        self.register_buffer("columns", cols.clone())
        self.register_buffer("channels", chans)
        self.register_buffer("local", local)
        self.weight = nn.Parameter(weight.detach().clone())
        _register_bias(self, bias)

    @classmethod
    def from_dense(
        cls, conv: nn.Conv2d, weight: Tensor, bias: Tensor | None = None, *, form: str = "gather"
    ) -> ColumnSparseConv2d:
        """Keep the non-zero columns of ``weight`` ((n, c, kh, kw) or lowered) of ``conv``."""
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ConfigError(
                "ColumnSparseConv2d needs groups=1 and numeric zero padding. Got groups="
                f"{conv.groups}, padding={conv.padding!r}, padding_mode={conv.padding_mode!r}."
            )
        w2 = weight.reshape(weight.shape[0], -1)
        cols = _kept_columns(w2)
        return cls(
            w2[:, cols], cols, conv.in_channels, _pair(conv.kernel_size), bias,
            stride=_pair(conv.stride), padding=_pair(conv.padding), dilation=_pair(conv.dilation),
            form=form,
        )  # fmt: skip

    def dense_matrix(self) -> Tensor:
        """The full lowered weight ``(n, c kh kw)`` (zeros in the dropped columns)."""
        kk = self.kernel_size[0] * self.kernel_size[1]
        full = self.weight.new_zeros(self.out_channels, self.in_channels * kk)
        return full.index_copy(1, self.columns, self.weight)

    def forward(self, x: Tensor) -> Tensor:
        kh, kw = self.kernel_size
        if self.form == "dense":
            w = self.dense_matrix().reshape(self.out_channels, self.in_channels, kh, kw)
            return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation)
        c = int(self.channels.numel())
        if self.form == "channels" and c > 0:  # with no kept column: the gather path below
            w = self.weight.new_zeros(self.out_channels, c * kh * kw)
            w = w.index_copy(1, self.local, self.weight).reshape(self.out_channels, c, kh, kw)
            xs = torch.index_select(x, 1, self.channels)
            return F.conv2d(xs, w, self.bias, self.stride, self.padding, self.dilation)
        b, h, wd = x.shape[0], x.shape[2], x.shape[3]
        ho = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        wo = (wd + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        y = torch.matmul(self.weight, torch.index_select(cols, 1, self.columns))  # (B, n, L)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1)
        return y.reshape(b, self.out_channels, ho, wo)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"kernel_size={self.kernel_size}, kept={int(self.columns.numel())}, "
            f"channels={int(self.channels.numel())}, form={self.form!r}"
        )
