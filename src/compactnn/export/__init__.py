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
"""

from __future__ import annotations

import copy
import json
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compactnn.errors import CheckpointError, ConfigError, ExportError
from compactnn.layers import (
    LowRankConv2d,
    LowRankLinear,
    SparseConv2d,
    SparseLinear,
    SparsePlusLowRank,
)
from compactnn.metrics import _eval_no_grad
from compactnn.structure import module_device

__all__ = [
    "CHECKPOINT_FILES",
    "EXPORT_FORMATS",
    "SPARSE_FORMS",
    "GatherLinear",
    "GatherConv2d",
    "export_form",
    "to_onnx",
    "to_torchscript",
    "save_checkpoint",
    "load",
    "onnx_latency",
    "layer_speed",
    "densify",
    "dense_equivalent",
    "compiled_form",
    "file_bytes",
]

EXPORT_FORMATS = ("onnx", "torchscript")
SPARSE_FORMS = ("dense", "gather")
DEFAULT_OPSET = 17
PARITY_TOL = 1e-4
CHECKPOINT_FORMAT = "compactnn-checkpoint"
#: the files of a compact checkpoint (``plan.safetensors``, if present, is not needed)
CHECKPOINT_FILES = ("model.safetensors", "plan.json")
_INT32_MAX = 2**31 - 1


# ---------------------------------------------------------------------------- export forms
class GatherLinear(nn.Module):
    r"""``y = W x + b`` with only the non-zeros of ``W`` stored: ``(rows, cols, values)``.

    .. math:: y_{b, r_k} \mathrel{+}= v_k \, x_{b, c_k}, \quad k = 1 \dots nnz

    Runs as ``index_select`` (ONNX ``Gather``), ``mul`` and ``scatter_add`` (ONNX
    ``ScatterElements`` with ``reduction="add"``, opset >= 16), so ONNX and TorchScript run it.
    """

    rows: Tensor
    cols: Tensor

    def __init__(
        self,
        rows: Tensor,
        cols: Tensor,
        values: Tensor,
        out_features: int,
        in_features: int,
        bias: Tensor | None,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = int(out_features), int(in_features)
        self.register_buffer("rows", rows.detach().to(torch.long).clone())
        self.register_buffer("cols", cols.detach().to(torch.long).clone())
        self.values = nn.Parameter(values.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @classmethod
    def from_sparse(cls, layer: SparseLinear | SparseConv2d) -> GatherLinear:
        """The non-zeros of a sparse layer's (lowered) weight."""
        out_f, in_f = layer.shape2d
        return cls(layer.indices[0], layer.indices[1], layer.values, out_f, in_f, layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features)
        prod = flat.index_select(1, self.cols) * self.values
        index = self.rows.unsqueeze(0).expand(flat.shape[0], -1)
        y = flat.new_zeros(flat.shape[0], self.out_features).scatter_add(1, index, prod)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(x.shape[:-1] + (self.out_features,))


class GatherConv2d(nn.Module):
    """A sparse convolution as im2col (``F.unfold``) followed by :class:`GatherLinear`."""

    def __init__(self, layer: SparseConv2d) -> None:
        super().__init__()
        self.kernel_size, self.stride = layer.kernel_size, layer.stride
        self.padding, self.dilation = layer.padding, layer.dilation
        self.out_channels = layer.out_channels
        self.linear = GatherLinear.from_sparse(layer)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w = x.shape[0], x.shape[2], x.shape[3]
        kh, kw = self.kernel_size
        ho = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        y = self.linear(cols.transpose(1, 2))  # (B, L, n)
        return y.transpose(1, 2).reshape(b, self.out_channels, ho, wo)


def _dense_conv(layer: SparseConv2d) -> nn.Conv2d:
    conv = nn.Conv2d(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        bias=layer.bias is not None,
    )
    with torch.no_grad():
        conv.weight.copy_(layer.dense_matrix().reshape(conv.weight.shape))
        if layer.bias is not None:
            conv.bias.copy_(layer.bias)
    return conv


