"""The training loader as :func:`~compactnn.train.train` reads it: reshuffled by the run's seed
(:func:`_seeded`), sharded per rank under ``torch.distributed``, and with a teacher's logits as a
third item of every batch for distillation (:func:`_with_teacher_logits`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeGuard

import torch
from torch import nn
from torch.utils.data import (
    DataLoader,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    default_collate,
)
from torch.utils.data.distributed import DistributedSampler

from compactnn import distributed


class _SoftTargets(torch.utils.data.Dataset):
    """``dataset[i]`` followed by the teacher's logits of sample ``i``."""

    def __init__(self, dataset: Any, logits: torch.Tensor) -> None:
        self.dataset, self.logits = dataset, logits

    def __len__(self) -> int:
        return len(self.logits)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        x, y = self.dataset[i][:2]
        return x, y, self.logits[i]


class _TeacherPerBatch:
    """Wraps any iterable of ``(x, y)``: yields ``(x, y, teacher(x))``."""

    def __init__(self, loader: Iterable[Any], teacher: nn.Module) -> None:
        self.loader, self.teacher = loader, teacher

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Any:
        dev = next(self.teacher.parameters()).device
        was_training = self.teacher.training
        self.teacher.eval()
        try:
            for x, y, *_ in self.loader:
                with torch.no_grad():
                    t = self.teacher(x.to(dev)).detach()
                yield x, y, t
        finally:
            self.teacher.train(was_training)


def _with_teacher_logits(loader: Iterable[Any], teacher: nn.Module, seed: int) -> Iterable[Any]:
    """The loader with the teacher's logits as a third item of every batch.

    A ``DataLoader`` over a map-style dataset with the default sampler and collation gets the
    logits of every sample computed once (one pass in eval mode) and is rebuilt with the same
    batch size, shuffling (seeded by ``seed``), ``drop_last`` and workers; anything else gets the
    teacher run on every batch.
    """
    if not _rebuildable(loader) or loader.collate_fn is not default_collate:
        return _TeacherPerBatch(_seeded(loader, seed) if distributed.active() else loader, teacher)
    ds = loader.dataset
    dev = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    chunks = []
    try:
        with torch.no_grad():
            for x, *_ in DataLoader(ds, batch_size=512, shuffle=False):
                chunks.append(teacher(x.to(dev)).detach().cpu())
    finally:
        teacher.train(was_training)
    logits = torch.cat(chunks)
    return _rebuilt(loader, _SoftTargets(ds, logits), seed)


#: what a rebuilt ``DataLoader`` keeps of the one it replaces, besides its order and batching
_WORKER_SETTINGS: tuple[str, ...] = (
    "num_workers",
    "collate_fn",
    "pin_memory",
    "worker_init_fn",
    "timeout",
    "persistent_workers",
)


def worker_settings(loader: DataLoader) -> dict[str, Any]:
    """The loading settings of ``loader`` (workers, collation, pinned memory, timeout) as
    ``DataLoader`` keywords, for a loader rebuilt over the same or another dataset."""
    return {k: getattr(loader, k) for k in _WORKER_SETTINGS}


def _rebuilt(loader: Any, dataset: Any, seed: int) -> Any:
    """``loader`` over ``dataset`` with its batching, workers and collation, reshuffled by a fresh
    generator seeded with ``seed`` (no generator when the loader does not shuffle)."""
    shuffle = isinstance(loader.sampler, RandomSampler)
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    order: dict[str, Any] = {"shuffle": shuffle}
    if distributed.active():
        # this rank's share of the single-process order (same generator, same draws): the
        # per-rank batches of a step make up the single-process batch of size B x world size
        base = RandomSampler(dataset, generator=gen) if shuffle else SequentialSampler(dataset)
        sampler = distributed.RankShard(
            base, num_replicas=distributed.world_size(), rank=distributed.rank()
        )
        order = {"sampler": sampler}
    return DataLoader(
        dataset,
        batch_size=loader.batch_size,
        **order,
        generator=gen,
        drop_last=loader.drop_last,
        **worker_settings(loader),
    )


def _seeded(loader: Iterable[Any], seed: int) -> Iterable[Any]:
    """``loader`` with its shuffling reseeded by ``seed``, so that a :func:`train` call sees the
    same batch order whatever the loader was used for before.

    Only a ``DataLoader`` over a map-style dataset with the default shuffling sampler
    (``shuffle=True``) is rebuilt; a sequential loader, a custom sampler or batch sampler, an
    iterable dataset or any other iterable is used as given (its order is the caller's).
    """
    if distributed.active():  # every rank reads its own share (sequential loaders too)
        if _rebuildable(loader):
            return _rebuilt(loader, loader.dataset, seed)
        if isinstance(getattr(loader, "sampler", None), DistributedSampler):
            return loader  # the caller's own split; train() calls set_epoch
        distributed.require_shardable(loader, "train")
    if _rebuildable(loader) and isinstance(loader.sampler, RandomSampler):
        return _rebuilt(loader, loader.dataset, seed)
    return loader


def _rebuildable(loader: Any) -> TypeGuard[DataLoader[Any]]:
    """A ``DataLoader`` over a map-style dataset with the default samplers (``shuffle=True`` or
    ``False``, automatic batching): one that :func:`_rebuilt` reproduces exactly."""
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return False
    if loader.batch_size is None:
        return False
    s = loader.sampler
    if type(s) is SequentialSampler:
        return True
    return (
        type(s) is RandomSampler and not s.replacement and s.num_samples == len(loader.dataset)  # type: ignore[arg-type]
    )
