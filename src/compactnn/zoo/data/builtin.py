"""The datasets built in memory, no file to install: scikit-learn's digits and the DDLR spiral.

* ``digits``: :func:`sklearn.datasets.load_digits` with a seeded stratified 80/20 split.
* ``spiral``: the two-class nested spiral of the DDLR paper, generated with a fixed seed
  (:func:`make_spiral`), with the same split.

References:
    Papadimitriou & Jain (2021), "Data-driven low-rank neural network compression", sec. 4.1
    (spiral: 1024 points, two classes, i.i.d. uniform noise on [0, 3.5] per coordinate, 80/20).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from compactnn._validation import check_int
from compactnn.errors import ConfigError, DatasetNotFoundError

SPIRAL_POINTS = 1024
SPIRAL_NOISE = 3.5
SPIRAL_TURN_DEGREES = 780.0
SPIRAL_SEED = 0
SPLIT_SEED = 0
TEST_FRACTION = 0.2


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
