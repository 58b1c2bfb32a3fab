"""Kernel-sparse convolution: :class:`KernelSparseConv2d` stores only the non-zero kernels
``W_ij`` (Kiaee et al.) and runs in one of :data:`KERNEL_FORMS` (dense, grouped by input support
with :func:`support_groups`, or CSR im2col)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compactnn._validation import check_int
from compactnn.errors import ConfigError
from compactnn.layers.base import _check_tensor, _out_hw, _pair, _register_bias
from compactnn.layers.sparse import _coo_conv

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
        _register_bias(self, bias)
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
            stride=_pair(conv.stride), padding=_pair(conv.padding), dilation=_pair(conv.dilation),
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
