"""Ship a compressed model: write every artifact into the result directory and measure it.

:func:`ship` writes ``model.onnx``, ``model.pt`` and the compact checkpoint, checks each
against the PyTorch model, and times the deployed model (eager NCHW, eager channels_last for
images, onnxruntime, optionally ``torch.compile``) beside the original on real batches; the record it returns is the
``deploy`` entry of ``report.json``.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from compactnn.errors import ExportError
from compactnn.export._common import PARITY_TOL, _as_batch, _parity, _reference
from compactnn.export.checkpoint import load, save_checkpoint
from compactnn.export.forms import compiled_form
from compactnn.export.onnx import onnx_latency, to_onnx
from compactnn.export.speed import layer_speed
from compactnn.export.torchscript import to_torchscript
from compactnn.metrics import LatencyResult, measure_latency, real_batch

EXPORT_FORMATS = ("onnx", "torchscript")


def _lat(res: LatencyResult) -> dict[str, Any]:
    return {
        "median_ms": res.median_ms,
        "p10_ms": res.p10_ms,
        "p90_ms": res.p90_ms,
        "per_sample_ms": res.per_sample_ms,
        "repeats": res.repeats,
    }


def _write_artifacts(
    model: nn.Module,
    plan: Any,
    out: Path,
    samples: Tensor,
    input_shape: Sequence[int],
    *,
    fresh: nn.Module | None,
    sparse: str,
    formats: Sequence[str],
) -> dict[str, Any]:
    """``model.onnx`` and ``model.pt`` (those of ``formats``) and the compact checkpoint in
    ``out``, each checked against the PyTorch model on ``samples``: the records by file."""
    example = samples[:2]
    artifacts: dict[str, Any] = {}
    if "onnx" in formats:
        artifacts["model.onnx"] = to_onnx(
            model, out / "model.onnx", example, samples=samples, sparse=sparse
        )
    if "torchscript" in formats:
        artifacts["model.pt"] = to_torchscript(
            model, out / "model.pt", example, samples=samples, sparse=sparse
        )
    ck = save_checkpoint(model, plan, out, input_shape=input_shape)
    ck["format"] = "compact checkpoint (compactnn.load(DIR, model=...))"
    if fresh is not None:
        back = load(out, model=fresh)
        with torch.no_grad():
            ck["max_abs_diff"] = float((back(samples) - _reference(model, samples)).abs().max())
        _parity(ck["max_abs_diff"], PARITY_TOL, "restored checkpoint", out)
    artifacts["checkpoint"] = ck
    return artifacts


class _ChannelsLast(nn.Module):
    """``model`` run in the channels_last (NHWC) memory format, its NCHW input converted on the
    way in: eager PyTorch deployed in that layout, the conversion paid in every call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Any:
        return self.model(x.contiguous(memory_format=torch.channels_last))


def _latency_row(
    model: nn.Module,
    x: Tensor,
    bs: int,
    shape: tuple[int, ...],
    *,
    threads: int,
    original: nn.Module | None,
    original_onnx: Path | None,
    onnx_file: Path | None,
    compiled: nn.Module | None,
    channels_last: dict[str, nn.Module],
) -> dict[str, Any]:
    """One batch's row of the latency table: every runtime timed on the real batch ``x``
    (``onnx_file`` where it was written; ``channels_last``: row key -> the model or the original
    in that layout) at batch size ``bs``, and the fastest deployed one."""
    row: dict[str, Any] = {}
    if original is not None:
        row["eager_original"] = _lat(
            measure_latency(original, shape, batch_size=bs, threads=threads, inputs=x)
        )
    row["eager"] = _lat(measure_latency(model, shape, batch_size=bs, threads=threads, inputs=x))
    if original_onnx is not None:
        row["onnxruntime_original"] = _lat(onnx_latency(original_onnx, x, threads=threads))
    if onnx_file is not None and onnx_file.is_file():
        row["onnxruntime"] = _lat(onnx_latency(onnx_file, x, threads=threads))
    for key, m in channels_last.items():
        row[key] = _lat(measure_latency(m, shape, batch_size=bs, threads=threads, inputs=x))
    if compiled is not None:
        row["torch.compile"] = _lat(
            measure_latency(compiled, shape, batch_size=bs, threads=threads, inputs=x)
        )
    deployed = {k: v for k, v in row.items() if not k.endswith("_original")}
    row["fastest"] = min(deployed, key=lambda k: deployed[k]["median_ms"])
    return row


