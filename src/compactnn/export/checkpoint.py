"""The compact, pickle-free checkpoint: ``model.safetensors`` + ``plan.json``.

:func:`save_checkpoint` writes the compressed state (int64 indices stored as int32 where they
fit) and the structural plan with the shapes of its tensors; ``load(dir,
model=TheirArchitecture())`` replays the plan's structure on the user's own class and loads the
state strictly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from compactnn.errors import CheckpointError, ConfigError, PlanError
from compactnn.export._common import file_bytes
from compactnn.plan import CompressionPlan, SetState, check_plan_doc, decode_action
from compactnn.structure import module_device
from compactnn.surgery import apply

CHECKPOINT_FORMAT = "compactnn-checkpoint"
#: the files of a compact checkpoint (``plan.safetensors``, if present, is not needed)
CHECKPOINT_FILES = ("model.safetensors", "plan.json")
_INT32_MAX = 2**31 - 1


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


def _skeleton_plan(doc: dict[str, Any], path: Path) -> CompressionPlan:
    """The plan of ``plan.json`` with zero tensors of the recorded shapes, without SetState."""
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
