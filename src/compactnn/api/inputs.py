"""The ``data`` argument of :func:`~compactnn.api.compress`: :func:`as_compression_data`
normalises it (dataset name, loaders, datasets, mappings, dict batches) into a
:class:`~compactnn.methods.CompressionData` and carves the validation split
(:func:`split_loader`); :func:`describe_data` records what was fed."""

from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
)

from compactnn import data as data_mod
from compactnn._preflight import _first_batch, check_batch_form
from compactnn._validation import check_float, check_int, check_shape
from compactnn.errors import ConfigError
from compactnn.methods import CompressionData
from compactnn.train.loaders import worker_settings


def split_loader(loader: Any, fraction: float, seed: int) -> tuple[DataLoader, DataLoader] | None:
    """Carve a seeded validation split out of a training ``DataLoader``.

    Works for a ``DataLoader`` over a map-style dataset with the default samplers (shuffled or
    sequential); the two new loaders keep its batch size, collate function and workers, the
    training one reshuffles with a generator seeded by ``seed``. Returns ``None`` for anything
    else (iterable datasets, custom samplers), where the caller must pass a validation loader.
    The global RNG is not used.
    """
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return None
    if not isinstance(loader.sampler, (RandomSampler, SequentialSampler)):
        return None
    if loader.batch_size is None:
        return None
    try:
        n = len(loader.dataset)  # type: ignore[arg-type]
    except TypeError:
        return None
    n_val = int(round(fraction * n))
    if n < 2 or n_val < 1 or n_val >= n:
        return None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    val_idx, train_idx = sorted(perm[:n_val]), sorted(perm[n_val:])
    shuffle = isinstance(loader.sampler, RandomSampler)
    common = {
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
    }
    train = DataLoader(
        Subset(loader.dataset, train_idx),
        batch_size=loader.batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        drop_last=loader.drop_last,
        **common,
    )
    val = DataLoader(
        Subset(loader.dataset, val_idx),
        batch_size=max(int(loader.batch_size), 256),
        shuffle=False,
        **common,
    )
    return train, val


#: the splits a mapping given as ``data`` may hold
DATA_SPLITS = ("train", "val", "test", "calib")
#: label keys tried, in order, when dict batches are given without ``label_key``
LABEL_KEYS = ("label", "labels", "target", "targets", "y")


def _default_label_key(batch: dict[Any, Any]) -> str | None:
    """The first of :data:`LABEL_KEYS` that ``batch`` has, or ``None``."""
    return next((k for k in LABEL_KEYS if k in batch), None)


def _select(batch: Any, input_key: str, label_key: str | None) -> Any:
    """A dict batch -> ``(batch[input_key], batch[label_key])`` (``batch[input_key]`` alone
    when there is no label key); a tuple / tensor batch is returned unchanged."""
    if not isinstance(batch, dict):
        return batch
    if input_key not in batch:
        raise ConfigError(
            f"The 'input_key' parameter of compress is {input_key!r}, but the batches are dicts "
            f"with keys {sorted(map(str, batch))}; pass the key of the input tensor."
        )
    if label_key is None:
        label_key = _default_label_key(batch)
        if label_key is None:
            return batch[input_key]
    if label_key not in batch:
        raise ConfigError(
            f"The 'label_key' parameter of compress is {label_key!r}, but the batches are dicts "
            f"with keys {sorted(map(str, batch))}; pass the key of the labels."
        )
    return batch[input_key], batch[label_key]


class _SelectCollate:
    """``collate_fn`` wrapper: collate as before, then keep only the input (and label) key."""

    def __init__(self, collate: Any, input_key: str, label_key: str | None) -> None:
        self.collate, self.input_key, self.label_key = collate, input_key, label_key

    def __call__(self, items: Any) -> Any:
        return _select(self.collate(items), self.input_key, self.label_key)


class _SelectIterable:
    """An iterable of dict batches (not a DataLoader) seen as ``(x, y)`` batches."""

    def __init__(self, source: Any, input_key: str, label_key: str | None) -> None:
        self.source, self.input_key, self.label_key = source, input_key, label_key

    def __iter__(self) -> Iterator[Any]:
        for batch in self.source:
            yield _select(batch, self.input_key, self.label_key)

    def __len__(self) -> int:
        return len(self.source)


def _keyed(loader: Any, input_key: str, label_key: str | None) -> Any:
    """``loader`` yielding ``(batch[input_key], batch[label_key])`` instead of dict batches.

    A ``DataLoader`` is rebuilt over the same dataset with the same sampler (or batch sampler)
    and a collate function that selects the keys, so a validation split can still be carved
    from it and its shuffling reseeded; any other iterable is wrapped.
    """
    if loader is None:
        return None
    if not isinstance(loader, DataLoader):
        return _SelectIterable(loader, input_key, label_key)
    collate = _SelectCollate(loader.collate_fn, input_key, label_key)
    common = {**worker_settings(loader), "collate_fn": collate}
    ds = loader.dataset
    if isinstance(ds, IterableDataset):
        return DataLoader(ds, batch_size=loader.batch_size, drop_last=loader.drop_last, **common)
    if loader.batch_size is None:
        return DataLoader(ds, batch_sampler=loader.batch_sampler, **common)
    return DataLoader(
        ds,
        batch_size=loader.batch_size,
        sampler=loader.sampler,
        drop_last=loader.drop_last,
        **common,
    )


