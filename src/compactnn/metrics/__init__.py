"""Honest numbers on the model you actually get back.

Everything here is *measured* on a concrete ``nn.Module``: parameter counts (sparse modules count
their stored COO entries), FLOPs/MACs via :class:`torch.utils.flop_counter.FlopCounterMode`,
fp32 memory, wall-clock latency (fixed thread count, warm-up, median of repeats) and accuracy.

Conventions:
    * ``flops`` = floating point operations of one forward pass of ONE sample as counted by
      ``torch.utils.flop_counter`` (a multiply-add = 2 FLOPs, biases/activations not counted).
    * ``macs`` = ``flops / 2``. The papers (SSR Table I, Zhou, Kiaee) report multiply-accumulates
      under the name "FLOPs"; compare paper numbers with ``macs``.
    * ``memory_mb`` = stored parameters x 4 bytes / 2**20 (fp32; COO convention: a sparse
      non-zero counts 3 values, row, column and value).
    * ``memory_bytes`` = the bytes the model really holds: every parameter and buffer
      (``numel x element size``), so the int64 indices of sparse layers count 8 bytes each.
      ``stored_values`` = parameter elements (a sparse non-zero counts once).
    * Latency is measured on real samples when data is given (``latency_inputs="real"``),
      otherwise on N(0, 1) inputs (``"random"``).
    * Compression ratio (Ma et al. eq. 15): ``CR = approximated layer size / original size x 100 %``.

One module per kind of number: :mod:`~compactnn.metrics.size` (parameters, memory),
:mod:`~compactnn.metrics.flops` (FLOPs, per-layer table), :mod:`~compactnn.metrics.latency`,
:mod:`~compactnn.metrics.latency_model` (latency predicted from per-layer timings, cached),
:mod:`~compactnn.metrics.summary` (accuracy, the whole report); every name is importable from
:mod:`compactnn.metrics`.
"""

from __future__ import annotations

# the model-running helpers that methods, export and the preflight checks share
from compactnn.metrics._run import _eval_no_grad as _eval_no_grad
from compactnn.metrics._run import _run_checked as _run_checked
from compactnn.metrics._run import _run_hooked as _run_hooked
from compactnn.metrics.flops import LayerRow, count_flops, layer_table
from compactnn.metrics.latency import (
    LatencyResult,
    eager_timer,
    interleave,
    measure_latency,
    measure_latency_interleaved,
    real_batch,
    timed_calls,
)
from compactnn.metrics.latency import _threads as _threads
from compactnn.metrics.latency_model import (
    LatencyModel,
    LatencyTable,
    LayerSite,
    cpu_model,
    find_sites,
    snap_count,
)
from compactnn.metrics.size import (
    compression_ratio,
    count_params,
    memory_bytes,
    memory_mb,
    stored_params,
    stored_values,
)
from compactnn.metrics.summary import Report, accuracy, format_comparison, report

__all__ = [
    "LatencyModel",
    "LatencyResult",
    "LatencyTable",
    "LayerSite",
    "LayerRow",
    "Report",
    "accuracy",
    "compression_ratio",
    "count_flops",
    "count_params",
    "cpu_model",
    "eager_timer",
    "interleave",
    "find_sites",
    "layer_table",
    "measure_latency",
    "measure_latency_interleaved",
    "memory_mb",
    "memory_bytes",
    "real_batch",
    "stored_values",
    "report",
    "format_comparison",
    "snap_count",
    "stored_params",
    "timed_calls",
]
