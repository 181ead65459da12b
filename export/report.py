"""The model card: metrics JSON, training curves and confusion matrix as PNG, and a short
Markdown report that links them (written next to the model in the repository)."""

from __future__ import annotations

import json
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
    counts = card.get("class_counts")
    if counts:
        names = list(counts["train"])
        lines += ["", "Class distribution:", "", "| split | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]  # fmt: skip
        for part in ("train", "val", "test"):
            lines.append(f"| {part} | " + " | ".join(str(counts[part][n]) for n in names) + " |")
    if card.get("weak_classes"):
        lines += ["", f"Weak classes (F1 more than 0.1 below macro): {card['weak_classes']}"]
    search = card.get("search")
    if search:
        done = sum(1 for t in search["trials"] if t["state"] == "COMPLETE")
        lines += [
            "",
            f"Hyperparameter search ({search['method']}): {len(search['trials'])} trials "
            f"({done} complete) in {search['seconds']:.0f} s on the validation split; best "
            f"validation loss {search['best_val_loss']:.4f} vs {search['default_val_loss']:.4f} "
            f"for the default configuration; best: `{search['best']}` (trials.csv, search.png).",
        ]
    ablation = card.get("ablation")
    if ablation:
        lines += ["", "Ablation (validation split):", "", "| removed | val loss | val accuracy |",
                  "|---|---|---|"]  # fmt: skip
        for row in ablation:
            lines.append(
                f"| {row['removed'] or '(nothing: full)'} | {row['val_loss']:.4f} | "
                f"{row['val_accuracy']:.4f} |"
            )
    for image in card.get("plots", []):
        lines += ["", f"![{image}]({image})"]
    (entry / "model_card.md").write_text("\n".join(lines) + "\n")


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
