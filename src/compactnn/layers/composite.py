"""Layers that wrap other layers: :class:`SparsePlusLowRank` (``y = S x + L x``, Ma et al.'s two
parallel branches) and :class:`SelectInputs` (``layer(x[:, index])`` in front of a layer whose
inputs were cut)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from compactnn.errors import ConfigError
from compactnn.layers.base import stored_param_count


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
