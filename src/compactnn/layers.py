"""Deployable compressed layers produced by :mod:`compactnn.surgery`.

Every layer here is a plain :class:`torch.nn.Module` built from standard ops, traceable by
``torch.fx``, trainable (the sparsity pattern / rank is held fixed, the values are parameters),
and carries ``is_compactnn_layer = True`` so :mod:`compactnn.metrics` lists it as one layer.

- :class:`LowRankLinear` -- ``y = B (A x) + b`` (rank ``r``), DDLR / PGT / SLR low-rank part.
- :class:`LowRankConv2d` -- ``k x k`` conv to ``r`` channels, then ``1 x 1`` conv to ``n``.
- :class:`SparseLinear`, :class:`SparseConv2d` -- l1-sparse weights stored in COO format.
- :class:`SparsePlusLowRank` -- ``y = S x + L x + b``: Ma et al.'s two parallel branches.
- :class:`ColumnSparseLinear`, :class:`ColumnSparseConv2d` -- whole zero columns dropped
  (gather + smaller GEMM, channel drop, or dense; SLR's sparse branch).
- :class:`SelectInputs` -- ``layer(x[:, index])`` in front of a layer whose inputs were cut.
- :class:`KernelSparseConv2d` -- whole zero kernels W_ij not stored (Kiaee et al.); dense,
  grouped-by-input-support or CSR im2col forms.
- :func:`stored_param_count` -- the uniform parameter count the metrics use.

References:
    Papadimitriou & Jain 2021 (DDLR), eq. (1)-(4) and Sec. 4 (Net-Trim counted as 3 x nnz);
    Ma et al. 2019, Sec. 3 and Fig. 2 (sparse + low-rank branches summed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from compactnn._validation import check_int
from compactnn.errors import ConfigError

__all__ = [
    "LowRankLinear",
    "LowRankConv2d",
    "SparseLinear",
    "SparseConv2d",
    "SparsePlusLowRank",
    "ColumnSparseLinear",
    "ColumnSparseConv2d",
    "COLUMN_FORMS",
    "SelectInputs",
    "stored_param_count",
    "KernelSparseConv2d",
    "KERNEL_FORMS",
    "support_groups",
]


def _coo_mm(indices: Tensor, values: Tensor, shape: tuple[int, int], dense: Tensor) -> Tensor:
    """``W @ dense`` with ``W`` the COO matrix (indices, values); a leaf for ``torch.fx``."""
    w = torch.sparse_coo_tensor(indices, values, shape, is_coalesced=True, check_invariants=False)
    return torch.sparse.mm(w, dense)


torch.fx.wrap("_coo_mm")


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _out_hw(conv: nn.Module, x: Tensor) -> tuple[int, int]:
    """Output height and width of the conv geometry of ``conv`` (kernel_size, stride, padding,
    dilation attributes) on input ``x``."""
    (kh, kw), (sh, sw) = conv.kernel_size, conv.stride  # type: ignore[misc]
    (ph, pw), (dh, dw) = conv.padding, conv.dilation  # type: ignore[misc]
    h, w = x.shape[-2], x.shape[-1]  # no int(): torch.fx traces this with proxies
    return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1


def _coo_conv(
    conv: nn.Module,
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


class LowRankLinear(nn.Module):
    r"""Rank-``r`` factorized fully connected layer.

    .. math:: y = B (A x) + b, \quad A \in \mathbb{R}^{r \times d_{in}},\;
              B \in \mathbb{R}^{d_{out} \times r}

    ``first`` (no bias) holds ``A``, ``second`` (with bias) holds ``B`` and ``b``. Stored
    parameters: ``r (d_in + d_out) + d_out``.

    Args:
        in_features: ``d_in``.
        out_features: ``d_out``.
        rank: ``r >= 1``.
        bias: whether ``second`` has a bias.

    References:
        Papadimitriou & Jain 2021 (DDLR), eq. (1): W = U V^T; Ma et al. 2019, eq. (2).
    """

    is_compactnn_layer = True

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        owner = "LowRankLinear"
        self.in_features = check_int(in_features, "in_features", owner, min_value=1)
        self.out_features = check_int(out_features, "out_features", owner, min_value=1)
        self.rank = check_int(rank, "rank", owner, min_value=1)
        self.first = nn.Linear(self.in_features, self.rank, bias=False)
        self.second = nn.Linear(self.rank, self.out_features, bias=bias)

    @classmethod
    def from_factors(cls, first: Tensor, second: Tensor, bias: Tensor | None) -> LowRankLinear:
        """Build from ``A = first`` (r x d_in), ``B = second`` (d_out x r) and bias (d_out,)."""
        owner = "LowRankLinear.from_factors"
        first = _check_tensor(first, "first", owner, (2,))
        second = _check_tensor(second, "second", owner, (2,))
        if second.shape[1] != first.shape[0]:
            raise ConfigError(
                f"The factors of {owner} do not chain: first is {tuple(first.shape)} (r x in), "
                f"second is {tuple(second.shape)} (out x r); their r must agree."
            )
        if bias is not None:
            bias = _check_tensor(bias, "bias", owner, (1,))
            if bias.shape[0] != second.shape[0]:
                raise ConfigError(
                    f"The 'bias' of {owner} has {bias.shape[0]} entries; expected "
                    f"{second.shape[0]} (out features)."
                )
        layer = cls(first.shape[1], second.shape[0], first.shape[0], bias=bias is not None)
        with torch.no_grad():
            layer.first.weight.copy_(first)
            layer.second.weight.copy_(second)
            if bias is not None:
                layer.second.bias.copy_(bias)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        return self.second(self.first(x))

    def dense_weight(self) -> Tensor:
        """The equivalent dense weight ``B A`` (d_out x d_in)."""
        return self.second.weight @ self.first.weight

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


class LowRankConv2d(nn.Module):
    r"""Rank-``r`` factorized 2-D convolution (groups = 1).

    With the lowered weight :math:`W \in \mathbb{R}^{n \times c k_h k_w}` factorized as
    :math:`W = Q P`, :math:`P \in \mathbb{R}^{r \times c k_h k_w}`,
    :math:`Q \in \mathbb{R}^{n \times r}`, the layer is ``first``: a ``k_h x k_w`` conv
    ``c -> r`` with weight ``P`` reshaped to ``(r, c, k_h, k_w)`` and the original
    stride/padding/dilation (no bias), then ``second``: a ``1 x 1`` conv ``r -> n`` with weight
    ``Q`` and the bias. Stored parameters: ``r (c k_h k_w + n) + n``.

    References:
        Papadimitriou & Jain 2021 (DDLR), Sec. 3.2 (conv layers lowered by im2col);
        Ma et al. 2019, Fig. 2.
    """

    is_compactnn_layer = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rank: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        owner = "LowRankConv2d"
        self.in_channels = check_int(in_channels, "in_channels", owner, min_value=1)
        self.out_channels = check_int(out_channels, "out_channels", owner, min_value=1)
        self.rank = check_int(rank, "rank", owner, min_value=1)
        self.kernel_size = _pair(kernel_size)
        self.first = nn.Conv2d(
            self.in_channels,
            self.rank,
            self.kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=False,
        )
        self.second = nn.Conv2d(self.rank, self.out_channels, 1, bias=bias)

    @classmethod
    def from_factors(
        cls,
        first_weight: Tensor,
        second_weight: Tensor,
        bias: Tensor | None,
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
    ) -> LowRankConv2d:
        """Build from ``first_weight`` (r, c, kh, kw), ``second_weight`` (n, r) or (n, r, 1, 1)."""
        owner = "LowRankConv2d.from_factors"
        first_weight = _check_tensor(first_weight, "first_weight", owner, (4,))
        second_weight = _check_tensor(second_weight, "second_weight", owner, (2, 4))
        if second_weight.dim() == 4:
            if tuple(second_weight.shape[2:]) != (1, 1):
                raise ConfigError(
                    f"The 'second_weight' of {owner} must be (n, r) or (n, r, 1, 1). Got "
                    f"{tuple(second_weight.shape)}."
                )
            second_weight = second_weight.reshape(second_weight.shape[0], second_weight.shape[1])
        r, c, kh, kw = first_weight.shape
        n = second_weight.shape[0]
        if second_weight.shape[1] != r:
            raise ConfigError(
                f"The factors of {owner} do not chain: first_weight has r={r} output channels, "
                f"second_weight is {tuple(second_weight.shape)} (n x r)."
            )
        if bias is not None:
            bias = _check_tensor(bias, "bias", owner, (1,))
            if bias.shape[0] != n:
                raise ConfigError(
                    f"The 'bias' of {owner} has {bias.shape[0]} entries; expected {n}."
                )
        layer = cls(c, n, r, (kh, kw), stride, padding, dilation, bias=bias is not None)
        with torch.no_grad():
            layer.first.weight.copy_(first_weight)
            layer.second.weight.copy_(second_weight.reshape(n, r, 1, 1))
            if bias is not None:
                layer.second.bias.copy_(bias)
        return layer

    @classmethod
    def from_lowered(
        cls, conv: nn.Conv2d, q: Tensor, p: Tensor, bias: Tensor | None
    ) -> LowRankConv2d:
        """Build from the lowered factorization ``W_low = Q P`` of ``conv`` (n x c kh kw)."""
        owner = "LowRankConv2d.from_lowered"
        p = _check_tensor(p, "p", owner, (2,))
        kh, kw = conv.kernel_size
        if p.shape[1] != conv.in_channels * kh * kw:
            raise ConfigError(
                f"The 'p' factor of {owner} must have c*kh*kw = {conv.in_channels * kh * kw} "
                f"columns. Got {tuple(p.shape)}."
            )
        return cls.from_factors(
            p.reshape(p.shape[0], conv.in_channels, kh, kw),
            q,
            bias,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.second(self.first(x))

    def dense_weight(self) -> Tensor:
        """The equivalent dense conv weight ``(n, c, kh, kw)``."""
        q = self.second.weight.reshape(self.out_channels, self.rank)
        p = self.first.weight.reshape(self.rank, -1)
        return (q @ p).reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"rank={self.rank}, kernel_size={self.kernel_size}"
        )


class _SparseBase(nn.Module):
    """COO storage shared by the sparse layers: ``indices`` buffer (2, nnz), ``values`` param."""

    is_compactnn_layer = True
    indices: Tensor

    def _init_coo(self, dense2d: Tensor, bias: Tensor | None) -> None:
        idx = dense2d.nonzero(as_tuple=False).t().contiguous()
        self.register_buffer("indices", idx.to(torch.long))
        self.values = nn.Parameter(dense2d[idx[0], idx[1]].detach().clone())
        self.shape2d = (int(dense2d.shape[0]), int(dense2d.shape[1]))
        if bias is not None:
            self.bias: nn.Parameter | None = nn.Parameter(bias.detach().clone())
        else:
            self.register_parameter("bias", None)

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
            stride=conv.stride,  # type: ignore[arg-type]
            padding=conv.padding,  # type: ignore[arg-type]
            dilation=conv.dilation,  # type: ignore[arg-type]
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
        if bias is not None:
            self.bias: nn.Parameter | None = nn.Parameter(bias.detach().clone())
        else:
            self.register_parameter("bias", None)

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
        if bias is not None:
            self.bias: nn.Parameter | None = nn.Parameter(bias.detach().clone())
        else:
            self.register_parameter("bias", None)

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
            w2[:, cols], cols, conv.in_channels, conv.kernel_size, bias,  # type: ignore[arg-type]
            stride=conv.stride, padding=conv.padding, dilation=conv.dilation,  # type: ignore[arg-type]
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


class SparsePlusLowRank(nn.Module):
    r"""Two parallel branches summed: ``y = S x + L x`` (Ma et al. Fig. 2).

    ``sparse`` holds the (column-)sparse part ``A`` and must have no bias; ``lowrank`` holds
    ``B = Q P`` and carries the layer's bias, so the bias is added once. Stored parameters are
    the sum of the branches' :func:`stored_param_count`.

    References:
        Ma et al. 2019, eq. (2) (W = A + B) and Fig. 2.
    """

    is_compactnn_layer = True

    def __init__(self, sparse: nn.Module, lowrank: nn.Module) -> None:
        super().__init__()
        for name, m in (("sparse", sparse), ("lowrank", lowrank)):
            if not isinstance(m, nn.Module):
                raise ConfigError(
                    f"The '{name}' parameter of SparsePlusLowRank must be an nn.Module. "
                    f"Got {type(m).__name__}."
                )
        if getattr(sparse, "bias", None) is not None:
            raise ConfigError(
                "The 'sparse' branch of SparsePlusLowRank must have no bias (the bias belongs to "
                "the low-rank branch, so it is added once). Build it with bias=None."
            )
        self.sparse = sparse
        self.lowrank = lowrank
        for attr in ("in_features", "out_features", "in_channels", "out_channels"):
            if hasattr(lowrank, attr):
                setattr(self, attr, getattr(lowrank, attr))

    def forward(self, x: Tensor) -> Tensor:
        return self.sparse(x) + self.lowrank(x)

    def stored_param_count(self) -> int:
        """Stored parameters of both branches."""
        return stored_param_count(self.sparse) + stored_param_count(self.lowrank)


class SelectInputs(nn.Module):
    """``layer(x[:, index])``: a channel selection in front of a layer whose inputs were cut.

    Inserted by :class:`~compactnn.plan.KeepInputs` when the removed input channels also feed
    other layers (so the producers cannot drop them).
    """

    is_compactnn_layer = True
    index: Tensor

    def __init__(self, index: Sequence[int], layer: nn.Module) -> None:
        super().__init__()
        self.register_buffer("index", torch.as_tensor(list(index), dtype=torch.long))
        self.layer = layer
        for attr in ("in_features", "out_features", "in_channels", "out_channels"):
            if hasattr(layer, attr):
                setattr(self, attr, getattr(layer, attr))

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(torch.index_select(x, 1, self.index))


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


KERNEL_FORMS: tuple[str, ...] = ("dense", "grouped", "sparse")
"""Execution forms of :class:`KernelSparseConv2d` (same parameters, same function)."""


def support_groups(support: Tensor, max_groups: int) -> list[list[int]]:
    """Filters grouped by shared input support, at most ``max_groups`` groups.

    ``support`` is the ``(n, c)`` boolean matrix "filter i reads input channel j" (kernel
    ``W_ij`` non-zero). Filters with the same support start in one group; then the two groups
    whose merge adds the fewest multiply-adds (``|F_a ∪ F_b| |U_a ∪ U_b| - |F_a||U_a| -
    |F_b||U_b|``, U the union of the supports) are merged until ``max_groups`` remain. Each group
    then runs as one conv over its filters ``F`` and their joint inputs ``U``. Groups are lists of
    filter indices in increasing order, ordered by their first filter.
    """
    max_groups = check_int(max_groups, "max_groups", "support_groups", min_value=1)
    s = support.detach().to(torch.bool)
    uniq, inverse = torch.unique(s, dim=0, return_inverse=True)
    members = [torch.nonzero(inverse == g).flatten().tolist() for g in range(uniq.shape[0])]
    sup = uniq.to(torch.float64)
    sizes = torch.tensor([len(m) for m in members], dtype=torch.float64, device=s.device)
    while len(members) > max_groups:
        u = sup.sum(1)
        union = u[:, None] + u[None, :] - sup @ sup.t()
        cost = (sizes[:, None] + sizes[None, :]) * union
        cost = cost - (sizes * u)[:, None] - (sizes * u)[None, :]
        cost.fill_diagonal_(float("inf"))
        a, b = divmod(int(torch.argmin(cost)), len(members))
        a, b = min(a, b), max(a, b)
        members[a] = sorted(members[a] + members[b])
        sup[a] = torch.maximum(sup[a], sup[b])
        sizes[a] += sizes[b]
        keep = [i for i in range(len(members)) if i != b]
        members = [members[i] for i in keep]
        sup, sizes = sup[keep], sizes[keep]
    return sorted(members, key=lambda m: m[0])


class KernelSparseConv2d(nn.Module):
    r"""2-D convolution in which whole kernels ``W_ij`` (filter ``i``, input channel ``j``) are
    zero: only the non-zero kernels are stored (Kiaee et al.'s sparsity blocks).

    ``values`` ``(K, kh, kw)`` holds the ``K`` non-zero kernels in row-major ``(i, j)`` order,
    ``kernels`` ``(2, K)`` their ``(i, j)``; ``slots`` ``(n, c)`` maps every pair to ``1 + k``
    (``0``: zero kernel), so ``cat(0, values)[slots]`` is the dense weight. Forms, one function:

    * ``"dense"`` -- the dense weight rebuilt by one gather, then ``F.conv2d``;
    * ``"grouped"`` -- filters grouped by shared input support (``filter_groups``, a partition of the
      filters; default: :func:`support_groups` with ``max_groups``): per group a smaller conv
      over its filters and the union of their input channels, then concat and one permutation
      back to the original output order (its index buffers exist in this form only);
    * ``"sparse"`` -- im2col (``F.unfold``) and a COO sparse GEMM (``torch.sparse``) with the
      non-zero kernels' entries; while exported (ONNX) or traced (TorchScript) it runs the
      ``"dense"`` form (``torch.sparse`` has no ONNX / TorchScript-trace form; same function).

    Stored parameters (:meth:`stored_param_count`): ``K kh kw`` values (+ bias); with the two
    indices of each kernel (block COO, :meth:`coo_param_count`): ``K (kh kw + 2)`` (+ bias).
    ``groups = 1`` convs with ``padding_mode="zeros"`` and numeric padding only.

    Args:
        weight: ``(n, c, kh, kw)`` dense weight; its all-zero kernels are not stored.
        bias: ``(n,)`` or ``None``.
        stride, padding, dilation: as :class:`torch.nn.Conv2d`.
        form: one of :data:`KERNEL_FORMS`.
        filter_groups: the filter groups of the ``"grouped"`` form (every filter exactly once).
        max_groups: the number of groups :func:`support_groups` builds when ``filter_groups``
            is None.

    References:
        Kiaee et al. 2016, sec. 3.2 (sparsity blocks W_ij), Table 3 (speed-up of the sparse CNN).
    """

    is_compactnn_layer = True
    kernels: Tensor
    slots: Tensor
    lowered: Tensor
    perm: Tensor

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None = None,
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        form: str = "dense",
        filter_groups: Sequence[Sequence[int]] | None = None,
        max_groups: int = 4,
    ) -> None:
        super().__init__()
        owner = "KernelSparseConv2d"
        weight = _check_tensor(weight, "weight", owner, (4,)).detach()
        n, c, kh, kw = (int(s) for s in weight.shape)
        if bias is not None and tuple(bias.shape) != (n,):
            raise ConfigError(
                f"The 'bias' of {owner} must have shape ({n},). Got {tuple(bias.shape)}."
            )
        if form not in KERNEL_FORMS:
            raise ConfigError(
                f"The 'form' parameter of {owner} must be one of {KERNEL_FORMS}. Got {form!r}."
            )
        self.in_channels, self.out_channels, self.kernel_size = c, n, (kh, kw)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.form = form
        support = weight.reshape(n, c, -1).ne(0).any(dim=2)
        idx = support.nonzero(as_tuple=False).t().contiguous()  # row-major (i, j)
        self.register_buffer("kernels", idx)
        self.values = nn.Parameter(weight[idx[0], idx[1]].clone())
        dev = weight.device
        slots = torch.zeros(n, c, dtype=torch.long, device=dev)
        slots[idx[0], idx[1]] = torch.arange(1, idx.shape[1] + 1, device=dev)
        self.register_buffer("slots", slots)
        # the "sparse" form: COO indices of the lowered (n, c kh kw) weight, row-major (i, j, p)
        # order = the order of values.reshape(-1), hence coalesced
        kk = kh * kw
        rows = idx[0].repeat_interleave(kk)
        cols = (idx[1][:, None] * kk + torch.arange(kk, device=dev)[None, :]).reshape(-1)
        self.register_buffer("lowered", torch.stack([rows, cols]))
        if bias is not None:
            self.bias: nn.Parameter | None = nn.Parameter(bias.detach().clone())
        else:
            self.register_parameter("bias", None)
        self.filter_groups: tuple[tuple[int, ...], ...] = (tuple(range(n)),)
        if form == "grouped":  # its index buffers exist in this form only
            self._init_groups(support, filter_groups, max_groups)

    def _init_groups(
        self, support: Tensor, groups: Sequence[Sequence[int]] | None, max_groups: int
    ) -> None:
        owner = "KernelSparseConv2d"
        n = self.out_channels
        if groups is None:
            groups = support_groups(support, max_groups)
        try:
            groups = [[int(i) for i in g] for g in groups]
        except TypeError:
            raise ConfigError(
                f"The 'filter_groups' parameter of {owner} must be a sequence of filter-index "
                f"sequences. Got {groups!r}."
            ) from None
        flat = sorted(i for g in groups for i in g)
        if flat != list(range(n)) or any(not g for g in groups):
            raise ConfigError(
                f"The 'filter_groups' of {owner} must partition the {n} filters (each index in "
                f"[0, {n}) exactly once, no empty group). Got {groups!r}."
            )
        self.filter_groups = tuple(tuple(g) for g in groups)
        order = [i for g in self.filter_groups for i in g]
        dev = support.device
        perm = torch.empty(n, dtype=torch.long, device=dev)
        perm[torch.tensor(order, dtype=torch.long, device=dev)] = torch.arange(n, device=dev)
        self.register_buffer("perm", perm)  # concat position of each original filter
        for k, g in enumerate(self.filter_groups):
            rows = torch.tensor(g, dtype=torch.long, device=dev)
            chans = torch.nonzero(support[rows].any(dim=0)).flatten()
            if chans.numel() == 0:  # filters reading nothing: one zero input channel
                chans = torch.zeros(1, dtype=torch.long, device=dev)
            self.register_buffer(f"group{k}_channels", chans)
            self.register_buffer(f"group{k}_slots", self.slots[rows][:, chans].contiguous())

    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, weight: Tensor | None = None, *, form: str = "dense",
        filter_groups: Sequence[Sequence[int]] | None = None, max_groups: int = 4,
    ) -> KernelSparseConv2d:  # fmt: skip
        """Kernel-sparse copy of ``conv`` (or of ``weight``, the conv's masked weight)."""
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ConfigError(
                "KernelSparseConv2d needs groups=1 and numeric zero padding. Got groups="
                f"{conv.groups}, padding={conv.padding!r}, padding_mode={conv.padding_mode!r}."
            )
        w = conv.weight.detach() if weight is None else weight.detach()
        return cls(
            w, None if conv.bias is None else conv.bias.detach(),
            stride=conv.stride, padding=conv.padding, dilation=conv.dilation,  # type: ignore[arg-type]
            form=form, filter_groups=filter_groups, max_groups=max_groups,
        )  # fmt: skip

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, *, form: str = "dense") -> KernelSparseConv2d:
        """Kernel-sparse copy of the dense ``conv`` (its zero kernels are not stored)."""
        if not isinstance(conv, nn.Conv2d):
            raise ConfigError(
                f"KernelSparseConv2d.from_dense needs an nn.Conv2d. Got {type(conv).__name__}."
            )
        return cls.from_conv(conv, form=form)

    @property
    def nnz_kernels(self) -> int:
        """Number of stored (non-zero) kernels ``K``."""
        return int(self.values.shape[0])

    def stored_param_count(self) -> int:
        """Stored values: ``K kh kw`` (+ bias)."""
        return int(self.values.numel()) + (0 if self.bias is None else int(self.bias.numel()))

    def coo_param_count(self) -> int:
        """Block COO storage: ``K (kh kw + 2)`` (two indices per kernel) + bias."""
        return self.stored_param_count() + 2 * self.nnz_kernels

    def _padded(self) -> Tensor:
        return torch.cat([self.values.new_zeros((1, *self.kernel_size)), self.values], 0)

    def dense_weight(self) -> Tensor:
        """The equivalent dense weight ``(n, c, kh, kw)``."""
        return self._padded()[self.slots]

    @property
    def weight(self) -> Tensor:
        """The dense weight ``(n, c, kh, kw)`` (read-only view for code that reads a conv's
        ``weight``; the stored parameters are ``values``)."""
        return self.dense_weight()

    def _conv(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation)

    def forward(self, x: Tensor) -> Tensor:
        exporting = torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()
        if self.form == "dense" or (self.form == "sparse" and exporting):
            return self._conv(x, self.dense_weight(), self.bias)
        if self.form == "grouped":
            vp = self._padded()
            outs = []
            for k in range(len(self.filter_groups)):
                chans = getattr(self, f"group{k}_channels")
                w = vp[getattr(self, f"group{k}_slots")]
                outs.append(self._conv(torch.index_select(x, 1, chans), w, None))
            y = torch.index_select(torch.cat(outs, 1), 1, self.perm)
            return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)
        kk = self.kernel_size[0] * self.kernel_size[1]
        shape = (self.out_channels, self.in_channels * kk)
        return _coo_conv(self, x, self.lowered, self.values.reshape(-1), shape, self.bias)

    def flops_per_sample(self, x: Tensor) -> int:
        """``2 K kh kw`` FLOPs per output position (the non-zero kernels only)."""
        ho, wo = _out_hw(self, x)
        return 2 * int(self.values.numel()) * ho * wo

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"kernels={self.nnz_kernels}/{self.in_channels * self.out_channels}, "
            f"form={self.form!r}, filter_groups={len(self.filter_groups)}"
        )
