"""Two guards for small folders, where the defaults that suit the digits set fail quietly.

- The batch size adapts to the training split: 64 images a step on a 63-image split is one
  optimizer step an epoch, and early stopping ended such a run at chance accuracy (an
  issue-25 report: a 3-class folder of 90 images, validation accuracy 0.33; 1.000 with
  batch 8).
- A trained model is checked against guessing: validation accuracy no better than always
  answering the split's most frequent class (one-sided binomial test at 5 %) is a weak model,
  said on stderr and in the model card.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

LARGEST_AUTO_BATCH = 64  # what the digits model was always trained with
SMALLEST_AUTO_BATCH = 4
STEPS_PER_EPOCH = 8  # auto keeps at least this many optimizer steps an epoch
SIGNIFICANCE = 0.05


def auto_batch_size(train_images: int) -> int:
    """The training split // 8, between 4 and 64: at least 8 optimizer steps an epoch."""
    return max(SMALLEST_AUTO_BATCH, min(LARGEST_AUTO_BATCH, train_images // STEPS_PER_EPOCH))


def batch_size_note(batch_size: int, train_images: int, *, stated: bool) -> str:
    steps = math.ceil(train_images / batch_size)
    if stated:
        return f"batch size {batch_size} (--batch-size): {steps} optimizer step(s) an epoch"
    return (
        f"batch size {batch_size} (auto: {train_images} training images, at least "
        f"{min(STEPS_PER_EPOCH, steps)} optimizer steps an epoch; --batch-size sets it)"
    )


def binomial_tail(successes: int, trials: int, p: float) -> float:
    """P(X >= successes) for X ~ Binomial(trials, p)."""
    return min(
        1.0,
        sum(math.comb(trials, k) * p**k * (1 - p) ** (trials - k)
            for k in range(successes, trials + 1)),
    )  # fmt: skip


@dataclass(frozen=True)
class ChanceCheck:
    """The validation accuracy against always answering the most frequent class."""

    accuracy: float
    correct: int
    samples: int
    chance: float  # the most frequent class's share of the validation split
    p_value: float  # of doing this well or better by guessing

    @property
    def weak(self) -> bool:
        return self.p_value >= SIGNIFICANCE

    def summary(self) -> str:
        return (
            f"validation accuracy {self.accuracy:.4f} ({self.correct}/{self.samples}) against "
            f"{self.chance:.4f} for always answering the most frequent class "
            f"(binomial p = {self.p_value:.3g})"
        )

    def warning(self, batch_size: int, train_images: int) -> str:
        steps = math.ceil(train_images / batch_size)
        return (
            f"WEAK MODEL: {self.summary()}: not better than guessing. With "
            f"{train_images} training images and batch size {batch_size} an epoch is "
            f"{steps} optimizer step(s); give it more steps (a smaller --batch-size, more "
            f"--epochs or --patience), more images per class, or check the labels. "
            "--allow-weak accepts such a model."
        )


def check_against_chance(accuracy: float, labels: Sequence[int]) -> ChanceCheck:
    samples = len(labels)
    if samples == 0:
        return ChanceCheck(accuracy, 0, 0, 0.0, 0.0)  # nothing to judge by: never weak
    chance = max(Counter(labels).values()) / samples
    correct = round(accuracy * samples)
    return ChanceCheck(accuracy, correct, samples, chance, binomial_tail(correct, samples, chance))
