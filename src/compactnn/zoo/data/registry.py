"""The dataset registry: the names, their static description and the errors of dataset files.

:data:`DATASETS` lists the registry names in order, :class:`DatasetInfo` describes a dataset
(input shape, classes, the train split's mean / std) and :func:`dataset_info` returns it without
reading a file. :class:`DatasetFormatError` is what every reader raises on a bad file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compactnn._validation import raise_unknown
from compactnn.errors import CompactnnError, ConfigError

DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist", "digits", "spiral", "cifar10")
SPLITS: tuple[str, ...] = ("train", "test")


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
