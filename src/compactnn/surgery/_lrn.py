"""LocalResponseNorm after a channel cut, exactly: the removed channels stay zero "holes"."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HoleLocalResponseNorm", "cut_lrn"]


class HoleLocalResponseNorm(nn.Module):
    """``LocalResponseNorm`` over the original ``width`` channels, the missing ones zero.

    LRN normalises channel ``c`` by its neighbours ``c - size/2 .. c + size/2``; removing a
    channel would shift every neighbourhood. This module scatters its ``len(positions)`` input
    channels back to their original ``positions`` (zeros elsewhere), applies the original LRN and
    gathers them again: the result equals the original LRN with the removed channels zero.
    """

    positions: Tensor

    def __init__(
        self, size: int, alpha: float, beta: float, k: float, positions: Sequence[int], width: int
    ) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k, self.width = size, alpha, beta, k, int(width)
        self.register_buffer("positions", torch.as_tensor(list(positions), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        full = x.new_zeros((x.shape[0], self.width, *x.shape[2:]))
        full = full.index_copy(1, self.positions, x)
        y = F.local_response_norm(full, self.size, self.alpha, self.beta, self.k)
        return torch.index_select(y, 1, self.positions)

    def extra_repr(self) -> str:
        return (
            f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, "
            f"channels={len(self.positions)} of {self.width}"
        )


def cut_lrn(m: nn.Module, removed: set[int], width: int) -> HoleLocalResponseNorm:
    """The module replacing LRN ``m`` (or a hole LRN) once its input channels ``removed`` (of
    ``width``, the current input width) go."""
    if isinstance(m, HoleLocalResponseNorm):
        pos = [int(p) for i, p in enumerate(m.positions.tolist()) if i not in removed]
        return HoleLocalResponseNorm(m.size, m.alpha, m.beta, m.k, pos, m.width)
    pos = [i for i in range(width) if i not in removed]
    return HoleLocalResponseNorm(m.size, m.alpha, m.beta, m.k, pos, width)
