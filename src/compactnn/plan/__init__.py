"""Compression plans: the contract between solvers/criteria and :mod:`compactnn.surgery`.

A :class:`CompressionPlan` is an ordered list of actions plus free-form JSON metadata. Actions
are applied in order, each to the model produced by the previous one, so indices and shapes in
an action refer to the layer *as it is at that point* (after earlier cuts). Layers are named by
their dotted path in ``model.named_modules()``.

Actions:

- :class:`KeepOutputs` -- keep only some output channels (Conv2d) / neurons (Linear); every
  coupled layer follows (BN, consumers' inputs, residual partners, concat, flatten -> linear
  spatial blocks, depthwise / grouped convs).
- :class:`KeepInputs` -- keep only some input channels / features of a layer (column sparsity);
  the producers' outputs that feed only this layer are removed too, otherwise an input selection
  is inserted in front of the layer.
- :class:`LowRank` -- replace a layer by its rank-``r`` factorization.
- :class:`SparseLowRank` -- replace a layer by sparse + low-rank parallel branches.
- :class:`SetWeights` -- overwrite a layer's weight and bias (optionally as a sparse COO layer).
- :class:`KernelSparse` -- replace a conv by a kernel-sparse conv (zero kernels W_ij not stored)
  run in a given form (dense / grouped by input support / sparse im2col GEMM).
- :class:`FoldBatchNorm` -- fold an inference-mode BatchNorm into the Conv2d / Linear before it
  (the BN becomes ``nn.Identity``), so that a layer-local method sees ``conv -> BN -> ReLU`` as
  one affine map followed by a ReLU.
- :class:`GapHead` -- SSR "-GAP" head: the FC classifier is replaced by global average pooling.
- :class:`SetState` -- load every parameter and buffer of the compressed model (strict keys and
  shapes), so that the plan replays exactly on a fresh, untrained instance of the architecture.

The actions live in :mod:`~compactnn.plan.actions`, the plan and its file format in
:mod:`~compactnn.plan.document`; every name is importable from :mod:`compactnn.plan`.

Plans are saved as a JSON file (actions, meta, tensor keys) next to a ``.safetensors`` file.
A plan is applied by :func:`compactnn.surgery.apply` (``surgery.apply(plan, model)``); this
module does not import :mod:`compactnn.surgery` (imports point one way: plan -> surgery).

References:
    Lin et al. 2019 (SSR), Sec. III-E and Table I ("-GAP" variants);
    Ma et al. 2019, Fig. 2; Papadimitriou & Jain 2021 (DDLR), eq. (1).
"""

from __future__ import annotations

from compactnn.plan.actions import LAYER_STATE_ACTIONS as LAYER_STATE_ACTIONS  # export reads it
from compactnn.plan.actions import (
    Action,
    FoldBatchNorm,
    GapHead,
    KeepInputs,
    KeepOutputs,
    KernelSparse,
    LowRank,
    SetState,
    SetWeights,
    SparseLowRank,
)
from compactnn.plan.document import CompressionPlan, check_plan_doc, decode_action

__all__ = [
    "Action",
    "decode_action",
    "KeepOutputs",
    "KeepInputs",
    "LowRank",
    "SparseLowRank",
    "SetWeights",
    "KernelSparse",
    "GapHead",
    "FoldBatchNorm",
    "SetState",
    "CompressionPlan",
    "check_plan_doc",
]
