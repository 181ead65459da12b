"""The model card: metrics JSON, training curves and confusion matrix as PNG, and a short
Markdown report that links them (written next to the model in the repository)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from export.train import History, Metrics


def plot_curves(history: History, best_epoch: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot as plt

    epochs = range(1, len(history.train_loss) + 1)
    figure, (loss, accuracy) = plt.subplots(1, 2, figsize=(10, 4))
    loss.plot(epochs, history.train_loss, label="training")
    loss.plot(epochs, history.val_loss, label="validation")
    accuracy.plot(epochs, history.train_accuracy, label="training")
    accuracy.plot(epochs, history.val_accuracy, label="validation")
    for axis, title in ((loss, "cross-entropy loss"), (accuracy, "accuracy")):
        axis.axvline(best_epoch, color="gray", linestyle="--", label=f"best epoch {best_epoch}")
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_confusion(metrics: Metrics, class_names: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    size = max(4.0, 0.5 * len(class_names) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(metrics.confusion, cmap="Blues")
    axis.set_xticks(range(len(class_names)), class_names, rotation=90)
    axis.set_yticks(range(len(class_names)), class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    for i, row in enumerate(metrics.confusion):
        for j, count in enumerate(row):
            if count:
                axis.text(j, i, str(count), ha="center", va="center", fontsize=8)
    axis.set_title(f"test split, accuracy {metrics.accuracy:.4f}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_card(entry: Path, card: dict[str, Any]) -> None:
    """model_card.json (everything) and model_card.md (the summary a person reads)."""
    (entry / "model_card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    test = card.get("test", {})
    lines = [
        f"# {card.get('model', entry.name)}",
        "",
        f"- Data: {card.get('dataset', '')}",
        f"- Input: {card.get('input', '')}",
        f"- Architecture: {card.get('architecture', '')}",
    ]
    train = card.get("train", {})
    if train:
        lines.append(
            f"- Training: {train.get('epochs_run')} epochs, best epoch {train.get('best_epoch')}"
            f" (validation loss {train.get('best_val_loss', 0):.4f}), early stopped: "
            f"{train.get('stopped_early')}"
        )
    if test:
        lines += [
            f"- Test accuracy {test['accuracy']:.4f}; macro precision "
            f"{test['macro_precision']:.4f}, recall {test['macro_recall']:.4f}, F1 "
            f"{test['macro_f1']:.4f}",
            "",
            "| class | precision | recall | F1 | support |",
            "|---|---|---|---|---|",
        ]
        for name, row in test["per_class"].items():
            lines.append(
                f"| {name} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | "
                f"{row['support']} |"
            )
    parity = card.get("parity")
    if parity:
        lines += [
            "",
            f"ONNX parity on {parity['samples']} test images: max abs diff "
            f"{parity['max_abs_diff']:.3g}, argmax agreement {parity['argmax_agreement']:.4f}.",
        ]
    for image in card.get("plots", []):
        lines += ["", f"![{image}]({image})"]
    (entry / "model_card.md").write_text("\n".join(lines) + "\n")
