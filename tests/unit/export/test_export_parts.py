"""The export pipeline's parts: the layer-size check, augmentation, the split, early
stopping, the image-folder reader and its bad inputs (torch on the CPU, small and fast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from export.architectures import (
    DIGITS_SPEC,
    BlockSpec,
    Cnn,
    CnnSpec,
    ConvSpec,
    SpecError,
    architecture_table,
    describe,
    layer_sizes,
)
from export.augment import DIGITS_AUGMENTATION, Augmentation, augment
from export.data import DatasetError, Split, digits_split, load_image_folder, stratified_split
from export.train import TrainConfig, loss_and_accuracy, train


def spec(*blocks: BlockSpec, size: int = 8) -> CnnSpec:
    return CnnSpec(1, size, size, blocks, (16,), 3)


def test_layer_sizes_follow_the_formula() -> None:
    sizes = layer_sizes(
        spec(
            BlockSpec((ConvSpec(4, kernel=5, padding=2),), pool=2),  # 32 -> 32 -> 16
            BlockSpec((ConvSpec(8, kernel=3, padding=0, stride=1),), pool=0),  # 16 -> 14
            BlockSpec((ConvSpec(8, kernel=3, padding=2, dilation=2),), pool=2),  # 14 -> 14 -> 7
            BlockSpec((ConvSpec(16, kernel=3, padding=1, stride=2),), pool=0),  # 7 -> 4
            size=32,
        )
    )
    assert [(c, h) for _, c, h, _ in sizes] == [(4, 32), (4, 16), (8, 14), (8, 14), (8, 7), (16, 4)]
    model = Cnn(spec(BlockSpec((ConvSpec(4),)), BlockSpec((ConvSpec(8),))))
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 3)


@pytest.mark.parametrize(
    ("blocks", "message"),
    [
        ((BlockSpec((ConvSpec(4, kernel=9, padding=0),)),), "block 1 conv 1 (height)"),
        ((BlockSpec((ConvSpec(4, kernel=3, padding=0, stride=2),)),), "not a whole number"),
        ((BlockSpec((ConvSpec(4),), pool=3),), "block 1 pool 3x3"),
        ((BlockSpec((ConvSpec(4),)), BlockSpec((ConvSpec(4),)), BlockSpec((ConvSpec(4),)),
          BlockSpec((ConvSpec(4),))), "block 4 pool 2x2"),
        ((BlockSpec(()),), "block 1 has no convolutions"),
    ],
)  # fmt: skip
def test_an_impossible_spec_is_refused_before_training(
    blocks: tuple[BlockSpec, ...], message: str
) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Cnn(spec(*blocks))


def test_the_message_names_the_numbers() -> None:
    with pytest.raises(SpecError) as refused:
        layer_sizes(spec(BlockSpec((ConvSpec(4, kernel=9, padding=0),))))
    assert "(8 - 1*(9-1) - 1 + 2*0)/1 + 1" in str(refused.value)


def test_augmentation_is_deterministic_shape_preserving_and_off_by_default() -> None:
    x = torch.rand(6, 1, 8, 8)
    assert augment(x, Augmentation(), torch.Generator().manual_seed(0)) is x
    first = augment(x, DIGITS_AUGMENTATION, torch.Generator().manual_seed(1))
    again = augment(x, DIGITS_AUGMENTATION, torch.Generator().manual_seed(1))
    assert first.shape == x.shape and torch.equal(first, again)
    assert not torch.equal(first, x)
    assert not DIGITS_AUGMENTATION.flip  # a mirrored digit is not a digit
    every = Augmentation(1, 0.1, 0.1, 0.1, True, 0.1, 0.1, 0.01)
    assert augment(x, every, torch.Generator().manual_seed(2)).shape == x.shape
    assert every.scaled(0.0) == Augmentation(flip=True)


def test_split_is_stratified_disjoint_and_70_10_20() -> None:
    split = digits_split()
    total = len(split.train_y) + len(split.val_y) + len(split.test_y)
    assert total == 1797
    assert abs(len(split.train_y) / total - 0.7) < 0.01
    assert abs(len(split.val_y) / total - 0.1) < 0.01
    assert abs(len(split.test_y) / total - 0.2) < 0.01
    whole = np.bincount(np.concatenate([split.train_y, split.val_y, split.test_y])) / total
    for part in (split.train_y, split.val_y, split.test_y):
        assert np.abs(np.bincount(part, minlength=10) / len(part) - whole).max() < 0.02
    indices = np.arange(30)
    ids = stratified_split(indices, np.arange(30) % 3, ("a", "b", "c"))
    parts = [set(ids.train_x.tolist()), set(ids.val_x.tolist()), set(ids.test_x.tolist())]
    assert parts[0].isdisjoint(parts[1]) and parts[0].isdisjoint(parts[2])
    assert parts[1].isdisjoint(parts[2]) and set().union(*parts) == set(range(30))
    assert digits_split().test_y.tolist() == split.test_y.tolist()  # fixed seed


def test_early_stopping_stops_an_overfitting_run_and_restores_the_best_weights() -> None:
    rng = np.random.default_rng(0)
    # Random labels: nothing generalizes, so the validation loss rises as it memorizes.
    x = rng.standard_normal((120, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 120).astype(np.int64)
    split = Split(x[:80], y[:80], x[80:100], y[80:100], x[100:], y[100:], ("a", "b", "c"))
    model = Cnn(CnnSpec(1, 8, 8, (BlockSpec((ConvSpec(32),)),), (64,), 3, dropout=0.0))
    config = TrainConfig(epochs=200, learning_rate=3e-3, weight_decay=0.0, patience=5)
    result = train(model, split, config, progress=None)
    assert result.stopped_early and result.epochs_run < 200
    assert result.epochs_run == result.best_epoch + config.patience
    restored, _ = loss_and_accuracy(model, split.val_x, split.val_y)
    assert restored == pytest.approx(result.best_val_loss, rel=1e-5)
    assert min(result.history.val_loss) == pytest.approx(result.best_val_loss)
    assert result.history.train_loss[-1] < result.history.train_loss[0]  # it did memorize


def draw(path: Path, size: tuple[int, int], color: tuple[int, int, int] = (255, 0, 0)) -> None:
    Image.new("RGB", size, color).save(path)


def test_image_folder_resizes_mixed_sizes_and_skips_unreadable_files(tmp_path: Path) -> None:
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(10):
            draw(tmp_path / label / f"{i}.png", (20 + i, 30 - i))
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "b" / "notes.txt").write_text("ignored: not an image suffix")
    folder = load_image_folder(tmp_path, (12, 16), "rgb")
    assert folder.pixels.shape == (20, 12, 16, 3) and folder.pixels.dtype == np.uint8
    assert folder.class_names == ("a", "b") and np.bincount(folder.labels).tolist() == [10, 10]
    assert len(folder.skipped) == 1 and "broken.png" in folder.skipped[0]
    gray = load_image_folder(tmp_path, (8, 8), "gray")
    assert gray.pixels.shape == (20, 8, 8, 1)


def test_image_folder_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "only").mkdir()
    for i in range(10):
        draw(tmp_path / "only" / f"{i}.png", (8, 8))
    with pytest.raises(DatasetError, match="at least two"):
        load_image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="class 'empty' has no readable"):
        load_image_folder(tmp_path)
    for i in range(3):
        draw(tmp_path / "empty" / f"{i}.png", (8, 8))
    with pytest.raises(DatasetError, match="class 'empty' has 3 images"):
        load_image_folder(tmp_path)


def test_training_is_deterministic_for_a_seed() -> None:
    from export.pipeline import default_augmentation, prepare

    prepared = prepare({"kind": "digits", "seed": 0})
    config = TrainConfig(epochs=2, augmentation=default_augmentation(prepared), seed=3)
    states = []
    for _ in range(2):
        torch.manual_seed(config.seed)  # the initial weights, as the CLI seeds them
        model = Cnn(CnnSpec(1, 8, 8, (BlockSpec((ConvSpec(8),)),), (16,), 10))
        train(model, prepared.split, config, progress=None)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize(
    "spec",
    [
        DIGITS_SPEC,
        CnnSpec(3, 32, 32, (BlockSpec((ConvSpec(16, 4, 1, 2), ConvSpec(8, 3, 2, 1, 2)), 2),),
                (64, 32), 5, batch_norm=False, dropout=0.0),
    ],
)  # fmt: skip
def test_the_architecture_table_adds_up_to_the_built_model(spec: CnnSpec) -> None:
    table = architecture_table(spec)
    model = Cnn(spec)
    assert sum(row["parameters"] for row in table) == sum(p.numel() for p in model.parameters())
    # Every conv/pool row's output size is the formula's, as the built model computes it.
    features = model.features(torch.zeros(1, spec.in_channels, spec.height, spec.width))
    assert [r for r in table if "pool" in r["layer"] or "conv" in r["layer"]][-1]["output"] == (
        " x ".join(str(d) for d in features.shape[1:])
    )
    assert table[-1] == {"layer": "FC (logits)", "output": str(spec.classes),
                         "parameters": table[-1]["parameters"]}  # fmt: skip
    assert describe(spec).startswith("CNN [conv")
