"""The export pipeline end to end on the user's own images: an image folder generated here
(shapes drawn with Pillow) trains, exports, quantizes and is served, and the server
classifies PNG files sent as they are. Plus `export onnx` for an arbitrary nn.Module."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from PIL import Image, ImageDraw

from export.data import digits_split
from export.onnx_export import to_fp16
from service.cli.client import classify_files
from tests.digits import MODEL_FILE
from tests.preprocessing_oracle import expected_model_input
from tests.serving import EXAMPLE_MODELS, REPO_ROOT, running_server

SHAPES = ("circle", "square", "triangle")


def draw_shape(kind: str, rng: np.random.Generator) -> Image.Image:
    size = int(rng.integers(28, 48))  # mixed sizes: resized by the reader
    background = tuple(int(v) for v in rng.integers(0, 80, 3))
    ink = tuple(int(v) for v in rng.integers(150, 256, 3))
    image = Image.new("RGB", (size, size), background)
    pen = ImageDraw.Draw(image)
    margin = int(rng.integers(2, size // 4))
    box = (margin, margin, size - margin, size - margin)
    if kind == "circle":
        pen.ellipse(box, fill=ink)
    elif kind == "square":
        pen.rectangle(box, fill=ink)
    else:
        pen.polygon(
            [(size // 2, margin), (margin, size - margin), (size - margin, size - margin)], fill=ink
        )
    return image


def export(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "export", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for kind in SHAPES:
        (root / kind).mkdir()
        for i in range(40):
            draw_shape(kind, rng).save(root / kind / f"{i}.png")
    return root


def test_an_image_folder_trains_exports_quantizes_and_is_served(
    shapes_folder: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    trained = export("train", "--data", str(shapes_folder), "--image-size", "16", "16",
                     "--out", str(models), "--name", "shapes", "--epochs", "25")  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    card = json.loads((models / "shapes" / "model_card.json").read_text())
    assert card["test"]["accuracy"] >= 0.9, card["test"]
    assert card["parity"]["max_abs_diff"] <= 1e-5 and card["parity"]["argmax_agreement"] == 1.0
    assert set(card["class_counts"]["test"]) == set(SHAPES)
    for plot in ("curves.png", "confusion.png", "examples.png", "mistakes.png"):
        assert (models / "shapes" / plot).stat().st_size > 0, plot
    assert card["plots"] == ["curves.png", "confusion.png", "examples.png", "mistakes.png"]
    assert card["layers"][0]["layer"] == "input" and card["parameters"] > 0
    assert "| total | |" in (models / "shapes" / "model_card.md").read_text()
    assert "| circle |" in (models / "shapes" / "model_card.md").read_text()
    config = (models / "shapes" / "config.yaml").read_text()
    assert "resize:" in config and "mode: standardize" in config

    quantized = export("quantize", "--model", str(models / "shapes"))
    assert quantized.returncode == 0, quantized.stderr
    report = json.loads((models / "shapes_int8" / "model_card.json").read_text())["int8"]
    assert report["int8_accuracy"] >= report["fp32_accuracy"] - 0.05

    samples = tmp_path / "samples"
    samples.mkdir()
    rng = np.random.default_rng(99)  # new images, never seen in training
    files, truth = [], []
    for i in range(12):
        kind = SHAPES[i % 3]
        path = samples / f"{kind}-{i}.png"
        draw_shape(kind, rng).save(path)
        files.append(path)
        truth.append(kind)
    with running_server(models) as server:
        for name in ("shapes", "shapes_int8"):
            lines = classify_files(server.address, name, files, top_k=1)
            predicted = [line.split(": ", 1)[1].split()[0] for line in lines]
            right = sum(p == t for p, t in zip(predicted, truth, strict=True))
            assert right >= 10, (name, lines)


def test_export_onnx_of_an_arbitrary_module_is_served(tmp_path: Path) -> None:
    done = export("onnx", "--module", "tests.export_modules:TinyNet", "--input-shape", "3", "8",
                  "8", "--out", str(tmp_path), "--name", "tiny", "--fp16")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "max abs diff" in done.stdout
    assert (tmp_path / "tiny_fp16" / "1" / "model.onnx").is_file()
    with running_server(tmp_path) as server:
        entry = server.server.repository.get("tiny")
        assert [s.name for s in entry.config.outputs] == ["output"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["onnx", "--module", "tests.export_modules:NeedsEightChannels", "--input-shape", "3",
          "4", "4", "--name", "x"], "torch.onnx.export failed"),
        (["onnx", "--module", "tests.export_modules:not_a_module", "--input-shape", "3",
          "--name", "x"], "not a torch nn.Module"),
        (["onnx", "--module", "tests.export_modules", "--input-shape", "3", "--name", "x"],
         "package.module:name"),
        (["onnx", "--module", "no.such:Thing", "--input-shape", "3", "--name", "x"],
         "cannot import"),
    ],
)  # fmt: skip
def test_export_onnx_bad_input_is_explained(tmp_path: Path, args: list[str], message: str) -> None:
    done = export(*args, "--out", str(tmp_path))
    assert done.returncode == 1
    assert message in done.stderr and "Traceback" not in done.stderr


def test_train_bad_inputs_fail_before_training(tmp_path: Path) -> None:
    missing = export("train", "--out", str(tmp_path / "nope"), "--epochs", "1")
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    single = tmp_path / "single"
    (single / "only").mkdir(parents=True)
    done = export("train", "--data", str(single), "--out", str(tmp_path), "--epochs", "1")
    assert done.returncode == 1 and "at least two" in done.stderr
    # (An impossible architecture spec is refused by Cnn() itself: tests/unit.)


def test_finetuning_starts_from_saved_weights_with_the_backbone_frozen(tmp_path: Path) -> None:
    import torch

    first = export("train", "--out", str(tmp_path), "--name", "base", "--epochs", "2",
                   "--no-plots")  # fmt: skip
    assert first.returncode == 0, first.stderr
    weights = tmp_path / "base" / "weights.pt"
    tuned = export("train", "--out", str(tmp_path), "--name", "tuned", "--epochs", "2",
                   "--no-plots", "--finetune", str(weights))  # fmt: skip
    assert tuned.returncode == 0, tuned.stderr
    assert "backbone frozen" in tuned.stdout
    before = torch.load(weights, weights_only=True)
    after = torch.load(tmp_path / "tuned" / "weights.pt", weights_only=True)
    backbone = [k for k in before if k.startswith("features.")]  # incl. BN running stats
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)  # frozen
    heads = [k for k in before if k.startswith("classifier.") and k.endswith("weight")]
    assert any(not torch.equal(before[k], after[k]) for k in heads)  # trained


def test_int8_digits_stays_within_half_a_point_of_fp32(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE_MODELS / "digits", tmp_path / "digits")
    done = export("quantize", "--model", str(tmp_path / "digits"))
    assert done.returncode == 0, done.stderr
    assert "images/s =" in done.stdout  # the CPU speed ratio is printed (measured, not asserted)
    report = json.loads((tmp_path / "digits_int8" / "model_card.json").read_text())["int8"]
    assert report["fp32_accuracy"] >= 0.985
    assert report["int8_accuracy"] >= report["fp32_accuracy"] - 0.005
    assert (tmp_path / "digits_int8" / "model_card.md").is_file()


def test_the_fp16_copy_of_digits_agrees_with_fp32(tmp_path: Path) -> None:
    """The fp16 file `export onnx --fp16` writes, loaded and run beside the fp32 one on the
    digits test split (onnxruntime's CPU EP runs it too, through its fp16 kernels)."""
    half = tmp_path / "digits_fp16.onnx"
    to_fp16(MODEL_FILE, half)
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in onnx.load(half).graph.initializer)
    full_session = ort.InferenceSession(str(MODEL_FILE), providers=["CPUExecutionProvider"])
    half_session = ort.InferenceSession(str(half), providers=["CPUExecutionProvider"])
    name = full_session.get_inputs()[0].name
    pre = yaml.safe_load((MODEL_FILE.parent.parent / "config.yaml").read_text())["preprocessing"]
    x = expected_model_input(
        digits_split().test_x, mode=pre["mode"], mean=pre["mean"], std=pre["std"]
    ).astype(np.float32)
    full = full_session.run(None, {name: x})[0]
    half_out = half_session.run(None, {name: x})[0]
    assert half_out.dtype == np.float32  # inputs and outputs stay fp32
    assert float(np.abs(full - half_out).max()) < 1e-2  # probabilities
    agreement = float((full.argmax(axis=1) == half_out.argmax(axis=1)).mean())
    assert agreement >= 0.99, agreement