def _set(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    if not name:
        return new
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


def _check_form(sparse: str) -> str:
    if sparse not in SPARSE_FORMS:
        raise ConfigError(
            f"The 'sparse' parameter of export must be one of {', '.join(SPARSE_FORMS)}. "
            f"Got {sparse!r} instead."
        )
    return sparse


def export_form(model: nn.Module, *, sparse: str = "dense") -> nn.Module:
    """A copy of ``model`` (eval mode) whose sparse layers run without ``torch.sparse``.

    Args:
        model: a compressed model.
        sparse: ``"dense"`` (sparse layers become ``nn.Linear`` / ``nn.Conv2d``; fastest on CPU
            at moderate sparsity) or ``"gather"`` (only the non-zeros are stored and computed).

    Returns:
        The export form; same outputs as ``model`` (up to float summation order).
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"export expects an nn.Module. Got {type(model).__name__}.")
    _check_form(sparse)
    out = copy.deepcopy(model).eval()
    for name, m in list(out.named_modules()):
        if isinstance(m, SparseLinear):
            new: nn.Module = m.to_dense() if sparse == "dense" else GatherLinear.from_sparse(m)
        elif isinstance(m, SparseConv2d):
            new = _dense_conv(m) if sparse == "dense" else GatherConv2d(m)
        else:
            continue
        out = _set(out, name, new)
    return out


# ---------------------------------------------------------------------------- helpers
def _require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - both are pinned in requirements/base.txt
        raise ExportError(
            f"ONNX export needs the 'onnx' and 'onnxruntime' packages ({exc}); install them with "
            "pip install -r requirements/base.txt."
        ) from exc
    return onnx, onnxruntime


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


def ort_session(path: str | Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session with a fixed number of intra-op threads."""
    _, ort = _require_onnx()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------- ONNX
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


# ---------------------------------------------------------------------------- TorchScript
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


# ---------------------------------------------------------------------------- checkpoint
def _compact_state(model: nn.Module) -> tuple[dict[str, Tensor], list[str]]:
    state: dict[str, Tensor] = {}
    narrowed: list[str] = []
    for k, v in model.state_dict().items():
        if not isinstance(v, Tensor):
            continue
        t = v.detach().to("cpu").contiguous().clone()
        if t.dtype == torch.int64 and (t.numel() == 0 or int(t.abs().max()) <= _INT32_MAX):
            t = t.to(torch.int32)
            narrowed.append(k)
        state[k] = t
    return state, narrowed


def save_checkpoint(
    model: nn.Module,
    plan: Any,
    directory: str | Path,
    *,
    input_shape: Sequence[int] | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the compact checkpoint ``model.safetensors`` + ``plan.json`` into ``directory``.

    ``plan.json`` is the plan in :meth:`CompressionPlan.save`'s format (so ``plan.safetensors``,
    also written, replays it exactly) plus a ``"checkpoint"`` entry with the shapes of the plan's
    tensors: with it, :func:`load` needs only ``plan.json`` and ``model.safetensors``.

    Returns:
        A record with the files and their sizes in bytes.
    """
    from safetensors.torch import save_file

    from compactnn.plan import CompressionPlan

    if not isinstance(plan, CompressionPlan):
        raise ConfigError(
            f"save_checkpoint needs the CompressionPlan of the model. Got {type(plan).__name__}."
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plan_json = plan.save(directory / "plan")
    shapes: dict[str, list[int]] = {}
    for i, a in enumerate(plan.actions):
        for f in fields(a):
            v = getattr(a, f.name)
            if isinstance(v, Tensor):
                shapes[f"{i}.{f.name}"] = [int(s) for s in v.shape]
    shape = input_shape if input_shape is not None else plan.meta.get("input_shape")
    doc = json.loads(plan_json.read_text())
    doc["checkpoint"] = {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        "state": "model.safetensors",
        "shapes": shapes,
        "input_shape": None if shape is None else [int(s) for s in shape],
        **(meta or {}),
    }
    plan_json.write_text(json.dumps(doc, indent=1))
    state, narrowed = _compact_state(model)
    st = directory / "model.safetensors"
    save_file(state, str(st), metadata={"format": CHECKPOINT_FORMAT, "int32": json.dumps(narrowed)})
    return {
        "files": {
            "model.safetensors": file_bytes(st),
            "plan.json": file_bytes(plan_json),
        },
        "bytes": file_bytes(st) + file_bytes(plan_json),
        "int32_indices": len(narrowed),
    }


def _skeleton_plan(doc: dict[str, Any], path: Path) -> Any:
    """The plan of ``plan.json`` with zero tensors of the recorded shapes, without SetState."""
    from compactnn.plan import CompressionPlan, SetState, decode_action

    shapes = doc["checkpoint"].get("shapes", {})

    def zeros(name: str) -> Tensor:
        if name not in shapes:
            raise CheckpointError(
                f"{path}: no shape recorded for tensor {name!r}; write the "
                "checkpoint again with compactnn.export.save_checkpoint."
            )
        return torch.zeros(shapes[name])

    actions = []
    for i, rec in enumerate(doc.get("actions", [])):
        kind = CompressionPlan.ACTION_TYPES.get(rec.get("type", ""))
        if kind is None:
            raise CheckpointError(f"{path}: action #{i} has unknown type {rec.get('type')!r}.")
        if kind is SetState:
            continue
        try:
            actions.append(decode_action(kind, rec, zeros))
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"{path}: action #{i} is malformed ({exc}).") from exc
    return CompressionPlan(actions=actions, meta=dict(doc.get("meta", {})))


def load(directory: str | Path, model: nn.Module) -> nn.Module:
    """Restore a compressed model from a compact checkpoint onto the user's own architecture.

    Args:
        directory: a directory holding ``plan.json`` and ``model.safetensors`` (as written by
            ``compactnn compress --out DIR`` or :func:`save_checkpoint`).
        model: a fresh instance of the original (uncompressed) architecture; not modified.

    Returns:
        The compressed model, in eval mode, with the saved weights. No pickle is read.

    Raises:
        CheckpointError: a missing or corrupt file, or a model that is not the architecture the
            checkpoint was made from.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from compactnn.errors import PlanError
    from compactnn.surgery import apply

    if not isinstance(model, nn.Module):
        raise CheckpointError(
            "compactnn.load needs model=<a fresh instance of the original architecture>. Got "
            f"{type(model).__name__}."
        )
    directory = Path(directory)
    plan_path, st_path = directory / "plan.json", directory / "model.safetensors"
    for p in (plan_path, st_path):
        if not p.is_file():
            raise CheckpointError(
                f"{p} does not exist; a compact checkpoint is a directory with "
                f"{' and '.join(CHECKPOINT_FILES)} (written by compactnn compress --out DIR)."
            )
    try:
        doc = json.loads(plan_path.read_text())
        state = load_file(str(st_path))
    except (ValueError, OSError, SafetensorError) as exc:
        raise CheckpointError(f"Checkpoint {directory} is corrupt ({exc}).") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("checkpoint"), dict):
        raise CheckpointError(
            f"{plan_path} is not a compact checkpoint's plan (no 'checkpoint' entry); write it "
            "with compactnn compress --out DIR or compactnn.export.save_checkpoint."
        )
    from compactnn.plan import check_plan_doc

    check_plan_doc(doc, plan_path, extra_keys=("checkpoint",))
    if doc["checkpoint"].get("version") != 1:
        raise CheckpointError(
            f"{plan_path}: checkpoint version {doc['checkpoint'].get('version')!r} is not "
            "supported (this compactnn reads version 1); write the checkpoint again."
        )
    plan = _skeleton_plan(doc, plan_path)
    shape = doc["checkpoint"].get("input_shape")
    example = None if shape is None else torch.zeros(2, *shape, device=module_device(model))
    try:
        out = apply(plan, model, example_inputs=example, allow_output_change=True)
    except PlanError as exc:
        raise CheckpointError(
            f"The checkpoint {directory} does not fit a {type(model).__name__}: {exc} Pass a "
            "fresh instance of the architecture that was compressed."
        ) from exc
    _fit_data_dependent(out, state)
    own = out.state_dict()
    for k, v in list(state.items()):
        if k in own and isinstance(own[k], Tensor):
            state[k] = v.to(own[k].dtype)
    try:
        out.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"model.safetensors in {directory} does not match the {type(model).__name__} after "
            f"the plan's structure ({exc}). Pass a fresh instance of the architecture that was "
            "compressed, with the same configuration."
        ) from exc
    return out.eval()


