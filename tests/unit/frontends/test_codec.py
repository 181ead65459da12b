from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from service.frontends.grpc_codec import (
    decode_infer_request,
    encode_infer_response,
    read_headers,
)
from service.tensors.errors import InvalidArgument
from service.tensors.records import TensorHeader
from service.tensors.tensor_contents import deserialize_bytes_tensor, serialize_bytes_tensor
from service.v2 import grpc_service_pb2 as pb


def accept_all(headers: Sequence[TensorHeader]) -> int:
    return headers[0].shape[0] if headers[0].shape else 1


def raw_request(name: str, datatype: str, array: np.ndarray) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name=name, datatype=datatype, shape=array.shape)
    request.raw_input_contents.append(array.tobytes())
    return request


@pytest.mark.parametrize(
    ("datatype", "dtype"),
    [
        ("FP32", np.float32),
        ("FP16", np.float16),
        ("UINT8", np.uint8),
        ("INT64", np.int64),
        ("BOOL", np.bool_),
        ("FP64", np.float64),
        ("INT8", np.int8),
    ],
)
def test_raw_round_trip(datatype: str, dtype: type) -> None:
    array: np.ndarray = (
        (np.arange(12) % 2 if dtype is np.bool_ else np.arange(12)).astype(dtype).reshape(3, 4)
    )
    decoded = decode_infer_request(raw_request("x", datatype, array), accept_all)
    np.testing.assert_array_equal(decoded.inputs["x"], array)
    assert decoded.inputs["x"].dtype == dtype
    assert decoded.batch_size == 3


def test_raw_decode_is_zero_copy() -> None:
    request = raw_request("x", "FP32", np.ones((2, 2), np.float32))
    decoded = decode_infer_request(request, accept_all)
    assert not decoded.inputs["x"].flags.owndata


@pytest.mark.parametrize(
    ("datatype", "field", "values", "dtype"),
    [
        ("FP32", "fp32_contents", [1.5, 2.5], np.float32),
        ("UINT8", "uint_contents", [0, 255], np.uint8),
        ("INT32", "int_contents", [-5, 7], np.int32),
        ("BOOL", "bool_contents", [True, False], np.bool_),
    ],
)
def test_typed_contents(datatype: str, field: str, values: list[object], dtype: type) -> None:
    request = pb.ModelInferRequest()
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[2])
    getattr(tensor.contents, field).extend(values)
    decoded = decode_infer_request(request, accept_all)
    np.testing.assert_array_equal(decoded.inputs["x"], np.array(values, dtype=dtype))


def test_typed_out_of_range_is_refused() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="x", datatype="UINT8", shape=[1]).contents.uint_contents.append(300)
    with pytest.raises(InvalidArgument, match="outside the UINT8 range"):
        decode_infer_request(request, accept_all)


def test_typed_wrong_field_is_refused() -> None:
    request = pb.ModelInferRequest()
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1])
    tensor.contents.fp32_contents.append(1.0)
    tensor.contents.int_contents.append(1)
    with pytest.raises(InvalidArgument, match="int_contents is set"):
        decode_infer_request(request, accept_all)


def test_fp16_has_no_typed_field() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="x", datatype="FP16", shape=[1]).contents.fp32_contents.append(1.0)
    with pytest.raises(InvalidArgument, match="raw_input_contents"):
        decode_infer_request(request, accept_all)


def test_bytes_tensor_round_trip() -> None:
    items = np.array([b"", b"abc", b"\x00\xff" * 10], dtype=np.object_)
    raw = serialize_bytes_tensor(items)
    np.testing.assert_array_equal(deserialize_bytes_tensor("x", raw, 3), items)


@pytest.mark.parametrize(
    ("raw", "count", "message"),
    [
        (b"\x05\x00\x00\x00ab", 1, "declares 5 bytes"),
        (b"\x01\x00", 1, "inside a length prefix"),
        (b"\x01\x00\x00\x00a", 2, "needs 2 BYTES elements"),
    ],
)
def test_bytes_tensor_errors(raw: bytes, count: int, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        deserialize_bytes_tensor("x", raw, count)


def test_duplicate_input_name() -> None:
    request = raw_request("x", "FP32", np.ones(2, np.float32))
    request.inputs.add(name="x", datatype="FP32", shape=[2])
    request.raw_input_contents.append(np.ones(2, np.float32).tobytes())
    with pytest.raises(InvalidArgument, match="given twice"):
        read_headers(request)


def test_header_check_runs_before_payload_decoding() -> None:
    request = raw_request("x", "FP32", np.ones(2, np.float32))
    request.raw_input_contents[0] = b"short"

    def refuse(headers: Sequence[TensorHeader]) -> int:
        raise InvalidArgument("signature says no")

    with pytest.raises(InvalidArgument, match="signature says no"):
        decode_infer_request(request, refuse)


def test_encode_uses_raw_output_contents() -> None:
    scores = np.arange(6, dtype=np.float32).reshape(2, 3)
    response = encode_infer_response(
        model_name="m", model_version="1", request_id="r", outputs=[("scores", scores)]
    )
    assert response.id == "r"
    assert list(response.outputs[0].shape) == [2, 3]
    assert response.outputs[0].datatype == "FP32"
    assert response.raw_output_contents[0] == scores.tobytes()
    assert not response.outputs[0].HasField("contents")
