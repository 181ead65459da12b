"""export/learning_check.py: the batch size for small folders and the test against guessing."""

from __future__ import annotations

import math

import pytest

from export.learning_check import (
    auto_batch_size,
    batch_size_note,
    binomial_tail,
    check_against_chance,
)


@pytest.mark.parametrize(
    ("train_images", "batch"), [(10, 4), (40, 5), (63, 7), (512, 64), (1257, 64)]
)
def test_auto_batch_size_keeps_eight_steps_an_epoch_within_4_to_64(
    train_images: int, batch: int
) -> None:
    assert auto_batch_size(train_images) == batch


def test_the_note_says_how_many_steps_an_epoch_takes() -> None:
    assert "1 optimizer step(s) an epoch" in batch_size_note(64, 63, stated=True)
    assert batch_size_note(7, 63, stated=False).startswith("batch size 7 (auto: 63 training")


def test_binomial_tail_matches_the_closed_forms() -> None:
    assert binomial_tail(0, 9, 1 / 3) == pytest.approx(1.0)
    assert binomial_tail(9, 9, 1 / 3) == pytest.approx(3.0**-9)
    assert binomial_tail(1, 5, 0.5) == pytest.approx(1 - 0.5**5)
    assert binomial_tail(3, 4, 0.5) == pytest.approx((math.comb(4, 3) + 1) / 16)


def test_chance_is_the_most_frequent_class() -> None:
    labels = [0] * 6 + [1] * 2 + [2] * 2
    check = check_against_chance(0.6, labels)  # what always answering 0 scores
    assert check.chance == pytest.approx(0.6) and check.correct == 6 and check.weak


def test_nine_validation_images_need_six_right_for_three_classes() -> None:
    labels = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert check_against_chance(5 / 9, labels).weak  # p = 0.145
    assert not check_against_chance(6 / 9, labels).weak  # p = 0.042
    assert "binomial p = 0.623" in check_against_chance(3 / 9, labels).summary()


def test_an_empty_validation_split_is_never_called_weak() -> None:
    assert not check_against_chance(0.0, []).weak