def _fit_data_dependent(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Resize the tensors of compactnn layers whose size depends on the data (non-zeros,
    kept columns) to the sizes stored in the checkpoint, so the strict load can fill them.

    The skeleton plan carries zero tensors, so a sparse layer comes out with no non-zeros;
    only compactnn's own layers (``is_compactnn_layer``) are resized, any other mismatch is
    left to ``load_state_dict`` to report.
    """
    for name, m in model.named_modules():
        if not getattr(m, "is_compactnn_layer", False):
            continue
        prefix = f"{name}." if name else ""
        for attr, t in [*m._parameters.items(), *m._buffers.items()]:
            key = prefix + attr
            if t is None or key not in state or tuple(state[key].shape) == tuple(t.shape):
                continue
            new = torch.zeros(state[key].shape, dtype=t.dtype, device=t.device)
            if attr in m._parameters:
                m._parameters[attr] = nn.Parameter(new, requires_grad=t.requires_grad)
            else:
                m._buffers[attr] = new


# ---------------------------------------------------------------------------- latency
def onnx_latency(
    path: str | Path, inputs: Tensor, *, threads: int = 1, repeats: int = 30, warmup: int = 5
) -> Any:
    """Median onnxruntime latency of one forward pass of ``inputs`` (a real batch).

    Returns:
        :class:`~compactnn.metrics.LatencyResult`.
    """
    sess = ort_session(path, threads=threads)
    feed = {"input": _as_batch(inputs, "onnx_latency: 'inputs'").numpy()}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    from compactnn.metrics import LatencyResult

    return LatencyResult.from_times(
        times, batch_size=int(inputs.shape[0]), threads=threads, warmup=warmup
    )


def _time(fn: Any, x: Tensor, repeats: int, warmup: int) -> float:
    with torch.no_grad():
        for _ in range(warmup):
            fn(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def dense_equivalent(layer: nn.Module) -> nn.Module | None:
    """The dense ``nn.Linear`` / ``nn.Conv2d`` computing what a compactnn layer computes.

    Returns ``None`` for layers without one (channel selections).
    """
    if isinstance(layer, SparseLinear):
        return layer.to_dense()
    if isinstance(layer, SparseConv2d):
        return _dense_conv(layer)
    if isinstance(layer, LowRankLinear):
        lin = nn.Linear(layer.in_features, layer.out_features, bias=layer.second.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(layer.dense_weight())
            if lin.bias is not None:
                lin.bias.copy_(layer.second.bias)
        return lin
    if isinstance(layer, LowRankConv2d):
        f = layer.first
        conv = nn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=f.stride,  # type: ignore[arg-type]
            padding=f.padding,  # type: ignore[arg-type]
            dilation=f.dilation,  # type: ignore[arg-type]
            bias=layer.second.bias is not None,
        )
        with torch.no_grad():
            conv.weight.copy_(layer.dense_weight())
            if conv.bias is not None:
                conv.bias.copy_(layer.second.bias)
        return conv
    if isinstance(layer, SparsePlusLowRank):
        s, lr = dense_equivalent(layer.sparse), dense_equivalent(layer.lowrank)
        if s is None or lr is None or type(s) is not type(lr):
            return None
        with torch.no_grad():
            lr.weight.add_(s.weight)
        return lr
    return None


def layer_speed(
    model: nn.Module, inputs: Tensor, *, threads: int = 1, repeats: int = 20, warmup: int = 3
) -> list[dict[str, Any]]:
    """Time every compressed layer against its dense equivalent on its real input.

    The inputs of each layer are captured in one forward pass of ``inputs`` (real samples);
    each layer and its :func:`dense_equivalent` are then timed in eager PyTorch.

    Returns:
        One row per compressed layer: name, type, ``ms``, ``dense_ms``, ``slower`` (bool).
    """
    from compactnn.metrics import _threads

    targets = {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, (SparseLinear, SparseConv2d, LowRankLinear, LowRankConv2d))
        or isinstance(m, SparsePlusLowRank)
    }
    # skip the branches of a SparsePlusLowRank (timed as one layer)
    targets = {n: m for n, m in targets.items() if not any(n.startswith(p + ".") for p in targets)}
    seen: dict[str, Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, inp, _n=n: seen.__setitem__(_n, inp[0].detach()))
        for n, m in targets.items()
    ]
    try:
        with _eval_no_grad(model):
            model(inputs)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    with _threads(threads):
        for n, m in targets.items():
            dense = dense_equivalent(m)
            if dense is None or n not in seen:
                continue
            x = seen[n]
            ms = _time(m, x, repeats, warmup)
            dms = _time(dense.eval(), x, repeats, warmup)
            rows.append(
                {
                    "name": n,
                    "type": type(m).__name__,
                    "ms": ms,
                    "dense_ms": dms,
                    "slower": bool(ms > dms),
                }
            )
    return rows


def densify(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """A copy of ``model`` with the compressed layers ``names`` replaced by dense equivalents."""
    out = copy.deepcopy(model)
    for n in names:
        dense = dense_equivalent(out.get_submodule(n))
        if dense is None:
            raise ConfigError(f"densify: layer {n!r} has no dense equivalent.")
        out = _set(out, n, dense)
    return out


# ---------------------------------------------------------------------------- shipping
def prefer_speed(
    model: nn.Module, plan: Any, original: nn.Module, samples: Tensor, *, threads: int = 1
) -> tuple[nn.Module, Any, list[str]]:
    """Keep dense the compressed layers that are slower than the dense layer they replace.

    The plan is rewritten so the checkpoint still restores: the layer's replacing action becomes
    a dense :class:`~compactnn.plan.SetWeights`. When that plan does not replay on ``original``
    (a later structural action reshaped the layer), nothing is changed.

    Returns:
        ``(model, plan, densified layer names)``.
    """
    from compactnn.plan import LAYER_STATE_ACTIONS, CompressionPlan, SetState, SetWeights
    from compactnn.surgery import apply

    slow = [r["name"] for r in layer_speed(model, samples, threads=threads) if r["slower"]]
    if not slow:
        return model, plan, []
    new = densify(model, slow)
    actions = []
    for a in plan.actions:
        if isinstance(a, SetState):
            continue
        if isinstance(a, LAYER_STATE_ACTIONS) and a.layer in slow:
            m = new.get_submodule(a.layer)
            b = None if m.bias is None else m.bias.detach()
            a = SetWeights(a.layer, m.weight.detach(), b, sparse=False)
        actions.append(a)
    new_plan = CompressionPlan(actions=actions, meta=dict(plan.meta)).with_state(new)
    try:
        replay = apply(new_plan, original, example_inputs=samples[:2], allow_output_change=True)
        with torch.no_grad():
            ok = bool(torch.allclose(replay.eval()(samples), new.eval()(samples), atol=1e-4))
    except Exception:  # noqa: BLE001 - any failure: keep the compressed layers
        ok = False
    if not ok:
        warnings.warn(
            f"--prefer speed: could not keep {slow} dense (the plan would not replay); the "
            "compressed layers are kept.",
            RuntimeWarning,
            stacklevel=2,
        )
        return model, plan, []
    return new, new_plan, slow


def _lat(res: Any) -> dict[str, Any]:
    return {
        "median_ms": res.median_ms,
        "p10_ms": res.p10_ms,
        "p90_ms": res.p90_ms,
        "per_sample_ms": res.per_sample_ms,
        "repeats": res.repeats,
    }


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
    from compactnn.metrics import measure_latency, real_batch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples = _as_batch(samples, "ship: 'samples'")
    example = samples[:2]
    rec: dict[str, Any] = {"artifacts": {}, "latency": {}, "sparse_form": sparse}
    t0 = time.perf_counter()
    if "onnx" in formats:
        rec["artifacts"]["model.onnx"] = to_onnx(
            model, out / "model.onnx", example, samples=samples, sparse=sparse
        )
    if "torchscript" in formats:
        rec["artifacts"]["model.pt"] = to_torchscript(
            model, out / "model.pt", example, samples=samples, sparse=sparse
        )
    ck = save_checkpoint(model, plan, out, input_shape=input_shape)
    ck["format"] = "compact checkpoint (compactnn.load(DIR, model=...))"
    if fresh is not None:
        back = load(out, model=fresh)
        with torch.no_grad():
            ck["max_abs_diff"] = float((back(samples) - _reference(model, samples)).abs().max())
        _parity(ck["max_abs_diff"], PARITY_TOL, "restored checkpoint", out)
    rec["artifacts"]["checkpoint"] = ck
    rec["export_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    shape = tuple(int(s) for s in input_shape)
    compiled = None
    if compile:
        compiled, rec["torch_compile"] = compiled_form(model, samples, sparse=sparse)
    import tempfile

    tmp = tempfile.TemporaryDirectory(prefix="compactnn-original-")
    original_onnx = None  # the original under onnxruntime too: one speed-up per runtime
    if original is not None and "onnx" in formats and (out / "model.onnx").is_file():
        try:
            to_onnx(original, Path(tmp.name) / "original.onnx", example, samples=samples)
            original_onnx = Path(tmp.name) / "original.onnx"
        except ExportError as exc:
            rec["original_onnx_error"] = str(exc)
    for bs in batch_sizes:
        x = real_batch([samples], bs)
        row: dict[str, Any] = {}
        if original is not None:
            row["eager_original"] = _lat(
                measure_latency(original, shape, batch_size=bs, threads=threads, inputs=x)
            )
        row["eager"] = _lat(measure_latency(model, shape, batch_size=bs, threads=threads, inputs=x))
        if original_onnx is not None:
            row["onnxruntime_original"] = _lat(onnx_latency(original_onnx, x, threads=threads))
        if (out / "model.onnx").is_file() and "onnx" in formats:
            row["onnxruntime"] = _lat(onnx_latency(out / "model.onnx", x, threads=threads))
        if compiled is not None:
            row["torch.compile"] = _lat(
                measure_latency(compiled, shape, batch_size=bs, threads=threads, inputs=x)
            )
        deployed = {k: v for k, v in row.items() if not k.endswith("_original")}
        row["fastest"] = min(deployed, key=lambda k: deployed[k]["median_ms"])
        rec["latency"][f"batch {bs}"] = row
    tmp.cleanup()
    rec["latency_threads"] = threads
    rec["latency_inputs"] = "real samples"
    rows = layer_speed(model, real_batch([samples], max(batch_sizes)), threads=threads)
    rec["layers"] = rows
    rec["slower_than_dense"] = [r["name"] for r in rows if r["slower"]]
    rec["latency_seconds"] = time.perf_counter() - t0
    return rec


#: runtime -> (the original's row, the compressed model's row) of a ``deploy`` latency record
SPEEDUP_RUNTIMES = {
    "eager": ("eager_original", "eager"),
    "onnxruntime": ("onnxruntime_original", "onnxruntime"),
}


def speedups(deploy: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """``{"batch 100": {"eager": {original_ms, compressed_ms, speedup}, ...}}``: one speed-up
    per runtime and batch size, read off the latencies :func:`ship` measured (the original and
    the compressed model timed in the same runtime, on the same real batch)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for bs, row in (deploy.get("latency") or {}).items():
        per = {}
        for rt, (orig, comp) in SPEEDUP_RUNTIMES.items():
            if orig in row and comp in row:
                o, c = row[orig]["median_ms"], row[comp]["median_ms"]
                per[rt] = {"original_ms": o, "compressed_ms": c, "speedup": o / c if c else 0.0}
        if per:
            out[bs] = per
    return out


def speedup_protocol(deploy: dict[str, Any]) -> str:
    """How :func:`ship` timed, e.g. ``"1 thread(s), real samples, median of 50 runs (eager),
    30 (onnxruntime)"``."""
    runs = []
    for rt, (orig, comp) in SPEEDUP_RUNTIMES.items():
        reps = {
            row[k].get("repeats")
            for row in (deploy.get("latency") or {}).values()
            for k in (orig, comp)
            if k in row
        }
        if len(reps) == 1:
            runs.append(f"{reps.pop()} ({rt})")
    text = f"{deploy.get('latency_threads')} thread(s), {deploy.get('latency_inputs')}"
    return text + (f", median of {', '.join(runs)} runs" if runs else ", median")


def compiled_form(
    model: nn.Module, samples: Tensor, *, sparse: str = "dense", tol: float = PARITY_TOL
) -> tuple[nn.Module | None, dict[str, Any]]:
    """``torch.compile`` (inductor) of the export form, checked against the PyTorch model.

    torch.compile needs a working C++ compiler for inductor's CPU kernels; where compiling or
    running fails (no compiler, an unsupported op, outputs that differ by more than ``tol``)
    a ``RuntimeWarning`` says why and ``None`` is returned, so the latency table simply has
    no torch.compile column.

    Returns:
        ``(compiled module or None, record)``; the record holds ``ok``, the backend, the
        compile time and ``max_abs_diff`` (or the ``error``).
    """
    rec: dict[str, Any] = {"backend": "inductor", "ok": False}
    samples = _as_batch(samples, "compiled_form: 'samples'")
    form = export_form(model, sparse=sparse).float()
    t0 = time.perf_counter()
    try:
        compiled = torch.compile(form, backend="inductor", dynamic=False)
        with torch.no_grad():
            got = compiled(samples)
        diff = float((got - _reference(model.float(), samples)).abs().max())
    except Exception as exc:  # noqa: BLE001 - any compiler / inductor failure degrades
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        rec["error"] = f"{type(exc).__name__}: {first}"
        warnings.warn(
            f"torch.compile latency skipped: compiling the deployed model failed ({rec['error']}). "
            "Inductor needs a working C++ compiler (g++ or clang on PATH) on CPU; eager and "
            "onnxruntime latency are still measured.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None, rec
    rec["compile_seconds"] = time.perf_counter() - t0
    rec["max_abs_diff"] = diff
    if not diff <= tol:
        rec["error"] = f"outputs differ from PyTorch by max |delta| {diff:.3g} > {tol:g}"
        warnings.warn(
            f"torch.compile latency skipped: the compiled model's {rec['error']}.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None, rec
    rec["ok"] = True
    return compiled, rec


def _fmt_bytes(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 2**20 else f"{n / 2**20:.2f} MiB"


def render_report(doc: dict[str, Any]) -> str:
    """``report.md`` from the ``report.json`` document of a result directory."""
    lines = [f"# compactnn result: {doc.get('method')} on {doc.get('data')}", ""]
    b, a = doc.get("before") or {}, doc.get("after") or {}
    if b and a:
        lines += ["| | before | after |", "|---|---:|---:|"]
        lines.append(f"| params (COO convention) | {b['params']:,} | {a['params']:,} |")
        if a.get("stored_values"):
            lines.append(
                f"| stored values | {b.get('stored_values', 0):,} | {a['stored_values']:,} |"
            )
        lines.append(f"| MACs / sample | {b['macs']:,} | {a['macs']:,} |")
        if a.get("memory_bytes"):
            lines.append(
                f"| in memory (incl. sparse indices) | {_fmt_bytes(b['memory_bytes'])} | "
                f"{_fmt_bytes(a['memory_bytes'])} |"
            )
        if b.get("accuracy") and a.get("accuracy"):
            lines.append(
                f"| test top-1 | {b['accuracy']['top1']:.2f} % | {a['accuracy']['top1']:.2f} % |"
            )
        lines.append("")
    val = doc.get("validation")
    if val:
        lines += [
            f"Validation top-1 {val['before']:.2f} % -> {val['after']:.2f} % "
            f"({-val['drop']:+.2f} points, {int(val['n'])} samples).",
            "",
        ]
    if a.get("layers"):
        before = {r["name"]: r for r in b.get("layers", [])}
        lines += [
            "## Layers",
            "",
            "| layer | type | units before | units after | params before | params after |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for r in a["layers"]:
            o = before.get(r["name"], {})
            lines.append(
                f"| {r['name']} | {r['type']} | {o.get('units', '-')} | {r['units']} | "
                f"{o.get('params', '-')} | {r['params']} |"
            )
        lines.append("")
    dep = doc.get("deploy")
    if dep:
        lines += [
            "## Artifacts",
            "",
            "| file | bytes | max abs diff vs PyTorch |",
            "|---|---:|---:|",
        ]
        for name, art in dep["artifacts"].items():
            diff = art.get("max_abs_diff")
            d = "-" if diff is None else f"{diff:.2e}"
            lines.append(f"| {name} | {art['bytes']:,} | {d} |")
        lines += [
            "",
            f"Sparse layers exported in **{dep['sparse_form']}** form. Latency on "
            f"{dep['latency_inputs']}, {dep['latency_threads']} thread(s), median ms:",
            "",
            "| batch | eager original | eager | onnxruntime original | onnxruntime | "
            "torch.compile | fastest |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for bs, row in dep["latency"].items():

            def ms(key: str, _row: dict[str, Any] = row) -> str:
                return f"{_row[key]['median_ms']:.3f}" if key in _row else "-"

            lines.append(
                f"| {bs.split()[-1]} | {ms('eager_original')} | {ms('eager')} | "
                f"{ms('onnxruntime_original')} | {ms('onnxruntime')} | {ms('torch.compile')} | "
                f"{row['fastest']} |"
            )
        lines.append("")
        ups = speedups(dep)
        if ups:
            lines += [
                "Speed-up per runtime (original -> compressed model, both timed in that "
                f"runtime; {speedup_protocol(dep)}):",
                "",
                "| batch | runtime | original ms | compressed ms | speed-up |",
                "|---|---|---:|---:|---:|",
            ]
            for bs, per in ups.items():
                for rt, v in per.items():
                    lines.append(
                        f"| {bs.split()[-1]} | {rt} | {v['original_ms']:.3f} | "
                        f"{v['compressed_ms']:.3f} | {v['speedup']:.2f}x |"
                    )
            lines.append("")
        tc = dep.get("torch_compile")
        if tc and not tc.get("ok"):
            lines += [f"torch.compile not timed: {tc.get('error')}.", ""]
        if dep.get("slower_than_dense"):
            lines.append(
                "**Slower than the dense layer they replace** (eager): "
                + ", ".join(dep["slower_than_dense"])
                + ". `--prefer speed` keeps them dense."
            )
            lines.append("")
        if dep.get("densified"):
            lines += [f"Kept dense (--prefer speed): {', '.join(dep['densified'])}.", ""]
    fed = doc.get("data_fed")
    if fed:
        lines += ["## Data fed", ""]
        lines.append(f"- dataset: {fed.get('dataset')} ({fed.get('kind', '?')})")
        norm = fed.get("normalisation")
        if isinstance(norm, dict):
            norm = (
                f"(x - {norm['mean']}) / {norm['std']} ({norm['source']})"
                if norm.get("normalize")
                else "none (raw [0, 1] pixels)"
            )
        lines.append(f"- normalisation: {norm}")
        sizes = ", ".join(
            f"{k} {v.get('samples') if v.get('samples') is not None else '?'}"
            + (f" (batch {v['batch_size']})" if v.get("batch_size") else "")
            for k, v in (fed.get("splits") or {}).items()
        )
        lines.append(f"- splits (samples): {sizes}; val_fraction {fed.get('val_fraction')}")
        if fed.get("input_key"):
            lines.append(f"- dict batches: input {fed['input_key']!r}, label {fed['label_key']!r}")
        if fed.get("options"):
            lines.append(f"- options: {json.dumps(fed['options'])}")
        lines.append(f"- input shape {fed.get('input_shape')}, seed {fed.get('seed')}")
        lines.append("")
    if doc.get("warnings"):
        lines += ["## Warnings", "", *[f"- {w}" for w in doc["warnings"]], ""]
    if doc.get("chosen"):
        lines += ["## Chosen hyper-parameters", "", "```", json.dumps(doc["chosen"]), "```", ""]
    env = doc.get("environment")
    if env:
        lines += [
            "## Run",
            "",
            ", ".join(f"{k} {v}" for k, v in env.items()),
            "",
            ", ".join(f"{k}: {v:.1f} s" for k, v in (doc.get("seconds") or {}).items()),
            "",
        ]
    if doc.get("plots"):
        lines += ["## Plots", "", *[f"![{p}]({p})" for p in doc["plots"]], ""]
    return "\n".join(lines)


def environment(seed: int | None = None) -> dict[str, Any]:
    """Versions (compactnn, torch, onnx, onnxruntime), machine and seed for report.json."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("compactnn")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        own = "unknown"
    env: dict[str, Any] = {
        "compactnn": own,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.system()} ({platform.processor() or '?'})",
        "cpus": __import__("os").cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import onnx
        import onnxruntime

        env["onnx"], env["onnxruntime"] = onnx.__version__, onnxruntime.__version__
    except ImportError:  # pragma: no cover
        pass
    if seed is not None:
        env["seed"] = seed
    return env
