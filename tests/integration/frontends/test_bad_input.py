"""Every client mistake gets the right code and a message naming the tensor; the server
keeps serving afterwards."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np
import pytest

from service.v2 import grpc_service_pb2 as pb
from service.v2 import grpc_service_pb2_grpc as pb_grpc
from tests.serving import ServerThread

Stub = pb_grpc.GRPCInferenceServiceStub


def good_request(rows: int = 1) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="image", datatype="UINT8", shape=[rows, 8, 8, 1])
    request.raw_input_contents.append(np.zeros((rows, 8, 8, 1), np.uint8).tobytes())
    return request


def _with(change: Callable[[pb.ModelInferRequest], None]) -> pb.ModelInferRequest:
    request = good_request()
    change(request)
    return request


def _set_shape(shape: list[int]) -> Callable[[pb.ModelInferRequest], None]:
    def change(request: pb.ModelInferRequest) -> None:
        del request.inputs[0].shape[:]
        request.inputs[0].shape.extend(shape)

    return change


def _add_unexpected(request: pb.ModelInferRequest) -> None:
    request.inputs.add(name="extra", datatype="UINT8", shape=[1])
    request.raw_input_contents.append(np.zeros(1, np.uint8).tobytes())


def _rename(request: pb.ModelInferRequest) -> None:
    request.inputs[0].name = "pixels"


def _wrong_datatype(request: pb.ModelInferRequest) -> None:
    request.inputs[0].datatype = "FP32"
    request.raw_input_contents[0] = np.zeros((1, 8, 8, 1), np.float32).tobytes()


def _short_raw(request: pb.ModelInferRequest) -> None:
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]


def _mixed(request: pb.ModelInferRequest) -> None:
    request.inputs[0].contents.uint_contents.extend([0] * 64)


def _batch_zero(request: pb.ModelInferRequest) -> None:
    del request.inputs[0].shape[:]
    request.inputs[0].shape.extend([0, 8, 8, 1])
    request.raw_input_contents[0] = b""


def _unknown_datatype(request: pb.ModelInferRequest) -> None:
    request.inputs[0].datatype = "FLOAT32"


def _typed_count(request: pb.ModelInferRequest) -> None:
    del request.raw_input_contents[:]
    request.inputs[0].contents.uint_contents.extend([0] * 63)


def _unknown_output(request: pb.ModelInferRequest) -> None:
    request.outputs.add(name="logits")


def _no_inputs(request: pb.ModelInferRequest) -> None:
    del request.inputs[:]
    del request.raw_input_contents[:]


def _raw_count(request: pb.ModelInferRequest) -> None:
    request.raw_input_contents.append(b"")


def _no_contents(request: pb.ModelInferRequest) -> None:
    del request.raw_input_contents[:]


def _negative_dim(request: pb.ModelInferRequest) -> None:
    _set_shape([-1, 8, 8, 1])(request)


CASES: list[tuple[str, Callable[[pb.ModelInferRequest], None], list[str]]] = [
    ("missing input", _rename, ["missing input", "image"]),
    ("unexpected input", _add_unexpected, ["unexpected input", "extra"]),
    ("wrong datatype", _wrong_datatype, ["image", "UINT8", "FP32"]),
    ("unknown datatype", _unknown_datatype, ["image", "FLOAT32"]),
    ("wrong rank", _set_shape([1, 8, 8]), ["image", "rank 4", "rank 3"]),
    ("wrong dims", _set_shape([1, 8, 7, 1]), ["image", "[-1, 8, 8, 1]", "[1, 8, 7, 1]"]),
    ("wrong channel count", _set_shape([1, 8, 8, 3]), ["image", "[-1, 8, 8, 1]", "[1, 8, 8, 3]"]),
    ("raw length", _short_raw, ["image", "60 bytes", "64 bytes"]),
    ("raw and typed mixed", _mixed, ["image", "mixed"]),
    ("typed element count", _typed_count, ["image", "64 elements", "63"]),
    ("batch of 0", _batch_zero, ["image", "batch of 0"]),
    ("empty request", _no_inputs, ["no inputs"]),
    ("raw entries count", _raw_count, ["raw_input_contents has 2 entries", "1 inputs"]),
    ("no contents", _no_contents, ["image", "no contents"]),
    ("negative dimension", _negative_dim, ["image", "negative"]),
    ("unknown output", _unknown_output, ["unknown output", "logits"]),
]


@pytest.mark.parametrize(
    ("change", "words"), [(c, w) for _, c, w in CASES], ids=[n for n, _, _ in CASES]
)
def test_invalid_argument(
    stub: Stub, change: Callable[[pb.ModelInferRequest], None], words: list[str]
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(_with(change))
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    for word in words:
        assert word in str(error.details()), error.details()
    # The server keeps serving.
    assert stub.ModelInfer(good_request()).outputs[0].name == "probabilities"


@pytest.mark.parametrize(
    ("model", "version", "words"),
    [
        ("nope", "", ["unknown model", "nope"]),
        ("digits", "7", ["version '7'", "served versions: 1"]),
    ],
)
def test_not_found(stub: Stub, model: str, version: str, words: list[str]) -> None:
    request = good_request()
    request.model_name, request.model_version = model, version
    with pytest.raises(grpc.RpcError) as infer_error:
        stub.ModelInfer(request)
    with pytest.raises(grpc.RpcError) as metadata_error:
        stub.ModelMetadata(pb.ModelMetadataRequest(name=model, version=version))
    for caught in (infer_error, metadata_error):
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        for word in words:
            assert word in str(caught.value.details())


def test_model_ready_unknown_model_is_not_found(stub: Stub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelReady(pb.ModelReadyRequest(name="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert not stub.ModelReady(pb.ModelReadyRequest(name="digits", version="9")).ready


def test_garbage_message_bytes_are_refused(stub: Stub, example_server: ServerThread) -> None:
    channel = grpc.insecure_channel(example_server.address)
    raw_call = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.RpcError) as caught:
        raw_call(b"\xff\xfe garbage \x00\x01")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in str(caught.value.details())
    channel.close()
    assert stub.ModelInfer(good_request()).model_name == "digits"


def test_typed_contents_are_accepted(stub: Stub) -> None:
    image = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
    typed = pb.ModelInferRequest(model_name="digits")
    typed.inputs.add(name="image", datatype="UINT8", shape=[2, 8, 8, 1])
    typed.inputs[0].contents.uint_contents.extend(image.reshape(-1).tolist())
    raw = good_request(2)
    raw.raw_input_contents[0] = image.tobytes()
    assert stub.ModelInfer(typed).raw_output_contents == stub.ModelInfer(raw).raw_output_contents
