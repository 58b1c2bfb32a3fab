"""What the exporters share: the parity tolerance, the checks of input batches, the PyTorch
reference output, the parity check and file sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from compactnn.errors import ExportError
from compactnn.metrics import _eval_no_grad

PARITY_TOL = 1e-4


def file_bytes(path: str | Path) -> int:
    """Size of a file on disk in bytes."""
    return int(Path(path).stat().st_size)


def _as_batch(x: Any, what: str) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() < 2 or not x.is_floating_point():
        raise ExportError(
            f"{what} must be a floating-point batch tensor (batch, *input_shape). Got "
            f"{type(x).__name__ if not isinstance(x, Tensor) else tuple(x.shape)}."
        )
    return x.detach().to("cpu", torch.float32)


def _reference(model: nn.Module, x: Tensor) -> Tensor:
    with _eval_no_grad(model):
        out = model(x)
    if not isinstance(out, Tensor):
        raise ExportError(
            f"export supports models with one tensor output; {type(model).__name__} returned "
            f"{type(out).__name__}."
        )
    return out


def _parity(diff: float, tol: float, fmt: str, path: Path) -> None:
    if not diff <= tol:  # also catches NaN
        raise ExportError(
            f"The {fmt} model {path} differs from the PyTorch model by max |delta| = {diff:.3g} "
            f"> {tol:g} on the check samples; try sparse='dense' or report this model."
        )
