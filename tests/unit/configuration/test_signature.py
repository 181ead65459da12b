from __future__ import annotations

import pytest

from service.configuration.model_config import DEFAULT_MAX_BATCH_SIZE
from service.configuration.signature import check_inputs, infer_config, select_outputs
from service.tensors.errors import InvalidArgument, ModelLoadError
from service.tensors.records import OnnxTensor, RequestedOutput, TensorHeader


def test_symbolic_batch_is_batched() -> None:
    config = infer_config(
        "m",
        [OnnxTensor("in/0:x", "tensor(float)", ("batch", 3, "h", None))],
        [OnnxTensor("out.1", "tensor(float)", ("batch", 10))],
    )
    assert config.max_batch_size == DEFAULT_MAX_BATCH_SIZE
    assert config.inputs[0].dims == (3, -1, -1)
    assert config.full_shape(config.inputs[0]) == (-1, 3, -1, -1)


def test_fixed_batch_is_unbatched() -> None:
    config = infer_config(
        "m", [OnnxTensor("x", "tensor(uint8)", (1, 4))], [OnnxTensor("y", "tensor(int64)", (1,))]
    )
    assert config.max_batch_size == 0
    assert config.inputs[0].dims == (1, 4)
    assert config.inputs[0].datatype == "UINT8"


def test_one_fixed_output_makes_the_model_unbatched() -> None:
    config = infer_config(
        "m",
        [OnnxTensor("x", "tensor(float)", ("N", 4))],
        [OnnxTensor("y", "tensor(float)", ("N", 4)), OnnxTensor("z", "tensor(float)", (2,))],
    )
    assert config.max_batch_size == 0


def test_unsupported_type_is_a_load_error() -> None:
    with pytest.raises(ModelLoadError, match="seq"):
        infer_config(
            "m", [OnnxTensor("x", "seq(tensor(float))", ())], [OnnxTensor("y", "tensor(float)", ())]
        )


CONFIG = infer_config(
    "m",
    [OnnxTensor("a", "tensor(float)", ("N", 4)), OnnxTensor("b", "tensor(float)", ("N", 4))],
    [OnnxTensor("y", "tensor(float)", ("N", 4))],
)


def test_batch_size_is_returned() -> None:
    headers = [TensorHeader("a", "FP32", (3, 4)), TensorHeader("b", "FP32", (3, 4))]
    assert check_inputs(CONFIG, headers) == 3


def test_inputs_must_agree_on_batch() -> None:
    headers = [TensorHeader("a", "FP32", (3, 4)), TensorHeader("b", "FP32", (2, 4))]
    with pytest.raises(InvalidArgument, match="disagree on the batch size"):
        check_inputs(CONFIG, headers)


def test_outputs_default_to_all_and_unknown_is_refused() -> None:
    assert select_outputs(CONFIG, ()) == ("y",)
    with pytest.raises(InvalidArgument, match="unknown output 'z'"):
        select_outputs(CONFIG, (RequestedOutput("z"),))
