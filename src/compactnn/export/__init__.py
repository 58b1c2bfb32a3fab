"""Ship a compressed model: ONNX (checked and run by onnxruntime), TorchScript, compact checkpoint.

- :func:`export_form` -- the model as it is deployed: compactnn's sparse layers (which run on
  ``torch.sparse``, unsupported by ONNX and TorchScript) become plain ops, either ``"dense"``
  (an ``nn.Linear`` / ``nn.Conv2d`` holding the zeros) or ``"gather"`` (only the non-zeros:
  ``Gather``, ``Mul``, ``ScatterElements(add)``; convolutions through im2col). Low-rank layers,
  channel selections and everything else are plain modules already.
- :func:`to_onnx` -- export with the TorchScript-based ``torch.onnx`` exporter (opset 17, dynamic
  batch; needs ``onnx`` and ``onnxruntime``, not ``onnxscript``), ``onnx.checker``, then run with
  onnxruntime on real samples: ``max |delta|`` against the PyTorch model is recorded and must be
  at most ``tol``.
- :func:`to_torchscript` -- ``torch.jit.trace`` of the export form, reloaded and checked the same
  way on a batch size other than the traced one.
- :func:`save_checkpoint` / :func:`load` -- compact, pickle-free checkpoint: ``model.safetensors``
  (the compressed state, int64 indices stored as int32 where they fit) + ``plan.json`` (the
  structural plan and the shapes of its tensors). ``load(dir, model=TheirArchitecture())``
  replays the plan's structure on the user's own class and loads the state strictly.
- :func:`onnx_latency`, :func:`layer_speed`, :func:`densify` -- latency of the deployed graph and
  per-layer checks that a compressed layer is not slower than the dense layer it replaces.
- :func:`time_runtimes`, :func:`speedup_table` -- a model and its original timed in turns in
  eager NCHW, eager channels_last and onnxruntime at several batch sizes: the speed-up in each
  runtime (and, given the MACs reduction, speed-up / reduction).
- :func:`ship` -- all of the above into a result directory, timed beside the original;
  :func:`render_report` writes its ``report.md``.

Where each part lives: :mod:`~compactnn.export.forms` (export forms, dense equivalents,
``torch.compile``), :mod:`~compactnn.export.onnx`, :mod:`~compactnn.export.torchscript`,
:mod:`~compactnn.export.checkpoint`, :mod:`~compactnn.export.speed` (per-layer speed,
``--prefer speed``), :mod:`~compactnn.export.runtimes` (timing in turns, runtime by runtime),
:mod:`~compactnn.export.shipping` (:func:`ship`) and
:mod:`~compactnn.export.report` (``report.md``, speed-ups, environment); what the exporters
share is in :mod:`~compactnn.export._common`. ``onnx`` and ``onnxruntime`` are imported only
when used.
"""

from __future__ import annotations

from compactnn.export._common import PARITY_TOL, file_bytes
from compactnn.export.checkpoint import (
    CHECKPOINT_FILES,
    CHECKPOINT_FORMAT,
    load,
    save_checkpoint,
)
from compactnn.export.forms import (
    SPARSE_FORMS,
    GatherConv2d,
    GatherLinear,
    compiled_form,
    dense_equivalent,
    densify,
    export_form,
)
from compactnn.export.onnx import DEFAULT_OPSET, onnx_latency, ort_session, ort_timer, to_onnx
from compactnn.export.report import (
    SPEEDUP_RUNTIMES,
    environment,
    render_report,
    speedup_protocol,
    speedups,
)
from compactnn.export.runtimes import RUNTIMES, RuntimeTimes, speedup_table, time_runtimes
from compactnn.export.shipping import EXPORT_FORMATS, ship
from compactnn.export.speed import layer_speed, prefer_speed
from compactnn.export.torchscript import to_torchscript

__all__ = [
    "CHECKPOINT_FILES",
    "CHECKPOINT_FORMAT",
    "DEFAULT_OPSET",
    "EXPORT_FORMATS",
    "PARITY_TOL",
    "SPARSE_FORMS",
    "SPEEDUP_RUNTIMES",
    "GatherLinear",
    "GatherConv2d",
    "export_form",
    "to_onnx",
    "to_torchscript",
    "save_checkpoint",
    "load",
    "ort_session",
    "onnx_latency",
    "ort_timer",
    "RUNTIMES",
    "RuntimeTimes",
    "time_runtimes",
    "speedup_table",
    "layer_speed",
    "densify",
    "dense_equivalent",
    "compiled_form",
    "file_bytes",
    "prefer_speed",
    "ship",
    "speedups",
    "speedup_protocol",
    "render_report",
    "environment",
]
