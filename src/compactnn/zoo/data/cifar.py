"""CIFAR-10: the python batches (``cifar-10-batches-py``) from a directory the user gives.

The batches are pickles, read with :mod:`compactnn.zoo.data.formats`' numpy-only unpickler;
images come back as uint8 ``(N, 3, 32, 32)``, labels as int64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compactnn.errors import DatasetNotFoundError
from compactnn.zoo.data.formats import _labels, _safe_unpickle
from compactnn.zoo.data.registry import DatasetFormatError

CIFAR_TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCHES: tuple[str, ...] = ("test_batch",)
CIFAR_DIRNAME = "cifar-10-batches-py"

_INSTALL = (
    "Download and extract cifar-10-python.tar.gz, then pass root= pointing to the "
    "extracted cifar-10-batches-py directory (or put it under the cache directory)."
)


def _cifar_root(root: Path | None, cache_dir: Path) -> Path:
    candidates = [root, root / CIFAR_DIRNAME] if root is not None else [cache_dir / CIFAR_DIRNAME]
    for cand in candidates:
        if cand is not None and (cand / CIFAR_TEST_BATCHES[0]).is_file():
            return cand
    where = root if root is not None else cache_dir / CIFAR_DIRNAME
    raise DatasetNotFoundError(
        f"Dataset 'cifar10': no CIFAR-10 python batches (test_batch, data_batch_1..5) in {where}. "
        + _INSTALL
    )


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    obj = _safe_unpickle(path, encoding="bytes", gz=False)
    if not isinstance(obj, dict) or b"data" not in obj or b"labels" not in obj:
        raise DatasetFormatError(
            f"{path} is not a CIFAR-10 python batch (a dict with b'data' and b'labels')."
        )
    data, labels = obj[b"data"], obj[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DatasetFormatError(f"{path}: b'data' must be a uint8 array of shape (N, 3072).")
    if data.shape[1] != 3 * 32 * 32 or len(labels) != data.shape[0]:
        raise DatasetFormatError(
            f"{path}: b'data' has shape {data.shape} and b'labels' {len(labels)} entries; "
            "expected (N, 3072) and N labels."
        )
    return data.reshape(-1, 3, 32, 32), _labels(np.asarray(labels), 10, path)


def _load_cifar(root: Path | None, cache_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    base = _cifar_root(root, cache_dir)
    names = CIFAR_TRAIN_BATCHES if split == "train" else CIFAR_TEST_BATCHES
    missing = [n for n in names if not (base / n).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"Dataset 'cifar10': {', '.join(missing)} missing in {base}. " + _INSTALL
        )
    parts = [_read_cifar_batch(base / n) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
