"""Training: cross-entropy, Adam or SGD with momentum, weight decay, augmentation, early
stopping on validation loss (the best weights restored), a progress line, and the test
split's metrics. Deterministic for a seed (single-threaded CPU torch ops aside)."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from torch import nn

from export.augment import Augmentation, augment
from export.data import Split


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 80
    batch_size: int = 64
    optimizer: str = "adam"  # adam | sgd (with momentum)
    learning_rate: float = 1e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4
    patience: int = 20  # epochs without a better validation loss before stopping
    seed: int = 0
    augmentation: Augmentation = field(default_factory=Augmentation)
    class_weights: tuple[float, ...] | None = None  # per class, in the loss (None = equal)

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be adam or sgd, got {self.optimizer!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError("epochs, batch_size and patience must be >= 1")


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Metrics:
    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    per_class: dict[str, dict[str, float]]  # class -> precision, recall, f1, support
    confusion: list[list[int]]  # rows: true class, columns: predicted


@dataclass(frozen=True)
class TrainResult:
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    val_accuracy: float
    stopped_early: bool
    history: History


def predict(model: nn.Module, x: npt.NDArray[np.float32], batch: int = 512) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat(
            [model(torch.from_numpy(x[i : i + batch])) for i in range(0, len(x), batch)]
        )


def loss_and_accuracy(
    model: nn.Module, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]
) -> tuple[float, float]:
    logits = predict(model, x)
    target = torch.from_numpy(y)
    loss = nn.functional.cross_entropy(logits, target).item()
    accuracy = (logits.argmax(dim=1) == target).float().mean().item()
    return float(loss), float(accuracy)


def evaluate(
    model: nn.Module,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    class_names: tuple[str, ...],
) -> Metrics:
    predicted = predict(model, x).argmax(dim=1).numpy()
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y, predicted, labels=labels, zero_division=0
    )
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    return Metrics(
        accuracy=float((predicted == y).mean()),
        macro_precision=float(np.mean(precision)),
        macro_recall=float(np.mean(recall)),
        macro_f1=float(np.mean(f1)),
        per_class=per_class,
        confusion=confusion_matrix(y, predicted, labels=labels).tolist(),
    )


def _optimizer(parameters: Any, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=config.learning_rate,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    return torch.optim.Adam(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)


def _progress(out: TextIO | None, epoch: int, config: TrainConfig, history: History) -> None:
    """A bar redrawn in place on a terminal; one line every 10 epochs in a log."""
    if out is None:
        return
    tty = out.isatty()
    if not tty and epoch % 10:
        return
    done = epoch * 30 // config.epochs
    out.write(
        f"{chr(13) if tty else ''}[{'#' * done}{'.' * (30 - done)}] epoch {epoch}/{config.epochs}"
        f" train loss {history.train_loss[-1]:.4f} val loss {history.val_loss[-1]:.4f} "
        f"val acc {history.val_accuracy[-1]:.4f}{'' if tty else chr(10)}"
    )
    out.flush()


EpochCallback = Callable[[int, float], None]  # (epoch, val loss); may raise to stop


def train(
    model: nn.Module,
    split: Split,
    config: TrainConfig,
    progress: TextIO | None = sys.stderr,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train on split.train, stop early on split.val; never reads split.test."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    trainable = [p for p in model.parameters() if p.requires_grad]  # frozen backbone: skipped
    optimizer = _optimizer(trainable, config)
    x = torch.from_numpy(split.train_x)
    y = torch.from_numpy(split.train_y)
    weights = None if config.class_weights is None else torch.tensor(config.class_weights)
    history = History()
    best_loss, best_epoch, best_state = float("inf"), 0, copy.deepcopy(model.state_dict())
    epoch, stopped_early = 0, False
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total, correct, seen = 0.0, 0, 0
        for start in range(0, len(x), config.batch_size):
            index = order[start : start + config.batch_size]
            if len(index) < 2 and any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
                continue  # batch norm cannot train on a batch of one
            batch = augment(x[index], config.augmentation, generator)
            optimizer.zero_grad()
            logits = model(batch)
            loss = nn.functional.cross_entropy(logits, y[index], weight=weights)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            total += float(loss.item()) * len(index)
            correct += int((logits.argmax(1) == y[index]).sum())
            seen += len(index)
        val_loss, val_accuracy = loss_and_accuracy(model, split.val_x, split.val_y)
        history.train_loss.append(total / max(seen, 1))
        history.train_accuracy.append(correct / max(seen, 1))
        history.val_loss.append(val_loss)
        history.val_accuracy.append(val_accuracy)
        _progress(progress, epoch, config, history)
        if on_epoch is not None:
            on_epoch(epoch, val_loss)  # a search's pruner may stop the run here
        if not np.isfinite(val_loss):
            stopped_early = True  # diverged: keep the best weights so far
            break
        if val_loss < best_loss:
            best_loss, best_epoch, best_state = val_loss, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= config.patience:
            stopped_early = True
            break
    if progress is not None and progress.isatty():
        progress.write("\n")
    model.load_state_dict(best_state)
    _, val_accuracy = loss_and_accuracy(model, split.val_x, split.val_y)
    return TrainResult(epoch, best_epoch, best_loss, val_accuracy, stopped_early, history)
