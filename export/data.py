"""Datasets and the fixed-seed stratified 70/10/20 split.

No torch here: the tests that check served accuracy import this module to rebuild the
exact test split without the training dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

DIGITS_MAX = 16.0  # load_digits pixels are integers in [0, 16]
SPLIT_SEED = 0


@dataclass(frozen=True)
class Split:
    train_x: npt.NDArray[np.float32]
    train_y: npt.NDArray[np.int64]
    val_x: npt.NDArray[np.float32]
    val_y: npt.NDArray[np.int64]
    test_x: npt.NDArray[np.float32]
    test_y: npt.NDArray[np.int64]
    class_names: tuple[str, ...]


def stratified_split(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    class_names: tuple[str, ...],
    seed: int = SPLIT_SEED,
) -> Split:
    """70 % train, 10 % validation, 20 % test, each with the class proportions of the whole."""
    rest_x, test_x, rest_y, test_y = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=seed
    )
    # 10 % of the whole is 1/8 of the remaining 80 %.
    train_x, val_x, train_y, val_y = train_test_split(
        rest_x, rest_y, test_size=0.125, stratify=rest_y, random_state=seed
    )
    return Split(train_x, train_y, val_x, val_y, test_x, test_y, class_names)


def digits_split(seed: int = SPLIT_SEED) -> Split:
    """scikit-learn's bundled 8x8 digits as float32 NCHW in [0, 1] (ink = 1)."""
    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / DIGITS_MAX)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    return stratified_split(x, y, tuple(str(c) for c in range(10)), seed)
