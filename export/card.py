"""The model card: a typed JSON document (model_card.json) and its readable summary
(model_card.md). `ModelCard` is a TypedDict so the JSON round-trips as it is (quantize and
ablate read a card back and add their section) while every key is checked by mypy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict


class DataSource(TypedDict):
    """How to rebuild the dataset (export's `prepare` reads it back)."""

    kind: Literal["digits", "folder"]
    seed: int
    path: NotRequired[str]  # folder: the image folder
    size: NotRequired[list[int]]  # folder: [height, width] images are resized to
    color: NotRequired[str]  # folder: rgb | gray


class LayerRow(TypedDict):
    """One row of the architecture table: output size by the course's formula."""

    layer: str
    output: str  # C x H x W, or N for a fully connected layer
    parameters: int


class ModelCard(TypedDict):
    model: str
    data: DataSource
    dataset: str
    input: str
    architecture: str
    layers: NotRequired[list[LayerRow]]  # absent in cards written before the table existed
    parameters: NotRequired[int]
    preprocessing: dict[str, Any]
    training: dict[str, Any]
    train: dict[str, Any]
    history: dict[str, list[float]]
    split_sizes: dict[str, int]
    class_counts: dict[str, dict[str, int]]
    groups: dict[str, list[str]] | None
    test: dict[str, Any]
    weak_classes: list[str]
    parity: dict[str, Any]
    plots: list[str]
    search: NotRequired[dict[str, Any]]
    ablation: NotRequired[list[dict[str, Any]]]
    int8: NotRequired[dict[str, Any]]
    chance: NotRequired[dict[str, Any]]  # validation accuracy against guessing
    weak: NotRequired[str]  # present when that is no better than guessing


def read_card(entry: Path) -> ModelCard:
    card: ModelCard = json.loads((entry / "model_card.json").read_text())
    return card


def write_card(entry: Path, card: ModelCard) -> None:
    """model_card.json (everything) and model_card.md (the summary a person reads)."""
    (entry / "model_card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    lines = [
        f"# {card['model']}",
        "",
        f"- Data: {card['dataset']}",
        f"- Input: {card['input']}",
        f"- Architecture: {card['architecture']}"
        + (f" ({card['parameters']:,} parameters)" if "parameters" in card else ""),
        *_training(card),
        *_layers(card),
        *_test(card),
        *_class_counts(card),
        *_search(card),
        *_ablation(card),
    ]
    for image in card["plots"]:
        lines += ["", f"![{image}]({image})"]
    (entry / "model_card.md").write_text("\n".join(lines) + "\n")


def _training(card: ModelCard) -> list[str]:
    train = card["train"]
    lines = [
        f"- Training: {train['epochs_run']} epochs, best epoch {train['best_epoch']} "
        f"(validation loss {train['best_val_loss']:.4f}), early stopped: "
        f"{train['stopped_early']}, batch size {card['training']['batch_size']}"
    ]
    chance = card.get("chance")
    if chance is not None:
        lines.append(
            f"- Validation accuracy {chance['accuracy']:.4f} ({chance['correct']}/"
            f"{chance['samples']}) against {chance['chance']:.4f} for guessing the most "
            f"frequent class (binomial p = {chance['p_value']:.3g})"
        )
    if "weak" in card:
        lines += ["", f"**{card['weak']}**"]
    return lines


def _layers(card: ModelCard) -> list[str]:
    layers = card.get("layers")
    if not layers:
        return []
    lines = [
        "",
        "Layers: output size per layer from (W - D(F-1) - 1 + 2P)/S + 1, and parameters:",
        "",
        "| layer | output | parameters |",
        "|---|---|---|",
    ]
    for row in layers:
        lines.append(f"| {row['layer']} | {row['output']} | {row['parameters']:,} |")
    lines.append(f"| total | | {sum(row['parameters'] for row in layers):,} |")
    return lines


def _test(card: ModelCard) -> list[str]:
    test, parity = card["test"], card["parity"]
    lines = [
        "",
        f"Test accuracy {test['accuracy']:.4f}; macro precision {test['macro_precision']:.4f}, "
        f"recall {test['macro_recall']:.4f}, F1 {test['macro_f1']:.4f}",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for name, row in test["per_class"].items():
        lines.append(
            f"| {name} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | "
            f"{row['support']} |"
        )
    lines += [
        "",
        f"ONNX parity on {parity['samples']} test images: max abs diff "
        f"{parity['max_abs_diff']:.3g}, argmax agreement {parity['argmax_agreement']:.4f}.",
    ]
    if card["weak_classes"]:
        lines += ["", f"Weak classes (F1 more than 0.1 below macro): {card['weak_classes']}"]
    return lines


def _class_counts(card: ModelCard) -> list[str]:
    counts = card["class_counts"]
    names = list(counts["train"])
    lines = ["", "Class distribution:", "", "| split | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]  # fmt: skip
    for part in ("train", "val", "test"):
        lines.append(f"| {part} | " + " | ".join(str(counts[part][n]) for n in names) + " |")
    return lines


def _search(card: ModelCard) -> list[str]:
    search = card.get("search")
    if not search:
        return []
    done = sum(1 for t in search["trials"] if t["state"] == "COMPLETE")
    return [
        "",
        f"Hyperparameter search ({search['method']}): {len(search['trials'])} trials "
        f"({done} complete) in {search['seconds']:.0f} s on the validation split; best "
        f"validation loss {search['best_val_loss']:.4f} (retrained from the same seed: "
        f"{search.get('retrained_val_loss', float('nan')):.4f}) vs "
        f"{search['default_val_loss']:.4f} for the default configuration; best: "
        f"`{search['best']}` (trials.csv, search.png).",
    ]


def _ablation(card: ModelCard) -> list[str]:
    ablation = card.get("ablation")
    if not ablation:
        return []
    lines = ["", "Ablation (validation split):", "", "| removed | val loss | val accuracy |",
             "|---|---|---|"]  # fmt: skip
    for row in ablation:
        lines.append(
            f"| {row['removed'] or '(nothing: full)'} | {row['val_loss']:.4f} | "
            f"{row['val_accuracy']:.4f} |"
        )
    return lines
