"""A model and its baseline timed in turns in every runtime: the speed-up, runtime by runtime.

:func:`time_runtimes` times several models (a compressed model and its original) interleaved
(:func:`compactnn.metrics.interleave`: alternating rounds, the order reversed every other round)
in eager PyTorch (NCHW), eager PyTorch in channels_last (the models and the input converted
once, for 4-D image inputs) and onnxruntime (one session per model, built once), at each batch
size; a runtime a model cannot run in (an ONNX export that fails) is recorded with its error.
:func:`speedup_table` turns the times of a model and its baseline into the speed-up in each
runtime (the baseline's time over the model's, both in the SAME runtime) and, given the MACs
reduction, the ratio speed-up / reduction. :func:`ship` times the CLI's report with it.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from compactnn._validation import check_int
from compactnn.errors import ConfigError
from compactnn.export._common import _as_batch
from compactnn.export.onnx import ort_timer, to_onnx
from compactnn.metrics import LatencyResult, eager_timer, interleave, real_batch
from compactnn.structure import module_device

EAGER, CHANNELS_LAST, ORT = "eager", "eager channels_last", "onnxruntime"
#: every runtime :func:`time_runtimes` knows, in the order it times them
RUNTIMES = (EAGER, CHANNELS_LAST, ORT)
#: one round of one model at one batch size -> its milliseconds (built once, called per round)
_Timer = Callable[[], list[float]]


@dataclass(frozen=True)
class RuntimeTimes:
    """What :func:`time_runtimes` measured: ``latency[runtime][batch][name]`` and, for a model
    a runtime could not run, ``errors[runtime][name]`` (its exception, as text)."""

    latency: dict[str, dict[int, dict[str, LatencyResult]]] = field(default_factory=dict)
    errors: dict[str, dict[str, str]] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)


def channels_last(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its 4-D weights in the channels_last (NHWC) memory format."""
    return copy.deepcopy(model).to(memory_format=torch.channels_last)


def _eager_timers(
    models: Mapping[str, nn.Module], batches: Mapping[int, Tensor], nhwc: bool, kw: dict[str, int]
) -> dict[int, dict[str, _Timer]]:
    """Per batch, one eager timer per model: NCHW, or with ``nhwc`` the model and the batch
    converted to channels_last once, here (not in every call)."""
    if nhwc:
        models = {k: channels_last(m) for k, m in models.items()}
        batches = {b: x.contiguous(memory_format=torch.channels_last) for b, x in batches.items()}
    return {
        b: {k: eager_timer(m, x.to(module_device(m)), **kw) for k, m in models.items()}
        for b, x in batches.items()
    }


def _ort_timers(
    models: Mapping[str, nn.Module],
    batches: Mapping[int, Tensor],
    onnx_files: Mapping[str, str | Path],
    tmp: Path,
    errors: dict[str, str],
    kw: dict[str, int],
) -> dict[int, dict[str, _Timer]]:
    """Per batch, one onnxruntime timer per model that exports (``onnx_files[name]`` when given,
    else exported here into ``tmp``); a model that does not export or run goes to ``errors``."""
    out: dict[int, dict[str, _Timer]] = {b: {} for b in batches}
    example = next(iter(batches.values()))[:2]
    for i, (name, model) in enumerate(models.items()):
        try:
            path = onnx_files.get(name)
            if path is None:
                path = tmp / f"model{i}.onnx"
                to_onnx(model, path, example)
            for b, x in batches.items():
                out[b][name] = ort_timer(path, x, **kw)
        except Exception as exc:  # noqa: BLE001 - any exporter / runtime failure is recorded
            errors[name] = f"{type(exc).__name__}: {exc}"
            for per in out.values():
                per.pop(name, None)
    return out


