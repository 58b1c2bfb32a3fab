"""The public loaders: raw arrays (:func:`load_arrays`), tensors with the transforms
(:func:`get_dataset`), train / test :class:`~torch.utils.data.DataLoader` pairs
(:func:`get_loaders`) and the normalisation they apply (:func:`normalisation`).

:func:`load_arrays` dispatches a registry name to its reader (:mod:`~compactnn.zoo.data.mnist`,
:mod:`~compactnn.zoo.data.cifar`, :mod:`~compactnn.zoo.data.builtin`) and scales uint8 pixels
to ``[0, 1]`` (``x = p / 255``, as torchvision's ``ToTensor``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader, TensorDataset

from compactnn._validation import check_bool, check_choice, check_int
from compactnn.errors import ConfigError
from compactnn.zoo.data.builtin import _load_digits, _load_spiral
from compactnn.zoo.data.cifar import _load_cifar
from compactnn.zoo.data.formats import _cache_dir
from compactnn.zoo.data.mnist import _load_fashion, _load_mnist
from compactnn.zoo.data.registry import _INFO, SPLITS, DatasetInfo, _canonical, dataset_info


def _check_split(split: Any, owner: str) -> str:
    return check_choice(split, "split", owner, SPLITS)


def load_arrays(
    name: str,
    split: str = "train",
    *,
    root: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Load a dataset split as raw numpy arrays.

    Args:
        name: one of :data:`DATASETS`.
        split: ``"train"`` or ``"test"``.
        root: directory holding the dataset files (fashion-mnist, cifar10; mnist optional).
        cache_dir: where converted files are cached; default ``$COMPACTNN_CACHE`` or
            ``~/.cache/compactnn``.

    Returns:
        ``(x, y)``: ``x`` float32 in ``[0, 1]`` shaped ``(N, C, H, W)`` (spiral: ``(N, 2)``
        coordinates), ``y`` int64 of shape ``(N,)``.

    Raises:
        UnknownNameError: unknown dataset name.
        ConfigError: bad split.
        DatasetNotFoundError: the files are missing (the message says how to install them).
        DatasetFormatError: a file is corrupt, truncated or not a plain numpy pickle.
    """
    key = _canonical(name)
    split = _check_split(split, "load_arrays")
    root_path = Path(root).expanduser() if root is not None else None
    cache = _cache_dir(cache_dir)
    if key == "mnist":
        x, y = _load_mnist(root_path, cache, split)
    elif key == "fashion-mnist":
        x, y = _load_fashion(root_path, split)
    elif key == "cifar10":
        x, y = _load_cifar(root_path, cache, split)
    elif key == "digits":
        return _load_digits(split)
    else:
        return _load_spiral(split)
    xf = x.astype(np.float32)
    xf /= np.float32(255.0)
    return xf.reshape(xf.shape[0], -1, *xf.shape[-2:]), np.asarray(y, dtype=np.int64)


def get_dataset(
    name: str,
    split: str = "train",
    *,
    root: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    normalize: bool = True,
    pad_to: int | None = None,
    channels: int | None = None,
    flatten: bool = False,
    limit: int | None = None,
    seed: int = 0,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
) -> TensorDataset:
    """Load a dataset split as a :class:`~torch.utils.data.TensorDataset` ``(x, y)``.

    Transforms, in order: ``limit`` (a random subset of ``min(limit, N)`` samples drawn with
    ``numpy.random.default_rng(seed)``, kept in the original order), ``pad_to`` (centered zero
    padding of the raw ``[0, 1]`` image, i.e. black border), ``normalize`` ((x - mean) / std per
    channel with :func:`dataset_info`'s train statistics, or with ``mean`` / ``std`` when
    given), ``channels`` (replicate a grey channel),
    ``flatten`` (``(N, C*H*W)``, for MLPs).

    Args:
        name: one of :data:`DATASETS`.
        split: ``"train"`` or ``"test"``.
        root: dataset directory, see :func:`load_arrays`.
        cache_dir: cache directory, see :func:`load_arrays`.
        normalize: standardize with the dataset's mean/std.
        mean, std: the statistics of ``normalize`` instead of the dataset's: one value, or one
            per channel (per feature for vectors); ``std`` > 0.
        pad_to: target square size (e.g. 32 for LeNet-5 on 28x28 MNIST); images only.
        channels: output channels; ``3`` replicates a single grey channel. Images only.
        flatten: flatten each sample to a vector.
        limit: keep at most this many samples (seeded random subset).
        seed: seed of the ``limit`` subset.

    Returns:
        TensorDataset of float32 inputs and int64 labels.

    Raises:
        ConfigError: an option is invalid for this dataset.
    """
    key = _canonical(name)
    info = _INFO[key]
    owner = "get_dataset"
    normalize = check_bool(normalize, "normalize", owner)
    flatten = check_bool(flatten, "flatten", owner)
    seed = check_int(seed, "seed", owner, min_value=0)
    pad_to, channels = _image_options(key, info, pad_to, channels, owner)
    if limit is not None:
        limit = check_int(limit, "limit", owner, min_value=1)
    norm_mean = _stat(mean, "mean", owner, info)
    norm_std = _stat(std, "std", owner, info)
    if norm_std is not None and min(norm_std) <= 0:
        raise ConfigError(f"The 'std' parameter of {owner} must be > 0. Got {std!r} instead.")
    if not normalize and (mean is not None or std is not None):
        raise ConfigError(
            f"{owner}: mean= / std= set the normalisation, but normalize=False turns it off; "
            "drop one of them."
        )

    x, y = load_arrays(key, split, root=root, cache_dir=cache_dir)
    if limit is not None and limit < x.shape[0]:
        idx = np.sort(np.random.default_rng(seed).choice(x.shape[0], size=limit, replace=False))
        x, y = x[idx], y[idx]
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if pad_to is not None:
        h, w = xt.shape[-2:]
        top, left = (pad_to - h) // 2, (pad_to - w) // 2
        pad = (left, pad_to - w - left, top, pad_to - h - top)
        xt = torch.nn.functional.pad(xt, pad, mode="constant", value=0.0)
    if normalize:
        shape = (1, -1) + (1,) * (xt.dim() - 2)
        m = torch.tensor(norm_mean or info.mean, dtype=torch.float32).view(shape)
        s = torch.tensor(norm_std or info.std, dtype=torch.float32).view(shape)
        xt = (xt - m) / s
    if channels is not None and channels != xt.shape[1]:
        xt = xt.expand(-1, channels, -1, -1)
    if flatten:
        xt = xt.reshape(xt.shape[0], -1)
    return TensorDataset(xt.contiguous(), torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)))


