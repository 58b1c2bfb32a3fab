"""Ship a compressed model: write every artifact into the result directory and measure it.

:func:`ship` writes ``model.onnx``, ``model.pt`` and the compact checkpoint, checks each
against the PyTorch model, and times the deployed model (eager NCHW, eager channels_last for
images, onnxruntime, optionally ``torch.compile``) in turns with the original on real batches
(:func:`~compactnn.export.runtimes.time_runtimes`); the record it returns is the ``deploy``
entry of ``report.json``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from compactnn.export._common import PARITY_TOL, _as_batch, _parity, _reference
from compactnn.export.checkpoint import load, save_checkpoint
from compactnn.export.forms import compiled_form
from compactnn.export.onnx import to_onnx
from compactnn.export.report import SPEEDUP_RUNTIMES
from compactnn.export.runtimes import CHANNELS_LAST, EAGER, ORT, RuntimeTimes, time_runtimes
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


def _latency_rows(
    got: RuntimeTimes,
    samples: Tensor,
    shape: tuple[int, ...],
    batch_sizes: Sequence[int],
    threads: int,
    compiled: nn.Module | None,
) -> dict[str, Any]:
    """The latency table of the ``deploy`` record, one row per batch size: every runtime's
    timings of ``got`` (the model and the original timed in turns) under the keys of
    :data:`SPEEDUP_RUNTIMES`, the model under ``torch.compile`` (alone) and the fastest."""
    rows: dict[str, Any] = {}
    for bs in batch_sizes:
        row: dict[str, Any] = {}
        for rt, (orig, comp) in SPEEDUP_RUNTIMES.items():
            res = got.latency.get(rt, {}).get(int(bs), {})
            for key, name in ((orig, "original"), (comp, "model")):
                if name in res:
                    row[key] = _lat(res[name])
        if compiled is not None:
            row["torch.compile"] = _lat(
                measure_latency(
                    compiled,
                    shape,
                    batch_size=bs,
                    threads=threads,
                    inputs=real_batch([samples], bs),
                )
            )
        deployed = {k: v for k, v in row.items() if not k.endswith("_original")}
        if deployed:
            row["fastest"] = min(deployed, key=lambda k: deployed[k]["median_ms"])
        rows[f"batch {bs}"] = row
    return rows


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
    rounds: int = 5,
) -> dict[str, Any]:
    """Write model.onnx, model.pt and the compact checkpoint into ``out`` and measure them.

    Args:
        model / plan: the compressed model and its plan.
        out: the result directory.
        samples: real input samples (parity checks and latency).
        input_shape: per-sample input shape.
        original: the uncompressed model: timed beside it, in turns, in every runtime.
        fresh: a fresh instance of the original architecture to check that the checkpoint
            restores (``compactnn.load``) to the same outputs.
        sparse: export form of sparse layers.
        threads: torch / onnxruntime intra-op threads during timing.
        batch_sizes: batch sizes timed.
        repeats / rounds: timed runs of each model in each runtime, spread over ``rounds``
            rounds in which the model and the original take turns
            (:func:`~compactnn.export.runtimes.time_runtimes`).
        compile: also time the export form under ``torch.compile`` (:func:`compiled_form`);
            where it cannot work a warning says why and the row is left out.

    Returns:
        The ``deploy`` record of ``report.json``: artifacts (bytes, parity), latency per
        backend and batch size, the fastest backend, per-layer speed checks.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples = _as_batch(samples, "ship: 'samples'")
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
    runtimes = [EAGER, *([CHANNELS_LAST] if samples.dim() == 4 else [])]
    onnx_files = {}
    if "onnx" in formats and (out / "model.onnx").is_file():
        runtimes.append(ORT)
        onnx_files["model"] = out / "model.onnx"
    # the original beside the model in every runtime, timed in turns: one speed-up per runtime
    got = time_runtimes(
        {"model": model} if original is None else {"original": original, "model": model},
        samples,
        batch_sizes=batch_sizes,
        runtimes=runtimes,
        onnx_files=onnx_files,
        threads=threads,
        rounds=rounds,
        warmup=2,
        repeats=max(1, -(-repeats // rounds)),
    )
    for rt, errs in got.errors.items():
        if rt == ORT and set(errs) == {"original"}:
            rec["original_onnx_error"] = errs["original"]
        else:
            rec.setdefault("latency_errors", {})[rt] = errs
    rec["latency"] = _latency_rows(got, samples, shape, batch_sizes, threads, compiled)
    rec["latency_protocol"] = got.protocol
    rec["latency_threads"] = threads
    rec["latency_inputs"] = "real samples"
    rows = layer_speed(model, real_batch([samples], max(batch_sizes)), threads=threads)
    rec["layers"] = rows
    rec["slower_than_dense"] = [r["name"] for r in rows if r["slower"]]
    rec["latency_seconds"] = time.perf_counter() - t0
    return rec
