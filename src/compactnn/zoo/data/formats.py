"""Reading and caching dataset files safely: numpy-only pickles, IDX files, the ``.npz`` cache.

Pickles are only read with a restricted unpickler that can rebuild numpy arrays and nothing else,
so a malicious file cannot execute code. IDX files (the MNIST format) are parsed with their
header checked against their size. Converted data is cached as ``.npz`` under
``$COMPACTNN_CACHE`` (default ``~/.cache/compactnn``), written atomically.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import tempfile
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from compactnn.zoo.data.registry import DatasetFormatError

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
