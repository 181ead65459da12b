"""Preprocessing: spec validation, and the spliced ONNX graph against the numpy oracle."""

from __future__ import annotations

import itertools
import re
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from service.configuration.model_config import TensorSpec
from service.images.preprocess import attach, bind, parse_preprocessing
from service.tensors.errors import ConfigError
from tests.onnx_models import affine
from tests.preprocessing_oracle import expected_model_input
from tests.serving import REPO_ROOT


def affine_model(layout: str, channels: int = 3, opset: int = 17) -> onnx.ModelProto:
    """y = 2x + 1 on a float image [N, C, 5, 4] or [N, 5, 4, C]."""
    dims: list[int | str | None] = (
        ["N", channels, 5, 4] if layout == "NCHW" else ["N", 5, 4, channels]
    )
    return affine(dims, opset)


def model_input(layout: str, channels: int = 3) -> TensorSpec:
    dims = (channels, 5, 4) if layout == "NCHW" else (5, 4, channels)
    return TensorSpec("x", "FP32", dims)


MODES = ("none", "normalize", "center", "standardize")
CASES = [
    (mode, statistics, per_image, pixel_layout, model_layout)
    for mode, statistics, per_image, pixel_layout, model_layout in itertools.product(
        MODES, ("dataset", "per_image"), ("channel", "image"), ("NHWC", "NCHW"), ("NCHW", "NHWC")
    )
    if not (statistics == "dataset" and per_image == "image")
]


@pytest.mark.parametrize(("mode", "statistics", "per_image", "layout", "model_layout"), CASES)
@pytest.mark.parametrize("opset", [17, 18])
def test_graph_matches_numpy_reference(
    mode: str, statistics: str, per_image: str, layout: str, model_layout: str, opset: int
) -> None:
    document: dict[str, Any] = {
        "mode": mode, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3],
        "statistics": statistics, "per_image": per_image, "layout": layout,
    }  # fmt: skip
    spec = parse_preprocessing("m", document)
    pre = bind("m", spec, (model_input(model_layout),), batched=True)
    session = ort.InferenceSession(
        attach(affine_model(model_layout, opset=opset), pre).SerializeToString(),
        providers=["CPUExecutionProvider"],
    )
    shape = (3, *pre.client_dims)
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    pixels[1] = 7  # a flat image: per-image std is 0 and must be floored, not divide by 0
    served = session.run(["y"], {"x": pixels})[0]
    expected = 2 * expected_model_input(pixels, model_layout=model_layout, **document) + 1
    assert np.isfinite(served).all()
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)
    if statistics == "per_image" and mode in ("center", "standardize"):
        # The flat image is centred to exactly zero input (y = 2 * 0 + 1), noise-free.
        np.testing.assert_allclose(served[1], 1.0, rtol=0, atol=1e-5)


def readme_worked_example() -> dict[str, float]:
    """The README's table "pixel 200, scale 1/255, mean 0.485, std 0.229": mode -> value."""
    rows = re.findall(
        r"^\| (none|normalize|center|standardize) \| [^|]+ \| (-?[\d.]+) \|$",
        (REPO_ROOT / "README.md").read_text(),
        re.MULTILINE,
    )
    return {mode: float(value) for mode, value in rows}


def test_the_readme_worked_example_holds_in_the_oracle_and_the_graph() -> None:
    example = readme_worked_example()
    assert set(example) == set(MODES)
    pixels = np.full((1, 5, 4, 1), 200, np.uint8)
    for mode, value in example.items():
        document = {"mode": mode, "mean": 0.485, "std": 0.229, "color": "gray"}
        oracle = expected_model_input(
            pixels, mode=mode, mean=(0.485,), std=(0.229,), model_layout="NHWC"
        )
        pre = bind("m", parse_preprocessing("m", document), (model_input("NHWC", 1),), True)
        session = ort.InferenceSession(
            attach(affine_model("NHWC", channels=1), pre).SerializeToString(),
            providers=["CPUExecutionProvider"],
        )
        served = (session.run(["y"], {"x": pixels})[0] - 1) / 2  # the model is y = 2x + 1
        assert round(float(oracle.flat[0]), 4) == value, mode
        assert round(float(served.flat[0]), 4) == value, mode


def test_metadata_of_the_bound_input() -> None:
    spec = parse_preprocessing("m", {"layout": "NHWC"})
    pre = bind("m", spec, (model_input("NCHW"),), batched=True)
    assert pre.client_spec == TensorSpec("x", "UINT8", (5, 4, 3))
    assert pre.image_size == (5, 4)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"std": 0}, "preprocessing.std must be positive"),
        ({"std": [0.2, 0.0, 0.3]}, "preprocessing.std must be positive"),
        ({"mode": "whiten"}, "preprocessing.mode must be one of"),
        ({"layout": "HWC"}, "preprocessing.layout"),
        ({"color": "cmyk"}, "preprocessing.color"),
        ({"statistics": "batch"}, "preprocessing.statistics"),
        ({"scale": 0}, "preprocessing.scale"),
        ({"mean": "0.5"}, "preprocessing.mean must hold finite numbers"),
        ({"mean": []}, "preprocessing.mean"),
        ({"resize": [224]}, "preprocessing.resize"),
        ({"center": True}, "unknown keys \\['center'\\]"),
    ],
)
def test_invalid_specs_name_the_key(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_preprocessing("m", document)


@pytest.mark.parametrize(
    ("document", "inputs", "message"),
    [
        ({"mean": [0.1, 0.2]}, (model_input("NCHW"),), "preprocessing.mean has 2 values"),
        ({"std": [1, 1, 1, 1]}, (model_input("NCHW"),), "preprocessing.std has 4 values"),
        ({"color": "gray"}, (model_input("NCHW"),), "preprocessing.color 'gray'"),
        ({"color": "rgb"}, (model_input("NCHW", channels=1),), "preprocessing.color 'rgb'"),
        ({"resize": [8, 8]}, (model_input("NCHW"),), "preprocessing.resize"),
        (
            {},
            (model_input("NCHW"), TensorSpec("y", "FP32", (3,))),
            "preprocessing.input is required",
        ),
        ({"input": "z"}, (model_input("NCHW"),), "preprocessing.input names 'z'"),
        ({}, (TensorSpec("x", "INT64", (3, 5, 4)),), "feeds float inputs"),
        ({}, (TensorSpec("x", "FP32", (7, 5, 4)),), "channel axis"),
        ({}, (TensorSpec("x", "FP32", (5, 4)),), "image input"),
        ({}, (TensorSpec("x", "FP32", (3, -1, -1)),), "resize must give the image size"),
    ],
)
def test_binding_errors_name_the_key(
    document: dict[str, Any], inputs: tuple[TensorSpec, ...], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        bind("m", parse_preprocessing("m", document), inputs, batched=True)


def test_variable_size_model_takes_the_resize() -> None:
    spec = parse_preprocessing("m", {"resize": [32, 24]})
    pre = bind("m", spec, (TensorSpec("x", "FP32", (3, -1, -1)),), batched=True)
    assert pre.client_dims == (32, 24, 3)