def _as_loader(obj: Any, split: str, batch_size: int, seed: int) -> Any:
    """A ``torch.utils.data.Dataset`` -> a DataLoader (shuffled with a seeded generator for
    training); loaders and other iterables are kept."""
    if isinstance(obj, Dataset) and not isinstance(obj, DataLoader):
        shuffle = split == "train" and not isinstance(obj, IterableDataset)
        gen = torch.Generator().manual_seed(seed) if shuffle else None
        bs = batch_size if split == "train" else max(batch_size, 256)
        return DataLoader(obj, batch_size=bs, shuffle=shuffle, generator=gen)
    return obj


def _first(loader: Any) -> Any:
    with _global_rng_preserved():
        return _first_batch(loader)


def _dict_keys(cd: CompressionData, input_key: str | None, label_key: str | None) -> Any:
    """``(input_key, label_key)`` to select from dict batches, ``None`` for tuple batches."""
    src = next((x for x in (cd.train, cd.val, cd.test, cd.calib) if x is not None), None)
    first = _first(src) if src is not None else None
    if first is ... and input_key is not None:  # a one-shot iterator: selected as it is read
        return input_key, label_key
    if not isinstance(first, dict):
        if input_key is not None:
            raise ConfigError(
                f"The 'input_key' parameter of compress ({input_key!r}) selects the input of "
                "dict batches, but the batches are "
                f"{type(first).__name__}s, not dicts; drop it."
            )
        return None
    keys = sorted(map(str, first))
    if input_key is None:
        raise ConfigError(
            f"The batches are dicts with keys {keys}: pass input_key=KEY (the key of the "
            "model's input tensor) and, if the labels are not under one of "
            f"{', '.join(LABEL_KEYS)}, label_key=KEY."
        )
    _select(first, input_key, None)  # a missing input key is named first
    if label_key is None:
        label_key = _default_label_key(first)
        if label_key is None:
            raise ConfigError(
                f"The batches are dicts with keys {keys} and none of them is a label key "
                f"({', '.join(LABEL_KEYS)}); pass label_key=KEY."
            )
    _select(first, input_key, label_key)  # a missing key fails here, before any work
    return input_key, label_key


def _splits_of(
    data: Any, batch_size: int, seed: int, dataset_kwargs: dict[str, Any] | None
) -> CompressionData:
    """The splits named by the ``data`` argument of :func:`compress`, as given (a dataset name
    is loaded with ``batch_size`` and ``seed``; a :class:`CompressionData` is copied)."""
    if isinstance(data, CompressionData):
        return copy.copy(data)
    elif isinstance(data, str):
        train, test = data_mod.get_loaders(
            data, batch_size=batch_size, seed=seed, **(dataset_kwargs or {})
        )
        return CompressionData(train=train, test=test, name=data)
    elif isinstance(data, dict):
        unknown = [k for k in data if k not in DATA_SPLITS]
        if unknown or "train" not in data and "calib" not in data:
            raise ConfigError(
                f"The 'data' mapping of compress has keys {sorted(map(str, data))}; it needs "
                f"'train' (or 'calib') and may hold only {', '.join(DATA_SPLITS)}."
            )
        return CompressionData(**{k: data.get(k) for k in DATA_SPLITS})
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        return CompressionData(train=data[0], test=data[1])
    elif isinstance(data, (tuple, list)) and len(data) == 3:
        return CompressionData(train=data[0], val=data[1], test=data[2])
    elif isinstance(data, (DataLoader, torch.utils.data.Dataset)):
        return CompressionData(train=data)
    elif data is None:
        return CompressionData(train=None)
    else:
        raise ConfigError(
            "The 'data' argument of compress must be a dataset name, a (train_loader, "
            "test_loader) pair, a (train, val, test) triple, a mapping {'train': ..., 'test': "
            "...}, a DataLoader, a Dataset or a CompressionData. "
            f"Got {type(data).__name__}."
        )


def _inferred_input_shape(cd: CompressionData) -> tuple[int, ...]:
    """The per-sample shape of the first input of the first batch of the first split."""
    src = next((x for x in (cd.train, cd.val, cd.test, cd.calib) if x is not None), None)
    if src is None:
        raise ConfigError("compress needs input_shape= when no data is given.")
    first = next(iter(src), None)
    if first is None:
        raise ConfigError(
            "The data loader is empty, so the input shape cannot be inferred: pass "
            "input_shape= (e.g. (1, 28, 28)) and data with at least one batch."
        )
    check_batch_form(first, "first")
    x = first[0] if isinstance(first, (tuple, list)) else first
    x = x[0] if isinstance(x, (tuple, list)) else x  # a multi-input model: the first input
    return tuple(int(s) for s in x.shape[1:])


