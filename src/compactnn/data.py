"""``compactnn.data``: the stable public path of the offline datasets (MNIST, Fashion-MNIST,
scikit-learn digits, the DDLR spiral, CIFAR-10).

The code lives in :mod:`compactnn.zoo.data` (registry, per-source readers, loaders); this module
re-exports its public names, the dataset constants included, so that ``from compactnn import
data``, ``compactnn.data.get_loaders`` and the scripts and the README that use them keep working.
"""

from compactnn.zoo import data as _zoo_data
from compactnn.zoo.data import *  # noqa: F403  (the names of __all__)
from compactnn.zoo.data import CIFAR_DIRNAME as CIFAR_DIRNAME
from compactnn.zoo.data import CIFAR_TEST_BATCHES as CIFAR_TEST_BATCHES
from compactnn.zoo.data import CIFAR_TRAIN_BATCHES as CIFAR_TRAIN_BATCHES
from compactnn.zoo.data import FASHION_MNIST_DIR as FASHION_MNIST_DIR
from compactnn.zoo.data import IDX_FILES as IDX_FILES
from compactnn.zoo.data import MNIST_PICKLE as MNIST_PICKLE
from compactnn.zoo.data import SPIRAL_NOISE as SPIRAL_NOISE
from compactnn.zoo.data import SPIRAL_POINTS as SPIRAL_POINTS
from compactnn.zoo.data import SPIRAL_SEED as SPIRAL_SEED
from compactnn.zoo.data import SPIRAL_TURN_DEGREES as SPIRAL_TURN_DEGREES
from compactnn.zoo.data import SPLIT_SEED as SPLIT_SEED
from compactnn.zoo.data import SPLITS as SPLITS
from compactnn.zoo.data import TEST_FRACTION as TEST_FRACTION

__all__ = list(_zoo_data.__all__)
