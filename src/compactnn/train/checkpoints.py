"""Model checkpoints: :func:`save_checkpoint` (safetensors, or ``torch.save`` of plain tensors and
JSON metadata), :func:`read_checkpoint` and :func:`load_checkpoint`, which read with
``weights_only=True`` semantics: nothing but tensors and plain metadata is ever unpickled."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compactnn.errors import CheckpointError
from compactnn.models import create


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str], /, **meta: Any) -> Path:
    """Save the state dict (+ JSON-serialisable ``meta``, e.g. ``model="lenet-caffe"``).

    ``.safetensors`` -> safetensors file with metadata in its header; anything else -> torch.save
    of ``{"state_dict": ..., "meta": ...}`` (plain tensors and JSON types only).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta_json = json.dumps(meta, sort_keys=True)
    if p.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(p), metadata={"compactnn": meta_json})
    else:
        torch.save({"state_dict": state, "meta": meta_json}, p)
    return p


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` (or a plain state dict).

    Raises:
        CheckpointError: missing, truncated or corrupt file, or one with non-tensor content.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"Checkpoint '{p}' does not exist. Check the path.")
    try:
        if p.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(p), framework="pt") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}
                meta_raw = (f.metadata() or {}).get("compactnn", "{}")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(obj, dict) and "state_dict" in obj:
                state, meta_raw = obj["state_dict"], obj.get("meta", "{}")
            else:
                state, meta_raw = obj, "{}"
        meta = json.loads(meta_raw) if isinstance(meta_raw, str) else dict(meta_raw)
    except CheckpointError:
        raise
    except Exception as exc:  # corrupt zip / header / pickle refused by weights_only
        raise CheckpointError(
            f"Checkpoint '{p}' could not be read ({type(exc).__name__}: {exc}). It is corrupt, "
            "truncated or not a compactnn/torch checkpoint; re-save it with "
            "compactnn.train.save_checkpoint."
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"Checkpoint '{p}' does not hold a state dict of tensors; save model.state_dict()."
        )
    return state, meta


def load_checkpoint(
    path: str | os.PathLike[str], model: nn.Module | None = None, *, strict: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint into ``model`` (or build the reference model named in its metadata).

    Returns:
        ``(model, meta)``.

    Raises:
        CheckpointError: unreadable file, or tensors that do not fit the model (names the keys).
    """
    state, meta = read_checkpoint(path)
    if model is None:
        name = meta.get("model")
        if not name:
            raise CheckpointError(
                f"Checkpoint '{path}' does not name its model; pass model= (an nn.Module) to "
                "load_checkpoint."
            )

        model = create(name, **meta.get("model_kwargs", {}))
    try:
        result = model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        raise CheckpointError(
            f"Checkpoint '{path}' does not match {type(model).__name__}: {exc}"
        ) from exc
    if strict and (
        result.missing_keys or result.unexpected_keys
    ):  # pragma: no cover - torch raises
        raise CheckpointError(f"Checkpoint '{path}' keys mismatch: {result}")
    return model, meta