def time_runtimes(
    models: Mapping[str, nn.Module],
    inputs: Tensor,
    *,
    batch_sizes: Sequence[int] = (1, 100),
    runtimes: Sequence[str] | None = None,
    onnx_files: Mapping[str, str | Path] | None = None,
    threads: int = 1,
    rounds: int = 5,
    warmup: int = 2,
    repeats: int = 10,
) -> RuntimeTimes:
    """Time ``models`` interleaved in each runtime at each batch size, on real inputs.

    For every (runtime, batch size) the models are timed in ``rounds`` rounds of ``warmup``
    untimed and ``repeats`` timed runs each, in turns, the order reversed every other round
    (:func:`compactnn.metrics.interleave`): the load of the machine changing falls on all
    alike. Runtimes: ``"eager"`` (NCHW), ``"eager channels_last"`` (models and input converted
    once; 4-D inputs only), ``"onnxruntime"`` (one session per model, ``threads`` intra-op
    threads; ``onnx_files[name]`` is timed where given, else the model is exported to ONNX).
    Eager runs with ``threads`` torch threads. No model is modified. A model that channels_last
    or onnxruntime cannot run is recorded in ``errors``; one that eager NCHW cannot run raises
    (:class:`~compactnn.errors.InputShapeError` for inputs of the wrong shape).

    Args:
        models: name -> model (eval mode is used and restored).
        inputs: a batch of real samples; each batch size takes its first rows (cycled if fewer).
        runtimes: default: all of :data:`RUNTIMES` that apply (channels_last for 4-D inputs).

    Returns:
        :class:`RuntimeTimes`: latency per runtime, batch size and model; errors per runtime of
        the models it could not run (the others are still timed).
    """
    fn = "time_runtimes"
    inputs = _as_batch(inputs, f"{fn}: 'inputs'")
    for v, n in ((rounds, "rounds"), (threads, "threads"), (repeats, "repeats")):
        check_int(v, n, fn, min_value=1)
    check_int(warmup, "warmup", fn, min_value=0)
    for b in batch_sizes:
        check_int(b, "batch_sizes", fn, min_value=1)
    if not models:
        raise ConfigError(f"{fn}: 'models' is empty; give at least one model to time.")
    image = inputs.dim() == 4
    runtimes = tuple(runtimes or (r for r in RUNTIMES if image or r != CHANNELS_LAST))
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise ConfigError(f"{fn}: unknown runtime(s) {unknown}; choose among {list(RUNTIMES)}.")
    if CHANNELS_LAST in runtimes and not image:
        raise ConfigError(
            f"{fn}: '{CHANNELS_LAST}' needs 4-D image inputs (N, C, H, W); got inputs of shape "
            f"{tuple(inputs.shape)}. Leave it out of 'runtimes'."
        )
    batches = {int(b): real_batch([inputs], int(b)).cpu() for b in batch_sizes}
    kw = {"threads": threads, "warmup": warmup, "repeats": repeats}
    out = RuntimeTimes(protocol={"rounds": rounds, "warmup": warmup, "repeats": repeats,
                                 "threads": threads, "interleaved": True})  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="compactnn-runtimes-") as tmp:
        for rt in runtimes:
            errors: dict[str, str] = {}
            try:
                if rt == ORT:
                    timers = _ort_timers(models, batches, onnx_files or {}, Path(tmp), errors, kw)
                else:
                    timers = _eager_timers(models, batches, rt == CHANNELS_LAST, kw)
                out.latency[rt] = {
                    b: _results(interleave(rounds, per), b, threads, warmup)
                    for b, per in timers.items()
                    if per
                }
            except Exception as exc:  # noqa: BLE001 - a runtime that fails is recorded
                if rt == EAGER:  # the reference: a model that cannot run at all is bad input
                    raise
                errors.update(dict.fromkeys(models, f"{type(exc).__name__}: {exc}"))
                out.latency.pop(rt, None)
            if errors:
                out.errors[rt] = errors
    return out


def _results(
    times: Mapping[str, list[float]], batch: int, threads: int, warmup: int
) -> dict[str, LatencyResult]:
    return {
        k: LatencyResult.from_times(t, batch_size=batch, threads=threads, warmup=warmup)
        for k, t in times.items()
    }


def speedup_table(
    model: nn.Module,
    baseline: nn.Module,
    inputs: Tensor,
    *,
    macs_reduction: float | None = None,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """``model`` and ``baseline`` timed interleaved in each runtime (:func:`time_runtimes`,
    whose keyword arguments ``kwargs`` takes), and the speed-up in each.

    Args:
        macs_reduction: the baseline's MACs over the model's (4.0 for a model with 25 % of the
            MACs); given, every entry also has ``ratio`` = speed-up / reduction (1.0: the
            latency fell as much as the MACs).

    Returns:
        ``{runtime: {"batch N": {"base_ms", "model_ms", "speedup", "ratio"}}}``: medians in ms,
        speed-up = the baseline's median over the model's in the SAME runtime; a runtime that
        failed for either model: ``{runtime: {"error": "..."}}``.
    """
    if macs_reduction is not None and not macs_reduction > 0:
        raise ConfigError(f"speedup_table: 'macs_reduction' must be > 0; got {macs_reduction!r}.")
    got = time_runtimes({"base": baseline, "model": model}, inputs, **kwargs)
    return speedups_of(got, "base", "model", macs_reduction)


def speedups_of(
    got: RuntimeTimes, base: str, model: str, macs_reduction: float | None = None
) -> dict[str, dict[str, Any]]:
    """The speed-up of ``model`` over ``base`` in each runtime of ``got`` (see
    :func:`speedup_table`)."""
    out: dict[str, dict[str, Any]] = {}
    for rt in [*got.latency, *(r for r in got.errors if r not in got.latency)]:
        errs = got.errors.get(rt, {})
        if base in errs or model in errs:
            out[rt] = {"error": "; ".join(f"{k}: {errs[k]}" for k in (base, model) if k in errs)}
            continue
        out[rt] = {}
        for b, res in got.latency[rt].items():
            b_ms, m_ms = res[base].median_ms, res[model].median_ms
            speedup = b_ms / m_ms if m_ms > 0 else float("inf")
            entry = {"base_ms": b_ms, "model_ms": m_ms, "speedup": speedup}
            if macs_reduction is not None:
                entry["ratio"] = speedup / macs_reduction
            out[rt][f"batch {b}"] = entry
    return out
