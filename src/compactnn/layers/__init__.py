"""Deployable compressed layers produced by :mod:`compactnn.surgery`.

Every layer here is a plain :class:`torch.nn.Module` built from standard ops, traceable by
``torch.fx``, trainable (the sparsity pattern / rank is held fixed, the values are parameters),
and carries ``is_compactnn_layer = True`` so :mod:`compactnn.metrics` lists it as one layer.
One module per layer family:

- :mod:`~compactnn.layers.lowrank`: :class:`LowRankLinear` -- ``y = B (A x) + b`` (rank ``r``),
  DDLR / PGT / SLR low-rank part; :class:`LowRankConv2d` -- ``k x k`` conv to ``r`` channels,
  then ``1 x 1`` conv to ``n``.
- :mod:`~compactnn.layers.sparse`: :class:`SparseLinear`, :class:`SparseConv2d` -- l1-sparse
  weights stored in COO format.
- :mod:`~compactnn.layers.columns`: :class:`ColumnSparseLinear`, :class:`ColumnSparseConv2d` --
  whole zero columns dropped (gather + smaller GEMM, channel drop, or dense; SLR's sparse branch).
- :mod:`~compactnn.layers.kernels`: :class:`KernelSparseConv2d` -- whole zero kernels W_ij not
  stored (Kiaee et al.); dense, grouped-by-input-support or CSR im2col forms.
- :mod:`~compactnn.layers.composite`: :class:`SparsePlusLowRank` -- ``y = S x + L x + b``: Ma et
  al.'s two parallel branches; :class:`SelectInputs` -- ``layer(x[:, index])`` in front of a
  layer whose inputs were cut.
- :mod:`~compactnn.layers.fused`: :class:`FusedSparseLowRankConv2d`,
  :class:`FusedSparseLowRankLinear` -- SLR's layer ``A + Q P`` as one GEMM of ``[Q | A_K]`` over
  ``[P x; x_K]`` (the kept im2col rows gathered, never the full im2col).
- :mod:`~compactnn.layers.base`: :func:`stored_param_count` -- the uniform parameter count the
  metrics use -- and the argument checks the families share.

The public layer classes keep ``compactnn.layers`` as their ``__module__``: a whole model saved with
``torch.save`` (pickle) and the documentation name them by this path, which does not change when
the files of the package are rearranged.

References:
    Papadimitriou & Jain 2021 (DDLR), eq. (1)-(4) and Sec. 4 (Net-Trim counted as 3 x nnz);
    Ma et al. 2019, Sec. 3 and Fig. 2 (sparse + low-rank branches summed).
"""

from __future__ import annotations

from compactnn.layers.base import stored_param_count
from compactnn.layers.columns import COLUMN_FORMS, ColumnSparseConv2d, ColumnSparseLinear
from compactnn.layers.composite import SelectInputs, SparsePlusLowRank
from compactnn.layers.fused import FUSED_FORMS, FusedSparseLowRankConv2d, FusedSparseLowRankLinear
from compactnn.layers.kernels import KERNEL_FORMS, KernelSparseConv2d, support_groups
from compactnn.layers.lowrank import LowRankConv2d, LowRankLinear
from compactnn.layers.sparse import SparseConv2d, SparseLinear
from compactnn.layers.sparse import _SparseBase as _SparseBase  # surgery tells COO layers by it

__all__ = [
    "LowRankLinear",
    "LowRankConv2d",
    "SparseLinear",
    "SparseConv2d",
    "SparsePlusLowRank",
    "ColumnSparseLinear",
    "ColumnSparseConv2d",
    "COLUMN_FORMS",
    "FusedSparseLowRankConv2d",
    "FusedSparseLowRankLinear",
    "FUSED_FORMS",
    "SelectInputs",
    "stored_param_count",
    "KernelSparseConv2d",
    "KERNEL_FORMS",
    "support_groups",
]

for _public in (
    LowRankLinear,
    LowRankConv2d,
    SparseLinear,
    SparseConv2d,
    SparsePlusLowRank,
    ColumnSparseLinear,
    ColumnSparseConv2d,
    FusedSparseLowRankConv2d,
    FusedSparseLowRankLinear,
    SelectInputs,
    KernelSparseConv2d,
):
    _public.__module__ = __name__
del _public
