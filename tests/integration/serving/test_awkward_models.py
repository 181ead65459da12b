"""Config-less ONNX files with third-party signatures, served as they are."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from service.v2 import grpc_service_pb2 as pb
from service.v2 import grpc_service_pb2_grpc as pb_grpc
from tests.serving import ServerThread


@pytest.fixture(scope="module")
def client(awkward_server: ServerThread) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(awkward_server.address)


def _input(name: str, array: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def test_odd_names_several_inputs_and_outputs(client: triton.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("two_io", as_json=True)
    assert [t["name"] for t in metadata["inputs"]] == ["input/0:x.y", "scale.1"]
    assert [t["name"] for t in metadata["outputs"]] == ["sum:0", "out/prod"]
    assert metadata["inputs"][0]["shape"] == ["-1", "4"]
    rng = np.random.default_rng(1)
    a = rng.random((3, 4), dtype=np.float32)
    b = rng.random((3, 4), dtype=np.float32)
    result = client.infer("two_io", [_input("input/0:x.y", a), _input("scale.1", b)])
    np.testing.assert_array_equal(result.as_numpy("sum:0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("out/prod"), a * b)
    only = client.infer(
        "two_io",
        [_input("input/0:x.y", a), _input("scale.1", b)],
        outputs=[triton.InferRequestedOutput("out/prod")],
    )
    assert only.as_numpy("sum:0") is None
    np.testing.assert_array_equal(only.as_numpy("out/prod"), a * b)


def test_fixed_batch_of_one_is_served_unbatched(
    client: triton.InferenceServerClient, awkward_server: ServerThread
) -> None:
    metadata = client.get_model_metadata("fixed_batch", as_json=True)
    assert metadata["inputs"][0]["shape"] == ["1", "3"]
    # tritonclient's proto has no metadata parameters: read them with our own stub.
    with grpc.insecure_channel(awkward_server.address) as channel:
        ours = pb_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
            pb.ModelMetadataRequest(name="fixed_batch")
        )
    assert ours.parameters["max_batch_size"].int64_param == 0
    assert ours.parameters["execution_provider"].string_param == "CPUExecutionProvider"
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    np.testing.assert_array_equal(
        client.infer("fixed_batch", [_input("x", x)]).as_numpy("y"), x * 2
    )
    with pytest.raises(InferenceServerException) as caught:
        client.infer("fixed_batch", [_input("x", np.zeros((2, 3), np.float32))])
    assert "INVALID_ARGUMENT" in str(caught.value.status())


@pytest.mark.parametrize(("model", "shape"), [("unknown_dims", (2, 7, 5)), ("minus_one", (5, 3))])
def test_symbolic_unknown_and_minus_one_dims(
    client: triton.InferenceServerClient, model: str, shape: tuple[int, ...]
) -> None:
    metadata = client.get_model_metadata(model, as_json=True)
    assert metadata["inputs"][0]["shape"][0] == "-1"
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    np.testing.assert_array_equal(client.infer(model, [_input("x", x)]).as_numpy("y"), x * 2)


def test_highest_version_is_served(client: triton.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("versioned", as_json=True)
    assert metadata["versions"] == ["3"]
    assert client.is_model_ready("versioned", "3")
    assert not client.is_model_ready("versioned", "1")


def test_corrupt_model_is_not_ready_with_reason_and_others_serve(
    client: triton.InferenceServerClient,
) -> None:
    assert client.is_server_ready()
    assert not client.is_model_ready("broken")
    assert not client.is_model_ready("empty_model")
    with pytest.raises(InferenceServerException) as caught:
        client.infer("broken", [_input("x", np.zeros((1, 3), np.float32))])
    assert "UNAVAILABLE" in str(caught.value.status())
    assert "model.onnx" in caught.value.message()
    assert client.is_model_ready("two_io")
