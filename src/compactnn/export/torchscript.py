"""TorchScript: ``torch.jit.trace`` of the export form, saved, reloaded and checked for parity
on a batch size other than the traced one."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from compactnn.errors import ExportError
from compactnn.export._common import PARITY_TOL, _as_batch, _parity, _reference, file_bytes
from compactnn.export.forms import export_form


def to_torchscript(
    model: nn.Module,
    path: str | Path,
    example: Tensor,
    *,
    samples: Tensor | None = None,
    sparse: str = "dense",
    tol: float = PARITY_TOL,
) -> dict[str, Any]:
    """Trace the export form with ``torch.jit.trace``, save it, reload it and check parity.

    The saved file runs with ``torch.jit.load`` alone (no compactnn import). Parity is checked
    on ``samples`` (default: ``example`` plus one more row, so the batch size differs from the
    traced one).

    Raises:
        ExportError: tracing failed or the reloaded module differs by more than ``tol``.
    """
    example = _as_batch(example, "to_torchscript: 'example'")
    if samples is None:
        samples = torch.cat([example, example[:1]])
    samples = _as_batch(samples, "to_torchscript: 'samples'")
    form = export_form(model, sparse=sparse).float().cpu()  # the artifact: a CPU copy
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(form, (example,), check_trace=False)
            torch.jit.save(traced, str(path))
            loaded = torch.jit.load(str(path))
            got = loaded(samples)
    except Exception as exc:  # noqa: BLE001 - any tracer failure
        raise ExportError(
            f"TorchScript export of {type(model).__name__} to {path} failed: {exc}"
        ) from exc
    diff = float((got - _reference(model.float(), samples)).abs().max())
    _parity(diff, tol, "TorchScript", path)
    return {
        "format": "torchscript",
        "path": path.name,
        "bytes": file_bytes(path),
        "method": "trace",
        "sparse_form": sparse,
        "max_abs_diff": diff,
        "check_samples": int(samples.shape[0]),
    }
