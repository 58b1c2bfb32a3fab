"""Data-parallel training under ``torch.distributed`` (DDP), the engine the field runs on.

compactnn does not implement its own parallel engine: inside an initialised process group
(``torchrun --nproc-per-node N -m compactnn compress ...`` initialises one, see
:func:`init_from_env`; an API user calls ``torch.distributed.init_process_group`` first) every
training loop of the package (:func:`compactnn.train.train`: the W-/K-steps of ADMM / AULM, the
proximal-gradient training of PGT and every method's fine-tuning) wraps the model in
:class:`torch.nn.parallel.DistributedDataParallel` and reads its share of each batch through a
:class:`torch.utils.data.distributed.DistributedSampler` (:class:`RankShard`).

Conventions:

* **Global batch = per-rank batch x world size.** The loader's batch size is the per-rank
  batch. Rank ``r`` reads positions ``r, r + W, r + 2W, ...`` of the order the single-process
  loader would draw (same seeded generator, same draws), so step ``j`` of a run on ``W``
  processes with per-rank batch ``B`` sees exactly the samples of step ``j`` of one process
  with batch ``B x W``, and DDP's averaged gradient is that process's gradient. Exact when
  ``B x W`` divides the number of samples; otherwise the last batch differs (DistributedSampler
  pads every rank to the same length by repeating the first samples).
* **Everything that is not a gradient is computed on every rank from identical state**: the
  F-steps (prox), dual updates, over-pruning guards, pruning decisions and surgery, budget
  searches, validation accuracies. They are deterministic functions of the synchronised
  parameters, so the ranks agree; :func:`check_synced` verifies it when
  ``COMPACTNN_DDP_CHECK=1`` (or :func:`set_check`) and raises :class:`DistributedError` naming
  the tensor and the ranks that differ.
* **Only rank 0 writes** (CLI outputs, resume checkpoints) and shows progress.
* Backend: ``nccl`` when CUDA is available, else ``gloo`` (CPU).
* BatchNorm layers normalise with each rank's own batch statistics (DDP broadcasts rank 0's
  running statistics every forward); convert them with ``nn.SyncBatchNorm`` on GPUs for
  global-batch statistics. Models without BatchNorm match the single-process run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data.distributed import DistributedSampler

from compactnn.errors import ConfigError, DistributedError

__all__ = [
    "RankShard",
    "active",
    "all_reduce_sum",
    "barrier",
    "check_enabled",
    "check_synced",
    "check_values",
    "init_from_env",
    "is_main",
    "rank",
    "require_shardable",
    "set_check",
    "world_size",
    "wrap",
]

_CHECK: bool | None = None  # set_check(); None: read COMPACTNN_DDP_CHECK


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def active() -> bool:
    """Whether a process group with more than one rank is initialised."""
    dist = _dist()
    return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    dist = _dist()
    return int(dist.get_rank()) if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of ranks (1 outside a process group)."""
    dist = _dist()
    return int(dist.get_world_size()) if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0 (or no process group): the process that writes outputs and shows progress."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op outside a multi-rank group)."""
    if active():
        _dist().barrier()


def init_from_env() -> bool:
    """Initialise the default process group from torchrun's environment, if there is one.

    Does nothing (returns False) unless ``WORLD_SIZE`` > 1 is set and no group exists yet.
    Backend ``nccl`` (and ``cuda:LOCAL_RANK`` as the current device) when CUDA is available,
    else ``gloo``. Returns True when it initialised a group (the caller destroys it).
    """
    dist = _dist()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if dist.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return True


def _device() -> torch.device:
    """The device collectives of the current backend run on."""
    if _dist().get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum ``values`` over the ranks (returned unchanged outside a multi-rank group)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    _dist().all_reduce(t)
    return [float(v) for v in t.cpu()]


def wrap(model: nn.Module) -> nn.Module:
    """``model`` wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` (gradients
    all-reduced, averaged, during ``backward``); the parameters stay ``model``'s own, rank 0's
    values are broadcast to every rank on construction."""
    from torch.nn.parallel import DistributedDataParallel

    dev = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)


