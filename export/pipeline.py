"""From a dataset record to a servable, documented entry: the steps `train`, `tune` and
`ablate` share.

The test split is held apart from the start (`HeldOutTest`): training, early stopping,
tuning and ablations see only train and validation; `finish` reads the test split once,
for the final metrics, the ONNX parity check and the qualitative grid.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from export.architectures import (
    DIGITS_SPEC,
    BlockSpec,
    Cnn,
    CnnSpec,
    ConvSpec,
    ResNet18,
    WithSoftmax,
    architecture_table,
    convs,
    describe,
)
from export.augment import DIGITS_AUGMENTATION, Augmentation
from export.card import DataSource, ModelCard, write_card
from export.data import (
    Normalization,
    Split,
    class_counts,
    dataset_statistics,
    digits_pixels,
    grouped_split,
    load_image_folder,
    normalized,
    stratified_split,
)
from export.learning_check import check_against_chance
from export.onnx_export import Parity, check_parity, parity_dict, write_repository_entry
from export.report import plot_confusion, plot_curves, plot_examples
from export.train import Metrics as Evaluation
from export.train import TrainConfig, TrainResult, evaluate, predict


class HeldOutTest:
    """The test split, readable once: a second read is a methodology bug and raises."""

    def __init__(
        self, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64], pixels: npt.NDArray[np.uint8]
    ) -> None:
        self._data = (x, y, pixels)
        self.reads = 0

    def read(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
        if self.reads:
            raise RuntimeError("the test split was already read: it is evaluated exactly once")
        self.reads += 1
        return self._data


@dataclass
class Prepared:
    data: DataSource  # how to rebuild it (the model card's `data`)
    description: str
    normalization: Normalization
    split: Split  # normalized; its test arrays are empty (see `test`)
    test: HeldOutTest
    test_class_counts: dict[str, int]  # for the card, without reading the test images
    shape: tuple[int, int, int]  # height, width, channels
    groups: dict[str, list[str]] | None  # which groups went to which split

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.split.class_names


def prepare(data: DataSource) -> Prepared:
    seed = data.get("seed", 0)
    assignment = None
    if data["kind"] == "digits":
        pixels, labels = digits_pixels()
        names = tuple(str(c) for c in range(10))
        split = stratified_split(pixels, labels, names, seed)
        description = (
            "sklearn load_digits as uint8 pixels (value * 255/16), stratified 70/10/20 split"
        )
        color = "gray"
    else:
        height, width = data["size"]
        folder = load_image_folder(Path(data["path"]), (height, width), data["color"])
        names, color = folder.class_names, data["color"]
        if any(g is not None for g in folder.groups):
            split, assignment = grouped_split(
                folder.pixels, folder.labels, folder.groups, names, seed
            )
            how = "grouped (class/<group>/image) 70/10/20 split"
        else:
            split = stratified_split(folder.pixels, folder.labels, names, seed)
            how = "stratified 70/10/20 split"
        description = (
            f"image folder {data['path']} ({len(folder.labels)} images, {len(folder.skipped)} "
            f"unreadable skipped), resized to {data['size'][0]}x{data['size'][1]} {color}, {how}"
        )
    normalization = dataset_statistics(split.train_x, color=color)
    test = HeldOutTest(normalization.apply(split.test_x), split.test_y, split.test_x)
    searchable = normalized(
        replace(split, test_x=split.test_x[:0], test_y=split.test_y[:0]), normalization
    )
    _, height, width, channels = split.train_x.shape
    return Prepared(
        data,
        description,
        normalization,
        searchable,
        test,
        class_counts(split.test_y, names),
        (height, width, channels),
        assignment,
    )


def default_spec(channels: int, height: int, width: int, classes: int) -> CnnSpec:
    """Blocks of two 3x3 convs and a 2x2 pool, doubling the width, until the image is 4 px."""
    blocks: list[BlockSpec] = []
    size, width_c = min(height, width), 32
    while size > 4 and size % 2 == 0 and len(blocks) < 5:
        blocks.append(BlockSpec(convs(width_c, width_c)))
        size, width_c = size // 2, width_c * 2
    if not blocks:
        blocks.append(BlockSpec(convs(32, 32), pool=0))
    return CnnSpec(channels, height, width, tuple(blocks), (128,), classes)


def base_spec(prepared: Prepared) -> CnnSpec:
    height, width, channels = prepared.shape
    if prepared.data["kind"] == "digits":
        return DIGITS_SPEC
    return default_spec(channels, height, width, len(prepared.class_names))


def resized_spec(spec: CnnSpec, width: float = 1.0, depth: int | None = None) -> CnnSpec:
    """Every conv and FC width times `width`; `depth` convs per block (None: as is)."""
    blocks = tuple(
        BlockSpec(
            tuple(
                ConvSpec(
                    max(1, round(c.out_channels * width)), c.kernel, c.padding, c.stride, c.dilation
                )
                for c in (block.convs if depth is None else (block.convs[0],) * depth)
            ),
            block.pool,
        )
        for block in spec.blocks
    )
    hidden = tuple(max(1, round(h * width)) for h in spec.hidden)
    return replace(spec, blocks=blocks, hidden=hidden)


def default_augmentation(prepared: Prepared, flip: bool = False) -> Augmentation:
    if prepared.data["kind"] == "digits":
        return DIGITS_AUGMENTATION
    return Augmentation(
        rotation_deg=10, scale=0.1, translate=0.1, brightness=0.1, contrast=0.1, flip=flip
    )


def balanced_class_weights(prepared: Prepared) -> tuple[float, ...]:
    """n / (classes * count): each class weighs the same in the loss, whatever its size."""
    counts = np.bincount(prepared.split.train_y, minlength=len(prepared.class_names))
    return tuple(float(len(prepared.split.train_y) / (len(counts) * max(c, 1))) for c in counts)


def build_model(
    prepared: Prepared, arch: str, spec: CnnSpec | None = None
) -> tuple[torch.nn.Module, str]:
    if arch == "resnet18":
        return ResNet18(
            len(prepared.class_names), in_channels=prepared.shape[2]
        ), "ResNet-18 (batch norm)"
    chosen = spec or base_spec(prepared)
    return Cnn(chosen), describe(chosen)


@dataclass(frozen=True)
class Trained:
    """A trained model and how it was made: what `finish` exports and documents."""

    model: torch.nn.Module
    architecture: str  # one line; a Cnn also gets its layer table in the card
    config: TrainConfig
    result: TrainResult


@dataclass(frozen=True)
class Finished:
    path: Path  # the exported model.onnx
    card: ModelCard


def finish(
    out: Path,
    name: str,
    prepared: Prepared,
    trained: Trained,
    *,
    max_batch_size: int = 64,
    plots: bool = True,
    search: dict[str, Any] | None = None,
    more_plots: Sequence[str] = (),
) -> Finished:
    """Read the test split (once), export, check parity, write the entry and its card."""
    test_x, test_y, test_pixels = prepared.test.read()
    model, result = trained.model, trained.result
    test = evaluate(model, test_x, test_y, prepared.class_names)
    print(
        f"trained {result.epochs_run} epochs (best {result.best_epoch}, val loss "
        f"{result.best_val_loss:.4f}); val accuracy {result.val_accuracy:.4f}; "
        f"test accuracy {test.accuracy:.4f}, macro F1 {test.macro_f1:.4f}"
    )
    path, parity = _export_entry(out, name, prepared, model, max_batch_size, test_x)
    images = (
        _plot_test(out / name, prepared, trained, test, test_x, test_y, test_pixels)
        if plots
        else []
    )
    card = _card(name, prepared, trained, test, parity, [*images, *more_plots])
    check = check_against_chance(result.val_accuracy, prepared.split.val_y.tolist())
    card["chance"] = {**asdict(check), "weak": check.weak}
    if check.weak:  # loud on stderr and in the card; the caller decides the exit status
        card["weak"] = check.warning(trained.config.batch_size, len(prepared.split.train_y))
        print(f"cnnserve export: {card['weak']}", file=sys.stderr)
    if search is not None:
        card["search"] = search
    write_card(out / name, card)
    torch.save(model.state_dict(), out / name / "weights.pt")  # for fine-tuning (--finetune)
    print(f"wrote {path}")
    return Finished(path, card)


def _entry_config(prepared: Prepared, max_batch_size: int) -> dict[str, Any]:
    preprocessing = prepared.normalization.config()
    if prepared.data["kind"] == "folder":
        preprocessing["resize"] = list(prepared.data["size"])
    return {
        "max_batch_size": max_batch_size,
        "dynamic_batching": {"max_queue_delay_us": 0, "max_queue_size": 1024},
        # The training split's statistics: the server applies exactly what training used.
        "preprocessing": preprocessing,
    }


def _export_entry(
    out: Path,
    name: str,
    prepared: Prepared,
    model: torch.nn.Module,
    max_batch_size: int,
    test_x: npt.NDArray[np.float32],
) -> tuple[Path, Parity]:
    """The repository entry (softmax graph, labels, config) and its parity with torch."""
    served = WithSoftmax(model).eval()
    example = torch.from_numpy(prepared.split.val_x[:2])
    config = _entry_config(prepared, max_batch_size)
    path = write_repository_entry(out, name, served, example, prepared.class_names, config)
    parity = check_parity(served, path, test_x)
    print(
        f"ONNX parity on {parity.samples} test images: max abs diff {parity.max_abs_diff:.3g}, "
        f"argmax agreement {parity.argmax_agreement:.4f}"
    )
    return path, parity


def _plot_test(
    entry: Path,
    prepared: Prepared,
    trained: Trained,
    test: Evaluation,
    test_x: npt.NDArray[np.float32],
    test_y: npt.NDArray[np.int64],
    test_pixels: npt.NDArray[np.uint8],
) -> list[str]:
    names = prepared.class_names
    probabilities = torch.softmax(predict(trained.model, test_x), dim=1).numpy()
    plot_curves(trained.result.history, trained.result.best_epoch, entry / "curves.png")
    plot_confusion(test, names, entry / "confusion.png")
    for kind in ("examples", "mistakes"):
        plot_examples(test_pixels, test_y, probabilities, names, entry / f"{kind}.png",
                      mistakes=kind == "mistakes")  # fmt: skip
    return ["curves.png", "confusion.png", "examples.png", "mistakes.png"]


def _card(
    name: str,
    prepared: Prepared,
    trained: Trained,
    test: Evaluation,
    parity: Parity,
    plots: list[str],
) -> ModelCard:
    split, names = prepared.split, prepared.class_names
    height, width, channels = prepared.shape
    train_record = asdict(trained.result)
    train_record.pop("history")
    model = trained.model
    layers = architecture_table(model.spec) if isinstance(model, Cnn) else []
    return {
        "model": name,
        "data": prepared.data,
        "dataset": prepared.description,
        "input": f"UINT8 pixels [batch, {height}, {width}, {channels}] (NHWC, "
        f"{prepared.normalization.color}), or PNG/JPEG",
        "architecture": trained.architecture,
        "layers": layers,
        "parameters": sum(p.numel() for p in model.parameters()),
        "preprocessing": _entry_config(prepared, 0)["preprocessing"],
        "training": asdict(trained.config),
        "train": train_record,
        "history": asdict(trained.result.history),
        "split_sizes": {
            "train": len(split.train_y),
            "val": len(split.val_y),
            "test": sum(prepared.test_class_counts.values()),
        },
        "class_counts": {
            "train": class_counts(split.train_y, names),
            "val": class_counts(split.val_y, names),
            "test": prepared.test_class_counts,
        },
        "groups": prepared.groups,
        "test": asdict(test),
        "weak_classes": [c for c, row in test.per_class.items() if row["f1"] < test.macro_f1 - 0.1],
        "parity": parity_dict(parity),
        "plots": plots,
    }
