from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.configuration.model_config import (
    DynamicBatching,
    ModelConfig,
    TensorSpec,
    load_model_overrides,
    parse_model_overrides,
)
from service.tensors.errors import ConfigError

INFERRED = ModelConfig(
    name="m",
    inputs=(TensorSpec("x", "FP32", (3, 8, 8)),),
    outputs=(TensorSpec("y", "FP32", (10,)),),
    max_batch_size=32,
)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"max_batch_sise": 4}, "unknown keys \\['max_batch_sise'\\]"),
        ({"max_batch_size": -1}, "'max_batch_size' must be >= 0"),
        ({"max_batch_size": "8"}, "'max_batch_size' must be int"),
        ({"instances": 0}, "'instances' must be >= 1"),
        ({"instances": "two"}, "'instances' must be an int >= 1 or 'auto', got 'two'"),
        ({"device": "gpu"}, "device 'gpu'"),
        ({"name": "other"}, "folder name is the model name"),
        ({"platform": "tensorflow_savedmodel"}, "not supported"),
        ({"dynamic_batching": {"max_queue_delay": 5}}, "unknown keys \\['max_queue_delay'\\]"),
        ({"dynamic_batching": {"preferred_batch_sizes": [0]}}, "preferred_batch_sizes"),
        ({"dynamic_batching": {"max_queue_size": 0}}, "max_queue_size' must be >= 1"),
        ({"inputs": [{"name": "x", "datatype": "FLOAT", "dims": [1]}]}, "not a v2 datatype"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "dims": [0]}]}, "positive integers or -1"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "dims": [1], "shape": 1}]}, "unknown keys"),
    ],
)
def test_invalid_documents_name_the_key(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_model_overrides("m", document)


def test_declared_values_override_inferred() -> None:
    overrides = parse_model_overrides(
        "m",
        {
            "max_batch_size": 8,
            "instances": 2,
            "device": "cpu",
            "dynamic_batching": {"max_queue_delay_us": 100, "preferred_batch_sizes": [4, 8]},
        },
    )
    config = overrides.apply(INFERRED)
    assert config.max_batch_size == 8
    assert config.instances == 2
    assert config.device == "cpu"
    assert config.dynamic_batching == DynamicBatching(
        max_queue_delay_us=100, preferred_batch_sizes=(4, 8)
    )
    assert config.inputs == INFERRED.inputs


def test_max_batch_size_zero_keeps_batch_axis_as_a_variable_dim() -> None:
    config = parse_model_overrides("m", {"max_batch_size": 0}).apply(INFERRED)
    assert not config.batched
    assert config.full_shape(config.inputs[0]) == (-1, 3, 8, 8)


def test_batching_an_unbatchable_model_is_refused() -> None:
    fixed = ModelConfig(
        name="m", inputs=INFERRED.inputs, outputs=INFERRED.outputs, max_batch_size=0
    )
    with pytest.raises(ConfigError, match="first dimension is fixed"):
        parse_model_overrides("m", {"max_batch_size": 4}).apply(fixed)


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ({"name": "z", "datatype": "FP32", "dims": [1]}, "does not have"),
        ({"name": "x", "datatype": "UINT8", "dims": [3, 8, 8]}, "declared UINT8"),
    ],
)
def test_declared_tensors_must_match_the_file(declared: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_model_overrides("m", {"inputs": [declared]}).apply(INFERRED)


def test_yaml_errors_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("max_batch_size: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_model_overrides("m", path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_model_overrides("m", path)
    assert load_model_overrides("m", tmp_path / "absent.yaml").apply(INFERRED) == INFERRED