class RankShard(DistributedSampler):
    """This rank's share of ``base``'s order, interleaved as :class:`DistributedSampler` shares.

    ``base`` is the sampler the single-process loader would use (a seeded ``RandomSampler`` or a
    ``SequentialSampler``): every rank draws the same permutation from the same generator, pads
    it like :class:`DistributedSampler` to a multiple of the world size and keeps positions
    ``rank, rank + W, ...``. Consecutive per-rank batches of size ``B`` therefore make up the
    single-process batches of size ``B x W`` (see the module docstring).
    """

    def __init__(self, base: Any, *, num_replicas: int, rank: int) -> None:
        super().__init__(base, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.base = base

    def __iter__(self) -> Iterator[int]:
        indices = list(iter(self.base))
        pad = self.total_size - len(indices)
        if pad > 0:
            indices += (indices * math.ceil(pad / len(indices)))[:pad]
        return iter(indices[self.rank : self.total_size : self.num_replicas])


# ------------------------------------------------------------------------- debug checksums
def set_check(enabled: bool | None) -> None:
    """Turn the cross-rank checksums on or off (``None``: follow ``COMPACTNN_DDP_CHECK``)."""
    global _CHECK
    _CHECK = enabled


def check_enabled() -> bool:
    """Whether :func:`check_synced` compares ranks (``set_check`` or ``COMPACTNN_DDP_CHECK``)."""
    if _CHECK is not None:
        return _CHECK
    return os.environ.get("COMPACTNN_DDP_CHECK", "") not in ("", "0")


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.sha256(data).digest()[:7], "little")  # fits in int64


def _tensor_digest(t: Tensor) -> int:
    t = t.detach()
    head = f"{t.dtype}{tuple(t.shape)}".encode()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return _digest(head + t.cpu().contiguous().numpy().tobytes())


def _gather(values: list[int]) -> list[list[int]]:
    dist = _dist()
    t = torch.tensor(values, dtype=torch.int64, device=_device())
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [[int(v) for v in o.cpu()] for o in out]


def check_synced(tensors: Mapping[str, Tensor], where: str) -> None:
    """Raise :class:`DistributedError` on every rank if a tensor differs across ranks.

    Bit-exact comparison of a SHA-256 checksum of every tensor (dtype, shape and bytes),
    gathered from all ranks. Only when checks are enabled (:func:`check_enabled`) and a
    multi-rank group is active; every rank must call it with the same names, in the same order.

    Args:
        tensors: name -> tensor (e.g. a state dict, an ADMM engine's F and Y).
        where: the stage, named in the error (``"ssr conv1 AULM iteration 3"``).
    """
    if not active() or not check_enabled():
        return
    names = list(tensors)
    mine = [_digest("\n".join(names).encode()), *(_tensor_digest(tensors[n]) for n in names)]
    # the name list first: same length on every rank, or the gather itself cannot line up
    lengths = _gather([len(mine)])
    if len({g[0] for g in lengths}) > 1:
        raise DistributedError(
            f"{where}: the ranks hold different numbers of tensors "
            f"({[g[0] for g in lengths]} by rank); the runs diverged earlier (different models "
            "or options per rank?). Give every rank the same model, data and options."
        )
    rows = _gather(mine)
    if len({r[0] for r in rows}) > 1:
        raise DistributedError(
            f"{where}: the ranks hold tensors of different names; give every rank the same "
            "model and options."
        )
    for i, n in enumerate(names, start=1):
        if len({r[i] for r in rows}) > 1:
            bad = [k for k, r in enumerate(rows) if r[i] != rows[0][i]]
            raise DistributedError(
                f"{where}: tensor '{n}' differs across ranks (rank(s) {bad} differ from rank "
                f"0; shape {tuple(tensors[n].shape)}). A step that must be identical on every "
                "rank (F-step, dual update, pruning decision) diverged: check that every rank "
                "runs the same code, options and torch version, and that nothing outside "
                "compactnn changes one rank's model."
            )


def broadcast_object(obj: Any) -> Any:
    """``obj`` as rank 0 has it, on every rank (pickled; ``obj`` itself without a process group).

    For decisions that depend on measurements each rank makes for itself (e.g. timings), so
    that every rank takes rank 0's."""
    if not active():
        return obj
    box = [obj if rank() == 0 else None]
    _dist().broadcast_object_list(box, src=0)
    return box[0]


def check_values(values: Any, where: str) -> None:
    """:func:`check_synced` for a JSON-serialisable decision (kept filters, chosen options)."""
    if not active() or not check_enabled():
        return
    blob = json.dumps(values, sort_keys=True, default=repr).encode()
    digest = torch.tensor([_digest(blob)], dtype=torch.int64, device=_device())
    check_synced({"decision": digest}, where)


def require_shardable(loader: Any, owner: str) -> None:
    """Refuse a loader that data-parallel training cannot split (see :mod:`compactnn.train`)."""
    raise ConfigError(
        f"{owner}: under torch.distributed (world size {world_size()}) the training loader "
        f"must be a DataLoader over a map-style dataset with shuffle=True or shuffle=False "
        "(compactnn splits it over the ranks) or a DataLoader with a DistributedSampler (your "
        f"own split). Got {type(loader).__name__}"
        + (f" with sampler {type(loader.sampler).__name__}" if hasattr(loader, "sampler") else "")
        + "."
    )
