"""Training methodology: the search on validation only (the test split read exactly once),
budgets and bad search spaces, divergent trials, grouped (leakage-safe) splits, class
balance and ablation. Digits, few epochs: within the CI budget."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from export.architectures import Cnn, describe
from export.data import DatasetError, grouped_split
from export.pipeline import (
    HeldOutTest,
    Trained,
    balanced_class_weights,
    base_spec,
    default_augmentation,
    finish,
    prepare,
)
from export.train import TrainConfig, train
from export.tune import SearchError, configure, search
from tests.serving import REPO_ROOT

QUICK = TrainConfig(epochs=8, patience=3)


def test_tuning_runs_its_budget_reproduces_its_best_and_reads_test_once(
    tmp_path: Path,
) -> None:
    prepared = prepare({"kind": "digits", "seed": 0})
    base = replace(QUICK, augmentation=default_augmentation(prepared))
    spec = base_spec(prepared)
    space: dict[str, Any] = {
        "learning_rate": {"low": 1e-3, "high": 5e-3, "log": True},
        "batch_size": [32, 64],
        "width": [0.5, 1.0],
    }
    found = search(prepared, spec, base, base.augmentation, space, trials=3, seed=0)
    assert [t.number for t in found.trials] == [0, 1, 2]  # the budget asked, each recorded
    assert all(t.state in ("COMPLETE", "PRUNED") for t in found.trials)
    assert found.trials[0].params["width"] == 1.0  # the default configuration first
    best = min((t for t in found.trials if t.state == "COMPLETE"), key=lambda t: t.val_loss)
    assert (found.best, found.best_val_loss) == (best.params, best.val_loss)
    assert prepared.test.reads == 0  # the search never touched the test split
    chosen, config = configure(found.best, spec, base, base.augmentation)
    torch.manual_seed(0)  # as the search seeded the trial that found it
    model = Cnn(chosen)
    result = train(model, prepared.split, config, progress=None)
    # Retrained from the same seed, the best reproduces the validation loss it was chosen for.
    assert result.best_val_loss == pytest.approx(found.best_val_loss, rel=1e-3)
    trained = Trained(model, describe(chosen), config, result)
    card = finish(tmp_path, "tuned", prepared, trained, plots=False).card
    assert prepared.test.reads == 1
    assert card["test"]["accuracy"] > 0.9
    with pytest.raises(RuntimeError, match="already read"):
        prepared.test.read()


def test_held_out_test_counts_reads() -> None:
    held = HeldOutTest(
        np.zeros((1, 1), np.float32), np.zeros(1, np.int64), np.zeros((1, 1, 1, 1), np.uint8)
    )
    held.read()
    assert held.reads == 1


@pytest.mark.parametrize(
    ("space", "method", "trials", "timeout", "message"),
    [
        ({}, "tpe", 3, None, "empty"),
        ({"learning_rate": {"low": 1e-2, "high": 1e-3}}, "tpe", 3, None, "above high"),
        ({"batch_size": []}, "tpe", 3, None, "empty list"),
        ({"learning_rate": {"low": 1e-3, "high": 1e-2}}, "grid", 3, None, "needs a list"),
        ({"momentum_of_doom": [1]}, "tpe", 3, None, "unknown parameters"),
        ({"batch_size": [32]}, "tpe", 0, None, "trial budget"),
        ({"batch_size": [32]}, "tpe", 3, 0.0, "time budget"),
        ({"learning_rate": {"low": 0.0, "high": 1.0, "log": True}}, "tpe", 3, None, "low > 0"),
    ],
)
def test_bad_search_spaces_and_budgets_are_refused(
    space: dict[str, Any], method: str, trials: int, timeout: float | None, message: str
) -> None:
    prepared = prepare({"kind": "digits", "seed": 0})
    with pytest.raises(SearchError, match=message):
        search(prepared, base_spec(prepared), QUICK, QUICK.augmentation, space,
               method=method, trials=trials, timeout_s=timeout)  # fmt: skip
    assert prepared.test.reads == 0


def test_a_diverging_trial_is_pruned_and_recorded_and_the_search_goes_on() -> None:
    prepared = prepare({"kind": "digits", "seed": 0})
    space: dict[str, Any] = {"learning_rate": [1e-3, 1e12], "optimizer": ["sgd"]}
    base = replace(QUICK, epochs=4)
    found = search(prepared, base_spec(prepared), base, base.augmentation, space,
                   method="grid", trials=2)  # fmt: skip
    states = {t.params["learning_rate"]: (t.state, t.note) for t in found.trials}
    assert states[1e12] == ("PRUNED", "diverged")
    assert states[1e-3][0] == "COMPLETE"
    assert found.best["learning_rate"] == 1e-3


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    labels=st.lists(st.integers(0, 2), min_size=30, max_size=80),
    data=st.data(),
)
def test_grouped_split_never_puts_a_group_in_two_splits(
    labels: list[int], data: st.DataObject
) -> None:
    y = np.asarray(labels, np.int64)
    groups = [f"g{data.draw(st.integers(0, 11))}" for _ in labels]
    x = np.arange(len(y))
    try:
        split, assignment = grouped_split(x, y, groups, ("a", "b", "c"), seed=0)
    except DatasetError:
        return  # a class held by one group, or too few groups: refused with a reason
    where: dict[str, set[str]] = {}
    for part, index in (("train", split.train_x), ("val", split.val_x), ("test", split.test_x)):
        for i in index.tolist():
            where.setdefault(groups[i], set()).add(part)
    assert all(len(parts) == 1 for parts in where.values())
    assert sorted(split.train_x.tolist() + split.val_x.tolist() + split.test_x.tolist()) == list(
        range(len(y))
    )
    for part, names in assignment.items():
        assert all(where[g] == {part} for g in names)


def test_grouped_split_bad_inputs() -> None:
    y = np.asarray([0, 1, 2] * 10, np.int64)
    x = np.arange(30)
    groups: list[str | None] = [f"g{i % 6}" for i in range(30)]
    groups[4] = None
    with pytest.raises(DatasetError, match="have no group"):
        grouped_split(x, y, groups, ("a", "b", "c"))
    whole_class = ["only-c" if label == 2 else f"g{i % 5}" for i, label in enumerate(y)]
    with pytest.raises(DatasetError, match="class 'c' is entirely in group 'only-c'"):
        grouped_split(x, y, whole_class, ("a", "b", "c"))


def test_class_weights_balance_the_classes() -> None:
    prepared = prepare({"kind": "digits", "seed": 0})
    weights = balanced_class_weights(prepared)
    counts = np.bincount(prepared.split.train_y)
    assert len(weights) == 10
    assert np.allclose(np.asarray(weights) * counts, len(prepared.split.train_y) / 10)


def test_grouped_image_folder_and_ablation_through_the_cli(tmp_path: Path) -> None:
    root = tmp_path / "subjects"
    rng = np.random.default_rng(0)
    for label, value in (("dark", 40), ("light", 215)):
        for subject in range(6):
            folder = root / label / f"subject{subject}"
            folder.mkdir(parents=True)
            for i in range(3):
                shade = int(np.clip(value + rng.integers(-30, 30), 0, 255))
                Image.new("L", (10, 10), shade).save(folder / f"{i}.png")
    models = tmp_path / "models"
    models.mkdir()
    common = ["--data", str(root), "--image-size", "8", "8", "--color", "gray", "--out",
              str(models), "--name", "shade", "--epochs", "3", "--no-plots",
              "--class-weights", "balanced"]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "export", "train", *common],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    card = json.loads((models / "shade" / "model_card.json").read_text())
    parts = card["groups"]
    placed = Counter(g for names in parts.values() for g in names)
    assert placed and all(count == 1 for count in placed.values())  # no subject in two splits
    assert card["training"]["class_weights"] is not None
    ablated = subprocess.run(
        [sys.executable, "-m", "export", "ablate", *common],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ablated.returncode == 0, ablated.stderr
    rows = json.loads((models / "shade" / "model_card.json").read_text())["ablation"]
    assert [r["removed"] for r in rows] == [
        "",
        "batch norm",
        "dropout",
        "augmentation",
        "weight decay",
    ]
    assert "Ablation" in (models / "shade" / "model_card.md").read_text()


def test_tune_cli_writes_the_search_into_the_card(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "export", "tune", "--out", str(tmp_path), "--name", "tuned",
         "--trials", "2", "--epochs", "3", "--no-plots"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "2 trials in" in done.stdout
    entry = tmp_path / "tuned"
    card = json.loads((entry / "model_card.json").read_text())
    assert len(card["search"]["trials"]) == 2
    search = card["search"]
    assert search["retrained_val_loss"] == pytest.approx(search["best_val_loss"], rel=1e-3)
    table = (entry / "trials.csv").read_text().splitlines()
    assert table[0].startswith("trial,state,val_loss") and len(table) == 1 + 2
    assert (entry / "search.png").stat().st_size > 0
    assert "Hyperparameter search (tpe)" in (entry / "model_card.md").read_text()