def ship(
    model: nn.Module,
    plan: Any,
    out: str | Path,
    samples: Tensor,
    *,
    input_shape: Sequence[int],
    original: nn.Module | None = None,
    fresh: nn.Module | None = None,
    sparse: str = "dense",
    threads: int = 1,
    batch_sizes: Sequence[int] = (1, 100),
    repeats: int = 30,
    formats: Sequence[str] = EXPORT_FORMATS,
    compile: bool = False,
) -> dict[str, Any]:
    """Write model.onnx, model.pt and the compact checkpoint into ``out`` and measure them.

    Args:
        model / plan: the compressed model and its plan.
        out: the result directory.
        samples: real input samples (parity checks and latency).
        input_shape: per-sample input shape.
        original: the uncompressed model: its eager latency is measured beside.
        fresh: a fresh instance of the original architecture to check that the checkpoint
            restores (``compactnn.load``) to the same outputs.
        sparse: export form of sparse layers.
        threads: torch / onnxruntime intra-op threads during timing.
        batch_sizes: batch sizes timed.
        compile: also time the export form under ``torch.compile`` (:func:`compiled_form`);
            where it cannot work a warning says why and the row is left out.

    Returns:
        The ``deploy`` record of ``report.json``: artifacts (bytes, parity), latency per
        backend and batch size, the fastest backend, per-layer speed checks.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples = _as_batch(samples, "ship: 'samples'")
    example = samples[:2]
    rec: dict[str, Any] = {"artifacts": {}, "latency": {}, "sparse_form": sparse}
    t0 = time.perf_counter()
    rec["artifacts"] = _write_artifacts(
        model, plan, out, samples, input_shape, fresh=fresh, sparse=sparse, formats=formats
    )
    rec["export_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    shape = tuple(int(s) for s in input_shape)
    compiled = None
    if compile:
        compiled, rec["torch_compile"] = compiled_form(model, samples, sparse=sparse)
    tmp = tempfile.TemporaryDirectory(prefix="compactnn-original-")
    original_onnx = None  # the original under onnxruntime too: one speed-up per runtime
    if original is not None and "onnx" in formats and (out / "model.onnx").is_file():
        try:
            to_onnx(original, Path(tmp.name) / "original.onnx", example, samples=samples)
            original_onnx = Path(tmp.name) / "original.onnx"
        except ExportError as exc:
            rec["original_onnx_error"] = str(exc)
    channels_last: dict[str, nn.Module] = {}  # one copy each for every batch size
    if samples.dim() == 4:  # images: eager PyTorch in channels_last too, often faster on CPUs
        if original is not None:
            channels_last["channels_last_original"] = _ChannelsLast(original)
        channels_last["channels_last"] = _ChannelsLast(model)
    for bs in batch_sizes:
        rec["latency"][f"batch {bs}"] = _latency_row(
            model,
            real_batch([samples], bs),
            bs,
            shape,
            threads=threads,
            original=original,
            original_onnx=original_onnx,
            onnx_file=out / "model.onnx" if "onnx" in formats else None,
            compiled=compiled,
            channels_last=channels_last,
        )
    tmp.cleanup()
    rec["latency_threads"] = threads
    rec["latency_inputs"] = "real samples"
    rows = layer_speed(model, real_batch([samples], max(batch_sizes)), threads=threads)
    rec["layers"] = rows
    rec["slower_than_dense"] = [r["name"] for r in rows if r["slower"]]
    rec["latency_seconds"] = time.perf_counter() - t0
    return rec
