"""Running a model for a measurement: an example input of the model's dtype and device, the
device sync before a timer stops, eval mode without gradients, one hooked forward pass, and shape
mismatches reported as :class:`~compactnn.errors.InputShapeError`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from compactnn.errors import InputShapeError
from compactnn.structure import module_device


def _example_input(model: nn.Module, input_shape: Sequence[int], batch_size: int) -> torch.Tensor:
    p = next(model.parameters(), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    return torch.zeros((batch_size, *input_shape), device=module_device(model), dtype=dtype)


def _sync(device: torch.device) -> None:
    """Wait for the device's queued kernels (CUDA runs them asynchronously), so a timer stopped
    after it measures the forward pass, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _eval_no_grad(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _run_hooked(model: nn.Module, handles: Sequence[Any], inputs: Any) -> None:
    """One forward pass of ``model`` on ``inputs`` in eval mode without gradients (the mode is
    restored), for the hooks ``handles`` registered on it; the hooks are removed afterwards, even
    if the forward raises."""
    try:
        with _eval_no_grad(model):
            model(inputs)
    finally:
        for h in handles:
            h.remove()


def _run_checked(model: nn.Module, x: torch.Tensor) -> Any:
    try:
        return model(x)
    except InputShapeError:
        raise
    except RuntimeError as exc:  # shape mismatches surface as RuntimeError in torch
        raise InputShapeError(
            f"{type(model).__name__} cannot run on an input of shape {tuple(x.shape)} "
            f"({exc}). Pass the per-sample input shape the model expects, e.g. (1, 28, 28)."
        ) from exc
