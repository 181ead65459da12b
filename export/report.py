"""The model card: metrics JSON, training curves and confusion matrix as PNG, and a short
Markdown report that links them (written next to the model in the repository)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from export.train import History, Metrics


def pyplot() -> Any:
    """matplotlib's pyplot drawing to files only (no display), imported when first needed."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def plot_curves(history: History, best_epoch: int, path: Path) -> None:
    plt = pyplot()
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
    plt = pyplot()
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


def plot_examples(
    pixels: Any,
    labels: Any,
    probabilities: Any,
    class_names: tuple[str, ...],
    path: Path,
    *,
    mistakes: bool,
    count: int = 16,
) -> None:
    """A grid of test images with true and predicted label and confidence: the first
    `count` images, or the `count` most confident mistakes."""
    import numpy as np

    plt = pyplot()
    predicted = probabilities.argmax(1)
    confidence = probabilities.max(1)
    if mistakes:
        wrong = np.flatnonzero(predicted != labels)
        chosen = wrong[np.argsort(-confidence[wrong], kind="stable")][:count]
    else:
        chosen = np.arange(min(count, len(labels)))
    columns = 4
    rows = max(1, -(-len(chosen) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, index in zip(axes.flat, chosen, strict=False):
        image = pixels[index]
        axis.imshow(image[:, :, 0] if image.shape[2] == 1 else image, cmap="gray")
        right = predicted[index] == labels[index]
        axis.set_title(
            f"true {class_names[labels[index]]}\npred {class_names[predicted[index]]} "
            f"{confidence[index]:.2f}",
            fontsize=8,
            color="black" if right else "red",
        )
    title = "most confident mistakes" if mistakes else "test images"
    figure.suptitle(f"{title} ({len(chosen)})" if len(chosen) else f"{title}: none")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
