"""Exceptions raised by compactnn.

Every error raised on bad user input is a :class:`CompactnnError` (or a subclass), and its
message names the offending layer (dotted path) or parameter and says what to do.
"""

from __future__ import annotations

__all__ = [
    "CompactnnError",
    "ConfigError",
    "DatasetNotFoundError",
    "UnknownNameError",
    "UnsupportedLayerError",
    "InputShapeError",
    "CheckpointError",
    "PlanError",
    "SolverError",
    "InfeasibleError",
    "AccuracyDropError",
    "ExportError",
]


class CompactnnError(Exception):
    """Base class of every error compactnn raises on purpose."""


class ConfigError(CompactnnError, ValueError):
    """A hyper-parameter or option has an invalid value."""


class UnknownNameError(CompactnnError, KeyError):
    """An unknown registry name (model, dataset, method, penalty, layer)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class DatasetNotFoundError(CompactnnError, FileNotFoundError):
    """A dataset's files are missing; the message says how to install them."""


class UnsupportedLayerError(CompactnnError, TypeError):
    """A layer cannot be handled by the requested operation."""


class InputShapeError(CompactnnError, ValueError):
    """An input tensor does not have the shape a model or function expects."""


class CheckpointError(CompactnnError, ValueError):
    """A checkpoint file is missing, corrupt or does not match the model."""


class PlanError(CompactnnError, ValueError):
    """A compression plan is inadmissible for the model it is applied to."""


class SolverError(CompactnnError, RuntimeError):
    """A solver failed (did not converge, produced NaNs, bad data)."""


class InfeasibleError(SolverError):
    """The optimization problem is infeasible (e.g. epsilon too small)."""


class AccuracyDropError(CompactnnError, RuntimeError):
    """A compression run lost more accuracy on validation than allowed (or a layer collapsed).

    The finished result is kept in ``.result`` so nothing computed is lost.
    """

    def __init__(self, message: str, *, result: object = None) -> None:
        super().__init__(message)
        self.result = result


class ExportError(CompactnnError, RuntimeError):
    """Exporting a model (ONNX, TorchScript) failed or its outputs differ from PyTorch's."""


class DistributedError(CompactnnError, RuntimeError):
    """Ranks of a torch.distributed run disagree (a tensor or a decision differs across ranks),
    or the process group / loader cannot be used for data-parallel training."""
