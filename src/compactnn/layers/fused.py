r"""SLR's layer as one product: :class:`FusedSparseLowRankConv2d` and
:class:`FusedSparseLowRankLinear` compute ``y = A x + Q (P x) + b`` with one GEMM of the stacked
weight ``[Q | A_K]`` over the stacked input ``[Z; X_K]``, ``Z = P x`` the low-rank branch's
rank-``r`` first stage and ``X_K`` the kept input columns of the column-sparse ``A`` only.

Built from the two branches of :class:`~compactnn.layers.SparsePlusLowRank` (a
:class:`~compactnn.layers.ColumnSparseConv2d` / ``ColumnSparseLinear`` and a
:class:`~compactnn.layers.LowRankConv2d` / ``LowRankLinear``, or the sparse branch alone): the
same function, the same stored values (``P``, ``[Q | A_K]``, the bias: Ma et al.'s eq. (15)
count), one output instead of two summed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compactnn.errors import ConfigError
from compactnn.layers.base import _out_hw, _pair
from compactnn.layers.columns import ColumnSparseConv2d, ColumnSparseLinear
from compactnn.layers.composite import SparsePlusLowRank
from compactnn.layers.lowrank import LowRankConv2d, LowRankLinear

FUSED_FORMS: tuple[str, ...] = ("gather", "channels")
"""Execution forms of :class:`FusedSparseLowRankConv2d` (same parameters, same function)."""


def _check_branches(sparse: nn.Module, lowrank: nn.Module | None, kinds: tuple[type, type],
                    owner: str) -> None:  # fmt: skip
    """The two branches of one SLR layer: types, shapes, and the bias carried once."""
    if not isinstance(sparse, kinds[0]):
        raise ConfigError(
            f"The 'sparse' parameter of {owner} must be a {kinds[0].__name__}. "
            f"Got {type(sparse).__name__}."
        )
    if lowrank is None:
        return
    if not isinstance(lowrank, kinds[1]):
        raise ConfigError(
            f"The 'lowrank' parameter of {owner} must be a {kinds[1].__name__} or None. "
            f"Got {type(lowrank).__name__}."
        )
    if sparse.bias is not None:
        raise ConfigError(
            f"{owner}: the sparse branch carries a bias and so does the low-rank branch; the "
            "bias belongs to the low-rank branch (as in SparsePlusLowRank). Build the sparse "
            "branch with bias=None."
        )
    for attr in ("in_features", "out_features", "in_channels", "out_channels", "kernel_size"):
        a, b = getattr(sparse, attr, None), getattr(lowrank, attr, None)
        if a is not None and b is not None and a != b:
            raise ConfigError(
                f"{owner}: the branches disagree on {attr} (sparse {a}, low rank {b}); both must "
                "approximate the same layer."
            )


def _stack(layer: nn.Module, sparse: nn.Module, lowrank: nn.Module | None) -> None:
    """``layer.weight = [Q | A_K]``, ``layer.first = P`` (``None`` at rank 0) and the bias (the
    low-rank branch's, or the lone sparse branch's): copies of the branches' values."""
    n = int(sparse.weight.shape[0])
    q = (
        sparse.weight.new_zeros(n, 0)
        if lowrank is None
        else lowrank.second.weight.detach().reshape(n, lowrank.rank)
    )
    layer.weight = nn.Parameter(torch.cat([q, sparse.weight.detach()], 1))
    if lowrank is None:
        layer.register_parameter("first", None)
    else:
        layer.first = nn.Parameter(lowrank.first.weight.detach().clone())
    bias = sparse.bias if lowrank is None else lowrank.second.bias
    layer.bias = None if bias is None else nn.Parameter(bias.detach().clone())


