"""``compactnn.compress``: a model in, a physically smaller model (plus plan and report) out."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import random
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from compactnn import distributed
from compactnn._preflight import check_batch_form, check_data, check_model_finite
from compactnn._validation import check_choice, check_float, check_int, check_shape
from compactnn.budget import Target
from compactnn.errors import AccuracyDropError, ConfigError
from compactnn.methods import CompressionData, CompressionResult, get_method

__all__ = [
    "compress",
    "as_compression_data",
    "describe_data",
    "split_loader",
    "DEFAULT_MAX_DROP",
]

#: accuracy points on validation a run may lose before :func:`compress` refuses its result
DEFAULT_MAX_DROP = 5.0


def split_loader(loader: Any, fraction: float, seed: int) -> tuple[DataLoader, DataLoader] | None:
    """Carve a seeded validation split out of a training ``DataLoader``.

    Works for a ``DataLoader`` over a map-style dataset with the default samplers (shuffled or
    sequential); the two new loaders keep its batch size, collate function and workers, the
    training one reshuffles with a generator seeded by ``seed``. Returns ``None`` for anything
    else (iterable datasets, custom samplers), where the caller must pass a validation loader.
    The global RNG is not used.
    """
    from torch.utils.data import IterableDataset, RandomSampler, SequentialSampler, Subset

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
    from torch.utils.data import IterableDataset

    if loader is None:
        return None
    if not isinstance(loader, DataLoader):
        return _SelectIterable(loader, input_key, label_key)
    collate = _SelectCollate(loader.collate_fn, input_key, label_key)
    common: dict[str, Any] = {
        "collate_fn": collate,
        "num_workers": loader.num_workers,
        "pin_memory": loader.pin_memory,
        "worker_init_fn": loader.worker_init_fn,
        "timeout": loader.timeout,
        "persistent_workers": loader.persistent_workers,
    }
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
    from torch.utils.data import Dataset, IterableDataset

    if isinstance(obj, Dataset) and not isinstance(obj, DataLoader):
        shuffle = split == "train" and not isinstance(obj, IterableDataset)
        gen = torch.Generator().manual_seed(seed) if shuffle else None
        bs = batch_size if split == "train" else max(batch_size, 256)
        return DataLoader(obj, batch_size=bs, shuffle=shuffle, generator=gen)
    return obj


def _first(loader: Any) -> Any:
    from compactnn._preflight import _first_batch

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
    if isinstance(data, CompressionData):
        cd = copy.copy(data)
    elif isinstance(data, str):
        from compactnn import data as data_mod

        train, test = data_mod.get_loaders(
            data, batch_size=batch_size, seed=seed, **(dataset_kwargs or {})
        )
        cd = CompressionData(train=train, test=test, name=data)
    elif isinstance(data, dict):
        unknown = [k for k in data if k not in DATA_SPLITS]
        if unknown or "train" not in data and "calib" not in data:
            raise ConfigError(
                f"The 'data' mapping of compress has keys {sorted(map(str, data))}; it needs "
                f"'train' (or 'calib') and may hold only {', '.join(DATA_SPLITS)}."
            )
        cd = CompressionData(**{k: data.get(k) for k in DATA_SPLITS})
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        cd = CompressionData(train=data[0], test=data[1])
    elif isinstance(data, (tuple, list)) and len(data) == 3:
        cd = CompressionData(train=data[0], val=data[1], test=data[2])
    elif isinstance(data, (DataLoader, torch.utils.data.Dataset)):
        cd = CompressionData(train=data)
    elif data is None:
        cd = CompressionData(train=None)
    else:
        raise ConfigError(
            "The 'data' argument of compress must be a dataset name, a (train_loader, "
            "test_loader) pair, a (train, val, test) triple, a mapping {'train': ..., 'test': "
            "...}, a DataLoader, a Dataset or a CompressionData. "
            f"Got {type(data).__name__}."
        )
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
        cd.input_shape = tuple(int(s) for s in x.shape[1:])
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


def _collapsed(original: nn.Module, new: nn.Module, classifier: str | None) -> dict[str, int]:
    """Conv/Linear layers with more than one unit before and at most one after."""
    old = {
        n: m.weight.shape[0]
        for n, m in original.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and n != classifier
    }
    out = {}
    for n, m in new.named_modules():
        if n in old and isinstance(m, (nn.Conv2d, nn.Linear)):
            if old[n] > 1 and m.weight.shape[0] <= 1:
                out[n] = int(m.weight.shape[0])
    return out


def _guard(
    result: CompressionResult,
    model: nn.Module,
    cd: CompressionData,
    *,
    max_drop: float,
    on_drop: str,
    val_before: float | None,
) -> None:
    """No silent destruction: validation drop and collapsed layers raise (or warn)."""
    from compactnn.metrics import accuracy

    problems = []
    if val_before is not None and cd.val is not None:
        after = accuracy(result.model, cd.val, topk=(1,))
        result.validation = {
            "before": val_before,
            "after": after["top1"],
            "drop": val_before - after["top1"],
            "n": after["n"],
        }
        if result.validation["drop"] > max_drop:
            problems.append(
                f"validation top-1 fell from {val_before:.2f} % to {after['top1']:.2f} % "
                f"({result.validation['drop']:.2f} points > max_drop={max_drop:g})"
            )
    collapsed = _collapsed(model, result.model, result.history.get("classifier"))
    if collapsed:
        problems.append(
            "layer(s) collapsed to <= 1 unit: "
            + ", ".join(f"'{n}' ({u})" for n, u in collapsed.items())
        )
    if not problems:
        return
    advice = (
        "pass a budget (target={'macs': 0.1}) so the strength is chosen on validation, lower "
        "the method's strength (lam / mu / ratio), or fine-tune longer (finetune_epochs)"
        if result.target is None
        else "relax the target or fine-tune longer (finetune_epochs)"
    )
    msg = (
        f"{result.method}: " + "; ".join(problems) + f". To fix: {advice}; "
        "on_drop='warn' returns such a result with a warning."
    )
    if on_drop == "warn":
        warnings.warn(msg, RuntimeWarning, stacklevel=4)
        return
    raise AccuracyDropError(msg, result=result)


def compress(
    model: nn.Module,
    method: str,
    data: Any = None,
    *,
    target: Any = None,
    max_drop: float | None = None,
    on_drop: str = "raise",
    val_fraction: float = 0.1,
    seed: int = 0,
    inplace: bool = False,
    input_shape: Sequence[int] | None = None,
    measure: bool = True,
    latency_batch_size: int = 100,
    latency_threads: int = 1,
    progress: bool = True,
    resume_dir: Any = None,
    input_key: str | None = None,
    label_key: str | None = None,
    **options: Any,
) -> CompressionResult:
    """Compress a trained model with a registered method, optionally to a budget.

    Args:
        model: a trained ``nn.Module`` (never modified unless ``inplace=True``).
        method: registry name (``compactnn.methods.list_methods()``), e.g. ``"ssr"``, ``"ddlr"``.
        data: dataset name, ``(train_loader, test_loader)``, ``(train, val, test)``, a
            ``DataLoader`` or :class:`~compactnn.methods.CompressionData`.
        target: a budget, :class:`~compactnn.budget.Target` or mapping such as
            ``{"macs": 0.1}`` (fractions of the original kept: params, macs, latency). The
            method's strength (λ, μ, ratio, rank ...) is then chosen by a search on the
            training/validation data; the result records the choice in ``result.chosen``.
        max_drop: accuracy points the model may lose on the validation split (default
            ``DEFAULT_MAX_DROP`` = 5). Exceeding it, or a layer collapsing to <= 1 unit, raises
            :class:`~compactnn.errors.AccuracyDropError` (which carries the result).
        on_drop: ``"raise"`` (default) or ``"warn"``.
        val_fraction: share of the training data held out for validation (seeded by ``seed``)
            when no validation loader is given; 0 disables the split and the drop guard.
        seed: seed of the validation split, of the loaders built for a dataset name and of
            the method (its ``seed`` option, when it has one).
        inplace: let the method train/modify ``model`` itself instead of a deep copy.
        input_shape: per-sample input shape (inferred from the data when omitted).
        measure: measure before/after reports (params, FLOPs, latency, accuracy on ``test``).
        latency_batch_size: batch size of the latency measurement (SSR Table I uses 100).
        latency_threads: torch threads during the latency measurement.
        progress: tqdm progress bars (rank 0 only under torch.distributed).
        resume_dir: a run directory: every stage is checkpointed there atomically (each mu,
            each SSR layer / lambda stage, every training and fine-tuning epoch, the budget
            search's choice) and a rerun with the same arguments continues after the last
            finished stage, ending with the same model as an uninterrupted run. A directory
            written by a run with other options, model, data or world size is refused
            (:mod:`compactnn.resume`).
        input_key / label_key: for dict batches, the keys of the model's input and of the
            labels (see :func:`as_compression_data`).
        **options: the method's hyper-parameters (see ``get_method(method).Config``).

    Returns:
        CompressionResult with the smaller model, its plan, history, both reports, the
        resolved options (``chosen``), the budget record (``target``) and ``validation``.

    Inside an initialised ``torch.distributed`` process group (e.g. under ``torchrun``) every
    rank calls ``compress`` with the same arguments; training is data-parallel (DDP, global
    batch = the loader's batch x world size), every other decision is made identically on each
    rank, and every rank returns the same result (:mod:`compactnn.distributed`).

    Raises:
        ConfigError: a bad option or target (before any expensive work).
        AccuracyDropError: the result lost more than ``max_drop`` points on validation or a
            layer collapsed (``on_drop="raise"``).
    """
    cls = get_method(method)
    if "seed" in {f.name for f in dataclasses.fields(cls.Config)}:
        options["seed"] = seed  # one seed for the split, the loaders and the method
    algo = cls(**options)
    tgt = None if target is None else Target.parse(target)
    max_drop = DEFAULT_MAX_DROP if max_drop is None else max_drop
    check_float(max_drop, "max_drop", "compress", min_value=0.0)
    check_choice(on_drop, "on_drop", "compress", ("raise", "warn"))
    check_int(seed, "seed", "compress", min_value=0)
    check_model_finite(model)
    cd = as_compression_data(
        data,
        input_shape=input_shape,
        seed=seed,
        val_fraction=val_fraction,
        input_key=input_key,
        label_key=label_key,
    )
    shape = cd.require_input_shape(method)
    with _global_rng_preserved():  # reading a first batch may draw a loader seed
        real = check_data(model, cd)
    if cd.check_batch is None:
        cd.check_batch = real  # the surgery self-check also runs on these real samples
    store = None
    if resume_dir is not None:
        from compactnn.resume import RunStore

        store = RunStore(resume_dir, _fingerprint(model, algo, cd, tgt, seed, val_fraction))
    progress = progress and distributed.is_main()
    with _global_rng_preserved():
        return _compress(
            model, algo, cd, shape, tgt, max_drop, on_drop, inplace, measure,
            latency_batch_size, latency_threads, progress, store,
        )  # fmt: skip


def _loader_fingerprint(loader: Any) -> Any:
    """Length, batching and a checksum of a few samples of a loader's dataset."""
    from compactnn.resume import tensor_fingerprint

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
        import hashlib

        rec["other"] = hashlib.sha256("\n".join(other).encode()).hexdigest()
    return rec


def _fingerprint(
    model: nn.Module, algo: Any, cd: CompressionData, tgt: Any, seed: int, val_fraction: float
) -> dict[str, Any]:
    """What makes a run: method + options, the model's weights, the data, the world size."""
    from compactnn.resume import tensor_fingerprint

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


def _compress(
    model: nn.Module,
    algo: Any,
    cd: CompressionData,
    shape: tuple[int, ...],
    tgt: Target | None,
    max_drop: float,
    on_drop: str,
    inplace: bool,
    measure: bool,
    latency_batch_size: int,
    latency_threads: int,
    progress: bool,
    store: Any = None,
) -> CompressionResult:
    from compactnn import resume
    from compactnn.budget import measure as measure_size
    from compactnn.metrics import accuracy, report

    lat = {"batch_size": latency_batch_size, "threads": latency_threads}
    before = report(model, shape, data=cd.test, **lat) if measure else None
    val_before = accuracy(model, cd.val, topk=(1,))["top1"] if cd.val is not None else None
    work = model if inplace else copy.deepcopy(model)
    record = None
    if tgt is not None:
        saved = store.load("budget search") if store is not None else None
        if saved is not None:  # the search's choice, as the interrupted run made it
            algo, record = type(algo)(**saved[1]["options"]), saved[1]["record"]
        else:
            with resume.suspended():  # the search's trial runs are not checkpointed
                algo, record = algo.calibrate(work, cd, tgt, progress=progress)
            if store is not None:
                store.save("budget search", {}, {"options": algo.options(), "record": record})
        distributed.check_values(algo.options(), "budget search (chosen options)")
    with resume.activate(store):
        result = algo.run(work, cd, progress=progress)
    distributed.check_synced(result.model.state_dict(), f"{result.method}: returned model")
    result.chosen = algo.options()
    if tgt is not None:
        base = measure_size(model, shape, tgt.keys, latency_batch_size=latency_batch_size)
        got = measure_size(result.model, shape, tgt.keys, latency_batch_size=latency_batch_size)
        kept = got.fractions(base)
        record = dict(record or {})
        record.update(kept=kept, met=tgt.met(kept))
        result.target = record
        if not record["met"]:
            warnings.warn(
                f"{result.method}: the returned model keeps {kept} of the original, outside "
                f"the target {tgt.as_dict()} (tolerance {tgt.tolerance:g}).",
                RuntimeWarning,
                stacklevel=3,
            )
    if measure:
        result.report_before = before
        result.report_after = report(result.model, shape, data=cd.test, **lat)
    _guard(result, model, cd, max_drop=max_drop, on_drop=on_drop, val_before=val_before)
    return result