def _image_options(
    key: str, info: DatasetInfo, pad_to: int | None, channels: int | None, owner: str
) -> tuple[int | None, int | None]:
    """``pad_to`` and ``channels`` of :func:`get_dataset`, checked: images only, ``pad_to`` at
    least the image size, ``channels`` only replicating a single grey channel."""
    is_image = len(info.input_shape) == 3
    if pad_to is not None:
        pad_to = check_int(pad_to, "pad_to", owner, min_value=1)
        if not is_image:
            raise ConfigError(
                f"The 'pad_to' parameter of {owner} applies to images; {key!r} is not."
            )
        if pad_to < max(info.input_shape[1:]):
            raise ConfigError(
                f"The 'pad_to' parameter of {owner} must be >= the image size "
                f"{info.input_shape[1]} of {key!r}. Got {pad_to} instead."
            )
    if channels is not None:
        channels = check_int(channels, "channels", owner, min_value=1)
        if not is_image or (channels != info.input_shape[0] and info.input_shape[0] != 1):
            raise ConfigError(
                f"The 'channels' parameter of {owner} can only replicate a single grey channel "
                f"(or keep the native {info.input_shape[0]} of {key!r}). Got {channels} instead."
            )
    return pad_to, channels


def _stat(
    value: float | Sequence[float] | None, name: str, owner: str, info: DatasetInfo
) -> tuple[float, ...] | None:
    """``mean`` / ``std``: one number or one per channel -> a per-channel tuple."""
    if value is None:
        return None
    n = info.input_shape[0]
    vals = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    try:
        out = tuple(float(v) for v in vals)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        out = ()
    if len(out) == 1:
        out = out * n
    if len(out) != n or not all(np.isfinite(out)):
        raise ConfigError(
            f"The '{name}' parameter of {owner} must be one finite number or {n} (one per "
            f"channel of {info.name!r}). Got {value!r} instead."
        )
    return out


def normalisation(name: str, **dataset_kwargs: Any) -> dict[str, Any]:
    """The normalisation :func:`get_dataset` applies with these options (for reports)."""
    info = dataset_info(name)
    if not dataset_kwargs.get("normalize", True):
        return {"normalize": False}
    mean = _stat(dataset_kwargs.get("mean"), "mean", "get_dataset", info) or info.mean
    std = _stat(dataset_kwargs.get("std"), "std", "get_dataset", info) or info.std
    default = dataset_kwargs.get("mean") is None and dataset_kwargs.get("std") is None
    return {
        "normalize": True,
        "mean": list(mean),
        "std": list(std),
        "source": f"{info.name} train statistics" if default else "given (mean=, std=)",
    }


def get_loaders(
    name: str,
    *,
    batch_size: int = 128,
    test_batch_size: int = 1000,
    seed: int = 0,
    num_workers: int = 0,
    **dataset_kwargs: Any,
) -> tuple[DataLoader, DataLoader]:
    """Train and test loaders of a dataset.

    The train loader reshuffles every epoch with a ``torch.Generator`` seeded by ``seed``
    (deterministic); the test loader keeps the file order. ``dataset_kwargs`` (``root``,
    ``cache_dir``, ``normalize``, ``mean``, ``std``, ``pad_to``, ``channels``, ``flatten``,
    ``limit``) go to
    :func:`get_dataset` for both splits; ``seed`` also seeds ``limit``.

    Returns:
        ``(train_loader, test_loader)``.
    """
    owner = "get_loaders"
    batch_size = check_int(batch_size, "batch_size", owner, min_value=1)
    test_batch_size = check_int(test_batch_size, "test_batch_size", owner, min_value=1)
    num_workers = check_int(num_workers, "num_workers", owner, min_value=0)
    seed = check_int(seed, "seed", owner, min_value=0)
    for bad in ("split", "name"):
        if bad in dataset_kwargs:
            raise ConfigError(f"{owner} builds both splits itself; do not pass {bad}=.")
    train_ds = get_dataset(name, "train", seed=seed, **dataset_kwargs)
    test_ds = get_dataset(name, "test", seed=seed, **dataset_kwargs)
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(
        train_ds, batch_size=batch_size, shuffle=True, generator=gen, num_workers=num_workers
    )
    test = DataLoader(test_ds, batch_size=test_batch_size, shuffle=False, num_workers=num_workers)
    return train, test