def _branches(module: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """``(sparse, lowrank)`` of a :class:`SparsePlusLowRank` or a lone column-sparse layer."""
    if isinstance(module, SparsePlusLowRank):
        return module.sparse, module.lowrank
    return module, None


class FusedSparseLowRankConv2d(nn.Module):
    r"""Ma et al.'s conv layer ``A + Q P`` as one GEMM over ``[Z; X_K]``.

    .. math:: y = [\,Q \mid A_{:,K}\,] \begin{bmatrix} Z \\ X_K \end{bmatrix} + b, \qquad
              Z = P * x

    ``first`` (``(r, c, k_h, k_w)``, the original stride / padding / dilation) computes the
    rank-``r`` maps ``Z``; ``weight`` (``(n, r + |K|)``) is ``[Q | A_K]``. Forms (one
    function, the same stored values):

    * ``"gather"`` -- ``X_K``: the kept im2col rows only, each a ``(c, i, j)`` column read at
      its kernel offset, gathered from the padded input in one ``index_select`` (the full
      im2col is never formed); ``[Z; X_K]`` then meets ``[Q | A_K]`` in one ``1 x 1`` conv (a
      GEMM). Computes ``r c k_h k_w + n (r + |K|)`` MACs per output position.
    * ``"channels"`` -- one conv over the concatenation ``[Z; x_C]`` (``C``: the input channels
      with a kept column) with a ``(n, r + |C|, k_h, k_w)`` kernel built from the stored values
      (``Q`` at the centre tap, ``A``'s kept columns in place, zeros elsewhere); needs a
      "same" conv (stride 1, odd kernel, padding ``= dilation (k - 1) / 2``). It multiplies
      those zeros too: :meth:`executed_param_count` counts the kernel it runs.

    Stored parameters (:meth:`stored_param_count`): ``r c k_h k_w + n (r + |K|)`` (+ bias),
    Ma et al.'s eq. (15) count, in both forms. ``padding_mode`` ``"zeros"``, ``groups = 1``.

    References:
        Ma et al. 2019, eq. (2) (``W = A + B``), eq. (15) (the count), Fig. 2 (the two
        branches, here summed inside one product).
    """

    is_compactnn_layer = True
    columns: Tensor
    channels: Tensor
    _chan: Tensor
    _row: Tensor
    _col: Tensor
    _wide: Tensor

    def __init__(
        self, sparse: ColumnSparseConv2d, lowrank: LowRankConv2d | None = None, *,
        form: str = "gather",
    ) -> None:  # fmt: skip
        super().__init__()
        owner = "FusedSparseLowRankConv2d"
        _check_branches(sparse, lowrank, (ColumnSparseConv2d, LowRankConv2d), owner)
        if form not in FUSED_FORMS:
            raise ConfigError(
                f"The 'form' parameter of {owner} must be one of {FUSED_FORMS}. Got {form!r}."
            )
        self.in_channels, self.out_channels = sparse.in_channels, sparse.out_channels
        self.kernel_size, self.stride = sparse.kernel_size, sparse.stride
        self.padding, self.dilation = sparse.padding, sparse.dilation
        if lowrank is not None and (
            _pair3(lowrank.first) != (self.stride, self.padding, self.dilation)
        ):
            raise ConfigError(
                f"{owner}: the branches disagree on stride / padding / dilation (sparse "
                f"{(self.stride, self.padding, self.dilation)}, low rank "
                f"{_pair3(lowrank.first)}); both must approximate the same conv."
            )
        if form == "channels" and not self.channels_form_fits(self):
            raise ConfigError(
                f"{owner}: form 'channels' needs a 'same' conv (stride 1, odd kernel, padding = "
                f"dilation * (k - 1) / 2). Got kernel {self.kernel_size}, stride {self.stride}, "
                f"padding {self.padding}, dilation {self.dilation}; use form='gather'."
            )
        self.form = form
        self.rank = 0 if lowrank is None else lowrank.rank
        kh, kw = self.kernel_size
        kk = kh * kw
        cols = sparse.columns.clone()
        self.register_buffer("columns", cols)
        self.register_buffer("channels", sparse.channels.clone())
        self.register_buffer("_chan", cols // kk)
        self.register_buffer("_row", (cols % kk) // kw * self.dilation[0])
        self.register_buffer("_col", (cols % kk) % kw * self.dilation[1])
        # the channels form: where each stacked column sits in the (n, (r + |C|) kh kw) kernel
        centre = (kh // 2) * kw + kw // 2
        q_pos = torch.arange(self.rank, device=cols.device) * kk + centre
        self.register_buffer("_wide", torch.cat([q_pos, self.rank * kk + sparse.local]))
        _stack(self, sparse, lowrank)
        self._index_cache: dict[tuple[int, ...], Tensor] = {}

    @classmethod
    def from_module(cls, module: nn.Module, *, form: str = "gather") -> FusedSparseLowRankConv2d:
        """The fused form of a :class:`SparsePlusLowRank` (column-sparse conv + low-rank conv)
        or of a lone :class:`ColumnSparseConv2d`."""
        sparse, lowrank = _branches(module)
        return cls(sparse, lowrank, form=form)  # type: ignore[arg-type]

    @staticmethod
    def channels_form_fits(conv: nn.Module) -> bool:
        """Whether ``conv``'s geometry admits the ``"channels"`` form (a "same" conv)."""
        k, s, p, d = (_pair(getattr(conv, a)) for a in ("kernel_size", "stride", "padding",
                                                         "dilation"))  # fmt: skip
        return s == (1, 1) and all(k[i] % 2 == 1 and p[i] == d[i] * (k[i] - 1) // 2
                                   for i in (0, 1))  # fmt: skip

    # ------------------------------------------------------------------ the values
    def sparse_matrix(self) -> Tensor:
        """``A`` as the full lowered ``(n, c kh kw)`` matrix (zeros in the dropped columns)."""
        kk = self.kernel_size[0] * self.kernel_size[1]
        full = self.weight.new_zeros(self.out_channels, self.in_channels * kk)
        return full.index_copy(1, self.columns, self.weight[:, self.rank :])

    def first_matrix(self) -> Tensor:
        """``P`` lowered, ``(r, c kh kw)``."""
        if self.first is None:
            return self.weight.new_zeros(0, self.in_channels * self.kernel_size[0]
                                         * self.kernel_size[1])  # fmt: skip
        return self.first.reshape(self.rank, -1)

    def second_matrix(self) -> Tensor:
        """``Q``, ``(n, r)``."""
        return self.weight[:, : self.rank]

    def dense_weight(self) -> Tensor:
        """The equivalent dense conv weight ``A + Q P``, ``(n, c, kh, kw)``."""
        w = self.sparse_matrix() + self.second_matrix() @ self.first_matrix()
        return w.reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def stored_param_count(self) -> int:
        """Stored values: ``r c kh kw + n (r + |K|)`` (+ bias), Ma et al.'s eq. (15) count."""
        n = self.weight.numel() + (0 if self.first is None else self.first.numel())
        return int(n) + (0 if self.bias is None else int(self.bias.numel()))

    def executed_param_count(self) -> int:
        """Weights the forward multiplies (and an export holds): the stored ones in the
        ``"gather"`` form; with the zeros of the ``(n, r + |C|, kh, kw)`` kernel in
        ``"channels"``."""
        if self.form == "gather":
            return self.stored_param_count()
        kk = self.kernel_size[0] * self.kernel_size[1]
        wide = self.out_channels * (self.rank + int(self.channels.numel())) * kk
        first = 0 if self.first is None else int(self.first.numel())
        return wide + first + (0 if self.bias is None else int(self.bias.numel()))

    # ------------------------------------------------------------------ forward
    def _index(self, hp: int, wp: int, ho: int, wo: int, last: bool) -> Tensor:
        """Flat positions in the padded input of every kept column at every output position:
        ``(|K|, ho, wo)`` for NCHW, ``(ho, wo, |K|)`` for channels_last, flattened."""
        key = (hp, wp, ho, wo, int(last), str(self.columns.device))
        tracing = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        if not tracing and key in self._index_cache:
            return self._index_cache[key]
        dev = self.columns.device
        oh = torch.arange(ho, device=dev) * self.stride[0]
        ow = torch.arange(wo, device=dev) * self.stride[1]
        if last:
            c = self.in_channels
            base = self._row * (wp * c) + self._col * c + self._chan
            idx = (oh * (wp * c))[:, None, None] + (ow * c)[None, :, None] + base[None, None, :]
        else:
            base = self._chan * (hp * wp) + self._row * wp + self._col
            idx = base[:, None, None] + (oh * wp)[None, :, None] + ow[None, None, :]
        idx = idx.reshape(-1)
        if not tracing:
            self._index_cache[key] = idx
        return idx

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._index_cache.clear()  # the loaded columns may differ from the cached ones
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Any:
        self._index_cache.clear()  # a move or a cast makes new buffers
        return super()._apply(fn, recurse)

    def _kept(self, x: Tensor, ho: int, wo: int) -> Tensor:
        """``X_K``: ``(B, |K|, ho, wo)``, in ``x``'s memory format."""
        (ph, pw), b, k = self.padding, x.shape[0], int(self.columns.numel())
        xp = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
        hp, wp = xp.shape[-2], xp.shape[-1]
        last = bool(xp.is_contiguous(memory_format=torch.channels_last)) and not bool(
            xp.is_contiguous()
        )
        idx = self._index(hp, wp, ho, wo, last)
        if last:
            flat = xp.permute(0, 2, 3, 1).reshape(b, -1)
            return flat.index_select(1, idx).reshape(b, ho, wo, k).permute(0, 3, 1, 2)
        return xp.reshape(b, -1).index_select(1, idx).reshape(b, k, ho, wo)

    def _kept_by_offset(self, x: Tensor, ho: int, wo: int) -> tuple[Tensor, Tensor]:
        """``X_K`` as the ONNX export runs it: per kernel offset, the kept channels' whole
        planes (one ``Gather`` of contiguous planes) sliced at that offset, concatenated; the
        columns in offset order, and their positions in the stored order (onnxruntime's
        ``Gather`` of single elements is ~10x slower than PyTorch's ``index_select``)."""
        (ph, pw), (sh, sw) = self.padding, self.stride
        xp = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
        chans = self._chan.tolist()  # constants of the exported graph
        groups: dict[tuple[int, int], list[int]] = {}
        for k, key in enumerate(zip(self._row.tolist(), self._col.tolist())):
            groups.setdefault(key, []).append(k)
        parts, order = [], []
        for (i, j), ks in groups.items():
            ch = torch.tensor([chans[k] for k in ks], dtype=torch.long, device=x.device)
            planes = torch.index_select(xp, 1, ch)
            parts.append(
                planes[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
            )
            order += ks
        return torch.cat(parts, 1), torch.tensor(order, dtype=torch.long, device=x.device)

    def forward(self, x: Tensor) -> Tensor:
        parts = []
        if self.first is not None:
            parts.append(F.conv2d(x, self.first, None, self.stride, self.padding, self.dilation))
        if self.form == "channels" and (self.first is not None or self.channels.numel()):
            kh, kw = self.kernel_size
            c = int(self.channels.numel())
            parts.append(torch.index_select(x, 1, self.channels))
            w = self.weight.new_zeros(self.out_channels, (self.rank + c) * kh * kw)
            w = w.index_copy(1, self._wide, self.weight).reshape(self.out_channels, -1, kh, kw)
            s = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
            return F.conv2d(s, w, self.bias, 1, self.padding, self.dilation)
        ho, wo = _out_hw(self, x)
        w = self.weight
        if self.columns.numel() and torch.onnx.is_in_onnx_export():
            kept, order = self._kept_by_offset(x, ho, wo)
            parts.append(kept)
            w = torch.cat([w[:, : self.rank], torch.index_select(w[:, self.rank :], 1, order)], 1)
        elif self.columns.numel():
            parts.append(self._kept(x, ho, wo))
        if not parts:  # no kept column, rank 0: the bias alone
            y = x.new_zeros(x.shape[0], self.out_channels, ho, wo)
            return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)
        s = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
        return F.conv2d(s, w[:, :, None, None], self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"rank={self.rank}, kept={int(self.columns.numel())}, "
            f"channels={int(self.channels.numel())}, form={self.form!r}"
        )


class FusedSparseLowRankLinear(nn.Module):
    r"""Ma et al.'s fully connected layer ``A + Q P`` as one GEMM over ``[P x; x_K]``.

    .. math:: y = [\,Q \mid A_{:,K}\,] \begin{bmatrix} P x \\ x_K \end{bmatrix} + b

    ``first`` is ``P`` (``(r, d)``), ``weight`` is ``[Q | A_K]`` (``(n, r + |K|)``). Stored
    parameters: ``r d + n (r + |K|)`` (+ bias), Ma et al.'s eq. (15) count.

    References:
        Ma et al. 2019, eq. (2), eq. (15), Fig. 2.
    """

    is_compactnn_layer = True
    columns: Tensor

    def __init__(self, sparse: ColumnSparseLinear, lowrank: LowRankLinear | None = None) -> None:
        super().__init__()
        owner = "FusedSparseLowRankLinear"
        _check_branches(sparse, lowrank, (ColumnSparseLinear, LowRankLinear), owner)
        self.in_features, self.out_features = sparse.in_features, sparse.out_features
        self.rank = 0 if lowrank is None else lowrank.rank
        self.register_buffer("columns", sparse.columns.clone())
        _stack(self, sparse, lowrank)

    @classmethod
    def from_module(cls, module: nn.Module) -> FusedSparseLowRankLinear:
        """The fused form of a :class:`SparsePlusLowRank` (column-sparse + low-rank linear) or
        of a lone :class:`ColumnSparseLinear`."""
        sparse, lowrank = _branches(module)
        return cls(sparse, lowrank)  # type: ignore[arg-type]

    def sparse_matrix(self) -> Tensor:
        """``A``, ``(n, d)`` (zeros in the dropped columns)."""
        full = self.weight.new_zeros(self.out_features, self.in_features)
        return full.index_copy(1, self.columns, self.weight[:, self.rank :])

    def first_matrix(self) -> Tensor:
        """``P``, ``(r, d)``."""
        return self.weight.new_zeros(0, self.in_features) if self.first is None else self.first

    def second_matrix(self) -> Tensor:
        """``Q``, ``(n, r)``."""
        return self.weight[:, : self.rank]

    def dense_weight(self) -> Tensor:
        """The equivalent dense weight ``A + Q P``, ``(n, d)``."""
        return self.sparse_matrix() + self.second_matrix() @ self.first_matrix()

    def stored_param_count(self) -> int:
        """Stored values: ``r d + n (r + |K|)`` (+ bias)."""
        n = self.weight.numel() + (0 if self.first is None else self.first.numel())
        return int(n) + (0 if self.bias is None else int(self.bias.numel()))

    def executed_param_count(self) -> int:
        """Weights the forward multiplies: the stored ones (no zeros are held)."""
        return self.stored_param_count()

    def forward(self, x: Tensor) -> Tensor:
        kept = torch.index_select(x, -1, self.columns)
        s = kept if self.first is None else torch.cat([F.linear(x, self.first), kept], -1)
        return F.linear(s, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, kept={int(self.columns.numel())}"
        )


def _pair3(conv: nn.Conv2d) -> tuple[tuple[int, int], ...]:
    return (_pair(conv.stride), _pair(conv.padding), _pair(conv.dilation))  # type: ignore[arg-type]
