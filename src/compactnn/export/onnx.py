"""ONNX: export, ``onnx.checker``, parity and latency under onnxruntime.

:func:`to_onnx` exports with the TorchScript-based ``torch.onnx`` exporter (opset 17, dynamic
batch; needs ``onnx`` and ``onnxruntime``, not ``onnxscript``), checks the file with
``onnx.checker``, then runs it with onnxruntime on real samples: ``max |delta|`` against the
PyTorch model is recorded and must be at most ``tol``. :func:`onnx_latency` times the
deployed graph (:func:`ort_timer`: one round of it, to time in turns with other models);
:func:`ort_session` is the onnxruntime session they use.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from compactnn.errors import ConfigError, ExportError
from compactnn.export._common import PARITY_TOL, _as_batch, _parity, _reference, file_bytes
from compactnn.export.forms import export_form
from compactnn.metrics import LatencyResult, timed_calls

DEFAULT_OPSET = 17


def _require_onnx() -> tuple[Any, Any]:
    # onnx and onnxruntime are imported here, on first use, never at module level:
    # ``import compactnn.export`` must not load them (tests/test_package.py checks it).
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - both are pinned in requirements/base.txt
        raise ExportError(
            f"ONNX export needs the 'onnx' and 'onnxruntime' packages ({exc}); install them with "
            "pip install -r requirements/base.txt."
        ) from exc
    return onnx, onnxruntime


def ort_session(path: str | Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session with a fixed number of intra-op threads."""
    _, ort = _require_onnx()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def to_onnx(
    model: nn.Module,
    path: str | Path,
    example: Tensor,
    *,
    samples: Tensor | None = None,
    opset: int = DEFAULT_OPSET,
    sparse: str = "dense",
    tol: float = PARITY_TOL,
) -> dict[str, Any]:
    """Export ``model`` to ONNX, check it and run it with onnxruntime.

    Args:
        model: the compressed model (one tensor input, one tensor output).
        path: the ``.onnx`` file to write.
        example: an input batch used for tracing (the batch dimension is exported dynamic).
        samples: real input samples for the parity check (default: ``example``).
        opset: ONNX opset (>= 17).
        sparse: export form of sparse layers (:func:`export_form`).
        tol: the largest accepted ``max |delta|`` between onnxruntime and PyTorch.

    Returns:
        A record: path, bytes, opset, sparse form, max |delta|, number of check samples,
        onnx / onnxruntime versions.

    Raises:
        ExportError: the export, ``onnx.checker`` or the parity check failed.
    """
    onnx, ort = _require_onnx()
    if not isinstance(opset, int) or opset < 17:
        raise ConfigError(f"The 'opset' parameter of to_onnx must be an int >= 17. Got {opset!r}.")
    example = _as_batch(example, "to_onnx: 'example'")
    samples = example if samples is None else _as_batch(samples, "to_onnx: 'samples'")
    form = export_form(model, sparse=sparse).float().cpu()  # the artifact: a CPU copy
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                form,
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
        onnx.checker.check_model(onnx.load(str(path)))
        got = ort_session(path).run(None, {"input": samples.numpy()})[0]
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - any exporter/checker/runtime failure
        raise ExportError(f"ONNX export of {type(model).__name__} to {path} failed: {exc}") from exc
    ref = _reference(model.float(), samples)
    diff = float((torch.from_numpy(got) - ref).abs().max())
    _parity(diff, tol, "ONNX", path)
    return {
        "format": "onnx",
        "path": path.name,
        "bytes": file_bytes(path),
        "opset": opset,
        "sparse_form": sparse,
        "max_abs_diff": diff,
        "check_samples": int(samples.shape[0]),
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
    }


def ort_timer(
    path: str | Path, inputs: Tensor, *, threads: int = 1, warmup: int = 5, repeats: int = 30
) -> Callable[[], list[float]]:
    """One round of onnxruntime on ``inputs`` as a timer of :func:`compactnn.metrics.interleave`:
    the session (``threads`` intra-op threads) and its feed are built once, here; each call
    runs ``warmup`` untimed then ``repeats`` timed ``session.run``s and returns their ms."""
    sess = ort_session(path, threads=threads)
    feed = {"input": _as_batch(inputs, "onnx_latency: 'inputs'").numpy()}
    return functools.partial(timed_calls, functools.partial(sess.run, None, feed), warmup, repeats)


def onnx_latency(
    path: str | Path, inputs: Tensor, *, threads: int = 1, repeats: int = 30, warmup: int = 5
) -> LatencyResult:
    """Median onnxruntime latency of one forward pass of ``inputs`` (a real batch).

    Returns:
        :class:`~compactnn.metrics.LatencyResult`.
    """
    times = ort_timer(path, inputs, threads=threads, warmup=warmup, repeats=repeats)()
    return LatencyResult.from_times(
        times, batch_size=int(inputs.shape[0]), threads=threads, warmup=warmup
    )
