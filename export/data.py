"""Datasets, the fixed-seed stratified 70/10/20 split, and the training split's statistics.

Images are kept as uint8 pixels in NHWC, exactly as clients send them to the server; the
normalization measured on the training split turns them into the model's float input with
the same formula the server's preprocessing graph applies (service.images.preprocess).
No torch here: tests import this module to rebuild the exact test split.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

log = logging.getLogger(__name__)

DIGITS_MAX = 16.0  # load_digits pixels are integers in [0, 16]
SPLIT_SEED = 0
PIXEL_SCALE = 1 / 255


@dataclass(frozen=True)
class Split:
    train_x: npt.NDArray[Any]
    train_y: npt.NDArray[np.int64]
    val_x: npt.NDArray[Any]
    val_y: npt.NDArray[np.int64]
    test_x: npt.NDArray[Any]
    test_y: npt.NDArray[np.int64]
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class Normalization:
    """standardize: x' = (pixels * scale - mean) / std, per channel, in scaled units."""

    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    color: str

    def apply(self, pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """uint8 NHWC pixels -> float32 NCHW model input (the server's formula)."""
        scaled = pixels.astype(np.float32) * np.float32(self.scale)
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        standardized = ((scaled - mean) / std).astype(np.float32)
        return np.ascontiguousarray(standardized.transpose(0, 3, 1, 2))

    def config(self) -> dict[str, Any]:
        """The model's `preprocessing` config block, so serving never drifts from training."""
        return {
            "mode": "standardize",
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "statistics": "dataset",
            "layout": "NHWC",
            "color": self.color,
        }


def dataset_statistics(train_pixels: npt.NDArray[np.uint8], color: str) -> Normalization:
    """Per-channel mean and std of the training split, in scaled units (pixels * 1/255)."""
    x = train_pixels.astype(np.float64) * PIXEL_SCALE
    mean = x.mean(axis=(0, 1, 2))
    std = x.std(axis=(0, 1, 2))
    return Normalization(
        PIXEL_SCALE,
        tuple(round(float(m), 6) for m in mean),
        tuple(round(float(s), 6) for s in std),
        color,
    )


def normalized(split: Split, normalization: Normalization) -> Split:
    """The split as the model's float inputs."""
    return Split(
        normalization.apply(split.train_x),
        split.train_y,
        normalization.apply(split.val_x),
        split.val_y,
        normalization.apply(split.test_x),
        split.test_y,
        split.class_names,
    )


def stratified_split(
    x: npt.NDArray[Any],
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


class DatasetError(ValueError):
    """A dataset that cannot be trained on as given, with what to change."""


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MIN_PER_CLASS = 10  # a stratified 70/10/20 split needs at least one image per split


@dataclass(frozen=True)
class ImageFolder:
    pixels: npt.NDArray[np.uint8]  # NHWC, resized to one size
    labels: npt.NDArray[np.int64]
    class_names: tuple[str, ...]
    skipped: list[str] = field(default_factory=list)  # unreadable files, with why
    # Per image: the sub-folder inside its class folder (class/<group>/image.png), e.g. a
    # subject id for a leakage-safe split; None for images directly in the class folder.
    groups: list[str | None] = field(default_factory=list)


def load_image_folder(
    root: Path, size: tuple[int, int] = (32, 32), color: str = "rgb"
) -> ImageFolder:
    """One sub-folder per class (its name is the label), PNG or JPEG files inside.

    Every image is converted to `color` (rgb | gray) and resized to `size` (height, width;
    Pillow bilinear), so mixed sizes are fine. Unreadable files are skipped, counted and
    logged (one corrupt file should not stop a training run; the count is in the model
    card). Refused: fewer than two classes, a class with no readable image, a class with
    fewer than MIN_PER_CLASS images."""
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise DatasetError(
            f"{root} has {len(classes)} class folder(s) {classes}; a classifier needs at least "
            "two (one sub-folder per class)"
        )
    mode = {"rgb": "RGB", "gray": "L"}[color]
    pixels: list[npt.NDArray[np.uint8]] = []
    labels: list[int] = []
    group_names: list[str | None] = []
    skipped: list[str] = []
    for index, name in enumerate(classes):
        files = sorted(
            p
            for p in (root / name).rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        count = 0
        for path in files:
            try:
                with Image.open(path) as image:
                    converted = image.convert(mode).resize(
                        (size[1], size[0]), Image.Resampling.BILINEAR
                    )
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                skipped.append(f"{path}: {exc}")
                continue
            array = np.asarray(converted, dtype=np.uint8)
            pixels.append(array[:, :, None] if array.ndim == 2 else array)
            labels.append(index)
            relative = path.relative_to(root / name)
            group_names.append(relative.parts[0] if len(relative.parts) > 1 else None)
            count += 1
        if count == 0:
            raise DatasetError(f"class '{name}' has no readable PNG or JPEG image in {root / name}")
        if count < MIN_PER_CLASS:
            raise DatasetError(
                f"class '{name}' has {count} images; a stratified 70/10/20 split needs at least "
                f"{MIN_PER_CLASS} per class"
            )
    if skipped:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(skipped), skipped[0])
    return ImageFolder(
        np.stack(pixels), np.asarray(labels, np.int64), tuple(classes), skipped, group_names
    )


def class_counts(labels: npt.NDArray[np.int64], class_names: tuple[str, ...]) -> dict[str, int]:
    counts = Counter(int(v) for v in labels)
    return {name: counts.get(i, 0) for i, name in enumerate(class_names)}


def grouped_split(
    x: npt.NDArray[Any],
    y: npt.NDArray[np.int64],
    groups: Sequence[str | None],
    class_names: tuple[str, ...],
    seed: int = SPLIT_SEED,
) -> tuple[Split, dict[str, list[str]]]:
    """70/10/20 with every group (e.g. one subject's images) in exactly one split, stratified
    as far as the groups allow (scikit-learn's StratifiedGroupKFold: one fold of five for
    test, then one of eight of the rest for validation). Returns the split and which groups
    went where (saved in the model card to reproduce it)."""
    from sklearn.model_selection import StratifiedGroupKFold

    missing = [i for i, g in enumerate(groups) if g is None or g == ""]
    if missing:
        raise DatasetError(
            f"{len(missing)} sample(s) have no group (first: sample {missing[0]}); give every "
            "sample a group or none"
        )
    group_array = np.asarray(groups, dtype=object)
    for label, name in enumerate(class_names):
        holders = set(group_array[y == label])
        if len(holders) == 1:
            raise DatasetError(
                f"class '{name}' is entirely in group '{holders.pop()}': it can only be in one "
                "split, so the split cannot be stratified; add samples of this class from "
                "other groups"
            )
    if len(set(group_array)) < 3:
        raise DatasetError("a grouped 70/10/20 split needs at least three groups")

    def one_fold(
        index: npt.NDArray[np.intp], folds: int
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        folds = min(folds, len(set(group_array[index])))
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        with warnings.catch_warnings():  # "least populated class": stratified as far as it goes
            warnings.simplefilter("ignore", UserWarning)
            try:
                keep, held = next(splitter.split(index, y[index], group_array[index]))
            except ValueError as exc:  # e.g. a class with fewer samples than folds
                raise DatasetError(f"cannot make a grouped 70/10/20 split: {exc}") from exc
        return index[keep], index[held]

    rest, test = one_fold(np.arange(len(y)), 5)
    train, val = one_fold(rest, 8)
    split = Split(x[train], y[train], x[val], y[val], x[test], y[test], class_names)
    assignment = {
        part: sorted({str(g) for g in group_array[index]})
        for part, index in (("train", train), ("val", val), ("test", test))
    }
    return split, assignment


def digits_pixels() -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """scikit-learn's bundled 8x8 digits as uint8 NHWC grayscale pixels (ink bright)."""
    bunch = load_digits()
    pixels = np.round(bunch.images * (255 / DIGITS_MAX)).astype(np.uint8)[:, :, :, None]
    return pixels, bunch.target.astype(np.int64)


def digits_split(seed: int = SPLIT_SEED) -> Split:
    pixels, labels = digits_pixels()
    return stratified_split(pixels, labels, tuple(str(c) for c in range(10)), seed)
