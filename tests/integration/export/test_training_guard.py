"""Training on a tiny folder (issue 25): 90 images, 3 classes, so a 63-image training split.
With the old fixed batch size (64: one optimizer step an epoch) three epochs end at chance
accuracy, and the run must say so and fail; with the adaptive default the same three epochs
learn. Measured here: validation accuracy 0.333 at batch 64, 1.000 at the auto batch (7)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.serving import REPO_ROOT

pytestmark = pytest.mark.slow
DIGITS = (3, 5, 8)  # three classes that look alike at 8x8


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path_factory.mktemp("tiny")
    for label in DIGITS:
        folder = root / f"digit{label}"
        folder.mkdir()
        for index in np.flatnonzero(digits.target == label)[:30]:
            pixels = np.uint8(digits.images[index] * 255 / 16)
            Image.fromarray(pixels).resize((16, 16)).save(folder / f"{index}.png")
    return root


def train(folder: Path, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    out.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "service", "export", "train", "--data", str(folder),
               "--color", "gray", "--image-size", "16", "16", "--epochs", "3", "--no-plots",
               "--out", str(out), "--name", "tiny", *flags]  # fmt: skip
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def card(out: Path) -> dict[str, object]:
    found: dict[str, object] = json.loads((out / "tiny" / "model_card.json").read_text())
    return found


def test_one_step_an_epoch_ends_weak_and_says_so(tiny_folder: Path, tmp_path: Path) -> None:
    result = train(tiny_folder, tmp_path, "--batch-size", "64")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "WEAK MODEL" in result.stderr
    assert "batch size 64 an epoch is 1 optimizer step(s)" in result.stderr
    assert "batch size 64 (--batch-size): 1 optimizer step(s) an epoch" in result.stdout
    written = card(tmp_path)
    assert "WEAK MODEL" in str(written["weak"])
    assert written["chance"] == {**written["chance"], "weak": True}  # type: ignore[dict-item]
    assert "**WEAK MODEL" in (tmp_path / "tiny" / "model_card.md").read_text()


def test_allow_weak_exits_zero_and_keeps_the_warning(tiny_folder: Path, tmp_path: Path) -> None:
    result = train(tiny_folder, tmp_path, "--batch-size", "64", "--allow-weak")
    assert result.returncode == 0, result.stderr
    assert "WEAK MODEL" in result.stderr
    assert "weak" in card(tmp_path)


def test_the_adaptive_batch_size_learns(tiny_folder: Path, tmp_path: Path) -> None:
    result = train(tiny_folder, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "batch size 7 (auto: 63 training images" in result.stdout
    assert "WEAK" not in result.stderr
    written = card(tmp_path)
    assert "weak" not in written
    chance = written["chance"]
    assert isinstance(chance, dict) and not chance["weak"]
    assert chance["accuracy"] > chance["chance"]
    assert written["training"] == {**written["training"], "batch_size": 7}  # type: ignore[dict-item]
