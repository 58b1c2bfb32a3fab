"""Resumable runs: atomic checkpoints of every stage in a run directory.

``compress(..., resume_dir=DIR)`` (CLI ``--resume DIR``) opens a :class:`RunStore` on ``DIR``
and makes it current (:func:`activate`) while the method runs. The stages then save what they
need to continue (:meth:`RunStore.save`) and, on a rerun, load it back instead of recomputing:

* :func:`compactnn.train.train` with a ``checkpoint`` key (every method's fine-tuning, PGT's
  proximal-gradient training): after every epoch, the model, the optimizer state, the step
  count, the torch / NumPy / Python RNG states, the data loader's generator state (so the next
  epoch draws the same order) and the step hook's state (PGT's dead neurons);
* ``ssr``: after every layer of every lambda stage (and after each stage's fine-tuning): the
  weights, the filters kept so far and the records;
* ``admm-sparse``: after every mu: the weights, the engine's F and Y (the next mu's warm start),
  the masks, the path records and plans;
* ``compress``: the budget search's choice (``target=``).

A run killed mid-way and started again with the same arguments ends with the same model as an
uninterrupted one. Every file is written to a temporary name and moved into place with
``os.replace`` (a kill never leaves a half-written checkpoint); tensors are safetensors, the
rest JSON in the safetensors header: nothing is pickled. ``DIR/run.json`` holds a fingerprint
of the run (method, options, model weights, data, world size); a rerun whose fingerprint
differs is refused with :class:`~compactnn.errors.ConfigError` naming what changed. Under
torch.distributed only rank 0 writes (``DIR`` must be visible to every rank); every rank reads.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import random
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from compactnn import distributed
from compactnn.errors import CheckpointError, ConfigError
from compactnn.plan import CompressionPlan

__all__ = [
    "RunStore",
    "activate",
    "current",
    "load_optimizer",
    "optimizer_state",
    "rng_state",
    "set_rng_state",
    "suspended",
    "tensor_fingerprint",
]

_FORMAT = "compactnn-run"
_CURRENT: contextvars.ContextVar[RunStore | None] = contextvars.ContextVar(
    "compactnn_run_store", default=None
)

#: test hook: called as ``after_save(key)`` after every checkpoint written (e.g. to raise and
#: so simulate a run killed right after that stage)
after_save: Callable[[str], None] | None = None


def _plain(value: Any) -> Any:
    """JSON-able copy (tuples -> lists, numpy / torch scalars -> Python, else ``repr``)."""
    return json.loads(json.dumps(value, default=_default))


def _default(o: Any) -> Any:
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, Tensor) and o.numel() == 1:
        return o.item()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    return repr(o)


def _diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {_short(a)} then, {_short(b)} now")
    return out


def _short(v: Any) -> str:
    s = json.dumps(v, default=repr)
    return s if len(s) <= 80 else s[:77] + "..."


class RunStore:
    """A run directory of named checkpoints (see the module docstring).

    Args:
        path: the directory (created by rank 0 when missing).
        fingerprint: JSON-able description of the run; a directory written by a run with a
            different fingerprint is refused.

    Raises:
        ConfigError: ``path`` is a file, or holds a different run's checkpoints.
        CheckpointError: ``run.json`` is unreadable.
    """

    def __init__(self, path: str | os.PathLike[str], fingerprint: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.fingerprint = _plain(dict(fingerprint))
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(
                f"resume_dir '{self.path}' is a file; pass a directory (created if missing)."
            )
        run = self.path / "run.json"
        if run.is_file():
            try:
                doc = json.loads(run.read_text())
                old = doc["fingerprint"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(
                    f"resume_dir '{self.path}': run.json is unreadable ({exc}); delete the "
                    "directory to start afresh."
                ) from exc
            if old != self.fingerprint:
                changes = _diff(old, self.fingerprint)
                raise ConfigError(
                    f"resume_dir '{self.path}' holds the checkpoints of a different run, so it "
                    "cannot be resumed with these arguments. Changed: "
                    + "; ".join(changes[:6])
                    + (f" (+{len(changes) - 6} more)" if len(changes) > 6 else "")
                    + ". Rerun with the original model, data and options, or pass a new "
                    "(empty) resume_dir."
                )
        elif distributed.is_main():
            self.path.mkdir(parents=True, exist_ok=True)
            doc = {"format": _FORMAT, "version": 1, "fingerprint": self.fingerprint}
            self._atomic_write(run, json.dumps(doc, indent=1).encode())
        distributed.barrier()

    # ------------------------------------------------------------------ files
    def _file(self, key: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", key).strip("_") or "stage"
        tag = hashlib.sha256(key.encode()).hexdigest()[:8]  # distinct keys, distinct files
        return self.path / f"{safe[:80]}-{tag}.safetensors"

    @staticmethod
    def _atomic_write(path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def save(self, key: str, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
        """Write checkpoint ``key`` atomically (rank 0 only; other ranks return at once)."""
        if distributed.is_main():
            from safetensors.torch import save

            state = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
            header = json.dumps({"key": key, "meta": _plain(dict(meta))})
            self._atomic_write(self._file(key), save(state, metadata={"compactnn": header}))
        if after_save is not None:
            after_save(key)

    def load(self, key: str) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
        """Checkpoint ``key`` as ``(tensors, meta)``, or ``None`` when it was never written."""
        p = self._file(key)
        if not p.is_file():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(p), framework="pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
                header = json.loads((f.metadata() or {})["compactnn"])
        except Exception as exc:  # a file not written by save (atomic, so never half-written)
            raise CheckpointError(
                f"resume_dir checkpoint '{p}' is unreadable ({type(exc).__name__}: {exc}); "
                "delete it (that stage is then recomputed)."
            ) from exc
        if header.get("key") != key:
            raise CheckpointError(f"resume_dir checkpoint '{p}' belongs to another stage.")
        return tensors, header["meta"]

    def save_plan(self, key: str, plan: Any) -> None:
        """Write a :class:`~compactnn.plan.CompressionPlan` (rank 0 only): saved under a
        temporary name, then both files moved into place. Save it before the checkpoint that
        refers to it, so a kill in between leaves a plan nobody reads."""
        if distributed.is_main():
            base = self._file(key).with_suffix("")
            tmp = base.with_name(f".{base.name}.tmp{os.getpid()}")
            plan.save(tmp)
            for ext in (".safetensors", ".json"):
                os.replace(tmp.with_name(tmp.name + ext), base.with_name(base.name + ext))
        if after_save is not None:
            after_save(key)

    def load_plan(self, key: str) -> Any:
        """The plan :meth:`save_plan` wrote under ``key``."""

        base = self._file(key).with_suffix("")
        return CompressionPlan.load(base.with_name(base.name + ".json"))


def current() -> RunStore | None:
    """The run store of the :func:`activate` block this call runs in, if any."""
    return _CURRENT.get()


@contextlib.contextmanager
def activate(store: RunStore | None) -> Iterator[RunStore | None]:
    """Make ``store`` current inside the block (``None``: no checkpoints)."""
    token = _CURRENT.set(store)
    try:
        yield store
    finally:
        _CURRENT.reset(token)


def suspended() -> contextlib.AbstractContextManager[RunStore | None]:
    """No current store inside the block (trial runs of a search must not checkpoint)."""
    return activate(None)


# --------------------------------------------------------------------------- state pieces
def rng_state(prefix: str = "rng.") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The global torch (CPU and CUDA), NumPy and Python RNG states as tensors + JSON."""
    tensors = {f"{prefix}torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"{prefix}cuda{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 - saved as is
    tensors[f"{prefix}numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    py = random.getstate()
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(gauss)], "python": [py[0], list(py[1])]}
    return tensors, meta


def set_rng_state(
    tensors: Mapping[str, Tensor], meta: Mapping[str, Any], prefix: str = "rng."
) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(tensors[f"{prefix}torch"])
    cuda = sorted(k for k in tensors if k.startswith(f"{prefix}cuda"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    kind, pos, has_gauss, gauss = meta["numpy"]
    keys = tensors[f"{prefix}numpy"].numpy().astype(np.uint32)
    np.random.set_state((kind, keys, pos, has_gauss, gauss))  # noqa: NPY002
    version, state = meta["python"]
    random.setstate((version, tuple(state), None))


def optimizer_state(
    opt: torch.optim.Optimizer, prefix: str = "opt."
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An optimizer's ``state_dict`` as tensors (per-parameter buffers) + JSON (the rest)."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"{prefix}{idx}.{name}"] = v
            else:
                plain.setdefault(str(idx), {})[name] = v
    return tensors, {"param_groups": sd["param_groups"], "plain": plain}


def load_optimizer(
    opt: torch.optim.Optimizer,
    tensors: Mapping[str, Tensor],
    meta: Mapping[str, Any],
    prefix: str = "opt.",
) -> None:
    """Restore what :func:`optimizer_state` saved into ``opt`` (same parameters)."""
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith(prefix):
            idx, name = k[len(prefix) :].split(".", 1)
            state.setdefault(int(idx), {})[name] = v
    for idx, st in meta["plain"].items():
        state.setdefault(int(idx), {}).update(st)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def tensor_fingerprint(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 of names, dtypes, shapes and bytes (e.g. of a model's state dict)."""
    h = hashlib.sha256()
    for k, v in tensors.items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update((t.float() if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    return h.hexdigest()


def model_state(model: nn.Module, prefix: str = "model.") -> dict[str, Tensor]:
    """``model``'s state dict with keys prefixed (for :meth:`RunStore.save`)."""
    return {f"{prefix}{k}": v for k, v in model.state_dict().items()}


def load_model_state(
    model: nn.Module, tensors: Mapping[str, Tensor], prefix: str = "model."
) -> None:
    """Load what :func:`model_state` saved into ``model`` (strict, on the model's devices)."""
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"resume_dir checkpoint does not fit the model being resumed ({exc}); delete the "
            "run directory to start afresh."
        ) from exc
