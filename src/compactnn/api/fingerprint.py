"""What identifies a run for ``compress(resume_dir=...)``: the method and its options, the target,
the seed, the model's weights, the data (length, batching, a checksum of a few samples) and the
world size; a run directory written by another run is refused."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from compactnn import distributed
from compactnn.methods import CompressionData
from compactnn.resume import tensor_fingerprint


def _loader_fingerprint(loader: Any) -> Any:
    """Length, batching and a checksum of a few samples of a loader's dataset."""
    if loader is None:
        return None
    ds = getattr(loader, "dataset", None)
    rec: dict[str, Any] = {
        "type": type(loader).__name__,
        "batch_size": getattr(loader, "batch_size", None),
        "sampler": type(getattr(loader, "sampler", None)).__name__,
    }
    try:
        n = len(ds)  # type: ignore[arg-type]
    except TypeError:
        return rec
    rec["samples"] = n
    picks = sorted({int(i * (n - 1) / 15) for i in range(16)}) if n else []
    tensors, other = {}, []
    for i in picks:
        item = ds[i]
        parts = (
            sorted(item.items()) if isinstance(item, dict)
            else enumerate(item if isinstance(item, (tuple, list)) else (item,))
        )  # fmt: skip
        for j, t in parts:
            try:
                tensors[f"{i}.{j}"] = torch.as_tensor(t)
            except (TypeError, ValueError, RuntimeError):  # e.g. a PIL image, a string
                other.append(f"{i}.{j}:{t!r}")
    rec["checksum"] = tensor_fingerprint(tensors)
    if other:
        rec["other"] = hashlib.sha256("\n".join(other).encode()).hexdigest()
    return rec


def _fingerprint(
    model: nn.Module, algo: Any, cd: CompressionData, tgt: Any, seed: int, val_fraction: float
) -> dict[str, Any]:
    """What makes a run: method + options, the model's weights, the data, the world size."""
    return {
        "method": algo.name,
        "options": algo.options(),
        "target": None if tgt is None else tgt.as_dict(),
        "seed": seed,
        "val_fraction": val_fraction,
        "model": {"class": type(model).__name__, "state": tensor_fingerprint(model.state_dict())},
        "data": {k: _loader_fingerprint(getattr(cd, k)) for k in ("train", "val")},
        "world_size": distributed.world_size(),
    }