def as_compression_data(
    data: Any,
    *,
    input_shape: Sequence[int] | None = None,
    batch_size: int = 128,
    seed: int = 0,
    val_fraction: float = 0.1,
    dataset_kwargs: dict[str, Any] | None = None,
    input_key: str | None = None,
    label_key: str | None = None,
) -> CompressionData:
    """Normalise the ``data`` argument of :func:`compress` and carve the validation split.

    Accepted: a dataset name (``"mnist"``), a ``(train, test)`` pair, a ``(train, val, test)``
    triple, a mapping with keys among ``train``, ``val``, ``test``, ``calib``, a single
    training loader, or a :class:`CompressionData` (never modified: a new one is returned).
    Each split may be a ``DataLoader`` (or any iterable of batches) or a
    ``torch.utils.data.Dataset``, which is wrapped in a ``DataLoader`` of ``batch_size``
    (training shuffled with a generator seeded by ``seed``). Without an explicit validation
    loader, ``val_fraction`` of the training samples (seeded by ``seed``) become the validation
    split and are removed from training.

    Batches are ``(x, y)`` tuples or tensors; dict batches (``{"image": x, "label": y}``) need
    ``input_key`` (and ``label_key`` unless the labels are under one of :data:`LABEL_KEYS`):
    every loader is then rebuilt to yield ``(batch[input_key], batch[label_key])``, so
    training, capture, metrics and export see plain tensors (the model's forward takes the
    input tensor).
    """
    val_fraction = check_float(
        val_fraction, "val_fraction", "compress", min_value=0.0, max_value=0.5
    )
    check_int(seed, "seed", "compress", min_value=0)
    batch_size = check_int(batch_size, "batch_size", "compress", min_value=1)
    for key, name in ((input_key, "input_key"), (label_key, "label_key")):
        if key is not None and not isinstance(key, str):
            raise ConfigError(
                f"The '{name}' parameter of compress must be a string (a key of the dict "
                f"batches). Got {type(key).__name__}."
            )
    if label_key is not None and input_key is None:
        raise ConfigError("The 'label_key' parameter of compress needs input_key= as well.")
    if input_shape is not None:
        input_shape = check_shape(input_shape, "input_shape", "compress")
    cd = _splits_of(data, batch_size, seed, dataset_kwargs)
    for split in DATA_SPLITS:
        setattr(cd, split, _as_loader(getattr(cd, split), split, batch_size, seed))
    keys = _dict_keys(cd, input_key, label_key)
    if keys is not None:
        for split in DATA_SPLITS:
            setattr(cd, split, _keyed(getattr(cd, split), *keys))
    if cd.val is None and cd.train is not None and val_fraction > 0:
        split = split_loader(cd.train, val_fraction, seed)
        if split is not None:
            cd.train, cd.val = split
    if input_shape is not None:
        cd.input_shape = tuple(input_shape)
    if cd.input_shape is None:
        cd.input_shape = _inferred_input_shape(cd)
    return cd


def _n_samples(loader: Any) -> int | None:
    try:
        return int(len(loader.dataset))
    except (AttributeError, TypeError):
        return None


def describe_data(cd: CompressionData, **extra: Any) -> dict[str, Any]:
    """What was fed, for reports: per split the number of samples (or batches) and the batch
    size, the input shape and ``extra`` (dataset, normalisation, input key ...)."""
    splits: dict[str, Any] = {}
    for split in DATA_SPLITS:
        loader = getattr(cd, split)
        if loader is None:
            continue
        row: dict[str, Any] = {"samples": _n_samples(loader)}
        if getattr(loader, "batch_size", None):
            row["batch_size"] = int(loader.batch_size)
        if row["samples"] is None:
            try:
                row["batches"] = len(loader)
            except TypeError:
                pass
        splits[split] = row
    doc: dict[str, Any] = {"name": cd.name, "splits": splits}
    sel = next((x for x in (cd.train, cd.val, cd.test, cd.calib) if x is not None), None)
    sel = getattr(sel, "collate_fn", sel)
    if isinstance(sel, (_SelectCollate, _SelectIterable)):
        doc["input_key"], doc["label_key"] = sel.input_key, sel.label_key
    doc["input_shape"] = None if cd.input_shape is None else list(cd.input_shape)
    doc.update({k: v for k, v in extra.items() if v is not None and k not in doc})
    return doc


@contextlib.contextmanager
def _global_rng_preserved() -> Iterator[None]:
    """Restore torch's (CPU, and every CUDA device's once CUDA is in use), numpy's and
    Python's global RNG states on exit."""
    py, npy = random.getstate(), np.random.get_state()  # noqa: NPY002 - restoring it
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)  # noqa: NPY002
