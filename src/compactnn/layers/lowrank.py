"""Low-rank factorized layers: :class:`LowRankLinear` (``y = B (A x) + b``) and
:class:`LowRankConv2d` (a ``k x k`` conv to ``r`` channels, then a ``1 x 1`` conv to ``n``); the
low-rank part of DDLR / PGT / SLR."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from compactnn._validation import check_int
from compactnn.errors import ConfigError
from compactnn.layers.base import _check_tensor, _pair


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
